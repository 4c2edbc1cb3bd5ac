"""Reading and validating ISIC skin-lesion images and masks.

This is the small validation layer shared by ``prepare-isic``, the datalist loader and the MONAI
``LoadImaged`` readers of the bundle. Every problem is reported as :class:`ISICDataError` whose message
starts with the offending file, so that a user never has to read a PIL or MONAI traceback.

Documented input handling:

- images: any 8-bit PIL mode. RGB is used as is, grayscale (``L``) and palette (``P``) images are
  converted to RGB, the alpha channel of ``RGBA``/``LA`` PNGs is dropped (ISIC images carry no useful
  transparency), CMYK/YCbCr are converted to RGB. 16-bit or float images (``I;16``, ``I``, ``F``) are
  rejected with a clear error (convert them to 8-bit first).
- masks: one lesion label, foreground = any non-zero value. 8-bit (0/255 or 0/1) and 16-bit
  (``I;16``, e.g. 0/65535) single-channel masks are accepted; RGB(A) masks are accepted when their
  colour channels are equal (a gray mask saved as RGB). A mask with more than two distinct values
  (JPEG-compressed or soft masks), or whose two values do not include 0, is rejected.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = [
    "ISICDataError",
    "IMAGE_SUFFIXES",
    "to_rgb",
    "to_binary_mask",
    "read_image_rgb",
    "read_mask_binary",
    "check_pair",
    "list_image_files",
]

#: file suffixes accepted as input images (case-insensitive)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")

_HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


class ISICDataError(ValueError):
    """A data file is missing, unreadable or inconsistent; the message names the file."""


def _open(path: str | Path) -> Image.Image:
    """Open and fully decode ``path`` (``Image.open`` alone does not detect truncated files)."""
    path = Path(path)
    if not path.is_file():
        raise ISICDataError(f"{path}: file not found")
    try:
        image = Image.open(path)
        image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ISICDataError(f"{path}: cannot read image ({type(err).__name__}: {err})") from None
    return image


def _name(image: Image.Image) -> str:
    return str(getattr(image, "filename", "") or "<in-memory image>")


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert a PIL image to 8-bit RGB following the documented rules (alpha dropped).

    Usable as ``PILReader(converter=to_rgb)`` / ``LoadImaged(..., reader="PILReader", converter=...)``.

    Raises:
        ISICDataError: for 16-bit or floating-point images.
    """
    if image.mode == "RGB":
        return image
    if image.mode in _HIGH_BIT_MODES:
        raise ISICDataError(
            f"{_name(image)}: {image.mode} (16-bit/float) images are not supported; convert to 8-bit RGB (JPEG/PNG)"
        )
    if image.mode == "P":
        image = image.convert("RGBA")
    return image.convert("RGB")  # RGBA/LA: alpha dropped; L: replicated; CMYK/YCbCr: converted


def _mask_array(image: Image.Image) -> np.ndarray:
    """Return the single-channel mask values of ``image`` (any bit depth) or raise."""
    name = _name(image)
    if image.mode == "P":
        image = image.convert("RGB")
    array = np.asarray(image)
    if array.ndim == 3:
        colours = array[..., :3] if array.shape[-1] >= 3 else array[..., :1]
        if not np.all(colours == colours[..., :1]):
            raise ISICDataError(f"{name}: colour mask (channels differ); expected a single-channel binary mask")
        array = colours[..., 0]
    values = np.unique(array)
    if values.size > 2:
        raise ISICDataError(
            f"{name}: not a binary mask ({values.size} distinct values, e.g. {values[:5].tolist()}...); "
            "expected background 0 and one lesion value such as 255 (JPEG-compressed or soft masks are not accepted)"
        )
    if values.size == 2 and values[0] != 0:
        raise ISICDataError(f"{name}: mask values {values.tolist()} do not include background 0")
    return array


def to_binary_mask(image: Image.Image) -> Image.Image:
    """Convert a mask (8-bit or 16-bit, see module doc) to an 8-bit ``L`` image with values 0/255.

    Usable as ``PILReader(converter=to_binary_mask)``.

    Raises:
        ISICDataError: for non-binary or colour masks.
    """
    array = _mask_array(image)
    return Image.fromarray(((array > 0) * 255).astype(np.uint8), mode="L")


def read_image_rgb(path: str | Path) -> np.ndarray:
    """Read an image file as an (H, W, 3) uint8 array (documented conversions applied)."""
    return np.asarray(to_rgb(_open(path)))


def read_mask_binary(path: str | Path) -> np.ndarray:
    """Read a mask file as an (H, W) bool array (lesion = True)."""
    return _mask_array(_open(path)) > 0


def check_pair(image_path: str | Path, mask_path: str | Path | None) -> tuple[int, int]:
    """Fully validate an image (and its mask when given); return the image size as (width, height).

    Raises:
        ISICDataError: unreadable files, unsupported modes, non-binary masks or a size mismatch.
    """
    image = _open(image_path)
    to_rgb(image)
    if mask_path is None:
        return image.size
    mask = _open(mask_path)
    _mask_array(mask)
    if mask.size != image.size:
        raise ISICDataError(
            f"{mask_path}: mask size {mask.size[0]}x{mask.size[1]} does not match image {image_path} "
            f"size {image.size[0]}x{image.size[1]} (width x height)"
        )
    return image.size


def list_image_files(folder: str | Path, suffixes: Sequence[str] = IMAGE_SUFFIXES) -> list[Path]:
    """Sorted image files directly inside ``folder``.

    Raises:
        ISICDataError: when the folder does not exist or holds no image file.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ISICDataError(f"{folder}: folder not found")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
    if not files:
        raise ISICDataError(f"{folder}: no image files ({', '.join(suffixes)}) in this folder")
    return files
