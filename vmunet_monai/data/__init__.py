"""Data preparation, validation and datalists."""

from vmunet_monai.data.isic_datalist import list_inference_images, load_isic_datalist, make_isic_splits
from vmunet_monai.data.isic_io import ISICDataError, check_pair, read_image_rgb, read_mask_binary, to_binary_mask, to_rgb
from vmunet_monai.data.synapse import (
    HU_WINDOW,
    SYNAPSE_CHANNELS,
    SYNAPSE_ORGANS,
    SimpleITKReader,
    SynapseDataError,
    SynapseH5Reader,
    SynapseNpzReader,
    ct_image_readers,
    synapse_test_datalist,
    synapse_train_datalist,
)
