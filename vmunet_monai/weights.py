"""Pretrained weights: VMamba v0 ImageNet checkpoints, published VM-UNet checkpoints, conversion.

* :func:`load_vmamba_pretrained` reproduces the published ``VMUNet.load_from``: the encoder takes every
  checkpoint key whose name exists in the model, then the decoder takes the encoder stages mirrored
  (``layers.0 -> layers_up.3``, ``layers.1 -> layers_up.2``, ``layers.2 -> layers_up.1``,
  ``layers.3 -> layers_up.0``). For the paper model and VMamba-S v0 (446 keys) that loads 117 + 91 keys
  and leaves 14 random (the three ``upsample`` layers, ``final_up``, ``final_conv``).
* :func:`load_vmunet_checkpoint` loads a published VM-UNet checkpoint (``vmunet.`` prefix, possibly
  ``module.``, possibly nested under ``model_state_dict``) strictly.
* :func:`convert_weights` (``vmunet-monai convert-weights SRC DST``) writes a plain state_dict that MONAI's
  ``CheckpointLoader`` loads with ``weights_only=True``.

Every failure names the file and the offending keys or shapes instead of a bare ``load_state_dict`` traceback.
"""

from __future__ import annotations

import os
import pickle
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import torch
import torch.nn as nn

__all__ = [
    "LoadReport",
    "WeightsError",
    "load_checkpoint_file",
    "extract_state_dict",
    "map_vmamba_to_vmunet",
    "load_vmamba_pretrained",
    "load_vmunet_checkpoint",
    "convert_weights",
]

PathLike = Union[str, os.PathLike]
# Published decoder mirroring, tested in this order (the first rule whose substring matches wins).
DECODER_MIRROR = (("layers.0", "layers_up.3"), ("layers.1", "layers_up.2"), ("layers.2", "layers_up.1"), ("layers.3", "layers_up.0"))
# Containers under which training scripts nest the weights.
NESTED_KEYS = ("model_state_dict", "state_dict", "model", "network", "net")
PREFIXES = ("module.", "vmunet.", "_orig_mod.")


class WeightsError(ValueError):
    """A checkpoint that cannot be used, with the file and the keys or shapes at fault in the message."""


@dataclass
class LoadReport:
    """What a weight load did, key by key."""

    loaded_encoder: list[str] = field(default_factory=list)
    loaded_decoder: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # checkpoint keys that have no place in the model
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)  # (key, checkpoint shape, model shape)
    random: list[str] = field(default_factory=list)  # model keys that nothing loaded

    @property
    def loaded(self) -> list[str]:
        return self.loaded_encoder + self.loaded_decoder

    def summary(self) -> str:
        return (
            f"loaded {len(self.loaded)} tensors (encoder {len(self.loaded_encoder)}, decoder {len(self.loaded_decoder)}), "
            f"skipped {len(self.skipped)} checkpoint keys, {len(self.mismatched)} shape mismatches, "
            f"{len(self.random)} model keys left at their initialisation"
        )


def load_checkpoint_file(path: PathLike, trust_pickle: bool = False) -> Any:
    """``torch.load`` on CPU with ``weights_only=True`` and errors that name the file.

    Args:
        path: checkpoint file.
        trust_pickle: allow arbitrary pickled objects (``weights_only=False``). Only for files you trust; some
            published training checkpoints hold config objects that the safe loader refuses.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"checkpoint {path} does not exist or is not a file.")
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as e:
        if trust_pickle:
            raise WeightsError(f"{path} is not a readable PyTorch checkpoint: {e}") from e
        raise WeightsError(
            f"{path} could not be loaded with weights_only=True ({str(e).splitlines()[0]}). If it is a PyTorch "
            "checkpoint holding non-tensor objects and you trust its source, convert it once with "
            "`vmunet-monai convert-weights SRC DST --trust_pickle`."
        ) from e
    except Exception as e:  # zip/pickle/EOF errors of files that are not checkpoints at all
        raise WeightsError(f"{path} is not a PyTorch checkpoint ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}).") from e


def extract_state_dict(obj: Any, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Find the tensor dict in a checkpoint (nested under ``model``/``model_state_dict``/... or plain) and strip
    the ``module.``, ``vmunet.`` and ``_orig_mod.`` prefixes."""
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{source} holds a {type(obj).__name__}, not a dict of tensors.")
    while not _is_tensor_dict(obj):
        nested = next((obj[k] for k in NESTED_KEYS if k in obj and isinstance(obj[k], Mapping)), None)
        if nested is None:
            raise WeightsError(
                f"{source} has no state dict: top-level keys {sorted(map(str, obj))[:10]}; expected a dict of tensors "
                f"or one nested under one of {list(NESTED_KEYS)}."
            )
        obj = nested
    state = {}
    for key, value in obj.items():
        if not torch.is_tensor(value):
            continue
        changed = True
        while changed:
            changed = False
            for prefix in PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix) :], True
        state[key] = value
    return state


def _is_tensor_dict(obj: Mapping) -> bool:
    values = list(obj.values())
    return bool(values) and sum(torch.is_tensor(v) for v in values) >= max(1, len(values) // 2)


def _as_state_dict(checkpoint: PathLike | Mapping, trust_pickle: bool = False) -> tuple[dict[str, torch.Tensor], str]:
    if isinstance(checkpoint, Mapping):
        return extract_state_dict(checkpoint, "the given checkpoint dict"), "the given checkpoint dict"
    return extract_state_dict(load_checkpoint_file(checkpoint, trust_pickle), str(checkpoint)), str(checkpoint)


def map_vmamba_to_vmunet(
    pretrained: Mapping[str, torch.Tensor], model_keys: Mapping[str, Any]
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], list[str]]:
    """Published ``load_from`` as a pure function.

    Args:
        pretrained: VMamba v0 state dict (e.g. the 446 keys of VMamba-S).
        model_keys: the model's state dict (only its key names are used, as in the published loader).

    Returns:
        ``(encoder, decoder, skipped)``: the tensors the encoder pass and the decoder pass take (keyed by
        model key) and the checkpoint keys neither pass uses.
    """
    encoder = {k: v for k, v in pretrained.items() if k in model_keys}
    decoder, used_by_decoder = {}, set()
    for key, value in pretrained.items():
        rule = next(((old, new) for old, new in DECODER_MIRROR if old in key), None)
        if rule is None:
            continue  # keys without `layers.` (patch_embed, norm, head) are dropped by the decoder pass
        renamed = key.replace(*rule)
        if renamed in model_keys:
            decoder[renamed] = value
            used_by_decoder.add(key)
    skipped = [k for k in pretrained if k not in encoder and k not in used_by_decoder]
    return encoder, decoder, skipped


def _looks_like_vmamba_v2(keys) -> bool:
    """VMamba v2 renamed ``self_attention`` to ``op`` and ``ln_1`` to ``norm`` inside blocks."""
    return any(re.search(r"\.blocks\.\d+\.(op|norm)\.", k) for k in keys)


def load_vmamba_pretrained(
    model: nn.Module, checkpoint: PathLike | Mapping, strict_shapes: bool = True, trust_pickle: bool = False
) -> LoadReport:
    """Load VMamba v0 ImageNet weights into the encoder and mirror them into the decoder (published rule).

    Args:
        model: a :class:`~vmunet_monai.networks.nets.VMUNet`.
        checkpoint: path or dict; the weights may be nested under ``model`` (published VMamba files).
        strict_shapes: raise on a shape mismatch (the published loader fails there too); ``False`` skips such
            keys and lists them in the report.
        trust_pickle: see :func:`load_checkpoint_file`.

    Returns:
        a :class:`LoadReport` (117 encoder + 91 decoder keys, 14 random, for VMamba-S into the paper model).

    Example::

        >>> net = VMUNet()
        >>> report = load_vmamba_pretrained(net, "vmamba_small_e238_ema.pth")  # doctest: +SKIP
        >>> report.summary()  # doctest: +SKIP
        'loaded 208 tensors (encoder 117, decoder 91), skipped 238 checkpoint keys, 0 shape mismatches, 14 ...'
    """
    pretrained, source = _as_state_dict(checkpoint, trust_pickle)
    model_state = model.state_dict()
    encoder, decoder, skipped = map_vmamba_to_vmunet(pretrained, model_state)
    report = LoadReport(skipped=skipped)
    if not encoder and not decoder:
        hint = (
            " It looks like a VMamba v2 checkpoint (`op`/`norm` block keys), which the v0 VM-UNet cannot use; use the "
            "v0 release (vssmsmall_dp03_ckpt_epoch_238.pth / vmamba_small_e238_ema.pth)."
            if _looks_like_vmamba_v2(pretrained)
            else ""
        )
        raise WeightsError(f"no key of {source} matches VM-UNet (first keys: {list(pretrained)[:5]}).{hint}")
    for part, target in ((encoder, report.loaded_encoder), (decoder, report.loaded_decoder)):
        for key, value in list(part.items()):
            if tuple(value.shape) != tuple(model_state[key].shape):
                report.mismatched.append((key, tuple(value.shape), tuple(model_state[key].shape)))
                del part[key]
            else:
                target.append(key)
    if report.mismatched and strict_shapes:
        lines = "\n".join(f"  {k}: checkpoint {a} vs model {b}" for k, a, b in report.mismatched[:20])
        raise WeightsError(
            f"{len(report.mismatched)} tensors of {source} do not fit the model's shapes (wrong architecture?):\n{lines}"
        )
    with torch.no_grad():
        for key, value in {**encoder, **decoder}.items():
            model_state[key].copy_(value)
    loaded = set(encoder) | set(decoder)
    report.random = [k for k in model_state if k not in loaded]
    return report


def load_vmunet_checkpoint(model: nn.Module, checkpoint: PathLike | Mapping, trust_pickle: bool = False) -> LoadReport:
    """Strictly load a (published or our) VM-UNet checkpoint into ``model``.

    Accepts a plain state dict or one nested under ``model_state_dict``/``state_dict``/``model``, with keys
    prefixed ``vmunet.`` and/or ``module.`` (DataParallel/DDP) or not.

    Raises:
        WeightsError: listing missing keys, unexpected keys and shape mismatches.
    """
    state, source = _as_state_dict(checkpoint, trust_pickle)
    model_state = model.state_dict()
    missing = [k for k in model_state if k not in state]
    unexpected = [k for k in state if k not in model_state]
    mismatched = [(k, tuple(state[k].shape), tuple(v.shape)) for k, v in model_state.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or mismatched:
        parts = [f"{source} does not fit this VMUNet:"]
        if missing:
            parts.append(f"  {len(missing)} missing keys, e.g. {missing[:5]}")
        if unexpected:
            parts.append(f"  {len(unexpected)} unexpected keys, e.g. {unexpected[:5]}")
        for k, a, b in mismatched[:10]:
            parts.append(f"  shape of {k}: checkpoint {a} vs model {b}")
        if mismatched and any(k.startswith("final_conv") for k, _, _ in mismatched):
            parts.append("  (final_conv differs: the checkpoint was trained for another number of classes, out_channels)")
        raise WeightsError("\n".join(parts))
    model.load_state_dict(state, strict=True)
    return LoadReport(loaded_encoder=list(state))


def save_state_dict_atomic(state: Mapping[str, torch.Tensor], dst: PathLike) -> Path:
    """``torch.save`` to a temporary file in the same folder, then ``os.replace``: never a half-written file."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    os.close(fd)
    try:
        torch.save(dict(state), tmp)
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return dst


def convert_weights(
    src: str,
    dst: str,
    kind: str = "auto",
    out_channels: int = 1,
    in_channels: int = 3,
    half: bool = False,
    seed: int = 0,
    trust_pickle: bool = False,
) -> dict:
    """Convert a VMamba v0 ImageNet or VM-UNet checkpoint into a plain VMUNet state dict.

    The result loads with ``torch.load(dst, weights_only=True)`` and MONAI's ``CheckpointLoader``
    (``load_dict={"model": network}``), strictly.

    Args:
        src: the source checkpoint.
        dst: where to write the state dict.
        kind: ``"vmamba"`` (ImageNet encoder weights, mirrored into the decoder; the 14 remaining tensors are
            initialised with ``seed``), ``"vmunet"`` (a full VM-UNet checkpoint) or ``"auto"`` (decided by the keys).
        out_channels: classes of the network the weights are for (``vmamba`` only; ``vmunet`` uses the checkpoint's).
        in_channels: input channels of that network.
        half: store float16 tensors (half the size; they load into the float32 network).
        seed: seed for the tensors the ImageNet checkpoint does not provide.
        trust_pickle: see :func:`load_checkpoint_file`.

    Returns:
        a summary dict (kind, counts, dst).
    """
    from vmunet_monai.networks.nets import VMUNet

    state, source = _as_state_dict(src, trust_pickle)
    if kind == "auto":
        kind = "vmunet" if any(k.startswith("layers_up.") or k.startswith("final_conv") for k in state) else "vmamba"
    if kind == "vmunet":
        if "final_conv.weight" not in state:
            raise WeightsError(f"{source} has no final_conv.weight: not a full VM-UNet checkpoint (try --kind vmamba).")
        out_channels = int(state["final_conv.weight"].shape[0])
        model = VMUNet(in_channels=in_channels, out_channels=out_channels)
        report = load_vmunet_checkpoint(model, state)
    elif kind == "vmamba":
        torch.manual_seed(seed)
        model = VMUNet(in_channels=in_channels, out_channels=out_channels)
        report = load_vmamba_pretrained(model, state)
    else:
        raise ValueError(f"kind must be 'auto', 'vmamba' or 'vmunet', got {kind!r}.")
    out = {k: (v.half() if half and v.is_floating_point() else v).clone() for k, v in model.state_dict().items()}
    save_state_dict_atomic(out, dst)
    summary = {"kind": kind, "source": source, "dst": str(dst), "out_channels": out_channels, "report": report.summary()}
    print(f"{source} -> {dst} ({kind}): {report.summary()}")
    return summary
