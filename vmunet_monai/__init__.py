"""VM-UNet (Vision Mamba UNet, arXiv 2402.02491) as a MONAI network, bundle and toolkit."""

__version__ = "0.1.0"
