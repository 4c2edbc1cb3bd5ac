"""Ignite/MONAI handlers for VM-UNet training, evaluation and inference."""

from vmunet_monai.handlers.checkpoint import BestModelSaver, LatestCheckpointer
from vmunet_monai.handlers.history import TrainingHistory, plot_learning_curve
from vmunet_monai.handlers.isic import ISICEvaluationWriter, ISICMetricHandler, OverlayWriter
from vmunet_monai.handlers.progress import ProgressLogger
from vmunet_monai.handlers.utils import atomic_torch_save, is_main_process
from vmunet_monai.handlers.workers import ReleaseDataLoaderWorkers, shutdown_loader_workers
