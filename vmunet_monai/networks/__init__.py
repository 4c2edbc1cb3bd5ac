from .cuda_graph import CUDAGraphModule
from .nets import VMUNet
