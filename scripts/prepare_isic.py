#!/usr/bin/env python
"""Prepare ISIC 2017 / 2018 for the VM-UNet bundle (same as ``vmunet-monai prepare-isic``).

Example::

    python scripts/prepare_isic.py --src /data/isic2017 --out /data/isic2017_prepared
    python scripts/prepare_isic.py --src /data/isic2017 --out /data/isic2017_85_15 --test_fraction 0

See :func:`vmunet_monai.data.isic_prepare.prepare_isic` for every option.
"""

import fire

from vmunet_monai.data.isic_prepare import prepare_isic

if __name__ == "__main__":
    fire.Fire(prepare_isic)
