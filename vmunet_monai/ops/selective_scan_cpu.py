"""The ``cpu`` backend: a small C kernel for the selective scan, compiled on first use with the system C compiler.

Why: on a CPU the eager ``torch`` backend is bound by memory traffic and per-op dispatch (several passes over the
``(L, channels, N)`` state space per step block). A fused loop keeps each channel's 16 states in registers and reads
every input once, forward and backward, which is several times faster.

How:

* The C source below is compiled once per machine (``cc -O3 -march=native -ffast-math -fopenmp-simd``; ``-march``
  makes the build machine-specific, so the CPU flags are part of the cache key) into the user cache directory
  (``$VMUNET_MONAI_CACHE``, else ``$XDG_CACHE_HOME/vmunet_monai``, else ``~/.cache/vmunet_monai``), and loaded with
  :mod:`ctypes`. No compiler, or a failed build, makes the backend unavailable (``auto`` then uses ``torch``); the
  reason is logged once.
* Parallelism comes from Python threads, not OpenMP: ctypes releases the GIL during the call, so each of
  ``torch.get_num_threads()`` threads runs the kernel on its share of (batch, group, channel-chunk) tasks. This
  avoids a second OpenMP runtime next to PyTorch's.
* The backward recomputes each channel's states (kept in a per-channel buffer of ``L * N`` values) and runs the
  adjoint recurrence; the gradients of ``B``/``C`` are summed over a group's channels inside one task, so tasks of
  the backward are whole (batch, group) pairs.
* float32 runs in float32, float64 in float64 (exact against the reference to rounding error).
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch
import torch.nn.functional as F

__all__ = ["selective_scan_cpu", "cpu_kernel_available", "cpu_kernel_unavailable_reason", "kernel_library_path"]

logger = logging.getLogger("vmunet_monai")

_KERNEL_TEMPLATE = r"""
/* selective scan for one real type; generated from vmunet_monai/ops/selective_scan_cpu.py */
static inline REAL softplus_SUF(REAL x) { return x > (REAL)20 ? x : LOG1P(EXP(x)); }

static void transpose_SUF(const REAL* src, REAL* dst, long rows, long cols) {
    /* src (rows, cols) -> dst (cols, rows) */
    for (long r = 0; r < rows; ++r)
        for (long c = 0; c < cols; ++c) dst[c * rows + r] = src[r * cols + c];
}

/* forward: tasks enumerate (batch, group, channel chunk); channels go through in packs of LANES that share
   B_t and C_t, so the inner loops run across channels (vectorised) with no horizontal sums */
#define LANES 8
int scan_fwd_SUF(const REAL* u, const REAL* delta, const REAL* A, const REAL* Bm, const REAL* Cm,
                 const REAL* Dv, const REAL* bias, int softplus, REAL* y, REAL* last,
                 long batch, long G, long Dg, long N, long L, long nchunks, long task_begin, long task_end) {
    long chunk = (Dg + nchunks - 1) / nchunks;
    REAL* Bt = (REAL*)malloc(sizeof(REAL) * L * N);
    REAL* Ct = (REAL*)malloc(sizeof(REAL) * L * N);
    REAL* dtT = (REAL*)malloc(sizeof(REAL) * L * LANES);
    REAL* uT = (REAL*)malloc(sizeof(REAL) * L * LANES);
    REAL* yT = (REAL*)malloc(sizeof(REAL) * L * LANES);
    REAL* row_tmp = (REAL*)malloc(sizeof(REAL) * L);
    REAL* h = (REAL*)malloc(sizeof(REAL) * N * LANES);
    REAL* AT = (REAL*)malloc(sizeof(REAL) * N * LANES);
    if (!Bt || !Ct || !dtT || !uT || !yT || !row_tmp || !h || !AT) {
        free(Bt); free(Ct); free(dtT); free(uT); free(yT); free(row_tmp); free(h); free(AT);
        return 1;
    }
    long cur_bg = -1;
    for (long task = task_begin; task < task_end; ++task) {
        long bg = task / nchunks, ch = task % nchunks;
        long b = bg / G, g = bg % G;
        if (bg != cur_bg) {
            transpose_SUF(Bm + bg * N * L, Bt, N, L);
            transpose_SUF(Cm + bg * N * L, Ct, N, L);
            cur_bg = bg;
        }
        long d0 = ch * chunk, d1 = d0 + chunk < Dg ? d0 + chunk : Dg;
        for (long dp = d0; dp < d1; dp += LANES) {
            long nl = d1 - dp < LANES ? d1 - dp : LANES;
            REAL Dl[LANES];
            /* gather the pack time-major: dtT[t][l] = softplus(delta + bias), uT[t][l] = u; padding lanes are 0 */
            for (long l = 0; l < LANES; ++l) {
                if (l >= nl) {
                    for (long t = 0; t < L; ++t) { dtT[t * LANES + l] = 0; uT[t * LANES + l] = 0; }
                    for (long n = 0; n < N; ++n) AT[n * LANES + l] = 0;
                    Dl[l] = 0;
                    continue;
                }
                long c = g * Dg + dp + l;
                long row = b * G * Dg + c;
                const REAL* dc = delta + row * L;
                const REAL bc = bias ? bias[c] : (REAL)0;
                if (softplus) {
#pragma omp simd
                    for (long t = 0; t < L; ++t) row_tmp[t] = SOFTPLUS(dc[t] + bc);
                } else {
                    for (long t = 0; t < L; ++t) row_tmp[t] = dc[t] + bc;
                }
                for (long t = 0; t < L; ++t) { dtT[t * LANES + l] = row_tmp[t]; uT[t * LANES + l] = u[row * L + t]; }
                for (long n = 0; n < N; ++n) AT[n * LANES + l] = A[c * N + n];
                Dl[l] = Dv ? Dv[c] : (REAL)0;
            }
            for (long i = 0; i < N * LANES; ++i) h[i] = 0;
            for (long t = 0; t < L; ++t) {
                const REAL* dt = dtT + t * LANES;
                const REAL* ut = uT + t * LANES;
                REAL dtu[LANES], acc[LANES];
                for (long l = 0; l < LANES; ++l) { dtu[l] = dt[l] * ut[l]; acc[l] = 0; }
                const REAL* Bt_t = Bt + t * N;
                const REAL* Ct_t = Ct + t * N;
                for (long n = 0; n < N; ++n) {
                    const REAL bn = Bt_t[n], cn = Ct_t[n];
                    REAL* hn = h + n * LANES;
                    const REAL* an = AT + n * LANES;
#pragma omp simd
                    for (long l = 0; l < LANES; ++l) {
                        REAL hv = EXPFAST(dt[l] * an[l]) * hn[l] + dtu[l] * bn;
                        hn[l] = hv;
                        acc[l] += cn * hv;
                    }
                }
                for (long l = 0; l < LANES; ++l) yT[t * LANES + l] = acc[l] + Dl[l] * ut[l];
            }
            for (long l = 0; l < nl; ++l) {
                long row = b * G * Dg + g * Dg + dp + l;
                for (long t = 0; t < L; ++t) y[row * L + t] = yT[t * LANES + l];
                if (last)
                    for (long n = 0; n < N; ++n) last[row * N + n] = h[n * LANES + l];
            }
        }
    }
    free(Bt); free(Ct); free(dtT); free(uT); free(yT); free(row_tmp); free(h); free(AT);
    return 0;
}

/* backward: tasks enumerate (batch, group); B/C gradients sum over the group's channels inside a task */
int scan_bwd_SUF(const REAL* u, const REAL* delta, const REAL* A, const REAL* Bm, const REAL* Cm,
                 const REAL* Dv, const REAL* bias, int softplus, const REAL* gy,
                 REAL* gu, REAL* gdelta, REAL* gA, REAL* gB, REAL* gC, REAL* gD, REAL* gbias,
                 long batch, long G, long Dg, long N, long L, long task_begin, long task_end) {
    REAL* Bt = (REAL*)malloc(sizeof(REAL) * L * N);
    REAL* Ct = (REAL*)malloc(sizeof(REAL) * L * N);
    REAL* gBt = (REAL*)malloc(sizeof(REAL) * L * N);
    REAL* gCt = (REAL*)malloc(sizeof(REAL) * L * N);
    REAL* hs = (REAL*)malloc(sizeof(REAL) * (L + 1) * N);
    REAL* es = (REAL*)malloc(sizeof(REAL) * L * N);
    REAL* dts = (REAL*)malloc(sizeof(REAL) * L);
    REAL* Gv = (REAL*)malloc(sizeof(REAL) * N);
    REAL* gAl = (REAL*)malloc(sizeof(REAL) * N);
    int ok = Bt && Ct && gBt && gCt && hs && es && dts && Gv && gAl;
    for (long bg = task_begin; ok && bg < task_end; ++bg) {
        long b = bg / G, g = bg % G;
        transpose_SUF(Bm + bg * N * L, Bt, N, L);
        transpose_SUF(Cm + bg * N * L, Ct, N, L);
        memset(gBt, 0, sizeof(REAL) * L * N);
        memset(gCt, 0, sizeof(REAL) * L * N);
        for (long d = 0; d < Dg; ++d) {
            long c = g * Dg + d;
            long row = (b * G * Dg + c);
            const REAL* uc = u + row * L;
            const REAL* dc = delta + row * L;
            const REAL* gyc = gy + row * L;
            const REAL* Ac = A + c * N;
            REAL bc = bias ? bias[c] : (REAL)0;
            REAL Dc = Dv ? Dv[c] : (REAL)0;
            /* recompute the states: hs[t+1] = h_t, hs[0] = 0; es[t] = exp(dt_t A) */
            for (long n = 0; n < N; ++n) hs[n] = 0;
            for (long t = 0; t < L; ++t) {
                REAL dt = dc[t] + bc;
                if (softplus) dt = softplus_SUF(dt);
                dts[t] = dt;
                REAL dtu = dt * uc[t];
                const REAL* Bt_t = Bt + t * N;
                const REAL* hp = hs + t * N;
                REAL* hc = hs + (t + 1) * N;
                REAL* e = es + t * N;
#pragma omp simd
                for (long n = 0; n < N; ++n) {
                    REAL en = EXP(dt * Ac[n]);
                    e[n] = en;
                    hc[n] = en * hp[n] + dtu * Bt_t[n];
                }
            }
            /* adjoint: G_t = gy_t C_t + e_{t+1} G_{t+1}; Gv carries e_{t+1} G_{t+1} */
            for (long n = 0; n < N; ++n) { Gv[n] = 0; gAl[n] = 0; }
            REAL gDc = 0, gbc = 0;
            for (long t = L - 1; t >= 0; --t) {
                REAL gyt = gyc[t], dt = dts[t], ut = uc[t];
                REAL dtu = dt * ut;
                const REAL* Bt_t = Bt + t * N;
                const REAL* Ct_t = Ct + t * N;
                const REAL* hp = hs + t * N;
                const REAL* hc = hs + (t + 1) * N;
                const REAL* e = es + t * N;
                REAL* gBt_t = gBt + t * N;
                REAL* gCt_t = gCt + t * N;
                REAL g_dtu = 0, g_dtA = 0;
#pragma omp simd reduction(+ : g_dtu, g_dtA)
                for (long n = 0; n < N; ++n) {
                    REAL Gn = gyt * Ct_t[n] + Gv[n];
                    gCt_t[n] += gyt * hc[n];
                    gBt_t[n] += Gn * dtu;
                    g_dtu += Gn * Bt_t[n];
                    REAL w = Gn * hp[n] * e[n];
                    g_dtA += w * Ac[n];
                    gAl[n] += w * dt;
                    Gv[n] = e[n] * Gn;
                }
                REAL g_dt = g_dtu * ut + g_dtA;
                gu[row * L + t] = g_dtu * dt + gyt * Dc;
                gDc += gyt * ut;
                if (softplus) {
                    REAL x = dc[t] + bc;
                    if (!(x > (REAL)20)) { REAL z = EXP(x); g_dt = g_dt * z / (z + (REAL)1); }
                }
                gdelta[row * L + t] = g_dt;
                gbc += g_dt;
            }
            for (long n = 0; n < N; ++n) gA[row * N + n] = gAl[n];
            gD[row] = gDc;
            gbias[row] = gbc;
        }
        transpose_SUF(gBt, gB + bg * N * L, L, N);
        transpose_SUF(gCt, gC + bg * N * L, L, N);
    }
    free(Bt); free(Ct); free(gBt); free(gCt); free(hs); free(es); free(dts); free(Gv); free(gAl);
    return ok ? 0 : 1;
}
"""

_HEADER = r"""
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* float32 exp, branch-free so that it vectorises inline (Cephes expf reduction and polynomial, ~1 ulp on
   [-87, 88]; inputs are clamped there, so exp of anything below -87 gives 1.6e-38 instead of 0) */
static inline float fast_expf(float x) {
    x = x < -87.0f ? -87.0f : x;
    x = x > 88.0f ? 88.0f : x;
    float kf = floorf(x * 1.44269504088896341f + 0.5f);
    float r = x - kf * 0.693359375f;
    r = r + kf * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int bits = ((int)kf + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof(float));
    return p * scale;
}

/* float32 softplus(x) = log1p(exp(x)) (x for x > 20, as torch), branch-free: log(1 + y) from the exponent and
   an atanh series of the mantissa, then Kahan's log1p correction log(u) * y / (u - 1) */
static inline float fast_softplusf(float x) {
    float y = fast_expf(x < 20.0f ? x : 20.0f);
    float u = 1.0f + y;
    int bits;
    memcpy(&bits, &u, sizeof(float));
    int e = ((bits >> 23) & 0xff) - 127;
    int mbits = (bits & 0x7fffff) | 0x3f800000;
    float m;
    memcpy(&m, &mbits, sizeof(float));
    float big = m > 1.41421356f ? 1.0f : 0.0f;
    m = m * (1.0f - 0.5f * big);
    float ef = (float)e + big;
    float s = (m - 1.0f) / (m + 1.0f);
    float s2 = s * s;
    float lm = 2.0f * s * (1.0f + s2 * (0.333333333f + s2 * (0.2f + s2 * (0.142857143f + s2 * 0.111111111f))));
    float logu = ef * 0.693147180559945f + lm;
    float d = u - 1.0f;
    float res = d == 0.0f ? y : logu * (y / (d == 0.0f ? 1.0f : d));
    return x > 20.0f ? x : res;
}
"""
_FLAGS = ["-O3", "-march=native", "-ffast-math", "-fopenmp-simd", "-fPIC", "-shared", "-std=c99"]
_TYPES = {torch.float32: "f32", torch.float64: "f64"}


def _kernel_source() -> str:
    parts = [_HEADER]
    # float32 uses the inline approximations in the forward (vectorised); float64 (tests) stays with libm
    variants = (
        ("float", "f32", "expf", "log1pf", "fast_expf", "fast_softplusf"),
        ("double", "f64", "exp", "log1p", "exp", "softplus_f64"),
    )
    for real, suffix, exp, log1p, exp_fast, softplus in variants:
        text = _KERNEL_TEMPLATE.replace("EXPFAST", exp_fast).replace("SOFTPLUS", softplus)
        text = text.replace("REAL", real).replace("SUF", suffix).replace("EXP", exp).replace("LOG1P", log1p)
        parts.append(text)
    return "\n".join(parts)


def _cache_dir() -> Path:
    if os.environ.get("VMUNET_MONAI_CACHE"):
        return Path(os.environ["VMUNET_MONAI_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "vmunet_monai"


def _cpu_signature() -> str:
    """CPU model and flags: a ``-march=native`` build must not be reused on a different CPU."""
    try:
        text = Path("/proc/cpuinfo").read_text()
        lines = [ln for ln in text.splitlines() if ln.startswith(("model name", "flags"))][:2]
        return "\n".join(lines)
    except OSError:
        return platform.processor() + platform.machine()


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def kernel_library_path() -> Path:
    """Where the compiled kernel for this machine lives (it may not exist yet)."""
    source = _kernel_source()
    key = hashlib.sha256("\n".join([source, " ".join(_FLAGS), _cpu_signature()]).encode()).hexdigest()[:16]
    return _cache_dir() / f"selective_scan_cpu_{key}.so"


_build_lock = threading.Lock()


@functools.lru_cache(maxsize=None)
def _load_library() -> tuple[ctypes.CDLL | None, str | None]:
    """Compile (if needed) and load the kernel; ``(library, None)`` or ``(None, reason)``. Tried once."""
    if platform.system() == "Windows":
        return None, "the C kernel is built for POSIX systems only"
    path = kernel_library_path()
    with _build_lock:
        if not path.exists():
            compiler = _compiler()
            if compiler is None:
                return None, "no C compiler found (set CC, or install gcc)"
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
                    src = Path(tmp) / "selective_scan_cpu.c"
                    src.write_text(_kernel_source())
                    out = Path(tmp) / path.name
                    cmd = [compiler, *_FLAGS, str(src), "-o", str(out), "-lm"]
                    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
                    if proc.returncode != 0:
                        return None, f"compiling the C kernel failed ({' '.join(cmd)}): {proc.stderr.strip()[-500:]}"
                    os.replace(out, path)  # atomic: concurrent processes never load a half-written file
            except (OSError, subprocess.SubprocessError) as err:
                return None, f"building the C kernel in {path.parent} failed: {err}"
        try:
            lib = ctypes.CDLL(str(path))
        except OSError as err:
            return None, f"loading {path} failed: {err}"
    ptr, long_, int_ = ctypes.c_void_p, ctypes.c_long, ctypes.c_int
    for suffix in _TYPES.values():
        fwd = getattr(lib, f"scan_fwd_{suffix}")
        fwd.argtypes = [ptr] * 7 + [int_, ptr, ptr] + [long_] * 8
        fwd.restype = int_
        bwd = getattr(lib, f"scan_bwd_{suffix}")
        bwd.argtypes = [ptr] * 7 + [int_] + [ptr] * 8 + [long_] * 7
        bwd.restype = int_
    return lib, None


def cpu_kernel_unavailable_reason(x: torch.Tensor | None = None) -> str:
    """Why the ``cpu`` backend cannot run (on ``x``); ``"available"`` when it can."""
    if x is not None and x.device.type != "cpu":
        return f"the cpu backend runs on CPU tensors only (got a {x.device.type} tensor)"
    lib, reason = _load_library()
    if lib is None:
        return str(reason)
    return "available"


_logged_unavailable = False


def cpu_kernel_available(x: torch.Tensor | None = None) -> bool:
    """True when ``x`` (if given) is a CPU tensor and the C kernel builds/loads on this machine."""
    global _logged_unavailable
    if x is not None and x.device.type != "cpu":
        return False
    lib, reason = _load_library()
    if lib is None and not _logged_unavailable:
        _logged_unavailable = True
        logger.info("selective scan: the 'cpu' C kernel is not available (%s); using 'torch' on CPU", reason)
    return lib is not None


_pool: concurrent.futures.ThreadPoolExecutor | None = None
_pool_pid: int | None = None
_pool_lock = threading.Lock()


def _run_tasks(fn, args: list, num_tasks: int, extra: list = ()) -> None:
    """Run ``fn(*args, task_begin, task_end, *extra)`` over ``num_tasks`` tasks split across threads."""
    global _pool
    threads = max(1, min(torch.get_num_threads(), num_tasks))
    bounds = [num_tasks * i // threads for i in range(threads + 1)]
    ranges = [(bounds[i], bounds[i + 1]) for i in range(threads) if bounds[i + 1] > bounds[i]]
    if len(ranges) == 1:
        codes = [fn(*args, *ranges[0], *extra)]
    else:
        global _pool_pid
        with _pool_lock:
            # a forked child (e.g. a DataLoader worker) inherits the pool object but not its threads: make a new one
            if _pool is None or _pool_pid != os.getpid() or _pool._max_workers < len(ranges):  # noqa: SLF001
                _pool = concurrent.futures.ThreadPoolExecutor(max_workers=len(ranges), thread_name_prefix="vmunet-scan")
                _pool_pid = os.getpid()
            pool = _pool
        codes = list(pool.map(lambda r: fn(*args, *r, *extra), ranges))
    if any(codes):
        raise MemoryError("the cpu selective-scan kernel could not allocate its work buffers")


def _ptr(t: torch.Tensor | None):
    return None if t is None else ctypes.c_void_p(t.data_ptr())


class _CpuScan(torch.autograd.Function):
    """Whole selective scan (bias, softplus, D included) in the C kernel; ``z`` gating is applied outside."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, delta_bias, softplus, groups):  # type: ignore[override]
        lib, _ = _load_library()
        suffix = _TYPES[u.dtype]
        batch, channels, length = u.shape
        n_state = A.shape[1]
        d_group = channels // groups
        y = torch.empty_like(u)
        last = u.new_empty(batch, channels, n_state)
        # enough tasks for an even split across threads, chunks of at least 8 channels
        threads = max(1, torch.get_num_threads())
        nchunks = max(1, min(-(-d_group // 8), -(-4 * threads // (batch * groups))))
        args = [_ptr(u), _ptr(delta), _ptr(A), _ptr(B), _ptr(C), _ptr(D), _ptr(delta_bias), int(softplus)]
        args += [_ptr(y), _ptr(last), batch, groups, d_group, n_state, length, nchunks]
        _run_tasks(getattr(lib, f"scan_fwd_{suffix}"), args, batch * groups * nchunks)
        ctx.save_for_backward(u, delta, A, B, C, D, delta_bias)
        ctx.softplus, ctx.groups = bool(softplus), groups
        ctx.has_D, ctx.has_bias = D is not None, delta_bias is not None
        ctx.mark_non_differentiable(last)
        return y, last

    @staticmethod
    def backward(ctx, grad_y, grad_last):  # type: ignore[override]
        u, delta, A, B, C, D, delta_bias = ctx.saved_tensors
        lib, _ = _load_library()
        suffix = _TYPES[u.dtype]
        groups = ctx.groups
        batch, channels, length = u.shape
        n_state = A.shape[1]
        grad_y = grad_y.contiguous()
        g_u, g_delta = torch.empty_like(u), torch.empty_like(delta)
        g_A = u.new_empty(batch, channels, n_state)
        g_B, g_C = torch.empty_like(B), torch.empty_like(C)
        g_D, g_bias = u.new_empty(batch, channels), u.new_empty(batch, channels)
        args = [_ptr(u), _ptr(delta), _ptr(A), _ptr(B), _ptr(C), _ptr(D), _ptr(delta_bias), int(ctx.softplus)]
        args += [_ptr(grad_y), _ptr(g_u), _ptr(g_delta), _ptr(g_A), _ptr(g_B), _ptr(g_C), _ptr(g_D), _ptr(g_bias)]
        args += [batch, groups, channels // groups, n_state, length]
        _run_tasks(getattr(lib, f"scan_bwd_{suffix}"), args, batch * groups)
        return (
            g_u,
            g_delta,
            g_A.sum(0),
            g_B,
            g_C,
            g_D.sum(0) if ctx.has_D else None,
            g_bias.sum(0) if ctx.has_bias else None,
            None,
            None,
        )


def selective_scan_cpu(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Selective scan with the compiled C kernel (CPU tensors), with gradients for every tensor argument.

    Arguments and results as :func:`vmunet_monai.ops.selective_scan_fn`.

    Example::

        >>> u = torch.randn(1, 4, 7); A = -torch.rand(4, 2)
        >>> selective_scan_cpu(u, torch.rand(1, 4, 7), A, torch.randn(1, 2, 7), torch.randn(1, 2, 7)).shape
        torch.Size([1, 4, 7])
    """
    if u.numel() == 0 or A.shape[1] == 0:
        # nothing to scan (the kernel's work buffers would be empty): defer to the torch backend
        from vmunet_monai.ops.selective_scan_torch import selective_scan_torch

        return selective_scan_torch(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    if not cpu_kernel_available(u):
        raise RuntimeError(f"selective-scan backend 'cpu' is not available: {cpu_kernel_unavailable_reason(u)}.")
    dtype_in = u.dtype
    compute = torch.float64 if dtype_in == torch.float64 else torch.float32
    if B.dim() == 3:
        B = B.unsqueeze(1)
    if C.dim() == 3:
        C = C.unsqueeze(1)
    groups = B.shape[1]

    def prep(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.to(compute).contiguous()

    y, last = _CpuScan.apply(
        prep(u), prep(delta), prep(A), prep(B), prep(C), prep(D), prep(delta_bias), bool(delta_softplus), groups
    )
    if z is not None:
        y = y * F.silu(z.to(compute))
    y = y.to(dtype_in)
    return (y, last) if return_last_state else y
