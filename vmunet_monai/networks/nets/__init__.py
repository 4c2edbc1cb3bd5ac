from .vmunet import VMUNet, VMUnet
