"""MONAI transforms for VM-UNet pipelines."""

from vmunet_monai.transforms.isic import (
    BinarizeMaskd,
    EnsureRGBd,
    MinMaxIntensityd,
    isic_deterministic_transforms,
    isic_eval_transforms,
    isic_load_transforms,
    isic_random_transforms,
    isic_train_transforms,
)
from vmunet_monai.transforms.synapse import CTWindowd, RandSynapseAugmentd, synapse_slice_transforms, synapse_train_transforms
