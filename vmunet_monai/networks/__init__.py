from .nets import VMUNet
