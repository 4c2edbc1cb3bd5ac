"""Prepare Synapse (BTCV) in the TransUNet layout: ``vmunet-monai prepare_synapse`` and ``stack_synapse``.

From the raw BTCV release (``RawData/Training/img/img00XX.nii.gz`` + ``label/label00XX.nii.gz``, 13 labels):

1. reorient to the TransUNet slice orientation (array axes towards patient Left, Posterior, Superior;
   see :mod:`vmunet_monai.data.synapse`),
2. clip HU to [-125, 275] and scale to [0, 1] (fixed window, reference 4.2),
3. map the 13 BTCV labels to the 8 Synapse organs with :data:`BTCV_TO_SYNAPSE` (others -> background),
4. write axial slices ``train_npz/caseXXXX_sliceYYY.npz`` for the 18 training cases and volumes
   ``test_vol_h5/caseXXXX.npy.h5`` (``(D, H, W)``, plus the voxel spacing as the attribute ``spacing``)
   for the 12 test cases, and the list files ``lists/lists_Synapse/{train.txt, test_vol.txt, all.lst}``.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .synapse import (
    H5_SUBDIR,
    HU_WINDOW,
    LIST_SUBDIR,
    NPZ_SUBDIR,
    SYNAPSE_ORGANS,
    SYNAPSE_TEST_CASES,
    SYNAPSE_TRAIN_CASES,
    SynapseDataError,
    read_synapse_npz,
)

__all__ = [
    "BTCV_LABELS",
    "BTCV_TO_SYNAPSE",
    "map_btcv_labels",
    "window_ct",
    "reorient_to_lps",
    "write_h5_volume",
    "prepare_synapse",
    "stack_case",
    "write_spacing_file",
]

logger = logging.getLogger(__name__)

#: The 13 BTCV abdomen labels (synapse.org syn3193805).
BTCV_LABELS: dict[int, str] = {
    1: "spleen",
    2: "kidney_right",
    3: "kidney_left",
    4: "gallbladder",
    5: "esophagus",
    6: "liver",
    7: "stomach",
    8: "aorta",
    9: "inferior_vena_cava",
    10: "portal_and_splenic_vein",
    11: "pancreas",
    12: "adrenal_gland_right",
    13: "adrenal_gland_left",
}

#: BTCV label -> Synapse label (1 aorta, 2 gallbladder, 3 kidney L, 4 kidney R, 5 liver, 6 pancreas,
#: 7 spleen, 8 stomach). Labels not listed (esophagus, IVC, portal/splenic vein, adrenals) -> 0.
BTCV_TO_SYNAPSE: dict[int, int] = {
    8: 1,  # aorta
    4: 2,  # gallbladder
    3: 3,  # left kidney
    2: 4,  # right kidney
    6: 5,  # liver
    11: 6,  # pancreas
    1: 7,  # spleen
    7: 8,  # stomach
}


def map_btcv_labels(label: np.ndarray, path: str | os.PathLike = "<array>") -> np.ndarray:
    """Map a BTCV 13-label array to the 8 Synapse organs through a lookup table (no chained replacements).

    Raises :class:`SynapseDataError` (naming ``path``) for values outside 0..13 or non-integers.

    Example:
        >>> map_btcv_labels(np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13])).tolist()
        [0, 7, 4, 3, 2, 0, 5, 8, 1, 0, 0, 6, 0, 0]
    """
    lab = np.asarray(label)
    if lab.size and (lab.min() < 0 or lab.max() > 13 or np.any(lab != np.round(lab))):
        raise SynapseDataError(f"{path}: BTCV labels must be integers 0..13, got values in [{lab.min()}, {lab.max()}].")
    table = np.zeros(14, dtype=np.uint8)
    for btcv, synapse in BTCV_TO_SYNAPSE.items():
        table[btcv] = synapse
    return table[lab.astype(np.int64)]


def window_ct(hu: np.ndarray, window: Sequence[float] = HU_WINDOW) -> np.ndarray:
    """Clip HU to ``window`` and scale linearly to [0, 1] (float32): ``(clip(x) - lo) / (hi - lo)``.

    Example:
        >>> window_ct(np.array([-1000.0, -125.0, 75.0, 275.0, 3000.0])).tolist()
        [0.0, 0.0, 0.5, 1.0, 1.0]
    """
    lo, hi = float(window[0]), float(window[1])
    if not hi > lo:
        raise ValueError(f"window must be (low, high) with high > low, got {tuple(window)}.")
    return ((np.clip(np.asarray(hu, dtype=np.float32), lo, hi) - lo) / (hi - lo)).astype(np.float32)


def reorient_to_lps(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Reorder/flip a 3D array so its axes run towards patient Left, Posterior, Superior; return it and the spacing."""
    import nibabel as nib

    ornt = nib.orientations.ornt_transform(nib.orientations.io_orientation(affine), nib.orientations.axcodes2ornt("LPS"))
    out = nib.orientations.apply_orientation(array, ornt)
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))  # per input axis
    new_spacing = tuple(float(spacing[int(i)]) for i in np.argsort(ornt[:, 0]))  # per output axis
    return np.ascontiguousarray(out), new_spacing


def write_h5_volume(
    path: str | os.PathLike,
    image: np.ndarray,
    label: np.ndarray,
    spacing: Sequence[float] | None = None,
    compression: str | None = "gzip",
) -> Path:
    """Write a TransUNet test volume: datasets ``image``/``label`` ``(D, H, W)`` float32, optional ``spacing``.

    ``spacing`` is stored in the reader's ``(H, W, D)`` axis order (slice axis last), in mm. ``compression`` (gzip by default, ``None`` for none) is transparent to h5py readers.
    """
    import h5py

    if image.shape != label.shape or image.ndim != 3:
        raise SynapseDataError(f"{path}: image {image.shape} and label {label.shape} must be equal (D, H, W) shapes.")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    with h5py.File(tmp, "w") as f:
        f.create_dataset("image", data=image.astype(np.float32), compression=compression)
        f.create_dataset("label", data=label.astype(np.float32), compression=compression)
        if spacing is not None:
            f.attrs["spacing"] = np.asarray(spacing, dtype=np.float64)
    os.replace(tmp, path)  # never leave a half-written volume under the final name
    return path


def _load_nifti(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import nibabel as nib

    try:
        img = nib.load(str(path))
        return np.asarray(img.dataobj), img.affine
    except Exception as e:
        raise SynapseDataError(f"{path}: cannot read as NIfTI ({type(e).__name__}: {e}).") from e


def _find_training_dir(raw_dir: Path) -> Path:
    for cand in (raw_dir, raw_dir / "Training", raw_dir / "RawData" / "Training"):
        if (cand / "img").is_dir() and (cand / "label").is_dir():
            return cand
    raise SynapseDataError(
        f"{raw_dir}: no BTCV img/ and label/ folders found (looked in ., Training/, RawData/Training/)."
    )


def _case_number(case: str | int) -> int:
    m = re.fullmatch(r"(?:case|img)?0*(\d+)", str(case))
    if not m:
        raise ValueError(f"bad case id {case!r}; use e.g. 'case0005' or 5.")
    return int(m.group(1))


def prepare_synapse(
    raw_dir: str,
    output_dir: str,
    train_cases: Sequence[str | int] | None = None,
    test_cases: Sequence[str | int] | None = None,
    compression: str | None = "gzip",
    overwrite: bool = False,
) -> dict[str, list[str]]:
    """Convert raw BTCV to the TransUNet Synapse layout (npz slices for training, h5 volumes for testing).

    Args:
        raw_dir: folder holding ``img/`` and ``label/`` (or its parents ``Training/``, ``RawData/Training/``).
        output_dir: Synapse root to write (``train_npz/``, ``test_vol_h5/``, ``lists/lists_Synapse/``).
        train_cases: training case ids (default: the 18 standard ones).
        test_cases: test case ids (default: the 12 standard ones).
        compression: h5 compression for the test volumes (``None`` to match TransUNet byte for byte).
        overwrite: replace existing outputs; otherwise an existing case is skipped.

    Returns:
        ``{"train": [slice ids], "test": [case ids]}``, as written to the list files.

    Example (shell)::

        vmunet-monai prepare_synapse --raw_dir /data/RawData --output_dir /data/Synapse
    """
    train_cases = SYNAPSE_TRAIN_CASES if train_cases is None else train_cases
    test_cases = SYNAPSE_TEST_CASES if test_cases is None else test_cases
    src = _find_training_dir(Path(raw_dir))
    out = Path(output_dir)
    train_nums = [_case_number(c) for c in ensure_list(train_cases)]
    test_nums = [_case_number(c) for c in ensure_list(test_cases)]
    overlap = sorted(set(train_nums) & set(test_nums))
    if overlap:
        raise ValueError(f"cases {overlap} are in both the training and the test split.")
    pairs = {n: (src / "img" / f"img{n:04d}.nii.gz", src / "label" / f"label{n:04d}.nii.gz") for n in train_nums + test_nums}
    missing = [str(p) for pair in pairs.values() for p in pair if not p.is_file()]
    if missing:
        raise SynapseDataError(f"{len(missing)} raw BTCV file(s) missing, e.g. {missing[:3]}.")

    (out / NPZ_SUBDIR).mkdir(parents=True, exist_ok=True)
    (out / H5_SUBDIR).mkdir(parents=True, exist_ok=True)
    train_ids: list[str] = []
    for n in train_nums + test_nums:
        case = f"case{n:04d}"
        img_path, lab_path = pairs[n]
        is_train = n in train_nums
        h5_path = out / H5_SUBDIR / f"{case}.npy.h5"
        existing = sorted((out / NPZ_SUBDIR).glob(f"{case}_slice*.npz")) if is_train else []
        if not overwrite and ((is_train and existing) or (not is_train and h5_path.is_file())):
            logger.info("%s exists, skipped (overwrite=True to redo)", case)
            train_ids += [p.stem for p in existing]
            continue
        image, affine = _load_nifti(img_path)
        label, label_affine = _load_nifti(lab_path)
        if image.shape != label.shape or image.ndim != 3:
            raise SynapseDataError(f"{img_path}: image {image.shape} and {lab_path.name} {label.shape} differ or are not 3D.")
        if not np.allclose(affine, label_affine, atol=1e-3):
            raise SynapseDataError(f"{lab_path}: affine differs from {img_path.name}.")
        image, spacing = reorient_to_lps(image, affine)
        label, _ = reorient_to_lps(label, affine)
        image = window_ct(image)
        label = map_btcv_labels(label, lab_path).astype(np.float32)
        # axial slices first, as TransUNet stores them: (H, W, D) -> (D, H, W)
        image, label = np.moveaxis(image, -1, 0), np.moveaxis(label, -1, 0)
        if is_train:
            for k in range(image.shape[0]):
                np.savez(out / NPZ_SUBDIR / f"{case}_slice{k:03d}.npz", image=image[k], label=label[k])
                train_ids.append(f"{case}_slice{k:03d}")
        else:
            write_h5_volume(h5_path, image, label, spacing=spacing, compression=compression)
        logger.info("%s: %d slices, spacing %s mm -> %s", case, image.shape[0], spacing, "npz" if is_train else "h5")

    lists = out / LIST_SUBDIR
    lists.mkdir(parents=True, exist_ok=True)
    test_ids = [f"case{n:04d}" for n in test_nums]
    (lists / "train.txt").write_text("".join(f"{i}\n" for i in train_ids))
    (lists / "test_vol.txt").write_text("".join(f"{i}\n" for i in test_ids))
    (lists / "all.lst").write_text("".join(f"{i}.npz\n" for i in train_ids))
    logger.info("organs: %s", ", ".join(f"{i + 1} {o}" for i, o in enumerate(SYNAPSE_ORGANS)))
    return {"train": train_ids, "test": test_ids}


def ensure_list(x: Sequence[str | int] | str | int) -> list:
    """Fire passes a single id as a scalar and several as a tuple; accept both."""
    return [x] if isinstance(x, (str, int)) else list(x)


def stack_case(
    npz_dir: str,
    case: str,
    output: str | None = None,
    spacing: Sequence[float] | None = None,
    compression: str | None = "gzip",
    list_file: str | None = None,
) -> str:
    """Stack one case's ``caseXXXX_sliceYYY.npz`` slices (in slice order) into its h5 volume.

    Args:
        npz_dir: folder with the slices (e.g. ``Synapse/train_npz``).
        case: case id, e.g. ``case0031``.
        output: h5 path, or a folder to put ``<case>.npy.h5`` in (default: ``<npz_dir>/../test_vol_h5``).
        spacing: optional voxel spacing (mm, along H, W, slice) stored as the h5 attribute ``spacing``.
        compression: h5 compression (``None`` for none).
        list_file: optionally append the case id to this ``test_vol.txt`` (created if absent).

    Returns:
        the path written.

    Example (shell)::

        vmunet-monai stack_synapse --npz_dir Synapse/train_npz --case case0031 --output Synapse/test_vol_h5
    """
    folder = Path(npz_dir)
    case = f"case{_case_number(case):04d}"
    slices = {}
    for p in folder.glob(f"{case}_slice*.npz"):
        m = re.fullmatch(rf"{case}_slice(\d+)\.npz", p.name)
        if m:
            slices[int(m.group(1))] = p
    if not slices:
        raise SynapseDataError(f"{folder}: no {case}_slice*.npz files found.")
    order = sorted(slices)
    gaps = sorted(set(range(order[0], order[-1] + 1)) - set(order))
    if gaps:
        raise SynapseDataError(f"{folder}: {case} has missing slice(s) {gaps[:10]}; refusing to stack a volume with holes.")
    images, labels = [], []
    for k in order:
        arrays = read_synapse_npz(slices[k])
        if images and arrays["image"].shape != images[0].shape:
            raise SynapseDataError(f"{slices[k]}: slice shape {arrays['image'].shape} differs from {images[0].shape}.")
        images.append(arrays["image"].astype(np.float32))
        labels.append(arrays["label"].astype(np.float32))
    if output is None:
        target = folder.parent / H5_SUBDIR / f"{case}.npy.h5"
    else:
        target = Path(output)
        if target.is_dir() or not target.name.endswith((".h5", ".hdf5")):
            target = target / f"{case}.npy.h5"
    write_h5_volume(target, np.stack(images), np.stack(labels), spacing=spacing, compression=compression)
    if list_file is not None:
        lf = Path(list_file)
        lf.parent.mkdir(parents=True, exist_ok=True)
        ids = lf.read_text().split() if lf.is_file() else []
        if case not in ids:
            lf.write_text("".join(f"{i}\n" for i in ids + [case]))
    logger.info("%s: %d slices -> %s", case, len(order), target)
    return str(target)


def write_spacing_file(raw_dir: str, output: str, cases: Sequence[str | int] | None = None) -> dict[str, list[float]]:
    """Write ``{case: [s_row, s_col, s_slice]}`` (mm, TransUNet slice order) from the raw BTCV image headers.

    TransUNet's published ``test_vol_h5`` files carry no voxel spacing; with this file
    (``--spacing_file`` of the Synapse configs) the evaluation also reports HD95 in millimetres.

    Example::

        python -c "from vmunet_monai.data.synapse_prepare import write_spacing_file as w; w('RawData', 'Synapse/spacing.json')"
    """
    import json

    import nibabel as nib

    src = _find_training_dir(Path(raw_dir))
    nums = [_case_number(c) for c in ensure_list(cases)] if cases is not None else list(
        _case_number(p.name[3:7]) for p in sorted((src / "img").glob("img*.nii.gz"))
    )
    table = {}
    for n in nums:
        path = src / "img" / f"img{n:04d}.nii.gz"
        if not path.is_file():
            raise SynapseDataError(f"{path}: not found.")
        affine = nib.load(str(path)).affine
        _, spacing = reorient_to_lps(np.zeros((1, 1, 1)), affine)
        table[f"case{n:04d}"] = [round(s, 6) for s in spacing]
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    Path(output).write_text(json.dumps(table, indent=1) + "\n")
    return table
