#!/usr/bin/env python
"""GPU check of the fused Triton SS2D scan: parity, gradients, bf16, timings, tile sweep (one run).

Run on the CUDA machine from the repository root::

    python scripts/gpu_triton_check.py                 # everything, ~7-9 min (sweep stops at --budget s)
    python scripts/gpu_triton_check.py --quick         # parity + default-config timings only
    python scripts/gpu_triton_check.py --budget 300    # stop the tile sweep after 300 s in total

Sections (each case catches and prints its own exception, so one failure does not hide the rest):

1. fp32 parity of ``ss2d_scan_triton`` against a float64 plain-torch reference (flip/transpose cross-scan,
   einsums, sequential recurrence, flip/transpose merge): output and the gradients of x and of all five
   parameters, max-abs error relative to the reference's max-abs, on odd / non-square shapes and batch 1.
   Also the plain ``selective_scan_triton`` (mamba_ssm layout) and, for scale, the published fp32 path
   (torch einsums + mamba_ssm) against the same float64 reference.
2. bf16 autocast sanity: output/gradients finite and close to fp32.
3. Whole-network parity: VMUNet logits and input gradient with scan_backend triton vs torch (vs mamba_ssm).
4. Timings at the VM-UNet 256x256 stage shapes (B=32): triton vs the published path (cross-scan copies,
   einsums, fp32 cast, mamba_ssm or torch scan, cross-merge), forward (inference) and forward+backward,
   fp32 and bf16 autocast, with peak memory; the kernels reading 16-bit activations directly (``upcast_16bit=0``)
   in a column of their own.
5. Tile-size sweep (bf16, forward and backward separately), with registers/spills of each compiled kernel,
   and the recommended ``VMUNET_TRITON_SCAN`` setting.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vmunet_monai.ops import ss2d_triton as st  # noqa: E402

T0 = time.time()
RESULTS: dict = {"failures": []}
DEV = "cuda"  # "cpu" only for --cpu-smoke (Triton interpreter, tiny shapes: checks this script's own logic)


def sync() -> None:
    if DEV == "cuda":
        torch.cuda.synchronize()


def log(msg: str = "") -> None:
    print(msg, flush=True)


def guarded(name: str):
    """Decorator-less helper: run fn, print the exception with a short traceback, keep going."""

    def run(fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as err:  # keep going: one failing case must not hide the others
            RESULTS["failures"].append(f"{name}: {type(err).__name__}: {err}")
            log(f"  !! {name}: {type(err).__name__}: {err}")
            log("     " + "     ".join(traceback.format_exc().splitlines(True)[-6:]))
            try:
                sync()
            except Exception:
                pass
            return None

    return run


# ---------------------------------------------------------------------------------------------------
# reference and published paths
# ---------------------------------------------------------------------------------------------------


def cross_scan_ref(x):  # (B, D, H, W) -> (B, 4, D, L)
    b, d, h, w = x.shape
    x0 = x.reshape(b, d, h * w)
    x1 = x.transpose(2, 3).reshape(b, d, h * w)
    return torch.stack([x0, x1, x0.flip(-1), x1.flip(-1)], dim=1)


def cross_merge_ref(out, h, w):  # (B, 4, D, L) -> (B, H, W, D)
    b, _, d, length = out.shape
    inv = out[:, 2:].flip(-1)
    wh = out[:, 1].reshape(b, d, w, h).transpose(2, 3).reshape(b, d, length)
    invwh = inv[:, 1].reshape(b, d, w, h).transpose(2, 3).reshape(b, d, length)
    y = out[:, 0] + inv[:, 0] + wh + invwh
    return y.transpose(1, 2).reshape(b, h, w, d)


def scan_ref(u, delta, A, Bs, Cs, Ds, bias, softplus=True):
    g = Bs.shape[1]
    dm = u.shape[1] // g
    delta = delta + bias[None, :, None] if bias is not None else delta
    delta = F.softplus(delta) if softplus else delta
    bx = Bs.repeat_interleave(dm, dim=1)
    cx = Cs.repeat_interleave(dm, dim=1)
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for t in range(u.shape[2]):
        h = torch.exp(delta[:, :, t, None] * A) * h + (delta[:, :, t] * u[:, :, t])[..., None] * bx[..., t]
        ys.append((h * cx[..., t]).sum(-1))
    y = torch.stack(ys, -1)
    return (y + Ds[None, :, None] * u) if Ds is not None else y


def mamba_scan_fn():
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

        return selective_scan_fn
    except Exception:
        return None


def torch_scan_fn():
    try:
        from vmunet_monai.ops import selective_scan_fn

        return lambda *a, **k: selective_scan_fn(*a, backend="torch", **k)
    except Exception:
        return None


def ss2d_published(x, xw, dtw, dtb, A_logs, Ds, scan, dtype=torch.float32):
    """forward_corev0: x (B, H, W, D) -> (B, H, W, D); ``scan`` has mamba_ssm's argument layout."""
    b, h, w, d = x.shape
    length = h * w
    r = dtw.shape[2]
    n = A_logs.shape[1]
    xs = cross_scan_ref(x.permute(0, 3, 1, 2))
    x_dbl = torch.einsum("bkdl,kcd->bkcl", xs, xw)
    dts, bs, cs = torch.split(x_dbl, [r, n, n], dim=2)
    dts = torch.einsum("bkrl,kdr->bkdl", dts, dtw)
    if scan is None:
        out = scan_ref(xs.to(dtype).reshape(b, -1, length), dts.to(dtype).reshape(b, -1, length),
                       -torch.exp(A_logs.to(dtype)), bs.to(dtype), cs.to(dtype), Ds.to(dtype),
                       dtb.to(dtype).reshape(-1))
    else:
        out = scan(xs.to(dtype).reshape(b, -1, length), dts.to(dtype).reshape(b, -1, length),
                   -torch.exp(A_logs.to(dtype)), bs.to(dtype).contiguous(), cs.to(dtype).contiguous(), Ds.to(dtype),
                   delta_bias=dtb.to(dtype).reshape(-1), delta_softplus=True)
    return cross_merge_ref(out.view(b, 4, d, length), h, w)


def make_params(d, n, r, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    k = 4
    xw = (torch.rand(k, r + 2 * n, d, generator=g) * 2 - 1) / d ** 0.5
    dtw = (torch.rand(k, d, r, generator=g) * 2 - 1) * r ** -0.5
    lo, hi = math.log(1e-3), math.log(0.1)
    dt = torch.exp(torch.rand(k, d, generator=g) * (hi - lo) + lo).clamp(min=1e-4)
    dtb = dt + torch.log(-torch.expm1(-dt))
    A_logs = torch.log(torch.arange(1, n + 1, dtype=torch.float32)).repeat(k * d, 1) + 0.1 * torch.randn(
        k * d, n, generator=g)
    Ds = 1 + 0.1 * torch.randn(k * d, generator=g)
    return [p.to(device).requires_grad_() for p in (xw, dtw, dtb, A_logs, Ds)]


def rel(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()


NAMES = ["y", "dx", "dx_proj", "ddt_w", "ddt_b", "dA_logs", "dDs"]


# ---------------------------------------------------------------------------------------------------
# 1. parity
# ---------------------------------------------------------------------------------------------------


def parity_case(b, h, w, d, n, r, tol=1e-4):
    dev = DEV
    torch.manual_seed(0)
    params = make_params(d, n, r, dev)
    x = torch.randn(b, h, w, d, device=dev, requires_grad=True)
    go = torch.randn(b, h, w, d, device=dev)
    y = st.ss2d_scan_triton(x, *params)
    got = [y, *torch.autograd.grad(y, [x, *params], go)]
    params64 = [p.detach().double().requires_grad_() for p in params]
    x64 = x.detach().double().requires_grad_()
    y64 = ss2d_published(x64, *params64, scan=None, dtype=torch.float64)
    want = [y64, *torch.autograd.grad(y64, [x64, *params64], go.double())]
    errs = [rel(a, c) for a, c in zip(got, want)]
    pub = ""
    mscan = mamba_scan_fn()
    if mscan is not None:
        yp = ss2d_published(x, *params, scan=mscan)
        gp = [yp, *torch.autograd.grad(yp, [x, *params], go)]
        pub = " | mamba_ssm fp32 path max err %.1e" % max(rel(a, c) for a, c in zip(gp, want))
    ok = max(errs) < tol
    log(f"  {'ok ' if ok else 'BAD'} B={b} H={h} W={w} D={d} N={n} R={r}: " +
        " ".join(f"{nm}={e:.1e}" for nm, e in zip(NAMES, errs)) + pub)
    if not ok:
        RESULTS["failures"].append(f"parity B={b} H={h} W={w} D={d}: max rel err {max(errs):.2e} >= {tol}")
    return errs


def parity_generic():
    dev = DEV
    torch.manual_seed(1)
    b, g, dm, n, length = GEN_SHAPE
    u = torch.randn(b, g * dm, length, device=dev, requires_grad=True)
    delta = (0.5 * torch.randn(b, g * dm, length, device=dev)).requires_grad_()
    A = (-torch.rand(g * dm, n, device=dev) - 0.1).requires_grad_()
    Bm = torch.randn(b, g, n, length, device=dev, requires_grad=True)
    Cm = torch.randn(b, g, n, length, device=dev, requires_grad=True)
    D = torch.randn(g * dm, device=dev, requires_grad=True)
    bias = (0.1 * torch.randn(g * dm, device=dev)).requires_grad_()
    ins = [u, delta, A, Bm, Cm, D, bias]
    y = st.selective_scan_triton(u, delta, A, Bm, Cm, D, delta_bias=bias, delta_softplus=True)
    go = torch.randn_like(y)
    got = [y, *torch.autograd.grad(y, ins, go)]
    ins64 = [t.detach().double().requires_grad_() for t in ins]
    y64 = scan_ref(*ins64[:6], ins64[6], softplus=True)
    want = [y64, *torch.autograd.grad(y64, ins64, go.double())]
    errs = [rel(a, c) for a, c in zip(got, want)]
    ok = max(errs) < 1e-4
    log(f"  {'ok ' if ok else 'BAD'} selective_scan_triton B={b} G={g} D={dm} N={n} L={length}: " +
        " ".join(f"{nm}={e:.1e}" for nm, e in zip("y du ddelta dA dB dC dD dbias".split(), errs)))
    if not ok:
        RESULTS["failures"].append(f"generic selective scan parity: max rel err {max(errs):.2e}")


DET_SHAPE = (4, 32, 32, 384)
GEN_SHAPE = (2, 4, 48, 16, 333)  # B, G, D, N, L of the plain selective-scan parity case


def determinism_case():
    torch.manual_seed(3)
    params = make_params(DET_SHAPE[-1], N_STATE, max(1, math.ceil(DET_SHAPE[-1] / 32)), DEV)
    x = torch.randn(*DET_SHAPE, device=DEV, requires_grad=True)
    go = torch.randn_like(x)
    a = torch.autograd.grad(st.ss2d_scan_triton(x, *params), [x, *params], go)
    c = torch.autograd.grad(st.ss2d_scan_triton(x, *params), [x, *params], go)
    same = all(torch.equal(p, q) for p, q in zip(a, c))
    log(f"  {'ok ' if same else 'BAD'} backward bitwise deterministic over two runs {DET_SHAPE}: {same}")
    if not same:
        RESULTS["failures"].append("backward not deterministic")


# ---------------------------------------------------------------------------------------------------
# 2. bf16
# ---------------------------------------------------------------------------------------------------


def bf16_case(b, h, w, d, n, r):
    torch.manual_seed(2)
    params = make_params(d, n, r, DEV)
    x = torch.randn(b, h, w, d, device=DEV, requires_grad=True)
    go = torch.randn(b, h, w, d, device=DEV)
    y32 = st.ss2d_scan_triton(x, *params)
    g32 = torch.autograd.grad(y32, [x, *params], go)
    with torch.autocast(DEV, dtype=torch.bfloat16):
        y16 = st.ss2d_scan_triton(x.to(torch.bfloat16), *params)
    g16 = torch.autograd.grad(y16, [x, *params], go)
    finite = all(torch.isfinite(t.float()).all().item() for t in [y16, *g16])
    errs = [rel(y16, y32)] + [rel(a, c) for a, c in zip(g16, g32)]
    log(f"  {'ok ' if finite and errs[0] < 5e-2 else 'BAD'} bf16 autocast B={b} {h}x{w} D={d}: y dtype {y16.dtype}, "
        f"finite={finite}, rel err vs fp32: " + " ".join(f"{nm}={e:.1e}" for nm, e in zip(NAMES, errs)))


# ---------------------------------------------------------------------------------------------------
# 3. network parity
# ---------------------------------------------------------------------------------------------------


def network_case():
    from vmunet_monai.networks.nets import VMUNet

    torch.manual_seed(5)
    kw = {} if DEV == "cuda" else dict(dims=(8, 16, 32, 64), depths=(1, 1, 1, 1), depths_decoder=(1, 1, 1, 1),
                                       d_state=4)
    net = VMUNet(drop_path_rate=0.0, **kw).to(DEV).eval()
    x = torch.randn(2 if DEV == "cuda" else 1, 3, 64 if DEV == "cuda" else 32, 64 if DEV == "cuda" else 32,
                    device=DEV)
    outs = {}
    backends = ["torch", "triton"] + (["mamba_ssm"] if mamba_scan_fn() is not None and DEV == "cuda" else [])
    for be in backends:
        try:
            net.set_scan_backend(be)
            xi = x.clone().requires_grad_()
            y = net(xi)
            (gx,) = torch.autograd.grad(y.square().mean(), [xi])
            outs[be] = (y.detach(), gx)
        except Exception as err:
            log(f"  !! network backend {be}: {type(err).__name__}: {err}")
    ref = outs.get("mamba_ssm", outs.get("torch"))
    for be, (y, gx) in outs.items():
        log(f"  network {tuple(x.shape)}, backend {be:9s}: logits rel err {rel(y, ref[0]):.1e}, "
            f"input-grad rel err {rel(gx, ref[1]):.1e} (vs {'mamba_ssm' if 'mamba_ssm' in outs else 'torch'})")


def compile_and_graph_case():
    """torch.compile (inductor, fullgraph) of the core, and CUDA-graph capture/replay of its forward."""
    torch.manual_seed(8)
    b, h, w, d, r = (2, 16, 16, 192, 12) if DEV == "cuda" else (1, 3, 5, 6, 2)
    params = make_params(d, N_STATE, r, DEV)
    x = torch.randn(b, h, w, d, device=DEV, requires_grad=True)
    y_ref = st.ss2d_scan_triton(x, *params)
    g_ref = torch.autograd.grad(y_ref.square().sum(), [x, *params])
    t = time.time()
    compiled = torch.compile(st.ss2d_scan_triton, fullgraph=True, backend="inductor" if DEV == "cuda" else "aot_eager")
    y = compiled(x, *params)
    g = torch.autograd.grad(y.square().sum(), [x, *params])
    err = max([rel(y, y_ref)] + [rel(a, c) for a, c in zip(g, g_ref)])
    log(f"  {'ok ' if err < 1e-4 else 'BAD'} torch.compile(fullgraph=True) of ss2d_scan_triton: max rel err {err:.1e} "
        f"(compile+run {time.time() - t:.1f} s)")
    if DEV != "cuda":
        return
    xs = x.detach().clone()
    with torch.no_grad():
        st.ss2d_scan_triton(xs, *params)  # compile the no-grad variant before capture
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            y_static = st.ss2d_scan_triton(xs, *params)
        xs.copy_(torch.randn_like(xs))
        graph.replay()
        torch.cuda.synchronize()
        want = st.ss2d_scan_triton(xs, *params)
    err = rel(y_static, want)
    log(f"  {'ok ' if err < 1e-6 else 'BAD'} CUDA graph capture + replay of the forward on new input: rel err {err:.1e}")


# ---------------------------------------------------------------------------------------------------
# 4. timings
# ---------------------------------------------------------------------------------------------------

STAGES = [(64, 64, 192, 6, 3), (32, 32, 384, 12, 4), (16, 16, 768, 24, 4), (8, 8, 1536, 48, 4)]  # H W D R blocks
N_STATE = 16


def cuda_time(fn, warmup=3, iters=10):
    if DEV != "cuda":
        fn()
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1e3
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


def _triton_with(**overrides):
    """ss2d_scan_triton under a changed kernel configuration; ``time_stage`` applies ``fn.overrides`` around
    the whole step, because the backward reads the configuration when it runs, after the forward returned."""

    def fn(x, p):
        return st.ss2d_scan_triton(x, *p)

    fn.overrides = overrides
    return fn


WITH_TORCH_PATH = True  # --no-torch-path drops the (slow) published path on the pure-PyTorch scan


def timed_paths():
    paths = {"triton": lambda x, p: st.ss2d_scan_triton(x, *p)}
    for name, overrides in SEQ_COLUMNS:
        paths[f"triton {name}"] = _triton_with(**overrides)
    m = mamba_scan_fn()
    if m is not None:
        paths["published+mamba_ssm"] = lambda x, p: ss2d_published(x, *p, scan=m)
    else:
        log("  (mamba_ssm not importable: no published+mamba_ssm column)")
    t = torch_scan_fn() if WITH_TORCH_PATH else None
    if t is not None:
        paths["published+torch"] = lambda x, p: ss2d_published(x, *p, scan=t)
    return paths


def time_stage(name, fn, b, h, w, d, r, bf16, train):
    params = make_params(d, N_STATE, r, DEV)
    x = torch.randn(b, h, w, d, device=DEV, requires_grad=train)
    go = torch.randn(b, h, w, d, device=DEV)

    def step():
        with torch.autocast(DEV, dtype=torch.bfloat16, enabled=bf16):
            xin = x.to(torch.bfloat16) if bf16 else x
            if train:
                y = fn(xin, params)
                y.backward(go)
            else:
                with torch.no_grad():
                    fn(xin, params)

    overrides = getattr(fn, "overrides", None)
    if overrides:
        before = st.get_config()
        st.set_config(before, **overrides)
        try:
            return _time_step(name, step)
        finally:
            st.set_config(before)
    return _time_step(name, step)


def _time_step(name, step):
    if DEV != "cuda":
        return cuda_time(step), float("nan")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    slow = name == "published+torch"  # the pure-PyTorch scan: a few iterations are enough
    ms = cuda_time(step, warmup=1 if slow else 2, iters=3 if slow else 10)
    peak = (torch.cuda.max_memory_allocated() - base) / 2 ** 20
    return ms, peak


def timings(batch):
    paths = timed_paths()
    log(f"  B={batch}; ms per SS2D core call (peak extra MiB); 'blocks' = SS2D blocks at that stage in VM-UNet")
    header = f"  {'stage':>18} {'mode':>10} " + " ".join(f"{p:>26}" for p in paths)
    log(header)
    totals = {}
    for h, w, d, r, nblk in STAGES:
        for bf16 in (False, True):
            for train in (False, True):
                mode = ("bf16" if bf16 else "fp32") + ("-train" if train else "-infer")
                cells = []
                for pname, fn in paths.items():
                    res = guarded(f"time {pname} {h}x{w} D={d} {mode}")(time_stage, pname, fn, batch, h, w, d, r,
                                                                      bf16, train)
                    if res is None:
                        cells.append(f"{'error':>26}")
                    else:
                        cells.append(f"{res[0]:>12.3f} ms ({res[1]:>7.0f})")
                        totals.setdefault((pname, mode), 0.0)
                        totals[(pname, mode)] += res[0] * nblk
                    if DEV == "cuda":
                        torch.cuda.empty_cache()
                log(f"  {f'{h}x{w} D={d} x{nblk}':>18} {mode:>10} " + " ".join(cells))
    log("  whole-network SS2D-core time per step (sum over the 15 blocks), ms:")
    for mode in ("fp32-infer", "fp32-train", "bf16-infer", "bf16-train"):
        log(f"    {mode:>10}: " + "  ".join(f"{p}={totals.get((p, mode), float('nan')):.2f}" for p in paths))
    RESULTS["timing_totals"] = totals


# ---------------------------------------------------------------------------------------------------
# 5. sweep
# ---------------------------------------------------------------------------------------------------

# (BLOCK_L, BLOCK_D, warps, sequential): sequential=1 is the one-step-per-iteration forward (fwd_seq=1)
FWD_CANDIDATES = [(16, 16, 4, 0), (16, 128, 4, 1), (16, 32, 1, 1), (16, 64, 2, 1), (16, 16, 1, 1)]
# (BLOCK_L, BLOCK_D, warps, sequential): sequential=1 is bwd_seq_kernel, BLOCK_L its sub-segment length
BWD_CANDIDATES = [(16, 32, 1, 1), (16, 16, 1, 1), (16, 64, 2, 1), (8, 32, 1, 1)]
# extra columns of the default-config timings (section 4): softplus inside the scan kernels, the tile forward
SEQ_COLUMNS = [("softplus in scan", dict(pre_softplus=0)), ("tile fwd", dict(fwd_seq=0))]


def _fwd_kw(cand):
    """ScanConfig fields of a forward candidate (BLOCK_L, BLOCK_D, warps, sequential); None: keep the default."""
    if cand is None:
        return {}
    bl, bd, nw, seq = cand
    if seq:
        return dict(fwd_block_l=bl, fwd_seq=1, fwd_seq_block_d=bd, fwd_seq_warps=nw)
    return dict(fwd_block_l=bl, fwd_seq=0, fwd_block_d=bd, fwd_warps=nw)


def sweep(batch, budget_s, bwd_only=False):
    # the stage-1 (64 x 64) choice of the per-length fields (bwd_block_l, seg_len, bwd_maxnreg) stands in for "default"
    default = st.config_for_length(st.get_config(), 64 * 64)
    best_fwd = {}
    best_bwd = {}
    fwd_candidates = [] if bwd_only else FWD_CANDIDATES
    log("  forward (bf16 inference) ms per stage; regs/spills of the compiled kernel")
    log("  " + f"{'BL,BD,warps':>14} " + " ".join(f"{f'{h}x{w} D={d}':>16}" for h, w, d, _, _ in STAGES) +
        f" {'weighted':>10}  regs/spills")
    fwd_scores = {}
    for bl, bd, nw, seq in fwd_candidates:
        if time.time() - T0 > budget_s:
            log("  (budget reached, sweep stopped)")
            break
        seg = max(default.seg_len, bl, default.bwd_block_l)
        st.set_config(default, **_fwd_kw((bl, bd, nw, seq)), seg_len=seg)
        cells, total = [], 0.0
        for h, w, d, r, nblk in STAGES:
            res = guarded(f"sweep fwd {bl},{bd},{nw},{seq} {h}x{w}")(
                time_stage, "triton", lambda x, p: st.ss2d_scan_triton(x, *p), batch, h, w, d, r, True, False)
            if res is None:
                cells.append(f"{'error':>16}")
                total = float("inf")
            else:
                cells.append(f"{res[0]:>13.3f} ms")
                total += res[0] * nblk
                if res[0] < best_fwd.get((h, d), (float("inf"),))[0]:
                    best_fwd[(h, d)] = (res[0], (bl, bd, nw, seq))
        info = st.kernel_info().get("fwd", {})
        fwd_scores[(bl, bd, nw, seq)] = total
        log(f"  {(f'seq,{bd},{nw}' if seq else f'{bl},{bd},{nw}'):>14} " + " ".join(cells) + f" {total:>10.2f}  {info.get('n_regs')}/{info.get('n_spills')}")
    fbest = min(fwd_scores, key=fwd_scores.get) if fwd_scores else None  # None: the default forward
    log(f"  best forward overall: BL,BD,warps,sequential = {fbest or 'not swept (default)'}")
    fwd_l = fbest[0] if fbest else default.fwd_block_l

    log("  forward+backward (bf16 training) ms per stage with the best forward; regs/spills of the backward kernel")
    bwd_scores = {}
    for bl, bd, nw, bseq in BWD_CANDIDATES:
        if time.time() - T0 > budget_s:
            log("  (budget reached, sweep stopped)")
            break
        seg = max(default.seg_len, bl, fwd_l)
        st.set_config(default, **_fwd_kw(fbest),
                      bwd_block_l=bl, bwd_block_d=bd, bwd_warps=nw, seg_len=seg, bwd_seq=bseq)
        cells, total = [], 0.0
        for h, w, d, r, nblk in STAGES:
            res = guarded(f"sweep bwd {bl},{bd},{nw},{bseq} {h}x{w}")(
                time_stage, "triton", lambda x, p: st.ss2d_scan_triton(x, *p), batch, h, w, d, r, True, True)
            if res is None:
                cells.append(f"{'error':>16}")
                total = float("inf")
            else:
                cells.append(f"{res[0]:>9.3f}ms/{res[1]:>4.0f}M")
                total += res[0] * nblk
                if res[0] < best_bwd.get((h, d), (float("inf"),))[0]:
                    best_bwd[(h, d)] = (res[0], (bl, bd, nw, bseq))
        info = st.kernel_info().get("bwd", {})
        bwd_scores[(bl, bd, nw, bseq)] = total
        log(f"  {(f'seq{bl},{bd},{nw}' if bseq else f'{bl},{bd},{nw}'):>14} " + " ".join(cells) + f" {total:>10.2f}  {info.get('n_regs')}/{info.get('n_spills')}")
    bbest = min(bwd_scores, key=bwd_scores.get) if bwd_scores else (default.bwd_block_l, default.bwd_block_d,
                                                                      default.bwd_warps, default.bwd_seq)
    # software-pipelining depth of the sequential kernels' time loops
    stages_best = default.seq_stages
    if ((fbest and fbest[3]) or bbest[3]) and time.time() - T0 < budget_s:
        stage_scores = {}
        for ns in (1, 2, 3, 4, 6):
            if time.time() - T0 > budget_s:
                break
            st.set_config(default, **_fwd_kw(fbest),
                          bwd_block_l=bbest[0], bwd_block_d=bbest[1], bwd_warps=bbest[2], bwd_seq=bbest[3],
                          seq_stages=ns)
            cells, total = [], 0.0
            for h, w, d, r, nblk in STAGES:
                res = guarded(f"stages {ns} {h}x{w}")(time_stage, "triton", lambda x, p: st.ss2d_scan_triton(x, *p),
                                                      batch, h, w, d, r, True, True)
                cells.append(f"{res[0]:>9.3f}ms" if res else "error")
                total += res[0] * nblk if res else float("inf")
            stage_scores[ns] = total
            log(f"  seq_stages={ns}: bf16 train per stage " + " ".join(cells) + f"  weighted {total:.2f}")
        stages_best = min(stage_scores, key=stage_scores.get) if stage_scores else stages_best
    # seg_len: memory vs recomputation
    seg_res = []
    for seg in sorted({max(v, fwd_l, bbest[0]) for v in (bbest[0], 64, 128, 256)}):
        if time.time() - T0 > budget_s:
            break
        st.set_config(default, **_fwd_kw(fbest),
                      bwd_block_l=bbest[0], bwd_block_d=bbest[1], bwd_warps=bbest[2], bwd_seq=bbest[3], seg_len=seg,
                      seq_stages=stages_best)
        h, w, d, r, _ = STAGES[0]
        res = guarded(f"seg {seg}")(time_stage, "triton", lambda x, p: st.ss2d_scan_triton(x, *p), batch, h, w, d, r,
                                    True, True)
        if res is not None:
            seg_res.append((seg, res))
            log(f"  seg_len={seg}: stage-1 bf16 train {res[0]:.3f} ms, peak extra {res[1]:.0f} MiB")
    if bbest[0] < fwd_l and time.time() - T0 < budget_s:
        # a state saved per backward tile (no recomputation pass) needs the forward's tiles that short too
        st.set_config(default, **{**_fwd_kw(fbest), "fwd_block_l": bbest[0]},
                      bwd_block_l=bbest[0], bwd_block_d=bbest[1], bwd_warps=bbest[2], bwd_seq=bbest[3], seg_len=bbest[0])
        h, w, d, r, _ = STAGES[0]
        res = guarded("seg per tile")(time_stage, "triton", lambda x, p: st.ss2d_scan_triton(x, *p), batch, h, w, d,
                                      r, True, True)
        if res is not None:
            log(f"  seg_len={bbest[0]} with fwd_block_l={bbest[0]} (no recomputation): stage-1 bf16 train "
                f"{res[0]:.3f} ms, peak extra {res[1]:.0f} MiB (not auto-selected: memory)")
    # the longest segment (least saved-state memory) within 3% of the fastest
    fastest = min((r[0] for _, r in seg_res), default=float("inf"))
    seg_best = max((sg for sg, r in seg_res if r[0] <= 1.03 * fastest), default=default.seg_len)
    log("  per-stage best forward: " + ", ".join(f"{h}/{d}: {v[1]} {v[0]:.3f}ms" for (h, d), v in best_fwd.items()))
    log("  per-stage best fwd+bwd: " + ", ".join(f"{h}/{d}: {v[1]} {v[0]:.3f}ms" for (h, d), v in best_bwd.items()))
    # a sequential forward is recommended as fwd_seq=2: at batch 1 it would walk the sequence in a few programs
    fwd_rec = {**_fwd_kw(fbest), "fwd_seq": 2} if fbest and fbest[3] else _fwd_kw(fbest)
    rec = ("".join(f"{k}={v}," for k, v in fwd_rec.items()) + f"bwd_block_l={bbest[0]},"
           f"bwd_block_d={bbest[1]},bwd_warps={bbest[2]},bwd_seq={bbest[3]},seg_len={seg_best},seq_stages={stages_best}"
           + (",bwd_rev_flip=1" if default.bwd_rev_flip else ""))
    log(f"  RECOMMENDED: VMUNET_TRITON_SCAN={rec}")
    st.set_config(default)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="parity and default timings only (no sweep)")
    parser.add_argument("--batch", type=int, default=None, help="batch for timings (default 32; 1 with --cpu-smoke)")
    parser.add_argument("--budget", type=float, default=420.0, help="seconds after which the sweep stops")
    parser.add_argument("--no-torch-path", action="store_true",
                        help="leave the published path on the pure-PyTorch scan out of the timings (slow)")
    parser.add_argument("--bwd-only", action="store_true", help="sweep only the backward tiles (default forward)")
    parser.add_argument("--cpu-smoke", action="store_true",
                        help="run this script's logic on CPU through the Triton interpreter with tiny shapes")
    args = parser.parse_args()
    global DEV, STAGES, N_STATE, DET_SHAPE, GEN_SHAPE, FWD_CANDIDATES, BWD_CANDIDATES, WITH_TORCH_PATH
    parity_cases = [(1, 3, 5, 32, 16, 2), (1, 7, 7, 96, 16, 6), (2, 13, 9, 64, 16, 4), (2, 16, 16, 192, 16, 12),
                    (1, 28, 28, 384, 16, 24), (3, 14, 14, 768, 16, 48), (2, 8, 8, 1536, 16, 48), (1, 1, 1, 16, 16, 1),
                    (1, 56, 56, 96, 4, 6)]
    alt_case = (2, 19, 23, 64, 16, 4)
    bf16_cases = [(2, 32, 32, 384, 16, 24), (1, 7, 7, 1536, 16, 48)]
    if args.cpu_smoke:
        DEV = "cpu"
        STAGES = [(4, 4, 8, 1, 1), (2, 2, 16, 1, 1)]
        N_STATE = 4
        DET_SHAPE = (1, 3, 4, 8)
        GEN_SHAPE = (1, 2, 4, 4, 9)
        FWD_CANDIDATES = FWD_CANDIDATES[:2]
        BWD_CANDIDATES = BWD_CANDIDATES[:3]
        parity_cases = [(1, 3, 5, 6, 4, 2), (1, 1, 1, 4, 4, 1)]
        alt_case = (1, 2, 3, 4, 4, 1)
        bf16_cases = [(1, 3, 3, 8, 4, 1)]
        if not os.environ.get("TRITON_INTERPRET"):
            sys.exit("--cpu-smoke needs TRITON_INTERPRET=1 in the environment")
    elif not torch.cuda.is_available():
        sys.exit("gpu_triton_check.py needs a CUDA GPU (or --cpu-smoke with TRITON_INTERPRET=1)")
    WITH_TORCH_PATH = not args.no_torch_path
    if args.batch is None:
        args.batch = 1 if args.cpu_smoke else 32
    import triton

    gpu = torch.cuda.get_device_name() if DEV == "cuda" else "none (cpu smoke run)"
    log(f"torch {torch.__version__}, triton {triton.__version__}, GPU {gpu}, "
        f"mamba_ssm {'yes' if mamba_scan_fn() is not None else 'no'}")
    log(f"default config: {st.get_config()}")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False

    log("\n[1] fp32 parity vs float64 reference (max|err| / max|ref|, tolerance 1e-4)")
    for case in parity_cases:
        guarded(f"parity {case}")(parity_case, *case)
    n_bad = len(RESULTS["failures"])
    before = st.get_config()
    st.set_config(bwd_rev_flip=1)
    log("  backward with bwd_rev_flip=1 (flip/scan/flip instead of tl.associative_scan(reverse=True)):")
    flip_errs = guarded("parity rev_flip")(parity_case, *alt_case)
    st.set_config(before)
    if n_bad and flip_errs is not None and max(flip_errs) < 1e-4:
        st.set_config(bwd_rev_flip=1)
        log("  !! default parity failed but the flip fallback passes: using bwd_rev_flip=1 for the rest of this run "
            "(set VMUNET_TRITON_SCAN=...,bwd_rev_flip=1)")
    for cfg in (dict(fwd_block_l=16, bwd_block_l=16, seg_len=16), dict(fwd_block_l=64, bwd_block_l=8, seg_len=256),
                dict(upcast_16bit=0), dict(pre_softplus=0)):
        before = st.get_config()
        st.set_config(**cfg)
        log(f"  config {cfg}:")
        guarded(f"parity cfg {cfg}")(parity_case, *alt_case)
        st.set_config(before)
    guarded("generic parity")(parity_generic)
    guarded("determinism")(determinism_case)
    info = st.kernel_info()
    log(f"  default-config kernels: forward regs/spills {info.get('fwd')}, backward {info.get('bwd')}")

    log("\n[2] bf16 autocast sanity")
    for case in bf16_cases:
        guarded("bf16")(bf16_case, *case)

    log("\n[3] whole-network parity (VMUNet paper config, eval mode); torch.compile; CUDA graphs")
    guarded("network")(network_case)
    guarded("compile/cudagraph")(compile_and_graph_case)

    log("\n[4] timings at the 256x256 stage shapes (default config)")
    guarded("timings")(timings, args.batch)

    if not args.quick:
        log(f"\n[5] tile sweep (stops at {args.budget:.0f} s total)")
        guarded("sweep")(sweep, args.batch, args.budget, args.bwd_only)

    log(f"\ndone in {time.time() - T0:.0f} s; failures: {len(RESULTS['failures'])}")
    for f in RESULTS["failures"]:
        log(f"  - {f}")


if __name__ == "__main__":
    main()
