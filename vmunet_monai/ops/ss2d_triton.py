"""Fused SS2D selective scan in Triton: four-direction cross-scan, scan and cross-merge in one pass.

The published SS2D (``forward_corev0``) materialises four flipped/transposed copies of the activation,
casts everything to fp32, runs ``selective_scan_fn`` and then flips/transposes the four outputs back
before summing them. Here the four scan orders are index arithmetic inside the kernel:

* direction 0: row-major,     time ``t`` reads pixel ``p = t``            (``l = h*W + w``)
* direction 1: column-major,  time ``t`` reads pixel ``p = (t % H)*W + t // H`` (``l = w*H + h``)
* direction 2: reversed row-major,    ``t -> L-1-t`` then as direction 0
* direction 3: reversed column-major, ``t -> L-1-t`` then as direction 1

so the (B, H, W, D) activation is read in place and every output is written straight back to its
pixel. The per-pixel projections (``x_proj`` and ``dt_proj``) do not depend on the scan order, so they
run once on the unpermuted layout as ordinary GEMMs (cuBLAS, autocast friendly): ``x_proj`` as one
(B*L, D) x (D, 4(R+2N)) GEMM, ``dt_proj`` as a (4, B*L, R) x (4, R, D) batched GEMM. The Triton kernels
cover softplus(delta + bias), the recurrence ``h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t``,
``y_t = <C_t, h_t> + D u_t`` and its exact backward (reverse-time scan with the forward states
recomputed from checkpoints). Each program owns (batch, direction, block of channels) and walks the
sequence. Two kernel families (``ss2d_triton_kernels``, ``ss2d_triton_seq_kernels``): tile kernels combine
``BLOCK_L`` steps at a time with ``tl.associative_scan``; sequential kernels step through time one step per
iteration with the state in registers and the loads software-pipelined. The defaults (measured on an H200,
docs/benchmarks.md) are the tile forward and the sequential backward.

The core is registered as the ``torch.library`` custom ops ``vmunet_monai::ss2d_scan_fwd`` /
``ss2d_scan_bwd`` so that ``torch.compile`` (fullgraph) and CUDA graphs see one opaque op per block.
Tile sizes come from :class:`ScanConfig` (environment variable ``VMUNET_TRITON_SCAN`` or
:func:`set_config`); ``scripts/gpu_triton_check.py`` measures the alternatives on a GPU.

Numerics: inputs may be fp32/fp16/bf16; the state, all scan arithmetic and all gradient accumulation
are fp32. The backward is deterministic: no atomics; quantities shared by several programs (dB, dC,
du across directions, dA, dD) are written as per-program partial buffers and summed in torch.

Memory: the forward saves the fp32 state only every ``seg_len`` time steps; the backward recomputes
the states inside a segment (into a small program-private scratch buffer) before walking it backwards.
``delta`` (4x the activation) is never saved: the backward rebuilds it with the small dt_proj GEMM.
Under autocast the gradient partials are 16-bit (summed in fp32).

Triton is imported lazily: importing this module never needs Triton or CUDA. Set
``TRITON_INTERPRET=1`` *before* the first use to run the kernels on CPU with the Triton interpreter
(slow; used by the tests).

Example::

    >>> y = ss2d_scan_triton(x, ss2d.x_proj_weight, ss2d.dt_projs_weight, ss2d.dt_projs_bias,
    ...                      ss2d.A_logs, ss2d.Ds)  # x: (B, H, W, D) after conv + SiLU
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, fields, replace
from functools import lru_cache
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor  # module scope: the custom-op schemas are inferred from string annotations

logger = logging.getLogger(__name__)

__all__ = [
    "ScanConfig",
    "get_config",
    "is_available",
    "kernel_info",
    "selective_scan_triton",
    "set_config",
    "ss2d_scan_triton",
    "ss2d_scan_triton_parts",
]


# --------------------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScanConfig:
    """Tile sizes of the Triton scan kernels.

    Args:
        fwd_block_l: time steps per forward tile (power of two).
        fwd_block_d: channels per forward program (power of two).
        fwd_warps: warps per forward program.
        bwd_block_l: time steps per backward tile (power of two); with ``bwd_seq``, per sub-segment, whose h_{t-1}
            the backward keeps in scratch. 0 = chosen per sequence length (:func:`config_for_length`).
        bwd_block_d: channels per backward program (power of two).
        bwd_warps: warps per backward program.
        seg_len: time steps between two fp32 states saved by the forward for the backward; a multiple
            of both block_l values. ``seg_len == bwd_block_l`` skips the backward's recomputation pass
            but saves a state per tile; any longer segment costs one recomputation pass (over all but
            the last ``bwd_block_l`` steps of the segment) and saves ``1 / seg_len`` of the states.
            0 = chosen per sequence length (:func:`config_for_length`).
        fwd_seq: 1 = forward kernel steps through time one step per iteration (``fwd_seq_kernel``: state in
            registers, no scan tree; ``fwd_block_l`` then only sets the state-saving granularity) instead of
            chunked ``tl.associative_scan`` (0); 2 = choose per call: the sequential kernel when it has at least
            4 warps per streaming multiprocessor (throughput: batch 32 at every VM-UNet stage), the chunked one
            otherwise (a batch-1 forward would walk 4096 steps in a handful of programs).
        fwd_seq_block_d: channels per program of the sequential forward (power of two).
        fwd_seq_warps: warps per program of the sequential forward.
        bwd_rev_flip: 1 = compute the backward's reverse-time scan as flip / forward scan / flip instead
            of ``tl.associative_scan(reverse=True)`` (a fallback for Triton builds with a faulty reverse scan).
        bwd_seq: 1 = backward kernel steps through time one step per iteration (``bwd_seq_kernel``: state in
            registers, ``bwd_block_l`` = steps per sub-segment whose states it keeps in scratch) instead of
            the tile kernel with scans over ``bwd_block_l`` steps.
        seq_stages: software-pipelining depth of the sequential kernels' time loops (``tl.range(num_stages=...)``:
            the loads of ``seq_stages - 1`` later steps are in flight while a step is computed); 1 = none.
        pre_softplus: 1 = the SS2D core computes ``softplus(delta + dt_bias)`` once, into the fp32 delta the
            kernels read (one elementwise kernel; its chain rule is another after the backward), instead of in
            the scan kernels at every time step of every pass (three passes in the backward). Same maths.
        upcast_16bit: 1 = under autocast, hand the kernels transient fp32 copies of the 16-bit activations
            (u, delta, B, C); their gradients still leave the kernels in the 16-bit dtype. The kernels compute in
            fp32 either way, so results are identical; 0 = let the kernels load 16-bit values themselves (1.9x
            slower on the H200: docs/benchmarks.md).
        bwd_maxnreg: with ``bwd_seq``, the most registers per thread of the sequential backward (Triton's ``maxnreg``;
            0 = as many as the compiler wants: 228, 8 one-warp programs per multiprocessor; 168 fits 12). -1 =
            chosen per sequence length (:func:`config_for_length`).
        fused_dt: with ``pre_softplus``, 1 = the backward of the dt projection and softplus is one Triton kernel
            (``dt_proj_triton_kernels``: reads the scan's ddelta once, writes ddts and partial sums of d dt_w /
            d dt_bias); 0 = the softplus-gradient kernel and batched GEMMs, for which cuBLAS picks slow kernels
            (R = 6..48 wide rows; 7 ms per bf16 and ~28 ms per fp32 VM-UNet training step on the H200). Same maths.
            With 16-bit activations the forward ``softplus(dts @ dt_w^T + bias)`` is one kernel too
            (``dt_softplus_fwd_kernel``; fp32 models keep the batched GEMM + softplus kernel, faster there).
        bwd_gluon: with ``bwd_seq``, 1 = run the sequential backward written in Gluon (``ss2d_gluon_seq_kernels``:
            explicit 4 x 4 register tiles, rows through rings of asynchronous copies read back as 16-byte vectors, no
            layout conversions) where it applies (a Triton whose Gluon compiles it, ``pre_softplus``, 16 states, 32
            channels and one warp per program, ``seq_stages >= 2``); the Triton kernel otherwise. Same maths.
        fwd_gluon: where the sequential forward runs (``fwd_seq``), 1 = run it in Gluon (``fwd_seq_gluon_kernel``: the
            backward's 4 x 4 register tiles and rings of asynchronous copies, ``fwd_seq_block_d / 32`` warps) where it
            applies (as ``bwd_gluon``, with ``fwd_seq_warps == fwd_seq_block_d / 32``); the Triton kernel otherwise.
        bwd_hist_smem: with the Gluon backward, 1 = keep a sub-segment's h_{t-1} history (``bwd_block_l`` x 2 KB per
            program) in shared memory instead of program-private global scratch read back through asynchronous copies
            (0); sub-segments longer than 32 steps keep it in global scratch. -1 = chosen per sequence length
            (:func:`config_for_length`).
    """

    # Defaults from the H200 sweeps (scripts/gpu_triton_check.py, bf16, 256x256 stage shapes, batch 32;
    # docs/benchmarks.md, fourth to seventh sessions). Forward: at batch 32 the sequential kernel (see
    # fwd_seq_block_d below; 16.8 ms per step of the 15 cores against 20.3 ms for the tile kernel), at batch 1
    # the tile kernel (16 steps x 16 channels, 4 warps; the sequential one walks 4096 steps in a handful of
    # programs: 9.4 ms instead of 2.9 ms batch-1 latency as a CUDA graph), chosen per call by ``fwd_seq=2``.
    # Backward: the sequential kernel, 32 channels per one-warp program, loads pipelined 4 deep: 92 ms per bf16
    # training step of the 15 SS2D cores (fifth session), against 138 ms for the best tile backward (8 x 32, 4 warps;
    # 255 registers with spills; fourth session); sub-segment and segment lengths and the register cap per sequence
    # length (tenth session: 76.8 instead of 83.9 ms for the 15 cores' forward + backward).
    fwd_block_l: int = 16
    fwd_block_d: int = 16
    fwd_warps: int = 4
    bwd_block_l: int = 0
    bwd_block_d: int = 32
    bwd_warps: int = 1
    # seg_len trades saved-state memory (1 / seg_len of all states) for a recomputation pass in the backward
    # (none when seg_len == bwd_block_l); chosen per sequence length with bwd_block_l and bwd_maxnreg: _BY_LENGTH
    seg_len: int = 0
    bwd_rev_flip: int = 0
    fwd_seq: int = 2
    upcast_16bit: int = 1
    bwd_seq: int = 1
    seq_stages: int = 4
    pre_softplus: int = 1
    # sequential forward: 64 channels and two warps per program (32 and one before): bf16 VM-UNet inference as a
    # CUDA graph 16.4 instead of 17.9 ms, fp32 23.4 instead of 25.2 ms (H200, docs/benchmarks.md, seventh session)
    fwd_seq_block_d: int = 64
    fwd_seq_warps: int = 2
    fused_dt: int = 1
    bwd_maxnreg: int = -1
    # the Gluon backward (eleventh session, H200, bf16, batch 32): 29.3 instead of 31.3 ms for the 15 cores' backward
    # kernels, faster at all four stage shapes; the network's bf16 training step as a CUDA graph 68.0 instead of 70.0 ms
    bwd_gluon: int = 1
    fwd_gluon: int = 1
    # the history in shared memory, with 8-step sub-segments from 1024 steps down (thirteenth session, H200, bf16,
    # batch 32): 1.90 / 0.94 / 0.41 instead of 2.26 / 1.08 / 0.46 ms per core's backward kernel at 32 x 32 / 16 x 16 /
    # 8 x 8; 16-step sub-segments at 64 x 64 (see _BY_LENGTH)
    bwd_hist_smem: int = -1

    def validate(self) -> "ScanConfig":
        for f in ("fwd_block_l", "fwd_block_d", "bwd_block_l", "bwd_block_d", "fwd_seq_block_d"):
            v = getattr(self, f)
            if (v < 1 and not (f == "bwd_block_l" and v == 0)) or v & (v - 1):
                raise ValueError(f"ScanConfig.{f} must be a power of two, got {v}")
        for f in ("fwd_block_l", "bwd_block_l"):
            if getattr(self, f) and self.seg_len % getattr(self, f):
                raise ValueError(f"ScanConfig.seg_len={self.seg_len} must be a multiple of {f}={getattr(self, f)}")
        if self.seg_len < 0 or self.bwd_maxnreg < -1:
            raise ValueError(f"ScanConfig.seg_len must be >= 0 and bwd_maxnreg >= -1, got {self.seg_len} / "
                             f"{self.bwd_maxnreg}")
        if self.bwd_hist_smem not in (-1, 0, 1):
            raise ValueError(f"ScanConfig.bwd_hist_smem must be -1, 0 or 1, got {self.bwd_hist_smem}")
        if self.seq_stages < 1:
            raise ValueError(f"ScanConfig.seq_stages must be >= 1, got {self.seq_stages}")
        return self


def _config_from_env() -> ScanConfig:
    """Read ``VMUNET_TRITON_SCAN`` (e.g. ``"fwd_block_l=64,bwd_block_d=32,seg_len=128"``)."""
    return replace(ScanConfig(), **parse_config_spec(os.environ.get("VMUNET_TRITON_SCAN", ""))).validate()


def parse_config_spec(spec: str) -> "dict[str, int]":
    """``ScanConfig`` fields from a ``"key=value,key=value"`` string (``VMUNET_TRITON_SCAN`` syntax; empty = none)."""
    names = {f.name for f in fields(ScanConfig)}
    kw = {}
    if not spec.strip():
        return kw
    for item in spec.strip().split(","):
        key, _, value = item.partition("=")
        key = key.strip()
        if key not in names:
            raise ValueError(f"VMUNET_TRITON_SCAN: unknown key {key!r}; known: {sorted(names)}")
        kw[key] = int(value)
    return kw


# bwd_block_l / seg_len / bwd_maxnreg / bwd_hist_smem per sequence length L = H * W where the configuration leaves them
# at 0 / 0 / -1 / -1: (smallest L, bwd_block_l, seg_len, bwd_maxnreg, bwd_hist_smem), first match. H200 sweeps of one
# core's training forward + backward at the four VM-UNet stage shapes, batch 32, bf16 (``python scripts/gpu_profile.py
# scan-configs``, docs/benchmarks.md, tenth session). Long sequences have too few programs to fill the GPU (768 one-warp programs at 64 x 64), so a
# register cap only adds instructions there, while 64-step sub-segments as long as the segments remove the
# recomputation pass (and save half the states of 32-step segments); from 1024 steps on there are enough programs for
# 12 rather than 8 per multiprocessor to help. 32-step segments save 4x the states of 128-step ones: the choice keeps
# the network's bf16 training peak under 6 GiB at batch 32.
# Thirteenth session (``.gpu`` sweeps of the Gluon backward, same shapes): the h_{t-1} history in shared memory, with
# 8-step sub-segments from 1024 steps down (16 KB: 12 programs per multiprocessor, as the register cap): 1.90 / 0.94 /
# 0.41 instead of 2.26 / 1.08 / 0.46 ms per core at 32 x 32 / 16 x 16 / 8 x 8; at 64 x 64 with 16-step sub-segments
# (32 KB; 768 programs, about 6 per multiprocessor) 4.31 instead of 4.47 ms for 64-step ones in global scratch (with
# the aligned B / C rows; 32-step segments would give 4.10 but save twice the states). The Triton backward, where the
# Gluon one does not run, takes the same sub-segments (its history stays in global scratch).
_BY_LENGTH = ((2048, 16, 64, 0, 1), (512, 8, 128, 168, 1), (128, 8, 32, 168, 1), (0, 8, 32, 0, 1))


def config_for_length(cfg: ScanConfig, length: int) -> ScanConfig:
    """``cfg`` with ``bwd_block_l == 0`` / ``seg_len == 0`` / ``bwd_maxnreg == -1`` / ``bwd_hist_smem == -1``
    replaced by the choice for sequences of ``length`` steps (``_BY_LENGTH``), kept consistent with the fields set
    explicitly (the segment stays a multiple of both tile lengths); explicit values are kept."""
    if cfg.bwd_block_l and cfg.seg_len and cfg.bwd_maxnreg >= 0 and cfg.bwd_hist_smem >= 0:
        return cfg
    _, block_l, seg_len, maxnreg, hist_smem = next(rule for rule in _BY_LENGTH if length >= rule[0])
    # powers of two: the largest one dividing an explicit seg_len, and the largest of the tile lengths divides it
    if not cfg.bwd_seq:
        block_l = min(block_l, 16)  # the tile backward scans a whole tile at once: keep its tiles short
    block_l = cfg.bwd_block_l or (min(block_l, cfg.seg_len & -cfg.seg_len) if cfg.seg_len else block_l)
    seg_len = cfg.seg_len or max(seg_len, block_l, cfg.fwd_block_l)
    return replace(cfg, bwd_block_l=block_l, seg_len=seg_len,
                   bwd_maxnreg=maxnreg if cfg.bwd_maxnreg < 0 else cfg.bwd_maxnreg,
                   bwd_hist_smem=hist_smem if cfg.bwd_hist_smem < 0 else cfg.bwd_hist_smem).validate()


_CONFIG: Optional[ScanConfig] = None


def get_config() -> ScanConfig:
    """Current kernel configuration (defaults, overridden by ``VMUNET_TRITON_SCAN`` and ``set_config``)."""
    global _CONFIG
    if _CONFIG is None:
        _CONFIG = _config_from_env()
    return _CONFIG


def set_config(config: Optional[ScanConfig] = None, **overrides: int) -> ScanConfig:
    """Replace the kernel configuration (used by benchmarks to sweep tile sizes).

    Args:
        config: a full configuration, or None to start from the current one.
        overrides: individual ``ScanConfig`` fields.
    """
    global _CONFIG
    base = config if config is not None else get_config()
    _CONFIG = replace(base, **overrides).validate()
    return _CONFIG


# --------------------------------------------------------------------------------------------------
# availability and lazy kernel construction
# --------------------------------------------------------------------------------------------------


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


_TRITON_IMPORTABLE: Optional[bool] = None


def _triton_importable() -> bool:
    """Whether ``import triton`` works (tried once; a plain global so torch.compile can read it)."""
    global _TRITON_IMPORTABLE
    if _TRITON_IMPORTABLE is None:
        try:
            import triton  # noqa: F401
            import triton.language  # noqa: F401

            _TRITON_IMPORTABLE = True
        except Exception:
            _TRITON_IMPORTABLE = False
    return _TRITON_IMPORTABLE


def is_available() -> bool:
    """True when the Triton backend can run on a GPU: CUDA present and Triton importable."""
    return torch.cuda.is_available() and _triton_importable()


def _can_run_on(t: torch.Tensor) -> bool:
    # the device check comes first so that probing a CPU tensor never imports triton
    return (t.is_cuda or (t.device.type == "cpu" and _interpreting())) and _triton_importable()


def _vectorise_interpreter_scan() -> None:
    """Make the Triton *interpreter*'s generic ``associative_scan`` step along the scan axis only.

    The interpreter (``TRITON_INTERPRET=1``, CPU tests) calls the combine function once per element in
    Python; calling it once per position along the scan axis on whole numpy slices gives the same
    sequential-order result about a hundred times faster. Only the interpreter is touched, and only
    when it has the expected internals; compiled GPU kernels are unaffected.
    """
    try:
        import numpy as np
        from triton.runtime import interpreter
    except Exception:
        return
    ops = getattr(interpreter, "ScanOps", None)
    if ops is None or getattr(ops, "_vmunet_vectorised", False) or not hasattr(ops, "generic_scan"):
        return

    def generic_scan(self, input):
        data = [arg.handle.data for arg in input]
        ndim = data[0].ndim
        axis = self.axis
        outs = [np.empty_like(d) for d in data]

        def at(i):
            return tuple(slice(None) if a != axis else slice(i, i + 1) for a in range(ndim))

        acc = tuple(self.to_tensor(np.ascontiguousarray(d[at(0)]), arg.dtype) for d, arg in zip(data, input))
        for i in range(data[0].shape[axis]):
            if i > 0:
                cur = tuple(self.to_tensor(np.ascontiguousarray(d[at(i)]), arg.dtype) for d, arg in zip(data, input))
                ret = self.combine_fn.fn(*acc, *cur)
                acc = ret if isinstance(ret, tuple) else (ret,)
            for o, a in zip(outs, acc):
                o[at(i)] = a.handle.data
        return [self.to_tensor(o, arg.dtype) for o, arg in zip(outs, input)]

    ops.generic_scan = generic_scan
    ops._vmunet_vectorised = True


@lru_cache(maxsize=None)
def _kernels():
    """Import the Triton kernels on first use (keeps ``import vmunet_monai`` free of Triton)."""
    if _interpreting():
        _vectorise_interpreter_scan()
    from . import dt_proj_triton_kernels as dt
    from . import ss2d_triton_kernels as kern
    from . import ss2d_triton_seq_kernels as seq

    return {"fwd": kern.fwd_kernel, "bwd": kern.bwd_kernel,
            "fwd_seq": seq.fwd_seq_kernel, "bwd_seq": seq.bwd_seq_kernel,
            "fwd_seq_gluon": _gluon_kernel("fwd_seq_gluon_kernel"), "bwd_seq_gluon": _gluon_kernel("bwd_seq_gluon_kernel"),
            "softplus": kern.softplus_delta_kernel, "softplus_grad": kern.softplus_grad_kernel,
            "dt_bwd": dt.dt_softplus_bwd_kernel, "dt_fwd": dt.dt_softplus_fwd_kernel}


def _gluon_kernel(name: str):
    """A Gluon sequential kernel (``ss2d_gluon_seq_kernels``), or None where it cannot run: Triton without Gluon, or
    the interpreter (which does not run Gluon)."""
    if _interpreting():
        return None
    try:
        from . import ss2d_gluon_seq_kernels as gseq
    except (ImportError, AttributeError):  # a Triton without (this version of) triton.experimental.gluon
        return None
    return getattr(gseq, name)


# why the Gluon backward failed to compile here, once it did ("" = it did not)
_GLUON_FAILED: "list[str]" = [""]


def _use_gluon_backward(cfg: ScanConfig, softplus: bool, has_bias: bool, cross: bool, n_pad: int,
                        fp32_inputs: bool = True) -> bool:
    """Whether the backward runs ``bwd_seq_gluon_kernel``: asked for, importable, compiled here (or not tried yet),
    and the path it covers. ``fp32_inputs``: the kernel reads fp32 rows (the default ``upcast_16bit`` copies of 16-bit
    activations, or an fp32 model); 16-bit B / C rows start at 2-byte offsets inside x_dbl, which asynchronous copies
    (4 bytes at least) cannot read."""
    return bool(cfg.bwd_seq and cfg.bwd_gluon and cross and not softplus and not has_bias and n_pad == 16
                and fp32_inputs
                and cfg.bwd_block_d == 32 and cfg.bwd_warps == 1 and cfg.seq_stages >= 2 and not _GLUON_FAILED[0]
                and _kernels()["bwd_seq_gluon"] is not None)


# why the Gluon forward failed to compile here, once it did ("" = it did not)
_GLUON_FWD_FAILED: "list[str]" = [""]


def _use_gluon_forward(cfg: ScanConfig, seq: bool, softplus: bool, has_bias: bool, cross: bool, n_pad: int,
                       fp32_inputs: bool = True) -> bool:
    """Whether the forward runs ``fwd_seq_gluon_kernel``: asked for, the sequential forward chosen, importable,
    compiled here (or not tried yet), and the path it covers (32 channels per warp, fp32 rows as the backward)."""
    return bool(seq and cfg.fwd_gluon and cross and not softplus and not has_bias and n_pad == 16 and fp32_inputs
                and cfg.fwd_seq_block_d % 32 == 0 and cfg.fwd_seq_warps == cfg.fwd_seq_block_d // 32
                and cfg.seq_stages >= 2 and not _GLUON_FWD_FAILED[0] and _kernels()["fwd_seq_gluon"] is not None)


def _aligned_rows(t: torch.Tensor) -> "tuple[torch.Tensor, int]":
    """(a view of ``t``'s storage with ``t``'s strides that starts at the 16-byte boundary at or before ``t``'s first
    element, ``t``'s offset from it in elements), or (``t``, 0) where there is no such view."""
    size = t.element_size()
    off = (t.data_ptr() % 16) // size
    if t.data_ptr() % size or off > t.storage_offset():
        return t, 0
    return t.as_strided(t.shape, t.stride(), t.storage_offset() - off), off


def _gluon_row_args(gluon: bool, b4: torch.Tensor, c4: torch.Tensor):
    """(B rows, C rows, extra keyword arguments) for a scan kernel launch. The Gluon kernels take B / C from a
    16-byte aligned base plus a constant element offset (``B_OFF`` / ``C_OFF``) and their strides as constants: in
    x_dbl (B, L, K, R + 2N) the rows start R or R + N elements into a row of R + 2N, which Triton's specialisation
    (16-byte aligned or not) cannot see, so without the constants the asynchronous copies would move 4 bytes each
    instead of 8 or 16."""
    if not gluon:
        return b4, c4, {}
    b_rows, b_off = _aligned_rows(b4)
    c_rows, c_off = _aligned_rows(c4)
    return b_rows, c_rows, {"B_OFF": b_off, "C_OFF": c_off}


def _all_fp32(*tensors: torch.Tensor) -> bool:
    return all(t.dtype == torch.float32 for t in tensors)


def _launch_or_fall_back(launch, kernel, use_gluon: bool, failed: "list[str]", what: str, fallback: str):
    """``launch(kernel)``. Gluon is experimental and its API moves between Triton releases: where the Gluon kernel does
    not compile (the error comes before any launch: nothing ran), say why in ``failed`` (which turns it off from now
    on), log it once and launch the Triton kernel ``_kernels()[fallback]`` instead."""
    try:
        return launch(kernel)
    except Exception as err:  # noqa: BLE001
        if not use_gluon:
            raise
        text = str(err).strip()
        failed[0] = f"{type(err).__name__}: {text.splitlines()[-1] if text else ''}"
        logger.warning("the Gluon scan %s does not compile with this Triton (%s); using the Triton kernel", what,
                       failed[0])
        return launch(_kernels()[fallback])


# --------------------------------------------------------------------------------------------------
# launchers on logical (b, k, l, d) / (b, k, l, n) views
# --------------------------------------------------------------------------------------------------


# the compiled kernels of the latest launches (register / spill counts for benchmarks)
_LAST_LAUNCH: dict = {}
# the names of the latest forward / backward kernels (which of the sequential kernels ran)
_LAST_FWD_KERNEL: "list[str]" = [""]
_LAST_BWD_KERNEL: "list[str]" = [""]


def kernel_info() -> dict:
    """Register and spill counts and shared memory bytes of the most recently launched forward / backward kernels (GPU
    only)."""
    info = {}
    for name, handle in _LAST_LAUNCH.items():
        info[name] = {k: getattr(handle, k, None) for k in ("n_regs", "n_spills")}
        info[name]["shared"] = getattr(getattr(handle, "metadata", None), "shared", None)
    return info


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


@lru_cache(maxsize=None)
def _multiprocessors(device: torch.device) -> int:
    if device.type != "cuda":
        return 1  # the interpreter
    return torch.cuda.get_device_properties(device).multi_processor_count


def _use_seq_forward(cfg: ScanConfig, n_bk: int, dm: int, device: torch.device) -> bool:
    """``fwd_seq`` 0 / 1, or for 2 whether the sequential forward has >= 4 warps per multiprocessor."""
    if cfg.fwd_seq != 2:
        return bool(cfg.fwd_seq)
    return n_bk * triton_cdiv(dm, cfg.fwd_seq_block_d) * cfg.fwd_seq_warps >= 4 * _multiprocessors(device)


def _scan_forward(u4, dl4, b4, c4, A, Dskip, bias, H, W, cross, softplus, save_states, cfg):
    """Run the forward kernel. All 4D tensors are views indexed (b, k, l, d|n)."""
    Bsz, K, L, DM = dl4.shape
    seq = _use_seq_forward(cfg, Bsz * K, DM, dl4.device)
    N = A.shape[1]
    use_gluon = _use_gluon_forward(cfg, seq, softplus, bias is not None, cross, _next_pow2(N),
                                   _all_fp32(u4, dl4, b4, c4))
    fwd_kernel = _kernels()["fwd_seq_gluon" if use_gluon else "fwd_seq" if seq else "fwd"]
    block_d, warps = (cfg.fwd_seq_block_d, cfg.fwd_seq_warps) if seq else (cfg.fwd_block_d, cfg.fwd_warps)
    y4_store = torch.empty((K, Bsz, L, DM), device=dl4.device, dtype=torch.float32)
    y4 = y4_store.permute(1, 0, 2, 3)
    cps = cfg.seg_len // cfg.fwd_block_l
    n_chunks = triton_cdiv(L, cfg.fwd_block_l)
    nslot = triton_cdiv(n_chunks, cps) + 1
    if save_states:
        states = torch.empty((Bsz * K, nslot, DM, N), device=dl4.device, dtype=torch.float32)
    else:
        states = torch.empty((1,), device=dl4.device, dtype=torch.float32)
    grid = (Bsz * K, triton_cdiv(DM, block_d))
    dummy = A

    def launch(kernel):
        _LAST_FWD_KERNEL[0] = kernel.fn.__name__
        b_rows, c_rows, gluon_kw = _gluon_row_args(kernel is _kernels()["fwd_seq_gluon"], b4, c4)
        return kernel[grid](
            u4, dl4, b_rows, c_rows, A,
            Dskip if Dskip is not None else dummy, bias if bias is not None else dummy,
            y4, states,
            L, H, W, DM, nslot,
            *u4.stride(), *dl4.stride(), *b4.stride(), *c4.stride(), *y4.stride(),
            K=K, N=N, NP=_next_pow2(N),
            BLOCK_L=cfg.fwd_block_l, BLOCK_D=block_d, CPS=cps,
            CROSS=cross, SOFTPLUS=softplus, HAS_D=Dskip is not None, HAS_BIAS=bias is not None,
            SAVE_STATES=save_states, num_warps=warps, **({"STAGES": cfg.seq_stages} if seq else {}), **gluon_kw,
        )

    _LAST_LAUNCH["fwd"] = _launch_or_fall_back(launch, fwd_kernel, use_gluon, _GLUON_FWD_FAILED, "forward", "fwd_seq")
    return y4_store, states


# the longest sub-segment whose history the Gluon backward keeps in shared memory (64 KB; longer ones stay in global
# scratch: 128 KB would leave one program per multiprocessor, 256 KB do not fit)
_HIST_SMEM_MAX_STEPS = 32


def _scan_backward(u4, dl4, b4, c4, A, Dskip, bias, dy4, states, du4, H, W, cross, softplus, cfg, fwd_cfg,
                   grad_dtype=None):
    """Run the backward kernel; returns (ddelta_raw, dB, dC, dA, dD) with dB/dC/dA/dD reduced.

    ``grad_dtype`` (default: the inputs' dtype) is the dtype of ddelta and of the dB/dC partials: the 16-bit
    activation dtype when the kernels read fp32 copies of 16-bit activations (``upcast_16bit``).
    """
    Bsz, K, L, DM = dl4.shape
    N = A.shape[1]
    NP = _next_pow2(N)
    use_gluon = _use_gluon_backward(cfg, softplus, bias is not None, cross, NP, _all_fp32(u4, dl4, b4, c4, dy4))
    bwd_kernel = _kernels()["bwd_seq_gluon" if use_gluon else "bwd_seq" if cfg.bwd_seq else "bwd"]
    if fwd_cfg.seg_len % cfg.bwd_block_l:
        raise ValueError(f"bwd_block_l={cfg.bwd_block_l} does not divide the saved seg_len={fwd_cfg.seg_len}")
    cps = fwd_cfg.seg_len // cfg.bwd_block_l
    nslot = states.shape[1]
    n_dblk = triton_cdiv(DM, cfg.bwd_block_d)
    dev = dl4.device
    grad_dtype = grad_dtype or dl4.dtype
    ddl_store = torch.empty((K, Bsz, L, DM), device=dev, dtype=grad_dtype)
    ddl4 = ddl_store.permute(1, 0, 2, 3)
    part_dtype = _partial_dtype(grad_dtype)
    db_part = torch.empty((n_dblk, Bsz, K, L, N), device=dev, dtype=part_dtype)
    dc_part = torch.empty((n_dblk, Bsz, K, L, N), device=dev, dtype=part_dtype)
    da_part = torch.empty((Bsz, K * DM, N), device=dev, dtype=torch.float32)
    dd_part = torch.empty((Bsz, K * DM), device=dev, dtype=torch.float32)
    seq_kw = {"STAGES": cfg.seq_stages} if cfg.bwd_seq else {"REV_FLIP": bool(cfg.bwd_rev_flip)}
    if cfg.bwd_seq and cfg.bwd_maxnreg:
        seq_kw["maxnreg"] = cfg.bwd_maxnreg
    grid = (Bsz * K, n_dblk)
    dummy = A  # stands in for absent D / bias (never read: HAS_D / HAS_BIAS are False then)

    def launch(kernel):
        _LAST_BWD_KERNEL[0] = kernel.fn.__name__
        gluon = kernel is _kernels()["bwd_seq_gluon"]
        hist_smem = bool(gluon and cfg.bwd_hist_smem == 1 and cfg.bwd_block_l <= _HIST_SMEM_MAX_STEPS)
        b_rows, c_rows, gluon_kw = _gluon_row_args(gluon, b4, c4)
        if gluon:
            gluon_kw["HIST_SMEM"] = hist_smem
        # program-private scratch: tile kernel, the states at the tile starts of a segment; sequential kernel, those
        # plus (unless it is in shared memory) the states of every step of one sub-segment
        per_program = (cps + (0 if hist_smem else cfg.bwd_block_l)) if cfg.bwd_seq else (cps if cps > 1 else 0)
        scratch = torch.empty((max(1, Bsz * K * n_dblk * per_program * cfg.bwd_block_d * NP),), device=dev,
                              dtype=torch.float32)
        return kernel[grid](
            u4, dl4, b_rows, c_rows, A, Dskip if Dskip is not None else dummy, bias if bias is not None else dummy,
            dy4, states, scratch, du4, ddl4, db_part, dc_part, da_part, dd_part,
            L, H, W, DM, nslot,
            *u4.stride(), *dl4.stride(), *b4.stride(), *c4.stride(), *dy4.stride(), *du4.stride(),
            *ddl4.stride(), *db_part.stride(), *dc_part.stride(),
            K=K, N=N, NP=NP,
            BLOCK_L=cfg.bwd_block_l, BLOCK_D=cfg.bwd_block_d, CPS=cps,
            CROSS=cross, SOFTPLUS=softplus, HAS_D=Dskip is not None, HAS_BIAS=bias is not None,
            num_warps=cfg.bwd_warps, **seq_kw, **gluon_kw,
        )

    _LAST_LAUNCH["bwd"] = _launch_or_fall_back(launch, bwd_kernel, use_gluon, _GLUON_FAILED, "backward", "bwd_seq")
    # deterministic reductions of the per-program partials (accumulated in fp32)
    db = db_part.sum(0, dtype=torch.float32) if n_dblk > 1 else db_part[0].float()
    dc = dc_part.sum(0, dtype=torch.float32) if n_dblk > 1 else dc_part[0].float()
    return ddl_store, db, dc, da_part.sum(0), dd_part.sum(0)


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _partial_dtype(activation_dtype: torch.dtype) -> torch.dtype:
    """dtype of the per-program gradient partials (summed in fp32 afterwards).

    With 16-bit activations (autocast) the gradients handed back are 16-bit anyway, so the partials
    are stored in that dtype: half the transient memory of the backward (about 0.6 GB less at the
    first VM-UNet stage, batch 32). fp32 activations keep fp32 partials (fp32 parity).
    """
    return activation_dtype if activation_dtype in (torch.float16, torch.bfloat16) else torch.float32


# --------------------------------------------------------------------------------------------------
# SS2D: fused cross-scan + scan + cross-merge
# --------------------------------------------------------------------------------------------------


def _cfg_from_list(cfg: "list[int]") -> ScanConfig:
    return ScanConfig(*cfg)


_CFG_FIELDS = tuple(f.name for f in fields(ScanConfig))


def _cfg_to_list(cfg: ScanConfig) -> "list[int]":
    return [getattr(cfg, name) for name in _CFG_FIELDS]


def _cfg_list_for(length: int) -> "list[int]":
    """The current configuration with its per-length fields chosen, as the list a forward records for its backward."""
    return _cfg_to_list(config_for_length(get_config(), length))


def _ss2d_delta(x_dbl, dt_w, r):
    """``delta = dts @ dt_w^T`` per direction, as (K, B, L, D), in x_dbl's dtype; also returns dts."""
    bsz, length, k, _ = x_dbl.shape
    dts = x_dbl[..., :r].permute(2, 0, 1, 3).reshape(k, bsz * length, r)
    delta = torch.bmm(dts, dt_w.to(dts.dtype).transpose(1, 2))  # (K, B*L, D)
    return dts, delta.view(k, bsz, length, -1)


def _ss2d_views(u, x_dbl, delta, r, n):
    """Logical (b, k, l, d|n) views of u (shared by the 4 directions), delta, B and C (no copies)."""
    k, bsz, length, dm = delta.shape
    u4 = u.unsqueeze(1).expand(bsz, k, length, dm)
    dl4 = delta.permute(1, 0, 2, 3)
    b4 = x_dbl[..., r:r + n].permute(0, 2, 1, 3)
    c4 = x_dbl[..., r + n:].permute(0, 2, 1, 3)
    return u4, dl4, b4, c4


def _ss2d_n_slots(length: int, cfg: ScanConfig) -> int:
    return triton_cdiv(triton_cdiv(length, cfg.fwd_block_l), cfg.seg_len // cfg.fwd_block_l) + 1


def _kernel_dtype(cfg: ScanConfig, *tensors: torch.Tensor):
    """The tensors as the kernels will read them: fp32 copies of 16-bit ones when ``upcast_16bit`` is set."""
    if not cfg.upcast_16bit:
        return tensors
    return tuple(t.float() if t.dtype in (torch.float16, torch.bfloat16) else t for t in tensors)


_SOFTPLUS_BLOCK = 1024


def _softplus_delta(raw: torch.Tensor, delta_bias: torch.Tensor) -> torch.Tensor:
    """softplus(raw + bias) as a new fp32 tensor; raw is a contiguous (K, B, L, D) delta, bias (K * D,)."""
    k, dm = raw.shape[0], raw.shape[-1]
    per_k = raw.numel() // k
    out = torch.empty(raw.shape, device=raw.device, dtype=torch.float32)
    _kernels()["softplus"][(triton_cdiv(per_k, _SOFTPLUS_BLOCK), k)](
        raw, delta_bias, out, per_k, dm, BLOCK=_SOFTPLUS_BLOCK)
    return out


def _softplus_grad_(grad: torch.Tensor, raw: torch.Tensor, delta_bias: torch.Tensor) -> torch.Tensor:
    """grad *= softplus'(raw + bias), in place; grad and raw are contiguous (K, B, L, D)."""
    k, dm = raw.shape[0], raw.shape[-1]
    per_k = raw.numel() // k
    _kernels()["softplus_grad"][(triton_cdiv(per_k, _SOFTPLUS_BLOCK), k)](
        grad, raw, delta_bias, per_k, dm, BLOCK=_SOFTPLUS_BLOCK)
    return grad


def _kernel_delta(cfg: ScanConfig, delta: torch.Tensor, delta_bias: torch.Tensor):
    """(delta as the scan kernels read it, the bias they add, whether they apply softplus)."""
    if cfg.pre_softplus:
        return _softplus_delta(delta, delta_bias), None, False
    return _kernel_dtype(cfg, delta)[0], delta_bias, True


def _fused_dt_forward(cfg: ScanConfig, x_dbl: Tensor) -> bool:
    """Whether delta = softplus(dts @ dt_w^T + bias) is one Triton kernel (``dt_softplus_fwd_kernel``): with
    ``fused_dt`` for 16-bit activations, whose small products run on the tensor cores (H200, bf16, batch 32: about
    1.65 instead of 2.47 ms per pass of the 15 cores; in IEEE fp32 the kernel is slower than cuBLAS at the deep stages,
    so fp32 models keep the batched GEMM + softplus kernel)."""
    return bool(_fused_dt(cfg) and x_dbl.dtype in (torch.float16, torch.bfloat16))


# (rows, channels, warps) per program of the fused dt forward (``.gpu`` sweep, twelfth session: 64 x 64 x 4 fastest at
# every stage shape but the last, where it is within 5% of the best)
_DT_FWD_TILE = (64, 64, 4)


def _dt_softplus_forward(x_dbl: Tensor, dt_w: Tensor, delta_bias: Tensor, r: int) -> Tensor:
    """softplus(dts @ dt_w^T + bias) as a new fp32 (K, B, L, D) tensor, in one kernel (``_fused_dt_forward``)."""
    bsz, length, k, c = x_dbl.shape
    dm = dt_w.shape[1]
    m = bsz * length
    block_m, block_d, warps = _DT_FWD_TILE
    out = torch.empty((k, bsz, length, dm), device=x_dbl.device, dtype=torch.float32)
    _kernels()["dt_fwd"][(triton_cdiv(m, block_m), k, triton_cdiv(dm, block_d))](
        x_dbl.contiguous(), _dt_weight(dt_w, x_dbl), delta_bias, out, m, dm, k * c, c, R=r,
        RP=max(16, _next_pow2(r)), BLOCK_M=block_m, BLOCK_D=block_d, PRECISION=_dot_precision(x_dbl.dtype),
        num_warps=warps)
    return out


def _fused_dt(cfg: ScanConfig) -> bool:
    return bool(cfg.pre_softplus and cfg.fused_dt)


# dt backward tiles: (rows per program, warps, channels per loop iteration) by (tl.dot precision, padded dt rank);
# others get _DT_TILES_WIDE. From ``python scripts/gpu_profile.py dt-tiles`` on the H200 (docs/benchmarks.md, eighth
# session): on TF32 tensor cores (16-bit models) 128 x 4 x 32 at every VM-UNet rank (at ranks 24 / 48 0.25 / 0.22
# ms per batch-32 call against 0.47 / 0.36 with 64 x 8); in IEEE fp32, 128 rows spill at ranks 24 / 48 (4.9 / 16 ms).
_DT_TILES = {("ieee", 16): (128, 4, 32), ("tf32", 16): (128, 4, 32), ("tf32", 32): (128, 4, 32),
             ("tf32", 64): (128, 4, 32)}
_DT_TILES_WIDE = (64, 8, 32)
# channels are split over more programs until (row blocks x directions x splits) reaches this count: at rank 48
# (8x8 pixels, 1536 channels) 0.22 instead of 0.36 ms per call
_DT_MIN_PROGRAMS = 1000


def _dt_tiles(r: int, m: int, dm: int, k: int, precision: str) -> "tuple[int, int, int, int, int, int]":
    """(padded rank, rows per program, warps, channels per iteration, channel splits, channels per split) of the
    dt backward for M = m rows, D = dm channels, k directions and ``tl.dot`` precision ``precision``."""
    rp = max(16, _next_pow2(r))
    block_m, warps, block_d = _DT_TILES.get((precision, rp), _DT_TILES_WIDE)
    n_dblk = triton_cdiv(dm, block_d)
    splits = min(n_dblk, max(1, triton_cdiv(_DT_MIN_PROGRAMS, triton_cdiv(m, block_m) * k)))
    d_per_split = triton_cdiv(n_dblk, splits) * block_d
    return rp, block_m, warps, block_d, triton_cdiv(dm, d_per_split), d_per_split


def _dt_weight(dt_w: Tensor, x_dbl: Tensor) -> Tensor:
    # in the activations' dtype, as the GEMM under autocast uses it
    return dt_w.to(x_dbl.dtype).contiguous()


def _dot_precision(activation_dtype: torch.dtype) -> str:
    """``tl.dot`` precision of the dt backward kernel. 16-bit activations: TF32 tensor cores. Their dts and dt_w are
    16-bit values, exact in TF32, so z = dts @ dt_w^T is exact up to fp32 summation; the gradient factor is rounded
    to TF32's 11 significant bits, finer than the bf16 ddelta the published path (mamba_ssm + autocast GEMMs) uses.
    fp32 activations: IEEE fp32 (fp32 parity)."""
    return "tf32" if activation_dtype in (torch.float16, torch.bfloat16) else "ieee"


def _dt_softplus_backward(ddelta: Tensor, x_dbl: Tensor, dt_w: Tensor, delta_bias: Tensor, r: int):
    """Backward of ``softplus(dts @ dt_w^T + bias)`` from ddelta (K, B, L, D): (an fp32 (B, L, K, c) buffer
    holding ddts in its first r columns, d dt_w (K, D, R) fp32, d dt_bias (K * D,) fp32)."""
    bsz, length, k, c = x_dbl.shape
    dm = dt_w.shape[1]
    m = bsz * length
    precision = _dot_precision(x_dbl.dtype)
    rp, block_m, warps, block_d, splits, d_per_split = _dt_tiles(r, m, dm, k, precision)
    n_blk = triton_cdiv(m, block_m)
    dx_dbl = torch.empty((bsz, length, k, c), device=x_dbl.device, dtype=torch.float32)
    # one split writes ddts straight into dx_dbl; several write partials over their channels, summed below
    ddts = dx_dbl if splits == 1 else torch.empty((splits, m, k, r), device=x_dbl.device, dtype=torch.float32)
    sdd = (0, k * c, c) if splits == 1 else ddts.stride()[:3]
    dw_part = torch.empty((n_blk, k, dm, r), device=x_dbl.device, dtype=torch.float32)
    db_part = torch.empty((n_blk, k, dm), device=x_dbl.device, dtype=torch.float32)
    _kernels()["dt_bwd"][(n_blk, k, splits)](
        ddelta, x_dbl.contiguous(), _dt_weight(dt_w, x_dbl), delta_bias, ddts, dw_part, db_part, m, dm, k * c, c,
        dm, m * dm, *sdd, d_per_split, R=r, RP=rp, BLOCK_M=block_m, BLOCK_D=block_d,
        PRECISION=precision, num_warps=warps)
    if splits > 1:
        dx_dbl[..., :r] = ddts.sum(0).view(bsz, length, k, r)
    return dx_dbl, dw_part.sum(0), db_part.sum(0).reshape(-1)


def _ss2d_fwd_parts(u, x_dbl, dt_w, A, Ds, delta_bias, H, W, cfg_list, save_states):
    """Forward of the fused core: (the four directions' outputs (K, B, L, D) fp32, saved states or a 1-element
    placeholder)."""
    cfg = _cfg_from_list(cfg_list)
    r = dt_w.shape[2]
    n = A.shape[1]
    if _fused_dt_forward(cfg, x_dbl):
        delta, bias, softplus = _dt_softplus_forward(x_dbl, dt_w, delta_bias, r), None, False
    else:
        delta, bias, softplus = _kernel_delta(cfg, _ss2d_delta(x_dbl, dt_w, r)[1], delta_bias)
    u, x_dbl = _kernel_dtype(cfg, u, x_dbl)
    u4, dl4, b4, c4 = _ss2d_views(u, x_dbl, delta, r, n)
    return _scan_forward(u4, dl4, b4, c4, A, Ds, bias, H, W, True, softplus, save_states, cfg)


def _ss2d_fwd_impl(u, x_dbl, dt_w, A, Ds, delta_bias, H, W, cfg_list, save_states):
    """Forward of the fused core: (y (B, L, D) fp32, saved states or a 1-element placeholder)."""
    y_parts, states = _ss2d_fwd_parts(u, x_dbl, dt_w, A, Ds, delta_bias, H, W, cfg_list, save_states)
    return y_parts.sum(0), states


def _ss2d_bwd_impl(dy, u, x_dbl, dt_w, A, Ds, delta_bias, states, H, W, cfg_list):
    """Backward of the fused core: grads of (u, x_dbl, dt_w, A, Ds, delta_bias)."""
    fwd_cfg = _cfg_from_list(cfg_list)
    cfg = config_for_length(get_config(), H * W)
    if fwd_cfg.seg_len % cfg.bwd_block_l:
        cfg = fwd_cfg  # the configuration changed since the forward: use the forward's tiles
    r = dt_w.shape[2]
    n = A.shape[1]
    bsz, length, k, _ = x_dbl.shape
    dm = u.shape[-1]
    # the backward's tiles may differ from the forward's, never where delta is made (same delta, same maths)
    cfg = replace(cfg, pre_softplus=fwd_cfg.pre_softplus, fused_dt=fwd_cfg.fused_dt)
    fused = _fused_dt(cfg)
    # delta is recomputed rather than saved: it is the largest tensor of the core (K x the activation)
    if _fused_dt_forward(cfg, x_dbl):  # then the dt backward is fused too: it needs neither dts nor the raw delta
        dts = delta_raw = None
        delta, bias, softplus = _dt_softplus_forward(x_dbl, dt_w, delta_bias, r), None, False
    else:
        dts, delta_raw = _ss2d_delta(x_dbl, dt_w, r)
        delta, bias, softplus = _kernel_delta(cfg, delta_raw, delta_bias)
    if not softplus:
        # the softplus' chain rule needs the raw delta after the kernels (the fused dt kernel recomputes it from
        # dts; the GEMM path recomputes it then): out of the backward's peak memory (~200 MB at the first
        # VM-UNet stage, batch 32, bf16)
        del delta_raw
    uk, xk = _kernel_dtype(cfg, u, x_dbl)
    u4, dl4, b4, c4 = _ss2d_views(uk, xk, delta, r, n)
    dy = dy.contiguous()
    dy4 = dy.unsqueeze(1).expand(bsz, k, length, dm)
    # gradients leave the kernel in the activations' dtype even when it read fp32 copies: 16-bit partials
    # and ddelta halve the backward's transient memory (they are summed in fp32)
    du_parts = torch.empty((k, bsz, length, dm), device=u.device, dtype=_partial_dtype(u.dtype))
    du4 = du_parts.permute(1, 0, 2, 3)
    ddelta, db, dc, dA, dD = _scan_backward(
        u4, dl4, b4, c4, A, Ds, bias, dy4, states, du4, H, W, True, softplus, cfg, fwd_cfg,
        grad_dtype=x_dbl.dtype)
    del delta, uk, xk
    # one reduction kernel: a 16-bit sum accumulates in fp32 and rounds once, like summing in fp32 and casting
    du = du_parts.sum(0) if du_parts.dtype == u.dtype else du_parts.sum(0, dtype=torch.float32).to(u.dtype)
    del du_parts
    if fused:  # ddelta is dLoss/d softplus(z): one kernel for softplus' and the dt projection's backward
        del dts
        dx_dbl, d_dt_w, d_bias = _dt_softplus_backward(ddelta, x_dbl, dt_w, delta_bias, r)
        del ddelta
        dx_dbl[..., r:r + n] = db.permute(0, 2, 1, 3)
        dx_dbl[..., r + n:] = dc.permute(0, 2, 1, 3)
        dx_dbl = dx_dbl.to(x_dbl.dtype)
    else:
        if not softplus:  # the kernels returned dLoss/d softplus(delta + bias)
            _softplus_grad_(ddelta, _ss2d_delta(x_dbl, dt_w, r)[1], delta_bias)
        d_bias = ddelta.sum((1, 2), dtype=torch.float32).reshape(-1)
        # dt projection backward (the GEMMs autograd would have run), in the activations' dtype
        ddelta_k = ddelta.view(k, bsz * length, dm)
        ddts = torch.bmm(ddelta_k, dt_w.to(ddelta_k.dtype))  # (K, B*L, R)
        d_dt_w = torch.bmm(ddelta_k.transpose(1, 2), dts)  # (K, D, R)
        dx_dbl = torch.cat([ddts.view(k, bsz, length, r).permute(1, 2, 0, 3).to(torch.float32),
                            db.permute(0, 2, 1, 3), dc.permute(0, 2, 1, 3)], dim=-1).to(x_dbl.dtype)
    return (du, dx_dbl, d_dt_w.to(dt_w.dtype), dA.to(A.dtype), dD.to(Ds.dtype),
            d_bias.to(delta_bias.dtype))


class _SS2DScanFunction(torch.autograd.Function):
    """Autograd wrapper of the fused core, used when ``torch.library.custom_op`` is unavailable.

    Inputs: u (B, L, D) pixel-major activation; x_dbl (B, L, K, R + 2N) per-pixel x_proj output (dts, B,
    C); dt_w (K, D, R); A (K*D, N) fp32 (already ``-exp(A_logs)``); Ds (K*D,); delta_bias (K*D,).
    Output: y (B, L, D) fp32, the sum over the four directions.
    """

    @staticmethod
    def forward(ctx, u, x_dbl, dt_w, A, Ds, delta_bias, H: int, W: int):
        cfg_list = _cfg_list_for(H * W)
        need_grad = any(ctx.needs_input_grad)
        y, states = _ss2d_fwd_impl(u, x_dbl, dt_w, A, Ds, delta_bias, H, W, cfg_list, need_grad)
        if need_grad:
            ctx.save_for_backward(u, x_dbl, dt_w, A, Ds, delta_bias, states)
            ctx.hw = (H, W)
            ctx.cfg_list = cfg_list
        return y

    @staticmethod
    def backward(ctx, dy):
        u, x_dbl, dt_w, A, Ds, delta_bias, states = ctx.saved_tensors
        grads = _ss2d_bwd_impl(dy, u, x_dbl, dt_w, A, Ds, delta_bias, states, *ctx.hw, ctx.cfg_list)
        return (*grads, None, None)


def _register_custom_ops():
    """Register the fused core as ``torch.library`` custom ops (opaque to torch.compile: no graph break,
    CUDA-graph friendly). Returns the forward op, or None on a torch without ``custom_op``."""
    custom_op = getattr(getattr(torch, "library", None), "custom_op", None)
    if custom_op is None:
        return None

    @custom_op("vmunet_monai::ss2d_scan_fwd", mutates_args=())
    def ss2d_scan_fwd(u: Tensor, x_dbl: Tensor, dt_w: Tensor, A: Tensor, Ds: Tensor, delta_bias: Tensor,
                      H: int, W: int, cfg: List[int], save_states: bool) -> Tuple[Tensor, Tensor]:
        return _ss2d_fwd_impl(u, x_dbl, dt_w, A, Ds, delta_bias, H, W, cfg, save_states)

    @ss2d_scan_fwd.register_fake
    def _(u, x_dbl, dt_w, A, Ds, delta_bias, H, W, cfg, save_states):
        bsz, length, dm = u.shape
        k = x_dbl.shape[2]
        y = u.new_empty((bsz, length, dm), dtype=torch.float32)
        if save_states:
            states = u.new_empty((bsz * k, _ss2d_n_slots(length, _cfg_from_list(cfg)), dm, A.shape[1]),
                                 dtype=torch.float32)
        else:
            states = u.new_empty((1,), dtype=torch.float32)
        return y, states

    @custom_op("vmunet_monai::ss2d_scan_bwd", mutates_args=())
    def ss2d_scan_bwd(dy: Tensor, u: Tensor, x_dbl: Tensor, dt_w: Tensor, A: Tensor, Ds: Tensor,
                      delta_bias: Tensor, states: Tensor, H: int, W: int,
                      cfg: List[int]) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        return _ss2d_bwd_impl(dy, u, x_dbl, dt_w, A, Ds, delta_bias, states, H, W, cfg)

    @ss2d_scan_bwd.register_fake
    def _(dy, u, x_dbl, dt_w, A, Ds, delta_bias, states, H, W, cfg):
        return (torch.empty_like(u), torch.empty_like(x_dbl), torch.empty_like(dt_w), torch.empty_like(A),
                torch.empty_like(Ds), torch.empty_like(delta_bias))

    def setup_context(ctx, inputs, output):
        u, x_dbl, dt_w, A, Ds, delta_bias, H, W, cfg, save_states = inputs
        ctx.save_for_backward(u, x_dbl, dt_w, A, Ds, delta_bias, output[1])
        ctx.hw = (H, W)
        ctx.cfg = cfg
        ctx.saved_states = save_states

    def backward(ctx, dy, _dstates):
        if not ctx.saved_states:
            raise RuntimeError("ss2d_scan_fwd ran without saving states (save_states=False) but a gradient "
                               "was requested")
        u, x_dbl, dt_w, A, Ds, delta_bias, states = ctx.saved_tensors
        grads = ss2d_scan_bwd(dy, u, x_dbl, dt_w, A, Ds, delta_bias, states, *ctx.hw, ctx.cfg)
        return (*grads, None, None, None, None)

    ss2d_scan_fwd.register_autograd(backward, setup_context=setup_context)
    return ss2d_scan_fwd


def _try_register_custom_ops():
    try:
        return _register_custom_ops()
    except Exception:  # an old or unusual torch: the autograd.Function path still works
        return None


# registered at import (defining the ops needs no triton); VMUNET_TRITON_CUSTOM_OP=0 selects the plain
# autograd.Function instead
_CUSTOM_OP = _try_register_custom_ops() if os.environ.get("VMUNET_TRITON_CUSTOM_OP", "1") != "0" else None


def _ss2d_inputs(x, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds):
    """Check the shapes; (u (B, L, D), x_dbl (B, L, K, R + 2N), A fp32, Ds fp32, dt bias fp32 (K * D,))."""
    if x.dim() != 4:
        raise ValueError(f"ss2d_scan_triton expects x of shape (B, H, W, D), got {tuple(x.shape)}")
    Bsz, H, W, DM = x.shape
    K, c_dbl, d_in = x_proj_weight.shape
    R = dt_projs_weight.shape[2]
    N = A_logs.shape[1]
    if K != 4 or d_in != DM or c_dbl != R + 2 * N:
        raise ValueError(
            f"shape mismatch: x {tuple(x.shape)}, x_proj_weight {tuple(x_proj_weight.shape)}, "
            f"dt_projs_weight {tuple(dt_projs_weight.shape)}, A_logs {tuple(A_logs.shape)}")
    if tuple(dt_projs_weight.shape) != (K, DM, R) or tuple(dt_projs_bias.shape) != (K, DM) \
            or tuple(A_logs.shape) != (K * DM, N) or tuple(Ds.shape) != (K * DM,):
        raise ValueError("dt_projs_weight/dt_projs_bias/A_logs/Ds shapes do not match (K, D, R)/(K, D)/(K*D, N)/(K*D,)")
    if not _can_run_on(x):
        raise RuntimeError("the triton scan backend needs a CUDA tensor and an importable triton "
                           "(or TRITON_INTERPRET=1 for CPU tensors)")
    L = H * W
    u = x.reshape(Bsz, L, DM)
    if not u.is_contiguous():
        u = u.contiguous()
    # per-pixel projections, once, on the unpermuted layout (the scan order does not matter here)
    w_all = x_proj_weight.reshape(K * c_dbl, DM)
    x_dbl = F.linear(u, w_all.to(u.dtype))
    x_dbl = x_dbl.view(Bsz, L, K, c_dbl)
    A = -torch.exp(A_logs.float()).contiguous()
    Dsf = Ds.float().contiguous()
    bias = dt_projs_bias.float().reshape(-1).contiguous()
    return u, x_dbl, A, Dsf, bias


def ss2d_scan_triton(
    x: torch.Tensor,
    x_proj_weight: torch.Tensor,
    dt_projs_weight: torch.Tensor,
    dt_projs_bias: torch.Tensor,
    A_logs: torch.Tensor,
    Ds: torch.Tensor,
) -> torch.Tensor:
    """SS2D core (cross-scan, x_proj, dt_proj, selective scan, cross-merge) with fused Triton scans.

    Args:
        x: (B, H, W, D) channels-last activation after the depthwise conv and SiLU; any float dtype.
        x_proj_weight: (K=4, R + 2N, D).
        dt_projs_weight: (4, D, R).
        dt_projs_bias: (4, D).
        A_logs: (4 * D, N); the scan uses ``A = -exp(A_logs)``.
        Ds: (4 * D,).

    Returns:
        y: (B, H, W, D) float32, the sum of the four directions' scan outputs (before ``out_norm``).
        Differentiable with respect to ``x`` and every parameter.

    Example::

        >>> x = torch.randn(2, 8, 8, 32, device="cuda")
        >>> y = ss2d_scan_triton(x, xw, dtw, dtb, A_logs, Ds)  # (2, 8, 8, 32) float32
    """
    u, x_dbl, A, Dsf, bias = _ss2d_inputs(x, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds)
    Bsz, H, W, DM = x.shape
    op = _CUSTOM_OP
    with torch.autocast(device_type=x.device.type, enabled=False):
        # the dt projection runs inside (in x_dbl's dtype, as autocast would) so that its large output
        # (K x the activation) is never saved for the backward
        if op is not None:
            need_grad = torch.is_grad_enabled() and any(
                t.requires_grad for t in (u, x_dbl, dt_projs_weight, A, Dsf, bias))
            cfg_list = _cfg_list_for(H * W)
            y, _ = op(u, x_dbl, dt_projs_weight, A, Dsf, bias, H, W, cfg_list, need_grad)
        else:
            y = _SS2DScanFunction.apply(u, x_dbl, dt_projs_weight, A, Dsf, bias, H, W)
    return y.view(Bsz, H, W, DM)


def ss2d_scan_triton_parts(
    x: torch.Tensor,
    x_proj_weight: torch.Tensor,
    dt_projs_weight: torch.Tensor,
    dt_projs_bias: torch.Tensor,
    A_logs: torch.Tensor,
    Ds: torch.Tensor,
) -> torch.Tensor:
    """:func:`ss2d_scan_triton` without the sum over the four directions, for inference (no gradient).

    Returns:
        (4, B, H, W, D) float32, one scan output per direction (already in pixel order); their sum (in direction
        order) is :func:`ss2d_scan_triton`'s output. ``layer_norm_gate_parts`` sums them while normalising, so
        the summed tensor is never written.
    """
    params = (x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds)
    if torch.is_grad_enabled() and any(t.requires_grad for t in (x, *params)):
        raise RuntimeError("ss2d_scan_triton_parts has no backward; use ss2d_scan_triton when gradients are needed")
    u, x_dbl, A, Dsf, bias = _ss2d_inputs(x, *params)
    Bsz, H, W, DM = x.shape
    with torch.autocast(device_type=x.device.type, enabled=False):
        cfg_list = _cfg_list_for(H * W)
        parts, _ = _ss2d_fwd_parts(u, x_dbl, dt_projs_weight, A, Dsf, bias, H, W, cfg_list, False)
    return parts.view(4, Bsz, H, W, DM)


# --------------------------------------------------------------------------------------------------
# generic selective scan (mamba_ssm argument layout) for the backend registry
# --------------------------------------------------------------------------------------------------


class _SelectiveScanFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, Bm, Cm, Dskip, delta_bias, softplus: bool, return_last_state: bool):
        Bsz, GD, L = u.shape
        cfg = config_for_length(get_config(), L)
        G = Bm.shape[1]
        DM = GD // G
        u4 = u.view(Bsz, G, DM, L).permute(0, 1, 3, 2)
        dl4 = delta.view(Bsz, G, DM, L).permute(0, 1, 3, 2)
        b4 = Bm.permute(0, 1, 3, 2)
        c4 = Cm.permute(0, 1, 3, 2)
        need_grad = any(ctx.needs_input_grad)
        # H = W = 1: unused without the cross-scan mapping, and compile-time constants of the kernels (a real
        # (1, L) would compile a kernel per sequence length)
        y_store, states = _scan_forward(u4, dl4, b4, c4, A, Dskip, delta_bias, 1, 1, False, softplus,
                                        need_grad or return_last_state, cfg)
        # y_store is (G, B, L, DM) -> (B, G*DM, L), in u's dtype as mamba_ssm returns it
        y = y_store.permute(1, 0, 3, 2).reshape(Bsz, GD, L).to(u.dtype)
        if need_grad:
            ctx.save_for_backward(u, delta, A, Bm, Cm, Dskip, delta_bias, states)
            ctx.flags = (softplus, Dskip is not None, delta_bias is not None)
            ctx.cfg = cfg
        if return_last_state:
            last = states[:, -1].reshape(Bsz, GD, A.shape[1])
            ctx.mark_non_differentiable(last)  # as in mamba_ssm: the last state is not differentiated
            return y, last
        return y

    @staticmethod
    def backward(ctx, dy, *rest):
        u, delta, A, Bm, Cm, Dskip, delta_bias, states = ctx.saved_tensors
        softplus, has_d, has_bias = ctx.flags
        Bsz, GD, L = u.shape
        cfg = config_for_length(get_config(), L)
        G = Bm.shape[1]
        DM = GD // G
        u4 = u.view(Bsz, G, DM, L).permute(0, 1, 3, 2)
        dl4 = delta.view(Bsz, G, DM, L).permute(0, 1, 3, 2)
        b4 = Bm.permute(0, 1, 3, 2)
        c4 = Cm.permute(0, 1, 3, 2)
        dy = dy.contiguous()
        dy4 = dy.view(Bsz, G, DM, L).permute(0, 1, 3, 2)
        du_store = torch.empty((Bsz, GD, L), device=u.device, dtype=torch.float32)
        du4 = du_store.view(Bsz, G, DM, L).permute(0, 1, 3, 2)
        ddl_store, db, dc, dA, dD = _scan_backward(
            u4, dl4, b4, c4, A, Dskip if has_d else None, delta_bias if has_bias else None,
            dy4, states, du4, 1, 1, False, softplus, cfg, ctx.cfg)
        ddelta = ddl_store.permute(1, 0, 3, 2).reshape(Bsz, GD, L)
        d_bias = ddelta.sum((0, 2), dtype=torch.float32).to(delta_bias.dtype) if has_bias else None
        return (du_store.to(u.dtype), ddelta.to(delta.dtype), dA.to(A.dtype),
                db.permute(0, 1, 3, 2).to(Bm.dtype), dc.permute(0, 1, 3, 2).to(Cm.dtype),
                dD.to(Dskip.dtype) if has_d else None, d_bias, None, None)


def selective_scan_triton(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor] = None,
    z: Optional[torch.Tensor] = None,
    delta_bias: Optional[torch.Tensor] = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
):
    """Selective scan with mamba_ssm's ``selective_scan_fn`` argument layout, on the Triton kernels.

    Args:
        u, delta: (B, G*D, L). A: (G*D, N) real. B, C: (B, G, N, L) or (B, N, L) (input-dependent).
        D: (G*D,) or None. z: unsupported (must be None). delta_bias: (G*D,) or None.
        delta_softplus: apply softplus to ``delta + delta_bias``.
        return_last_state: also return the final state (B, G*D, N).

    Returns:
        y (B, G*D, L) in u's dtype (computed in float32), and the fp32 last state (B, G*D, N) when requested.

    Example::

        >>> y = selective_scan_triton(u, delta, A, B, C, D, delta_bias=bias, delta_softplus=True)
    """
    if z is not None:
        raise NotImplementedError("the triton selective scan does not implement the z gate (VM-UNet passes z=None)")
    if A.is_complex():
        raise NotImplementedError("the triton selective scan supports real A only")
    if B.dim() == 3:
        B = B.unsqueeze(1)
    if C.dim() == 3:
        C = C.unsqueeze(1)
    if B.dim() != 4 or C.dim() != 4:
        raise NotImplementedError("the triton selective scan needs input-dependent B and C of shape (B, G, N, L)")
    if u.dim() != 3 or u.shape != delta.shape or u.shape[1] % B.shape[1] or A.shape[0] != u.shape[1]:
        raise ValueError(f"shape mismatch: u {tuple(u.shape)}, delta {tuple(delta.shape)}, A {tuple(A.shape)}, "
                         f"B {tuple(B.shape)}")
    if not _can_run_on(u):
        raise RuntimeError("the triton scan backend needs a CUDA tensor and an importable triton "
                           "(or TRITON_INTERPRET=1 for CPU tensors)")
    with torch.autocast(device_type=u.device.type, enabled=False):
        return _SelectiveScanFunction.apply(
            u.contiguous(), delta.contiguous(), A.float().contiguous(), B, C,
            D.float().contiguous() if D is not None else None,
            delta_bias.float().contiguous() if delta_bias is not None else None,
            bool(delta_softplus), bool(return_last_state))


# --------------------------------------------------------------------------------------------------
# registration in the selective-scan backend registry (runs when the registry imports this module)
# --------------------------------------------------------------------------------------------------


def _unavailable_reason(x: torch.Tensor) -> str:
    if not _triton_importable():
        return "triton is not importable (pip install 'vmunet-monai[triton]')"
    if x.device.type != "cuda":
        return (f"the triton backend runs on CUDA tensors (got a {x.device.type} tensor; "
                f"set TRITON_INTERPRET=1 before importing triton to run it slowly on CPU)")
    return "available"


def _register() -> None:
    from .backends import register_backend

    # the functions themselves, not "module:function" strings: resolving a string imports, which
    # torch.compile cannot trace (the whole-network compile of the triton backend needs this)
    register_backend(
        "triton",
        selective_scan_triton,
        is_available=_can_run_on,
        priority={"cuda": 30},
        description="fused Triton SS2D core (cross-scan + scan + cross-merge in one pass; fp32 state, "
                    "deterministic backward); also a plain selective scan",
        fused_core=ss2d_scan_triton,
        unavailable_reason=_unavailable_reason,
    )


_register()
