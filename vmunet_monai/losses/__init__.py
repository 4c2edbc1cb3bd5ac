"""Losses of the VM-UNet recipes."""

from vmunet_monai.losses.bce_dice import BceDiceLoss
from vmunet_monai.losses.synapse import SynapseCEDiceLoss
