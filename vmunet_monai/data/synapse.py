"""Synapse multi-organ CT (BTCV, TransUNet layout) readers and data lists, usable from ``LoadImaged``.

Layout (TransUNet, reference section 7)::

    <dataset_dir>/
      lists/lists_Synapse/{train.txt, test_vol.txt}    # slice ids "case0005_slice000" / case ids "case0008"
      train_npz/caseXXXX_sliceYYY.npz                  # keys image (H, W) float in [0, 1], label (H, W) 0..8
      test_vol_h5/caseXXXX.npy.h5                      # datasets image, label: (D, H, W)

Array conventions used by this package:

- an npz slice is read as a 2D array ``(H, W)`` exactly as stored;
- an h5 volume ``(D, H, W)`` is read as ``(H, W, D)``: axial slices on the *last* spatial axis, each slice
  identical to its npz slice, so ``SliceInferer(spatial_dim=2)`` feeds the network what it was trained on;
- TransUNet slices put the patient's right at row 0 and anterior at column 0, that is the array axes run
  towards patient Left, Posterior, Superior ("LPS" in MONAI's ``Orientation`` axcodes). Users' CT is
  reoriented to "LPS" before slicing (see ``vmunet_monai.workflows.synapse``), and the h5 affine written
  here says so: ``diag(-sx, -sy, sz)`` in RAS world coordinates.

Every reader validates what it reads and raises :class:`SynapseDataError` naming the file and the problem.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from monai.data.image_reader import ImageReader
from monai.utils import MetaKeys, SpaceKeys, ensure_tuple

__all__ = [
    "SYNAPSE_ORGANS",
    "SYNAPSE_CHANNELS",
    "SYNAPSE_NUM_CLASSES",
    "SYNAPSE_TRAIN_CASES",
    "SYNAPSE_TEST_CASES",
    "HU_WINDOW",
    "SynapseDataError",
    "read_synapse_npz",
    "read_synapse_h5",
    "read_case_list",
    "synapse_train_datalist",
    "synapse_test_datalist",
    "lps_affine",
    "load_spacing_file",
    "SynapseNpzReader",
    "SynapseH5Reader",
    "SimpleITKReader",
    "ct_image_readers",
]

#: The 8 organs in the published (TransUNet / VM-UNet Table II) order; label value = index + 1.
SYNAPSE_ORGANS: tuple[str, ...] = (
    "aorta",
    "gallbladder",
    "kidney_left",
    "kidney_right",
    "liver",
    "pancreas",
    "spleen",
    "stomach",
)
#: Output channel names of the 9-class network (channel index = label value).
SYNAPSE_CHANNELS: tuple[str, ...] = ("background",) + SYNAPSE_ORGANS
SYNAPSE_NUM_CLASSES = len(SYNAPSE_CHANNELS)

#: Standard TransUNet split of the 30 BTCV training CTs (reference 5.2 and 7).
SYNAPSE_TRAIN_CASES: tuple[str, ...] = tuple(
    f"case{i:04d}" for i in (5, 6, 7, 9, 10, 21, 23, 24, 26, 27, 28, 30, 31, 33, 34, 37, 39, 40)
)
#: Test cases in the order of TransUNet's ``test_vol.txt``.
SYNAPSE_TEST_CASES: tuple[str, ...] = tuple(f"case{i:04d}" for i in (8, 22, 38, 36, 32, 2, 29, 3, 1, 4, 25, 35))

#: CT intensity window in HU, scaled to [0, 1] (reference 4.2).
HU_WINDOW: tuple[float, float] = (-125.0, 275.0)

LIST_SUBDIR = os.path.join("lists", "lists_Synapse")
NPZ_SUBDIR = "train_npz"
H5_SUBDIR = "test_vol_h5"


class SynapseDataError(ValueError):
    """A Synapse file is missing, unreadable or inconsistent; the message names the file."""


def _check_image_label(
    path: str | os.PathLike, image: np.ndarray, label: np.ndarray | None, ndim: int, num_classes: int
) -> None:
    """Validate dtypes, dimensions, shape agreement, NaNs and label values; raise naming ``path``."""
    what = f"{ndim}D ({'H, W' if ndim == 2 else 'D, H, W'})"
    for name, arr in (("image", image), ("label", label)):
        if arr is None:
            continue
        if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
            raise SynapseDataError(f"{path}: '{name}' has dtype {arr.dtype}; expected a real float or integer array.")
        if arr.ndim != ndim:
            raise SynapseDataError(f"{path}: '{name}' has shape {tuple(arr.shape)}; expected {what}.")
    if not np.all(np.isfinite(image)):
        raise SynapseDataError(f"{path}: 'image' contains NaN or infinite values.")
    if label is None:
        return
    if image.shape != label.shape:
        raise SynapseDataError(
            f"{path}: image/label shape mismatch: image {tuple(image.shape)} vs label {tuple(label.shape)}."
        )
    if np.issubdtype(label.dtype, np.floating):
        if not np.all(np.isfinite(label)) or np.any(label != np.round(label)):
            raise SynapseDataError(f"{path}: 'label' has non-integer values; expected class indices 0..{num_classes - 1}.")
    lo, hi = (label.min(), label.max()) if label.size else (0, 0)
    if lo < 0 or hi > num_classes - 1:
        raise SynapseDataError(
            f"{path}: 'label' values span [{lo:g}, {hi:g}]; expected class indices 0..{num_classes - 1}."
        )


def read_synapse_npz(
    path: str | os.PathLike, keys: Sequence[str] = ("image", "label"), num_classes: int = SYNAPSE_NUM_CLASSES
) -> dict[str, np.ndarray]:
    """Read and validate one TransUNet training slice ``caseXXXX_sliceYYY.npz``.

    Args:
        path: the ``.npz`` file.
        keys: arrays to return; both ``image`` and ``label`` are always validated when present.
        num_classes: labels must lie in ``0..num_classes-1``.

    Returns:
        dict key -> 2D array ``(H, W)`` as stored.

    Example:
        >>> arrays = read_synapse_npz("train_npz/case0031_slice050.npz")  # doctest: +SKIP
        >>> arrays["image"].shape, arrays["label"].max()                 # doctest: +SKIP
        ((512, 512), 8.0)
    """
    try:
        with np.load(path, allow_pickle=False) as data:
            found = list(data.keys())
            missing = [k for k in ("image", *keys) if k not in found]
            if missing:
                raise SynapseDataError(f"{path}: missing key(s) {missing} (found {found}); expected 'image' and 'label'.")
            arrays = {k: np.asarray(data[k]) for k in found if k in ("image", "label", *keys)}
    except SynapseDataError:
        raise
    except FileNotFoundError as e:
        raise SynapseDataError(f"{path}: file not found.") from e
    except Exception as e:  # zip/pickle/format errors: name the file instead of a deep traceback
        raise SynapseDataError(f"{path}: cannot read as a .npz archive ({type(e).__name__}: {e}).") from e
    _check_image_label(path, arrays["image"], arrays.get("label"), ndim=2, num_classes=num_classes)
    return {k: arrays[k] for k in keys}


def read_synapse_h5(
    path: str | os.PathLike,
    keys: Sequence[str] = ("image", "label"),
    num_classes: int = SYNAPSE_NUM_CLASSES,
    require_label: bool = True,
) -> tuple[dict[str, np.ndarray], tuple[float, float, float] | None]:
    """Read and validate one TransUNet test volume ``caseXXXX.npy.h5`` (datasets ``(D, H, W)``).

    Args:
        path: the h5 file.
        keys: datasets to return, as stored ``(D, H, W)``.
        num_classes: labels must lie in ``0..num_classes-1``.
        require_label: raise when the ``label`` dataset is absent.

    Returns:
        (dict name -> array ``(D, H, W)``, spacing) where spacing is the file attribute ``spacing``
        (mm along H, W, D, written by :func:`~vmunet_monai.data.synapse_prepare.prepare_synapse`) or ``None``:
        TransUNet's published volumes carry no spacing.

    Example:
        >>> arrays, spacing = read_synapse_h5("test_vol_h5/case0001.npy.h5")  # doctest: +SKIP
    """
    import h5py

    wanted = set(keys) | {"image"} | ({"label"} if require_label else set())
    try:
        with h5py.File(path, "r") as f:
            found = list(f.keys())
            missing = sorted(k for k in wanted if k not in f)
            if missing:
                raise SynapseDataError(
                    f"{path}: missing h5 dataset(s) {missing} (found {found}); expected 'image' and 'label' of shape (D, H, W)."
                )
            arrays = {k: np.asarray(f[k][()]) for k in sorted(wanted | ({"label"} if "label" in f else set()))}
            spacing = f.attrs.get("spacing")
    except SynapseDataError:
        raise
    except FileNotFoundError as e:
        raise SynapseDataError(f"{path}: file not found.") from e
    except Exception as e:
        raise SynapseDataError(f"{path}: cannot read as an HDF5 volume ({type(e).__name__}: {e}).") from e
    _check_image_label(path, arrays["image"], arrays.get("label"), ndim=3, num_classes=num_classes)
    if spacing is not None:
        spacing = tuple(float(s) for s in np.asarray(spacing).ravel())
        if len(spacing) != 3 or not all(s > 0 for s in spacing):
            raise SynapseDataError(f"{path}: attribute 'spacing' is {spacing}; expected 3 positive numbers (mm).")
    return {k: arrays[k] for k in keys}, spacing


def read_case_list(path: str | os.PathLike) -> list[str]:
    """Read a TransUNet list file (``train.txt`` / ``test_vol.txt``): one id a line, blank lines ignored."""
    p = Path(path)
    if not p.is_file():
        raise SynapseDataError(f"{p}: list file not found.")
    ids = [line.strip() for line in p.read_text().splitlines() if line.strip()]
    if not ids:
        raise SynapseDataError(f"{p}: list file is empty.")
    return ids


def _list_or_glob(dataset_dir: Path, list_file: str | None, default_list: str, folder: str, pattern: str) -> list[str]:
    if list_file is None:
        candidate = dataset_dir / LIST_SUBDIR / default_list
        if candidate.is_file():
            list_file = str(candidate)
    if list_file is not None:
        return read_case_list(list_file)
    names = sorted(p.name for p in (dataset_dir / folder).glob(pattern))
    if not names:
        raise SynapseDataError(
            f"{dataset_dir}: no list file {LIST_SUBDIR}/{default_list} and no {folder}/{pattern} files found."
        )
    return [re.sub(r"(\.npy\.h5|\.npz)$", "", n) for n in names]


def synapse_train_datalist(
    dataset_dir: str | os.PathLike, list_file: str | None = None, limit: int | None = None
) -> list[dict[str, str]]:
    """Training data list ``[{"image": npz, "label": npz}]`` from ``lists_Synapse/train.txt``.

    Both keys point at the same npz file; the readers pick the array (``SynapseNpzReader(key=...)``).
    Without a list file, all ``train_npz/*.npz`` are used. Missing files raise naming the first few.

    Args:
        dataset_dir: the Synapse root (holding ``train_npz/`` and ``lists/lists_Synapse/``).
        list_file: optional explicit list file.
        limit: keep only the first ``limit`` entries (smoke tests).
    """
    root = Path(dataset_dir)
    ids = _list_or_glob(root, list_file, "train.txt", NPZ_SUBDIR, "*.npz")
    files = [root / NPZ_SUBDIR / f"{i}.npz" for i in ids]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise SynapseDataError(f"{len(missing)} training slice(s) listed but not found, e.g. {missing[:3]}.")
    items = [{"image": str(f), "label": str(f)} for f in files]
    return items[:limit] if limit else items


def synapse_test_datalist(
    dataset_dir: str | os.PathLike, list_file: str | None = None, limit: int | None = None, required: bool = True
) -> list[dict[str, str]]:
    """Test data list ``[{"image": h5, "label": h5, "case": id}]`` from ``lists_Synapse/test_vol.txt``.

    Without a list file, all ``test_vol_h5/*.npy.h5`` are used. With ``required=False`` a dataset without
    test volumes gives an empty list (training then skips its periodic 3D validation) instead of an error.
    """
    root = Path(dataset_dir)
    if not required and not (root / LIST_SUBDIR / "test_vol.txt").is_file() and not any((root / H5_SUBDIR).glob("*.npy.h5")):
        return []
    ids = _list_or_glob(root, list_file, "test_vol.txt", H5_SUBDIR, "*.npy.h5")
    files = [root / H5_SUBDIR / f"{i}.npy.h5" for i in ids]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise SynapseDataError(f"{len(missing)} test volume(s) listed but not found, e.g. {missing[:3]}.")
    items = [{"image": str(f), "label": str(f), "case": i} for f, i in zip(files, ids)]
    return items[:limit] if limit else items


def lps_affine(spacing: Sequence[float] | None) -> np.ndarray:
    """RAS-world affine of an array whose axes run towards patient Left, Posterior, Superior."""
    sx, sy, sz = (1.0, 1.0, 1.0) if spacing is None else (float(s) for s in spacing)
    return np.diag([-sx, -sy, sz, 1.0])


def _meta(shape: Sequence[int], affine: np.ndarray, **extra: Any) -> dict:
    meta = {
        MetaKeys.AFFINE: affine,
        MetaKeys.ORIGINAL_AFFINE: affine.copy(),
        MetaKeys.SPATIAL_SHAPE: np.asarray(shape),
        MetaKeys.SPACE: SpaceKeys.RAS,
        MetaKeys.ORIGINAL_CHANNEL_DIM: float("nan"),
    }
    meta.update(extra)
    return meta


def _single(data: Sequence[str | os.PathLike] | str | os.PathLike, reader: str) -> str:
    names = ensure_tuple(data)
    if len(names) != 1:
        raise SynapseDataError(f"{reader} reads one file at a time, got {len(names)}: {list(names)[:3]}.")
    return str(names[0])


class SynapseNpzReader(ImageReader):
    """MONAI ``ImageReader`` for TransUNet ``.npz`` slices: returns one array (``key``) as ``(H, W)``.

    Args:
        key: ``"image"`` or ``"label"``.
        num_classes: label range check.

    Example:
        >>> from monai.transforms import LoadImaged
        >>> load = [LoadImaged("image", reader=SynapseNpzReader("image")), LoadImaged("label", reader=SynapseNpzReader("label"))]
    """

    def __init__(self, key: str = "image", num_classes: int = SYNAPSE_NUM_CLASSES) -> None:
        super().__init__()
        self.key = key
        self.num_classes = num_classes

    def verify_suffix(self, filename: Sequence[str | os.PathLike] | str | os.PathLike) -> bool:
        return all(str(f).endswith(".npz") for f in ensure_tuple(filename))

    def read(self, data: Sequence[str | os.PathLike] | str | os.PathLike, **kwargs: Any) -> tuple[str, np.ndarray]:
        path = _single(data, type(self).__name__)
        return path, read_synapse_npz(path, keys=(self.key,), num_classes=self.num_classes)[self.key]

    def get_data(self, img: tuple[str, np.ndarray]) -> tuple[np.ndarray, dict]:
        _, arr = img
        return arr, _meta(arr.shape, np.eye(3))


def load_spacing_file(path: str | os.PathLike | None) -> dict[str, tuple[float, float, float]]:
    """Read ``{"case0001": [s_row, s_col, s_slice], ...}`` (mm), as written by
    :func:`~vmunet_monai.data.synapse_prepare.write_spacing_file`; ``None`` gives ``{}``."""
    if path is None:
        return {}
    import json

    p = Path(path)
    try:
        raw = json.loads(p.read_text())
        table = {str(k): tuple(float(v) for v in vals) for k, vals in raw.items()}
    except FileNotFoundError as e:
        raise SynapseDataError(f"{p}: spacing file not found.") from e
    except Exception as e:
        raise SynapseDataError(f"{p}: expected a JSON object case -> [3 spacings in mm] ({type(e).__name__}: {e}).") from e
    bad = [k for k, v in table.items() if len(v) != 3 or not all(x > 0 for x in v)]
    if bad:
        raise SynapseDataError(f"{p}: case(s) {bad[:3]} do not have 3 positive spacings.")
    return table


class SynapseH5Reader(ImageReader):
    """MONAI ``ImageReader`` for TransUNet ``.npy.h5`` volumes: returns ``key`` as ``(H, W, D)``.

    Slices move to the last axis so that ``SliceInferer(spatial_dim=2)`` slides over them. The affine is
    :func:`lps_affine` of the voxel spacing: the file's ``spacing`` attribute, else the case's entry of
    ``spacing_file``; the meta key ``spacing_known`` says whether one was found (TransUNet's published
    volumes carry none: their spacing is then 1 and HD95 is reported in voxels only).

    Args:
        key: ``"image"`` or ``"label"``.
        num_classes: label range check.
        require_label: also require (and validate) the ``label`` dataset when reading ``image``.
        spacing_file: optional JSON ``{case: [s_row, s_col, s_slice]}`` for volumes without the attribute.

    Example:
        >>> from monai.transforms import LoadImaged
        >>> load = LoadImaged("image", reader=SynapseH5Reader("image"), ensure_channel_first=True)
    """

    def __init__(
        self,
        key: str = "image",
        num_classes: int = SYNAPSE_NUM_CLASSES,
        require_label: bool = True,
        spacing_file: str | os.PathLike | None = None,
    ) -> None:
        super().__init__()
        self.key = key
        self.num_classes = num_classes
        self.require_label = require_label
        self.spacings = load_spacing_file(spacing_file)

    def verify_suffix(self, filename: Sequence[str | os.PathLike] | str | os.PathLike) -> bool:
        return all(str(f).endswith((".h5", ".hdf5")) for f in ensure_tuple(filename))

    def read(self, data: Sequence[str | os.PathLike] | str | os.PathLike, **kwargs: Any):
        path = _single(data, type(self).__name__)
        arrays, spacing = read_synapse_h5(
            path, keys=(self.key,), num_classes=self.num_classes, require_label=self.require_label or self.key == "label"
        )
        if spacing is None:
            spacing = self.spacings.get(re.sub(r"(\.npy)?\.h5$", "", Path(path).name))
        return path, arrays[self.key], spacing

    def get_data(self, img) -> tuple[np.ndarray, dict]:
        _, arr, spacing = img
        arr = np.ascontiguousarray(np.moveaxis(arr, 0, -1))  # (D, H, W) -> (H, W, D)
        return arr, _meta(arr.shape, lps_affine(spacing), spacing_known=spacing is not None)


class SimpleITKReader(ImageReader):
    """MONAI ``ImageReader`` on SimpleITK for CT files (NIfTI, NRRD, MHA, single DICOM) and DICOM series folders.

    MONAI's ``ITKReader`` needs the ``itk`` package; this reader gives the same result with SimpleITK,
    which the package already depends on: the array is ``(x, y, z)`` (ITK index order) and the affine is
    converted from ITK's LPS world to MONAI's RAS world, so ``SaveImaged`` writes a NIfTI in the right place.

    Args:
        series_id: DICOM series to read when a folder holds several (default: error listing them).

    Example:
        >>> from monai.transforms import LoadImaged
        >>> load = LoadImaged("image", reader=[SimpleITKReader(), "NibabelReader"])  # folder -> this reader
    """

    suffixes = (".nii", ".nii.gz", ".nrrd", ".mha", ".mhd", ".dcm")

    def __init__(self, series_id: str | None = None) -> None:
        super().__init__()
        self.series_id = series_id

    def verify_suffix(self, filename: Sequence[str | os.PathLike] | str | os.PathLike) -> bool:
        return all(os.path.isdir(f) or str(f).lower().endswith(self.suffixes) for f in ensure_tuple(filename))

    def read(self, data: Sequence[str | os.PathLike] | str | os.PathLike, **kwargs: Any):
        import SimpleITK as sitk

        path = _single(data, type(self).__name__)
        try:
            if os.path.isdir(path):
                ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(path) or ()
                if not ids:
                    raise SynapseDataError(f"{path}: folder holds no DICOM series.")
                if self.series_id is None and len(ids) > 1:
                    raise SynapseDataError(f"{path}: folder holds {len(ids)} DICOM series {list(ids)}; pass series_id.")
                sid = self.series_id or ids[0]
                if sid not in ids:
                    raise SynapseDataError(f"{path}: DICOM series {sid!r} not found; found {list(ids)}.")
                reader = sitk.ImageSeriesReader()
                reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(path, sid))
                image = reader.Execute()
            else:
                if not os.path.isfile(path):
                    raise SynapseDataError(f"{path}: file not found.")
                image = sitk.ReadImage(path)
        except SynapseDataError:
            raise
        except Exception as e:  # SimpleITK raises RuntimeError with a long C++ message
            first = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            raise SynapseDataError(f"{path}: SimpleITK cannot read it ({first}).") from e
        if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
            raise SynapseDataError(
                f"{path}: expected a 3D single-channel CT, got {image.GetDimension()}D with "
                f"{image.GetNumberOfComponentsPerPixel()} component(s)."
            )
        return path, image

    def get_data(self, img) -> tuple[np.ndarray, dict]:
        import SimpleITK as sitk

        path, image = img
        arr = np.ascontiguousarray(np.transpose(sitk.GetArrayFromImage(image), (2, 1, 0)))  # (z,y,x) -> (x,y,z)
        if not np.all(np.isfinite(arr)):
            raise SynapseDataError(f"{path}: image contains NaN or infinite values.")
        direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
        affine = np.eye(4)
        affine[:3, :3] = direction @ np.diag(image.GetSpacing())
        affine[:3, 3] = image.GetOrigin()
        affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine  # ITK LPS world -> RAS world
        return arr, _meta(arr.shape, affine, spacing=np.asarray(image.GetSpacing()))


def ct_image_readers() -> list[ImageReader]:
    """Readers for users' CT in ``LoadImaged``: NIfTI through nibabel (exact sform/qform), else SimpleITK.

    ``LoadImage`` tries the last registered reader first, so NibabelReader handles ``.nii``/``.nii.gz``
    and SimpleITK handles DICOM folders and the other formats.
    """
    from monai.data import NibabelReader

    return [SimpleITKReader(), NibabelReader()]
