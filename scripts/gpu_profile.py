#!/usr/bin/env python
"""Where GPU time goes: the fused Triton SS2D core at one VM-UNet stage shape, or a whole VM-UNet step (CUDA).

``core`` (default) runs the core at one stage shape: warm-up outside the profiled range, then one inference
forward, one training forward and one backward inside it (``cudaProfilerStart`` / ``Stop``), for Nsight
Compute on the GPU machine::

    ncu --clock-control none --profile-from-start off -k regex:seq_kernel \\
        --section WarpStateStats --section SchedulerStats --section Occupancy --section SourceCounters \\
        -o scan_stage1 python scripts/gpu_profile.py core --stage 1 --dtype bf16
    ncu --import scan_stage1.ncu-rep --page details

It prints the CUDA-event time of each of the three phases and, with ``--kernels``, a table per phase of the
kernels they launch (``torch.profiler``: time on the GPU per kernel name).

``network`` does the same for the paper VM-UNet (batch 32, 256x256): one inference forward and one AdamW
training step, each with its kernel table::

    python scripts/gpu_profile.py network --dtype bf16 --kernels

``fwd-tiles`` times the sequential forward at the four stage shapes for several tile candidates (channels per
program x warps), the measurement behind ``ScanConfig``'s per-length forward tiles; ``dt-tiles`` does the same for
the dt backward's tiles and channel splits (``ss2d_triton._DT_TILES``, ``_DT_MIN_PROGRAMS``)::

    python scripts/gpu_profile.py fwd-tiles --dtype bf16
    python scripts/gpu_profile.py dt-tiles --dtype bf16

``scan-configs`` times a training forward + backward of the core at the four stage shapes for whole ``ScanConfig``
variants (``VMUNET_TRITON_SCAN`` syntax, ``;`` between variants, ``default`` for the current one), with the peak
memory of the call, and the total for the paper network's 15 cores (3 / 4 / 4 / 4 per stage)::

    python scripts/gpu_profile.py scan-configs --configs "default;seg_len=16;bwd_maxnreg=168" --dtype bf16

With ``--kernel-times`` it reports the GPU's own time instead (``torch.profiler`` device time per call of the
backward scan kernel, the forward scan kernel and all kernels of the call): the eager wall time of a call includes
the host's launch cost, which at the small stage-4 calls moves by up to a third between runs::

    python scripts/gpu_profile.py scan-configs --kernel-times --configs "default;bwd_gluon=0" --dtype bf16
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# (H, W, D, dt_rank) of the SS2D cores of the paper VM-UNet at 256x256 input, stages 1-4
STAGE_SHAPES = {1: (64, 64, 192, 6), 2: (32, 32, 384, 12), 3: (16, 16, 768, 24), 4: (8, 8, 1536, 48)}


def make_inputs(stage: int, batch: int, device: torch.device, n: int = 16):
    """A (B, H, W, D) activation and the core's parameters, initialised like the published SS2D."""
    h, w, d, r = STAGE_SHAPES[stage]
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(batch, h, w, d, generator=g) * 0.5
    x_proj = torch.randn(4, r + 2 * n, d, generator=g) * d ** -0.5
    dt_w = (torch.rand(4, d, r, generator=g) * 2 - 1) * r ** -0.5
    dt = torch.exp(torch.rand(4, d, generator=g) * (torch.log(torch.tensor(0.1)) - torch.log(torch.tensor(1e-3)))
                   + torch.log(torch.tensor(1e-3)))
    dt_b = dt + torch.log(-torch.expm1(-dt))
    a_logs = torch.log(torch.arange(1, n + 1, dtype=torch.float32)).repeat(4 * d, 1)
    ds = torch.ones(4 * d)
    params = [t.to(device).requires_grad_() for t in (x_proj, dt_w, dt_b, a_logs, ds)]
    return x.to(device).requires_grad_(), params


def kernel_table(fn, label: str, top: int) -> None:
    """Run ``fn`` once under ``torch.profiler`` and print its CUDA kernels, most time first."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    rows = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]
    rows.sort(key=lambda e: e.device_time_total, reverse=True)
    total = sum(e.device_time_total for e in rows)
    print(f"  {label}: {total / 1e3:.2f} ms of kernels in {sum(e.count for e in rows)} launches")
    for e in rows[:top]:
        print(f"    {e.device_time_total / 1e3:8.3f} ms {100 * e.device_time_total / max(total, 1):5.1f}%  "
              f"x{e.count:<4d} {e.key[:110]}")


def timed_phases(phases, kernels: bool, top: int) -> None:
    """CUDA-event time of each (name, fn) phase inside one profiler range; then, optionally, their kernels."""
    events = [torch.cuda.Event(enable_timing=True) for _ in range(len(phases) + 1)]
    torch.cuda.synchronize()
    torch.cuda.profiler.start()
    events[0].record()
    for i, (_, fn) in enumerate(phases):
        fn()
        events[i + 1].record()
    torch.cuda.profiler.stop()
    torch.cuda.synchronize()
    times = [events[i].elapsed_time(events[i + 1]) for i in range(len(phases))]
    print("  " + ", ".join(f"{name} {ms:.2f} ms" for (name, _), ms in zip(phases, times)))
    if kernels:
        for name, fn in phases:
            kernel_table(fn, name, top)


def profile_core(args, amp) -> None:
    from vmunet_monai.ops.ss2d_triton import ss2d_scan_triton

    x, params = make_inputs(args.stage, args.batch, torch.device("cuda"))
    state = {}

    def inference():
        with torch.no_grad(), amp:
            ss2d_scan_triton(x, *params)

    def training_forward():
        with amp:
            state["y"] = ss2d_scan_triton(x, *params)

    def backward():
        state.pop("y").square().mean().backward()

    for _ in range(args.warmup):
        inference()
        training_forward()
        backward()
    print(f"core, stage {args.stage} {STAGE_SHAPES[args.stage]} (H, W, D, R), batch {args.batch}, {args.dtype}:")
    # a backward needs its own training forward: the kernel tables re-run the pair
    timed_phases([("inference forward", inference), ("training forward", training_forward), ("backward", backward)],
                 False, args.top)
    if args.kernels:
        kernel_table(inference, "inference forward", args.top)
        kernel_table(lambda: (training_forward(), backward()), "training forward + backward", args.top)


def profile_network(args, amp) -> None:
    from vmunet_monai.benchmark import _adamw_train_step, _loss_fn, _target
    from vmunet_monai.networks.nets import VMUNet

    dev = torch.device("cuda")
    torch.manual_seed(0)
    model = VMUNet(in_channels=3, out_channels=1, scan_backend=args.backend).to(dev)
    x = torch.randn(args.batch, 3, 256, 256, device=dev)
    target = _target(1, args.batch, 256, dev)
    step, _ = _adamw_train_step(model, model, x, target, _loss_fn(1), torch.bfloat16 if args.dtype == "bf16" else None,
                                dev)

    def inference():
        with torch.inference_mode(), amp:
            model(x)

    for _ in range(args.warmup):
        inference()
        step()
    print(f"network, paper VM-UNet 256x256, batch {args.batch}, {args.dtype}, backend {args.backend}:")
    timed_phases([("inference forward", inference), ("training step", step)], args.kernels, args.top)


def _kernel_ms(fn, warmup: int, repeats: int) -> "dict[str, float]":
    """GPU time per call of ``fn`` by kernel name (``torch.profiler`` device time over ``repeats`` calls after
    ``warmup`` unprofiled ones), in ms."""
    from torch.profiler import ProfilerActivity, profile

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(repeats):
            fn()
        torch.cuda.synchronize()
    return {e.key: e.device_time_total / 1e3 / repeats for e in prof.key_averages()
            if e.device_type == torch.autograd.DeviceType.CUDA}


def _median_ms(fn, warmup: int, repeats: int) -> float:
    """Median CUDA-event time of ``fn`` in ms over ``repeats`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        ev = [torch.cuda.Event(enable_timing=True) for _ in range(2)]
        ev[0].record()
        fn()
        ev[1].record()
        torch.cuda.synchronize()
        times.append(ev[0].elapsed_time(ev[1]))
    return sorted(times)[len(times) // 2]


def sweep_forward_tiles(args, amp) -> None:
    """Time the sequential forward (inference: ``ss2d_scan_triton_parts``, the kernel plus its small input ops) at
    every stage shape for each (channels per program, warps) candidate; print a table and the fastest per stage."""
    from vmunet_monai.ops import ss2d_triton as st

    candidates = [tuple(int(v) for v in c.split("x")) for c in args.fwd_tiles.split(",")]
    before = st.get_config()
    print(f"sequential forward, batch {args.batch}, {args.dtype}: ms per call (median of {args.repeats})")
    print("  " + f"{'stage (H, W, D)':>22s}" + "".join(f"{f'{bd} ch x {w} warps':>18s}" for bd, w in candidates))
    try:
        for stage in sorted(STAGE_SHAPES):
            x, params = make_inputs(stage, args.batch, torch.device("cuda"))
            cells = []
            for bd, w in candidates:
                st.set_config(before, fwd_seq=1, fwd_seq_block_d=bd, fwd_seq_warps=w)
                with torch.no_grad(), amp:
                    cells.append(_median_ms(lambda: st.ss2d_scan_triton_parts(x, *params), args.warmup, args.repeats))
            best = min(range(len(cells)), key=cells.__getitem__)
            print("  " + f"{str((stage, *STAGE_SHAPES[stage][:3])):>22s}" + "".join(f"{c:>15.3f} ms" for c in cells)
                  + f"   best {candidates[best][0]} ch x {candidates[best][1]} warps")
    finally:
        st.set_config(before)


def sweep_dt_tiles(args) -> None:
    """Time the dt backward (``_dt_softplus_backward``: softplus' and the dt projection's backward, with the sums of
    its partials) at every stage shape for each candidate ``rows x warps x channels x min_programs`` (the last one
    sets how far the channels are split over programs); print a table and the fastest per stage."""
    from vmunet_monai.ops import ss2d_triton as st

    candidates = [tuple(int(v) for v in c.split("x")) for c in args.dt_tiles.split(",")]
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    tiles, min_programs = dict(st._DT_TILES), st._DT_MIN_PROGRAMS
    print(f"dt backward, batch {args.batch}, {args.dtype}: ms per call (median of {args.repeats}); "
          f"candidates rows x warps x channels x min programs")
    print("  " + f"{'stage (H, W, D, R)':>24s}" + "".join(f"{'x'.join(map(str, c)):>16s}" for c in candidates))
    try:
        for stage in sorted(STAGE_SHAPES):
            h, w, d, r = STAGE_SHAPES[stage]
            g = torch.Generator(device="cpu").manual_seed(0)
            x_dbl = torch.randn(args.batch, h * w, 4, r + 32, generator=g).to("cuda", dtype)
            dt_w = (torch.randn(4, d, r, generator=g) * r ** -0.5).cuda()
            bias = (torch.randn(4 * d, generator=g) - 4.0).cuda()
            ddelta = torch.randn(4, args.batch, h * w, d, generator=g).to("cuda", dtype)
            key = (st._dot_precision(dtype), max(16, st._next_pow2(r)))
            cells = []
            for block_m, warps, block_d, programs in candidates:
                st._DT_TILES[key] = (block_m, warps, block_d)
                st._DT_MIN_PROGRAMS = programs
                cells.append(_median_ms(lambda: st._dt_softplus_backward(ddelta, x_dbl, dt_w, bias, r),
                                        args.warmup, args.repeats))
            best = min(range(len(cells)), key=cells.__getitem__)
            print("  " + f"{str((stage, h, w, d, r)):>24s}" + "".join(f"{c:>13.3f} ms" for c in cells)
                  + f"   best {'x'.join(map(str, candidates[best]))}")
    finally:
        st._DT_TILES.clear()
        st._DT_TILES.update(tiles)
        st._DT_MIN_PROGRAMS = min_programs


# SS2D cores per stage in the paper VM-UNet (encoder depths 2, 2, 2, 2; decoder 2, 2, 2, 1)
CORES_PER_STAGE = {1: 3, 2: 4, 3: 4, 4: 4}


def sweep_scan_configs(args, amp) -> None:
    """Time a training forward + backward of the core per stage for each ``ScanConfig`` variant; print ms per call,
    peak memory above the inputs, and the total over the paper network's cores."""
    from vmunet_monai.ops import ss2d_triton as st

    before = st.get_config()
    variants = [v.strip() for v in args.configs.split(";") if v.strip()]
    if args.kernel_times:
        print(f"core training forward + backward, batch {args.batch}, {args.dtype}: GPU ms per call (torch.profiler, "
              f"mean of {args.repeats}) of the backward scan kernel, the forward scan kernel and all kernels; "
              f"totals over 3 / 4 / 4 / 4 cores of stages 1-4")
    else:
        print(f"core training forward + backward, batch {args.batch}, {args.dtype}: ms per call (median of "
              f"{args.repeats}), peak MiB above the inputs; total = 3 / 4 / 4 / 4 cores of stages 1-4")
    totals = [0.0] * len(variants)
    bwd_totals = [0.0] * len(variants)
    fwd_totals = [0.0] * len(variants)
    try:
        for stage in sorted(STAGE_SHAPES):
            x, params = make_inputs(stage, args.batch, torch.device("cuda"))
            cells = []
            for i, v in enumerate(variants):
                st.set_config(before, **({} if v == "default" else st.parse_config_spec(v)))

                def step():
                    with amp:
                        y = st.ss2d_scan_triton(x, *params)
                    y.float().square().mean().backward()

                step()
                torch.cuda.synchronize()
                if args.kernel_times:
                    ms = _kernel_ms(step, args.warmup, args.repeats)
                    bwd = sum(t for name, t in ms.items() if name.startswith("bwd_seq"))
                    fwd = sum(t for name, t in ms.items() if name.startswith("fwd_seq"))
                    totals[i] += CORES_PER_STAGE[stage] * sum(ms.values())
                    bwd_totals[i] += CORES_PER_STAGE[stage] * bwd
                    fwd_totals[i] += CORES_PER_STAGE[stage] * fwd
                    cells.append(f"bwd {bwd:6.3f} fwd {fwd:6.3f} all {sum(ms.values()):6.3f} ms "
                                 f"({st._LAST_FWD_KERNEL[0]}, {st._LAST_BWD_KERNEL[0]})")
                    continue
                base = torch.cuda.memory_allocated()
                torch.cuda.reset_peak_memory_stats()
                ms = _median_ms(step, args.warmup, args.repeats)
                peak = (torch.cuda.max_memory_allocated() - base) / 2 ** 20
                totals[i] += CORES_PER_STAGE[stage] * ms
                cells.append(f"{ms:8.3f} ms {peak:7.0f} MiB")
            print(f"  stage {stage} {STAGE_SHAPES[stage][:3]}: " + " | ".join(f"{v}: {c}" for v, c in
                                                                          zip(variants, cells)))
    finally:
        st.set_config(before)
    for v, total, bwd, fwd in zip(variants, totals, bwd_totals, fwd_totals):
        suffix = f"  (scan kernels: backward {bwd:.2f} ms, forward {fwd:.2f} ms)" if args.kernel_times else ""
        print(f"  total {total:8.2f} ms  {v}{suffix}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", nargs="?", choices=("core", "network", "fwd-tiles", "dt-tiles", "scan-configs"),
                        default="core")
    parser.add_argument("--stage", type=int, default=1, choices=sorted(STAGE_SHAPES), help="core: stage shape")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="bf16", help="bf16 = under bf16 autocast")
    parser.add_argument("--backend", default="triton", help="network: scan backend")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--kernels", action="store_true", help="also print each phase's kernels (torch.profiler)")
    parser.add_argument("--top", type=int, default=25, help="kernels per table")
    parser.add_argument("--fwd-tiles", default="32x1,64x2,128x4,64x1,16x1,32x2",
                        help="fwd-tiles: candidates, channels per program x warps")
    parser.add_argument("--dt-tiles", default="128x4x32x0,64x8x32x0,64x4x32x0,32x4x32x0,64x4x64x0,128x4x32x1000,"
                        "64x8x32x1000,64x4x32x1000,64x8x32x2000,32x4x32x2000",
                        help="dt-tiles: candidates, rows x warps x channels per iteration x min programs")
    parser.add_argument("--configs", default="default;seg_len=16;bwd_maxnreg=168",
                        help="scan-configs: ScanConfig variants, ';' between them")
    parser.add_argument("--repeats", type=int, default=15, help="fwd-tiles / dt-tiles / scan-configs: timed calls")
    parser.add_argument("--kernel-times", action="store_true",
                        help="scan-configs: GPU time per kernel (torch.profiler) instead of the call's wall time")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_profile.py needs a CUDA device")
    amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled=args.dtype == "bf16")
    if args.mode == "core":
        profile_core(args, amp)
    elif args.mode == "fwd-tiles":
        sweep_forward_tiles(args, amp)
    elif args.mode == "dt-tiles":
        sweep_dt_tiles(args)
    elif args.mode == "scan-configs":
        sweep_scan_configs(args, amp)
    else:
        profile_network(args, amp)


if __name__ == "__main__":
    main()
