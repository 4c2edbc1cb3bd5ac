from .layer_norm import LayerNorm
from .patch import FinalPatchExpand2D, PatchEmbed2D, PatchExpand2D, PatchMerging2D
from .ss2d import SS2D
from .vss import VSSBlock, VSSLayer, VSSLayerUp
