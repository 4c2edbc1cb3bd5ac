"""VM-UNet benchmark: latency, throughput, training-step time, parameters, MACs and peak memory per scan backend.

One run builds one model and measures every (backend, precision) pair on it, so the backends are compared on
identical weights and inputs; it also times the selective scan alone on the model's own scan shapes. Results are
printed as tables and (optionally) written as JSON.

MACs are counted the way the published repository does (``thop.profile``: Linear, Conv and LayerNorm leaf
modules; see reference section 3) and, separately, the einsum projections and the selective scan that thop does
not see (x_proj and dt_proj einsums, and ``4 N + 1`` MACs per scanned channel step).

Run ``vmunet-monai benchmark --device cpu`` or ``python scripts/benchmark.py --device cuda``.
"""

from __future__ import annotations

import datetime
import gc
import json
import logging
import math
import os
import platform
import resource
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn

__all__ = ["benchmark", "count_macs", "time_scans", "peak_memory_tracker", "format_report", "BenchmarkReport"]

logger = logging.getLogger("vmunet_monai")

_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


# --------------------------------------------------------------------------------------------------------------
# MAC counting
# --------------------------------------------------------------------------------------------------------------


def _thop_leaf_macs(module: nn.Module, inputs: tuple, output: torch.Tensor) -> int:
    """thop's rules (``thop.profile`` 0.1.x) for the leaf modules the published counter sees."""
    if isinstance(module, nn.Linear):
        return module.in_features * output.numel()
    if isinstance(module, nn.modules.conv._ConvNd):
        kernel = math.prod(module.kernel_size)
        return output.numel() * (module.in_channels // module.groups) * kernel
    if isinstance(module, nn.LayerNorm):
        flops = 2 * inputs[0].numel()
        return 2 * flops if module.elementwise_affine else flops
    return 0


def count_macs(model: nn.Module, x: torch.Tensor) -> dict[str, Any]:
    """Count MACs of one forward of ``model`` on ``x``.

    Returns a dict with ``thop_macs`` (Linear/Conv/LayerNorm leaf modules, thop's rules, as the published
    ``cal_params_flops``), ``einsum_macs`` (SS2D ``x_proj``/``dt_proj`` einsums), ``scan_macs`` (``4 N + 1`` per
    scanned (channel, step), the D skip included), their sum ``total_macs``, and ``scan_shapes``: a Counter of
    ``(L, D, N)`` per SS2D call (four directions of ``D`` channels each).

    Example::

        >>> from vmunet_monai.networks.nets import VMUNet
        >>> count_macs(VMUNet().eval(), torch.randn(1, 3, 256, 256))["thop_macs"]  # doctest: +SKIP
        4112...
    """
    from vmunet_monai.networks.blocks import SS2D

    counts = {"thop_macs": 0, "einsum_macs": 0, "scan_macs": 0}
    scan_shapes: Counter = Counter()

    def leaf_hook(module, inputs, output):
        counts["thop_macs"] += _thop_leaf_macs(module, inputs, output)

    def ss2d_hook(module, inputs, output):
        batch, height, width, _ = inputs[0].shape
        length, d_inner, n_state, rank = height * width, module.d_inner, module.d_state, module.dt_rank
        directions = module.x_proj_weight.shape[0]
        rows = batch * directions * length * d_inner
        counts["einsum_macs"] += rows * (rank + 2 * n_state) + rows * rank
        counts["scan_macs"] += rows * (4 * n_state + 1)
        scan_shapes[(length, d_inner, n_state)] += batch

    handles = []
    for module in model.modules():
        if isinstance(module, SS2D):
            handles.append(module.register_forward_hook(ss2d_hook))
        elif not list(module.children()) and isinstance(module, (nn.Linear, nn.modules.conv._ConvNd, nn.LayerNorm)):
            handles.append(module.register_forward_hook(leaf_hook))
    try:
        with torch.inference_mode():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    counts["total_macs"] = counts["thop_macs"] + counts["einsum_macs"] + counts["scan_macs"]
    return {**counts, "scan_shapes": scan_shapes}


# --------------------------------------------------------------------------------------------------------------
# memory
# --------------------------------------------------------------------------------------------------------------


def _read_status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


class peak_memory_tracker:
    """Context manager measuring the peak memory of its body, in MiB (``.peak_mib``).

    CUDA: ``torch.cuda.max_memory_allocated`` above the memory allocated on entry. CPU: the peak resident set
    size above the RSS on entry; on Linux the kernel's high-water mark is reset on entry (``/proc/self/clear_refs``
    ``5``) and read from ``VmHWM``; elsewhere ``ru_maxrss`` is used (it only shows peaks above earlier ones).
    """

    def __init__(self, device: torch.device) -> None:
        self.device = torch.device(device)
        self.peak_mib: float | None = None

    def __enter__(self) -> peak_memory_tracker:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            return self
        gc.collect()
        self._hwm_reset = False
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self._hwm_reset = True
        except OSError:
            pass
        self._base = _read_status_kb("VmRSS")
        self._maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_mib = (torch.cuda.max_memory_allocated(self.device) - self._base) / 2**20
            return
        hwm = _read_status_kb("VmHWM") if self._hwm_reset else None
        if hwm is not None and self._base is not None:
            self.peak_mib = max(0, hwm - self._base) / 1024
        else:  # ru_maxrss is in KiB on Linux, bytes on macOS
            scale = 1 if sys.platform.startswith("linux") else 1 / 1024
            grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - self._maxrss_before
            self.peak_mib = max(0, grown) * scale / 1024


# --------------------------------------------------------------------------------------------------------------
# timing
# --------------------------------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Timings(list):
    """Wall-clock seconds per call, with the process CPU seconds per call in ``.cpu``."""

    cpu: list[float]


def _time_calls(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int) -> _Timings:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = _Timings()
    times.cpu = []
    for _ in range(max(1, repeats)):
        cpu_start = time.process_time()
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
        times.cpu.append(time.process_time() - cpu_start)
    return times


def _stats(times: _Timings, batch: int) -> dict[str, float]:
    median = statistics.median(times)
    stats = {
        "time_ms_median": 1000 * median,
        "time_ms_min": 1000 * min(times),
        "time_ms_max": 1000 * max(times),
        "images_per_s": batch / median,
        "repeats": len(times),
    }
    # process CPU time (all threads): on a shared machine, with one thread, a proxy for the quiet wall time
    if getattr(times, "cpu", None):
        stats["cpu_time_ms_median"] = 1000 * statistics.median(times.cpu)
    return stats


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return torch.autocast(device_type=device.type, enabled=False)
    return torch.autocast(device_type=device.type, dtype=dtype)


def _scan_inputs(length: int, d_inner: int, n_state: int, batch: int, device: torch.device, seed: int = 0):
    """Random inputs with VM-UNet's scan statistics: 4 directions, softplus(delta + bias) in [1e-3, 0.1]."""
    gen = torch.Generator().manual_seed(seed)
    channels = 4 * d_inner

    def randn(*shape):
        return torch.randn(*shape, generator=gen)

    dt = torch.exp(torch.rand(channels, generator=gen) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
    tensors = dict(
        u=randn(batch, channels, length),
        delta=randn(batch, channels, length) * 0.1,
        A=-torch.arange(1, n_state + 1, dtype=torch.float32).repeat(channels, 1),
        B=randn(batch, 4, n_state, length),
        C=randn(batch, 4, n_state, length),
        D=torch.ones(channels),
        delta_bias=dt + torch.log(-torch.expm1(-dt)),
    )
    return {k: v.to(device) for k, v in tensors.items()}


def time_scans(
    scan_shapes: dict[tuple[int, int, int], int],
    backends: Sequence[str],
    device: str | torch.device = "cpu",
    repeats: int = 3,
    warmup: int = 1,
    batch: int = 1,
) -> list[dict[str, Any]]:
    """Time :func:`selective_scan_fn` forward (no grad) per backend on VM-UNet's scan shapes.

    Args:
        scan_shapes: ``{(L, D, N): calls per forward}`` (as from :func:`count_macs`, per image).
        backends: backend names (unavailable ones are reported as skipped).
        device: where to run.
        repeats: timed calls per shape (the median is reported).
        warmup: untimed calls first.
        batch: batch size of the scan inputs.

    Returns:
        One row per (backend, shape) with ``time_ms_median``, and one ``"per forward"`` row per backend with the
        time-weighted sum over the shapes.
    """
    from vmunet_monai.ops import resolve_backend_name, selective_scan_fn

    device = torch.device(device)
    rows = []
    for backend in backends:
        total, total_cpu, ok = 0.0, 0.0, True
        for (length, d_inner, n_state), calls in sorted(scan_shapes.items(), key=lambda kv: -kv[0][0]):
            tensors = _scan_inputs(length, d_inner, n_state, batch, device)
            try:
                resolve_backend_name(backend, tensors["u"])
            except (RuntimeError, ValueError) as err:
                rows.append({"backend": backend, "L": length, "D": d_inner, "N": n_state, "skipped": str(err)})
                ok = False
                break
            with torch.inference_mode():
                times = _time_calls(
                    lambda: selective_scan_fn(**tensors, delta_softplus=True, backend=backend), device, repeats, warmup
                )
            median = statistics.median(times)
            total += median * calls / batch
            total_cpu += statistics.median(times.cpu) * calls / batch
            rows.append(
                {
                    "backend": backend,
                    "L": length,
                    "D": d_inner,
                    "N": n_state,
                    "calls_per_forward": calls // batch,
                    "state_updates": 4 * d_inner * n_state * length * batch,
                    "time_ms_median": 1000 * median,
                    "time_ms_min": 1000 * min(times),
                    "cpu_time_ms_median": 1000 * statistics.median(times.cpu),
                }
            )
        if ok:
            rows.append(
                {
                    "backend": backend,
                    "L": "per forward",
                    "time_ms_median": 1000 * total,
                    "cpu_time_ms_median": 1000 * total_cpu,
                }
            )
    return rows


# --------------------------------------------------------------------------------------------------------------
# the benchmark
# --------------------------------------------------------------------------------------------------------------


def _parse_list(value: str | Sequence[str] | None) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v) for v in value]


def _machine_info(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "command": " ".join(sys.argv),
    }
    try:
        info["cpu"] = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        info["cpu"] = platform.processor()
    if hasattr(os, "getloadavg"):
        info["load_average_start"] = os.getloadavg()
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def _default_backends(device: torch.device) -> list[str]:
    from vmunet_monai.ops import available_backends

    probe = torch.zeros(1, device=device)
    names = available_backends(probe)
    if device.type == "cuda":
        preferred = ["triton", "mamba_ssm", "torch"]
    else:
        preferred = ["cpu", "torch", "reference"]
    return [name for name in preferred if name in names]


def _loss_fn(num_classes: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if num_classes == 1:
        return nn.BCEWithLogitsLoss()
    return nn.CrossEntropyLoss()


def _target(num_classes: int, batch: int, size: int, device: torch.device) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    if num_classes == 1:
        return (torch.rand(batch, 1, size, size, generator=gen) > 0.5).float().to(device)
    return torch.randint(0, num_classes, (batch, size, size), generator=gen).to(device)


def benchmark(
    device: str = "cpu",
    backends: str | Sequence[str] | None = None,
    image_size: int = 256,
    batch_size: int = 1,
    throughput_batch_size: int | None = None,
    train_batch_size: int | None = None,
    dtype: str | Sequence[str] | None = None,
    repeats: int | None = None,
    warmup: int | None = None,
    json_path: str | None = None,
    num_classes: int = 1,
    in_channels: int = 3,
    threads: int | None = None,
    train: bool = True,
    train_reference: bool = False,
    scans: bool = True,
    macs: bool = True,
    cuda_graph: bool = False,
    compile: bool = False,
    model_kwargs: dict | None = None,
    seed: int = 0,
    quiet: bool = False,
    adamw: str = "fused",
) -> dict[str, Any]:
    """Benchmark VM-UNet per scan backend and precision on one device; print tables, optionally write JSON.

    Measured per (backend, precision), on one model with the same weights:

    * ``latency``: forward at ``batch_size`` (default 1) in inference mode;
    * ``inference``: forward at ``throughput_batch_size`` (images/s; default 32 on CUDA, skipped on CPU);
    * ``train``: one AdamW step (forward, loss, backward, step) at ``train_batch_size`` (default 32 on CUDA,
      1 on CPU; the ``reference`` backend is not trained unless ``train_reference``);
    * peak memory of each (``torch.cuda.max_memory_allocated`` on CUDA, peak RSS growth on CPU);
    * for the latency forward, the largest absolute difference of the output from the first backend's.

    Plus parameter count, MACs (:func:`count_macs`) and the selective scan alone on the model's scan shapes
    (:func:`time_scans`).

    Args:
        device: ``"cpu"`` or ``"cuda"`` (``"cuda:1"``...).
        backends: scan backends (list or comma-separated); default: those available, fastest first
            (CUDA: triton, mamba_ssm, torch; CPU: cpu, torch, reference).
        image_size: square input side (a multiple of 32).
        batch_size: batch of the latency measurement.
        throughput_batch_size: batch of the inference-throughput measurement (0 skips it).
        train_batch_size: batch of the training step (0 skips training).
        dtype: ``"fp32"``, ``"bf16"`` (autocast) or both (``"fp32,bf16"``); default fp32 on CPU, both on CUDA.
        repeats: timed repetitions (median reported); default 10 on CUDA, 3 on CPU.
        warmup: untimed repetitions first; default 3 on CUDA, 1 on CPU.
        json_path: write the results there as JSON.
        num_classes: output channels (1: BCE-with-logits loss; more: cross-entropy).
        in_channels: input channels.
        threads: ``torch.set_num_threads`` for the run (CPU).
        train: measure the training step.
        train_reference: also train with the (very slow) ``reference`` backend.
        scans: time the selective scan alone per shape.
        macs: count MACs.
        cuda_graph: on CUDA, also time latency and inference replayed as a CUDA graph
            (:class:`vmunet_monai.networks.CUDAGraphModule`; modes ``latency_graph`` and ``inference_graph``) and,
            with ``train``, the whole training step captured as one graph (``train_graph``: the GPU's step time
            without eager PyTorch's launch overhead); with ``compile`` too, also the step of the compiled model
            captured as one graph (``train_compiled_graph``).
        compile: also time the forwards (modes ``latency_compiled``, ``inference_compiled``) and, with ``train``,
            the training step (``train_compiled``) under ``torch.compile(fullgraph=True)``; compilation happens
            before timing, a model that does not compile gets a row with the reason.
        model_kwargs: extra ``VMUNet`` arguments (e.g. a small configuration); default: the paper model.
        seed: seed of the weights and inputs.
        quiet: do not print.
        adamw: ``"fused"`` (default: ``torch.optim.AdamW(fused=True)``, one kernel per parameter group; on the H200 0.34
            instead of 1.97 ms per VM-UNet step) or ``"foreach"`` (torch's default implementation; same maths).

    Returns:
        The results dict (``meta``, ``model``, ``results``, ``scans``) that is also written as JSON.

    Example::

        >>> res = benchmark(device="cpu", image_size=64, repeats=1, warmup=0, train=False, scans=False,
        ...                 model_kwargs=dict(dims=(8, 16, 32, 64), depths=(1, 1, 1, 1), depths_decoder=(1, 1, 1, 1)))
        ... # doctest: +SKIP
    """
    from vmunet_monai.networks.nets import VMUNet

    dev = torch.device(device)
    if adamw not in _ADAMW_IMPLS:
        raise ValueError(f"adamw must be one of {list(_ADAMW_IMPLS)}, got {adamw!r}.")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("benchmark(device='cuda') needs CUDA, which is not available on this machine.")
    if image_size % 32:
        raise ValueError(f"image_size must be a multiple of 32, got {image_size}.")
    if threads:
        torch.set_num_threads(int(threads))
    on_cuda = dev.type == "cuda"
    dtypes = _parse_list(dtype) or (["fp32", "bf16"] if on_cuda else ["fp32"])
    unknown = [d for d in dtypes if d not in _DTYPES]
    if unknown:
        raise ValueError(f"unknown dtype(s) {unknown}; choose from {list(_DTYPES)}.")
    backend_names = _parse_list(backends) or _default_backends(dev)
    repeats = repeats if repeats is not None else (10 if on_cuda else 3)
    warmup = warmup if warmup is not None else (3 if on_cuda else 1)
    if throughput_batch_size is None:
        throughput_batch_size = 32 if on_cuda else 0
    if train_batch_size is None:
        train_batch_size = 32 if on_cuda else 1
    if not train:
        train_batch_size = 0

    torch.manual_seed(seed)
    kwargs = dict(in_channels=in_channels, out_channels=num_classes)
    kwargs.update(model_kwargs or {})
    model = VMUNet(**kwargs).to(dev)
    initial_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    gen = torch.Generator().manual_seed(seed)
    x_latency = torch.randn(batch_size, in_channels, image_size, image_size, generator=gen).to(dev)

    meta = _machine_info(dev)
    meta["adamw"] = adamw
    model_info: dict[str, Any] = {
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in kwargs.items()},
        "image_size": image_size,
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    scan_shapes = None
    if macs or scans:
        model.eval().set_scan_backend(backend_names[0] if backend_names else "auto")
        counted = count_macs(model, x_latency[:1])
        scan_shapes = counted.pop("scan_shapes")
        if macs:
            model_info.update({k: int(v) for k, v in counted.items()})
            model_info["gmacs"] = {k.replace("_macs", ""): round(v / 1e9, 3) for k, v in counted.items()}

    results: list[dict[str, Any]] = []
    reference_out: torch.Tensor | None = None
    loss_fn = _loss_fn(num_classes)
    for backend in backend_names:
        from vmunet_monai.ops import resolve_backend_name

        try:
            resolve_backend_name(backend, x_latency)
        except (RuntimeError, ValueError) as err:
            results.append({"backend": backend, "skipped": str(err)})
            continue
        for dtype_name in dtypes:
            amp = _DTYPES[dtype_name]
            model.load_state_dict(initial_state)
            model.set_scan_backend(backend).eval()
            row_base = {"backend": backend, "dtype": dtype_name}

            # batch latency
            def forward_latency():
                with torch.inference_mode(), _autocast(dev, amp):
                    return model(x_latency)

            with peak_memory_tracker(dev) as mem:
                times = _time_calls(forward_latency, dev, repeats, warmup)
            row = {**row_base, "mode": "latency", "batch": batch_size, **_stats(times, batch_size)}
            row["peak_mem_mib"] = mem.peak_mib
            out = forward_latency().float()
            if reference_out is None:
                reference_out, row["max_abs_diff"] = out, 0.0
                reference_label = f"{backend}/{dtype_name}"
            else:
                row["max_abs_diff"] = float((out - reference_out).abs().max())
            row["diff_vs"] = reference_label
            results.append(row)
            _log_row(row, quiet)

            # inference throughput
            if throughput_batch_size:
                x_big = torch.randn(throughput_batch_size, in_channels, image_size, image_size, generator=gen).to(dev)

                def forward_big():
                    with torch.inference_mode(), _autocast(dev, amp):
                        return model(x_big)

                with peak_memory_tracker(dev) as mem:
                    times = _time_calls(forward_big, dev, repeats, warmup)
                row = {**row_base, "mode": "inference", "batch": throughput_batch_size}
                row.update(_stats(times, throughput_batch_size), peak_mem_mib=mem.peak_mib)
                results.append(row)
                _log_row(row, quiet)
                del x_big

            # the same two forwards replayed as CUDA graphs
            if cuda_graph and on_cuda:
                results.extend(
                    _graph_rows(model, x_latency, throughput_batch_size, amp, dev, repeats, warmup, gen, out, row_base, quiet)
                )

            # the same forwards under torch.compile
            if compile:
                results.extend(_compiled_rows(model, x_latency, throughput_batch_size, amp, dev, repeats, warmup, gen,
                                              out, row_base, quiet))

            # training step
            if train_batch_size and (backend != "reference" or train_reference):
                model.train()
                x_train = torch.randn(train_batch_size, in_channels, image_size, image_size, generator=gen).to(dev)
                target = _target(num_classes, train_batch_size, image_size, dev)
                train_step, losses = _adamw_train_step(model, model, x_train, target, loss_fn, amp, dev, adamw)
                with peak_memory_tracker(dev) as mem:
                    times = _time_calls(train_step, dev, repeats, warmup)
                row = {
                    **row_base,
                    "mode": "train",
                    "batch": train_batch_size,
                    **_stats(times, train_batch_size),
                    "peak_mem_mib": mem.peak_mib,
                    "first_loss": float(losses[0]),
                }
                results.append(row)
                _log_row(row, quiet)
                if compile:
                    model.load_state_dict(initial_state)
                    results.append(_compiled_train_row(model, x_train, target, loss_fn, amp, dev, repeats, warmup,
                                                       row_base, quiet, adamw))
                if cuda_graph and on_cuda:
                    model.load_state_dict(initial_state)
                    results.append(_graph_train_row(model, x_train, target, loss_fn, amp, dev, repeats, warmup,
                                                    row_base, quiet, adamw=adamw))
                    if compile:
                        model.load_state_dict(initial_state)
                        results.append(_graph_train_row(model, x_train, target, loss_fn, amp, dev, repeats, warmup,
                                                        row_base, quiet, compiled=True, adamw=adamw))
                del train_step, x_train, target
                model.eval()
            if on_cuda:
                torch.cuda.empty_cache()
    model.load_state_dict(initial_state)

    scan_rows: list[dict[str, Any]] = []
    if scans and scan_shapes:
        scan_repeats = max(1, min(repeats, 5))
        scan_rows = time_scans(scan_shapes, backend_names, dev, repeats=scan_repeats, warmup=min(warmup, 1))

    if hasattr(os, "getloadavg"):
        meta["load_average_end"] = os.getloadavg()
    report = BenchmarkReport(meta=meta, model=model_info, results=results, scans=scan_rows)
    if json_path:
        path = Path(json_path)
        meta["json_path"] = str(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2, default=str))
    if not quiet and not _called_from_cli():
        print(format_report(report))
    return report


def _graph_rows(model, x_latency, throughput_batch_size, amp, dev, repeats, warmup, gen, plain_out, row_base, quiet):
    """Latency and inference rows with the forward replayed as a CUDA graph (captured before timing)."""
    from vmunet_monai.networks.cuda_graph import CUDAGraphModule

    rows = []
    graphed = CUDAGraphModule(model)
    inputs = [("latency_graph", x_latency)]
    if throughput_batch_size:
        x_big = torch.randn(throughput_batch_size, *x_latency.shape[1:], generator=gen).to(dev)
        inputs.append(("inference_graph", x_big))
    for mode, x in inputs:

        def forward_graph(x=x):
            with torch.inference_mode(), _autocast(dev, amp):
                return graphed(x)

        try:
            forward_graph()  # capture outside the timed region and the memory measurement
        except Exception as err:  # a backend that cannot be captured is reported, not fatal
            rows.append({**row_base, "mode": mode, "skipped": f"capture failed: {type(err).__name__}: {err}"})
            continue
        with peak_memory_tracker(dev) as mem:
            times = _time_calls(forward_graph, dev, repeats, warmup)
        row = {**row_base, "mode": mode, "batch": x.shape[0], **_stats(times, x.shape[0]), "peak_mem_mib": mem.peak_mib}
        if mode == "latency_graph":  # replay must give the ordinary forward's output
            row["max_abs_diff"] = float((forward_graph().float() - plain_out).abs().max())
            row["diff_vs"] = "ordinary forward"
        rows.append(row)
        _log_row(row, quiet)
    graphed.reset()
    return rows


def _compiled_rows(model, x_latency, throughput_batch_size, amp, dev, repeats, warmup, gen, plain_out, row_base,
                   quiet):
    """Latency and inference rows with the model under ``torch.compile(fullgraph=True)`` (inference compiles
    without graph breaks: vmunet_monai/ops/scan_custom_op.py); compiled before timing."""
    rows = []
    torch._dynamo.reset()  # a fresh compile per (backend, precision)
    compiled = torch.compile(model, fullgraph=True)
    inputs = [("latency_compiled", x_latency)]
    if throughput_batch_size:
        inputs.append(("inference_compiled", torch.randn(throughput_batch_size, *x_latency.shape[1:],
                                                         generator=gen).to(dev)))
    for mode, x in inputs:

        def forward_compiled(x=x):
            with torch.no_grad(), _autocast(dev, amp):
                return compiled(x)

        try:
            forward_compiled()  # compile outside the timed region
        except Exception as err:  # a model that does not compile is reported, not fatal
            rows.append({**row_base, "mode": mode, "skipped": f"compile failed: {type(err).__name__}: {err}"[:500]})
            continue
        with peak_memory_tracker(dev) as mem:
            times = _time_calls(forward_compiled, dev, repeats, warmup)
        row = {**row_base, "mode": mode, "batch": x.shape[0], **_stats(times, x.shape[0]), "peak_mem_mib": mem.peak_mib}
        if mode == "latency_compiled":
            row["max_abs_diff"] = float((forward_compiled().float() - plain_out).abs().max())
            row["diff_vs"] = "ordinary forward"
        rows.append(row)
        _log_row(row, quiet)
    return rows


# AdamW implementations the benchmark offers (same maths): keyword arguments of torch.optim.AdamW
_ADAMW_IMPLS = {"fused": {"fused": True}, "foreach": {"foreach": True}}


def _adamw(model, adamw: str = "fused", **kwargs) -> torch.optim.AdamW:
    """The benchmark's AdamW over ``model``'s parameters (lr 1e-3, weight decay 1e-2) in implementation ``adamw``."""
    return torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2, **_ADAMW_IMPLS[adamw], **kwargs)


def _adamw_train_step(model, forward, x, target, loss_fn, amp, dev, adamw: str = "fused"):
    """A fresh AdamW over ``model``'s parameters and a step function running ``forward`` (the model or a compiled
    wrapper of it) under autocast; the losses it appends to the returned list."""
    optimizer = _adamw(model, adamw)
    losses: list[torch.Tensor] = []

    def train_step():
        optimizer.zero_grad(set_to_none=True)
        with _autocast(dev, amp):
            loss = loss_fn(forward(x), target)
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())

    return train_step, losses


def _graph_train_row(model, x_train, target, loss_fn, amp, dev, repeats, warmup, row_base, quiet,
                     compiled: bool = False, adamw: str = "fused"):
    """The training step (forward, loss, backward, AdamW step) captured once as a CUDA graph and replayed: the GPU's
    own step time, without the per-kernel launch cost of eager PyTorch (~1,500 launches per VM-UNet step). The
    recipe of PyTorch's "whole-network capture": a few eager steps on a side stream, ``AdamW(capturable=True)``,
    autocast without its weight-cast cache, static input and target.

    ``compiled``: the model runs under ``torch.compile(fullgraph=True)`` (row ``train_compiled_graph``; inductor fuses
    the elementwise work, layer norms and casts around the scan's custom ops); the first warm-up step compiles."""
    mode = "train_compiled_graph" if compiled else "train_graph"
    if compiled:
        torch._dynamo.reset()
    forward = torch.compile(model, fullgraph=True) if compiled else model
    optimizer = _adamw(model, adamw, capturable=True)

    def step():
        with torch.autocast(device_type=dev.type, dtype=amp or torch.float32, enabled=amp is not None,
                            cache_enabled=False):
            loss = loss_fn(forward(x_train), target)
        loss.backward()
        optimizer.step()
        return loss

    try:
        side = torch.cuda.Stream(dev)
        side.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(side):
            for _ in range(3):
                optimizer.zero_grad(set_to_none=True)
                step()
        torch.cuda.current_stream(dev).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        optimizer.zero_grad(set_to_none=True)
        with torch.cuda.graph(graph):
            static_loss = step()
    except Exception as err:  # a backend whose training step cannot be captured is reported, not fatal
        return {**row_base, "mode": mode, "skipped": f"capture failed: {type(err).__name__}: {err}"[:500]}
    with peak_memory_tracker(dev) as mem:
        times = _time_calls(graph.replay, dev, repeats, warmup)
    row = {**row_base, "mode": mode, "batch": x_train.shape[0], **_stats(times, x_train.shape[0]),
           "peak_mem_mib": mem.peak_mib, "last_loss": float(static_loss.detach())}
    _log_row(row, quiet)
    del graph, optimizer
    return row


def _compiled_train_row(model, x_train, target, loss_fn, amp, dev, repeats, warmup, row_base, quiet,
                        adamw: str = "fused"):
    """The training step with the model under ``torch.compile(fullgraph=True)`` (forward and backward compiled;
    the optimizer step stays eager); compiled before timing. The ``triton`` backend's fused core is a custom op
    with its own backward op, so the whole network compiles; a backend whose training path does not compile with
    ``fullgraph=True`` gets a skipped row saying why."""
    torch._dynamo.reset()
    train_step, losses = _adamw_train_step(model, torch.compile(model, fullgraph=True), x_train, target, loss_fn,
                                           amp, dev, adamw)
    try:
        train_step()  # compile outside the timed region
    except Exception as err:
        return {**row_base, "mode": "train_compiled", "skipped": f"compile failed: {type(err).__name__}: {err}"[:500]}
    with peak_memory_tracker(dev) as mem:
        times = _time_calls(train_step, dev, repeats, warmup)
    row = {**row_base, "mode": "train_compiled", "batch": x_train.shape[0], **_stats(times, x_train.shape[0]),
           "peak_mem_mib": mem.peak_mib, "first_loss": float(losses[0])}
    _log_row(row, quiet)
    return row


def _called_from_cli() -> bool:
    """True under ``vmunet-monai benchmark`` (python-fire prints the returned report itself)."""
    return Path(sys.argv[0]).name in ("vmunet-monai", "cli.py")


class BenchmarkReport(dict):
    """The results dict; prints as the text tables (so the ``vmunet-monai benchmark`` CLI shows those)."""

    def __str__(self) -> str:
        return format_report(self)


def _log_row(row: dict[str, Any], quiet: bool) -> None:
    if not quiet:
        print(
            f"  {row['backend']:>9s} {row['dtype']:>4s} {row['mode']:>9s} batch {row['batch']:>3d}: "
            f"{row['time_ms_median']:10.1f} ms",
            file=sys.stderr,
            flush=True,
        )


def _fmt(value: Any, spec: str = "") -> str:
    if value is None:
        return "-"
    try:
        return format(value, spec)
    except (TypeError, ValueError):
        return str(value)


def _load(values) -> str:
    return "-" if not values else "/".join(f"{v:.1f}" for v in values)


def format_report(report: dict[str, Any]) -> str:
    """The benchmark results as plain-text tables."""
    meta, model, lines = report["meta"], report["model"], []
    device = meta.get("gpu") or meta.get("cpu")
    lines.append(
        f"VM-UNet benchmark, {meta['date_utc']}, {device}, torch {meta['torch']}, {meta['threads']} threads, "
        f"load average {_load(meta.get('load_average_start'))} -> {_load(meta.get('load_average_end'))}, "
        f"AdamW {meta.get('adamw', 'foreach')}"
    )
    gm = model.get("gmacs", {})
    lines.append(
        f"parameters {model['parameters']:,}; input {model['image_size']}x{model['image_size']}; GMACs: thop-style "
        f"{_fmt(gm.get('thop'))}, einsum {_fmt(gm.get('einsum'))}, scan {_fmt(gm.get('scan'))}, "
        f"total {_fmt(gm.get('total'))}"
    )
    header = (
        f"{'backend':>10} {'dtype':>5} {'mode':>9} {'batch':>5} {'median ms':>10} {'min ms':>9} {'cpu ms':>9} "
        f"{'img/s':>8} {'peak MiB':>9} {'max|diff|':>10}"
    )
    lines += ["", header, "-" * len(header)]
    for row in report["results"]:
        if "skipped" in row:
            lines.append(f"{row['backend']:>10} skipped: {row['skipped']}")
            continue
        lines.append(
            f"{row['backend']:>10} {row['dtype']:>5} {row['mode']:>9} {row['batch']:>5} {row['time_ms_median']:>10.1f} "
            f"{row['time_ms_min']:>9.1f} {_fmt(row.get('cpu_time_ms_median'), '.1f'):>9} {row['images_per_s']:>8.2f} "
            f"{_fmt(row.get('peak_mem_mib'), '.0f'):>9} "
            f"{_fmt(row.get('max_abs_diff'), '.2e'):>10}"
        )
    if report.get("scans"):
        header = f"{'backend':>10} {'L':>12} {'D':>5} {'N':>3} {'calls':>5} {'median ms':>10} {'cpu ms':>9}"
        title = "selective scan alone (forward, no grad, batch 1; 4 directions x D channels):"
        lines += ["", title, header, "-" * len(header)]
        for row in report["scans"]:
            if "skipped" in row:
                lines.append(f"{row['backend']:>10} skipped: {row['skipped']}")
            elif row["L"] == "per forward":
                label = "per forward"
                lines.append(
                    f"{row['backend']:>10} {label:>12} {'':>15} {row['time_ms_median']:>10.1f} "
                    f"{row['cpu_time_ms_median']:>9.1f}"
                )
            else:
                lines.append(
                    f"{row['backend']:>10} {row['L']:>12} {row['D']:>5} {row['N']:>3} {row['calls_per_forward']:>5} "
                    f"{row['time_ms_median']:>10.1f} {row['cpu_time_ms_median']:>9.1f}"
                )
    if meta.get("json_path"):
        lines += ["", f"JSON written to {meta['json_path']}"]
    return "\n".join(lines)
