from .cuda_graph import CUDAGraphModule, autocast_cast_parameters
from .nets import VMUNet
