"""Bundle-backed workflows (train / evaluate / infer) and the recipes used by the configs."""

from vmunet_monai.workflows import recipes
from vmunet_monai.workflows.commands import TASK_CONFIGS, evaluate, find_bundle_root, infer, train
from vmunet_monai.workflows.graph_step import CUDAGraphTrainStep
