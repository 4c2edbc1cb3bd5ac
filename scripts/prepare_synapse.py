#!/usr/bin/env python
"""Prepare Synapse multi-organ CT for the VM-UNet bundle (same as ``vmunet-monai prepare-synapse`` / ``stack-synapse``).

Examples::

    # raw BTCV (RawData/Training/img/img00XX.nii.gz + label/label00XX.nii.gz) -> TransUNet layout
    python scripts/prepare_synapse.py raw --raw_dir /data/RawData --output_dir /data/Synapse
    # stack a case's npz slices (train_npz/caseXXXX_sliceYYY.npz) into test_vol_h5/caseXXXX.npy.h5
    python scripts/prepare_synapse.py stack --npz_dir /data/Synapse/train_npz --case case0031
    # voxel spacings of the raw cases, for HD95 in millimetres (TransUNet's h5 files carry none)
    python scripts/prepare_synapse.py spacing --raw_dir /data/RawData --output spacing.json

See :mod:`vmunet_monai.data.synapse_prepare` for every option.
"""

import fire

from vmunet_monai.data.synapse_prepare import prepare_synapse, stack_case, write_spacing_file

if __name__ == "__main__":
    fire.Fire({"raw": prepare_synapse, "stack": stack_case, "spacing": write_spacing_file})
