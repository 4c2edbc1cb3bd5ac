# Twelfth session (2026-11-30), device calls in order. Run from the repository root on the H200 machine with
# carry [.whl, .gpu/s] (git-ignored helper folders: the MONAI/ignite/fire wheels and these scripts); .gpu/s/env.sh is
# the eleventh session's (docs/results/h200_2026-11-30e/device_commands.sh).
# Code per call: m1 at cf4b395 (eleventh session's final commit); m2 the two-steps-per-iteration Gluon backward (tried,
# not committed: bwd_gluon=2 / STEPS=2); m3 the Gluon forward (70dc2cc); m4 the dt forward kernel microbenchmark
# (kernel of 9183cc3 with native-dtype tl.dot; the committed kernel feeds tl.dot fp32 copies in TF32, checked in m6);
# m5 70dc2cc + the dt forward wired in (bf16 rows handed to the Gluon kernels by test_upcast_16bit_changes_nothing:
# the compile failure that 9183cc3 fixes); m6-m8 at 9183cc3.
# Calls m7 / m8 were run as one-line commands:
#   m7: timeout 220 python3 -m pytest -q -p no:cacheprovider -rA tests/test_graph_train_step.py > $OUT/m7_pytest_graph.log
#   m8: timeout 150 python3 -m pytest -q -p no:cacheprovider -rA tests/test_cuda_graph.py > $OUT/m8_pytest_cuda_graph.log
#   m4: timeout 200 python3 .gpu/s/m4_dt.py > $OUT/m4_dt.log

# ===== .gpu/s/m1.sh =====
# twelfth session, call 1: profile of the current default (Gluon backward): kernels, ops by shape; benchmark fp32+bf16; per-stage kernel times
source .gpu/s/env.sh
python3 -c 'import monai, ignite, fire, nibabel' 2>/dev/null || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
timeout 150 python3 .gpu/s/m1_ops.py bf16 > $OUT/m1_ops_bf16.log 2>&1; grep -v Warn $OUT/m1_ops_bf16.log | cut -c1-200 | head -120
echo "ops at $(elapsed) s"
timeout 100 python3 scripts/gpu_profile.py network --dtype bf16 --kernels --top 45 > $OUT/m1_profile_net_bf16.log 2>&1; grep -v Warn $OUT/m1_profile_net_bf16.log | cut -c1-150 | tail -50
echo "prof at $(elapsed) s"
timeout 170 python3 scripts/benchmark.py --device cuda --backends triton --no-scans --cuda-graph --repeats 20 --dtype fp32,bf16 --json $OUT/m1_bench.json > $OUT/m1_bench.log 2>&1; grep -E "^ +triton" $OUT/m1_bench.log | tail -12; echo "bench at $(elapsed) s"
timeout $(( 560 - $(elapsed) )) python3 scripts/gpu_profile.py scan-configs --kernel-times --configs "default;bwd_gluon=0" --dtype bf16 > $OUT/m1_scan_configs.log 2>&1; grep -v Warn $OUT/m1_scan_configs.log | tail -30
echo "end at $(elapsed) s"

# ===== .gpu/s/m1_ops.py =====
"""Twelfth session: device time of the bf16 training step grouped by aten op and input shapes (what the copies /
reductions / elementwise kernels belong to)."""
import sys
import torch
from torch.profiler import ProfilerActivity, profile

from vmunet_monai.benchmark import _adamw_train_step, _loss_fn, _target
from vmunet_monai.networks.nets import VMUNet

dtype = sys.argv[1] if len(sys.argv) > 1 else "bf16"
dev = torch.device("cuda")
torch.manual_seed(0)
model = VMUNet(in_channels=3, out_channels=1, scan_backend="triton").to(dev)
x = torch.randn(32, 3, 256, 256, device=dev)
target = _target(1, 32, 256, dev)
step, _ = _adamw_train_step(model, model, x, target, _loss_fn(1), torch.bfloat16 if dtype == "bf16" else None, dev)
for _ in range(3):
    step()
torch.cuda.synchronize()
with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=True) as prof:
    step()
    torch.cuda.synchronize()
rows = [e for e in prof.key_averages(group_by_input_shape=True) if e.self_device_time_total > 0]
rows.sort(key=lambda e: e.self_device_time_total, reverse=True)
tot = sum(e.self_device_time_total for e in rows)
print(f"self device time {tot/1e3:.2f} ms")
for e in rows[:70]:
    print(f"{e.self_device_time_total/1e3:8.3f} ms x{e.count:<4d} {e.key[:40]:40s} {str(e.input_shapes)[:150]}")
by_op = {}
for e in rows:
    by_op[e.key] = by_op.get(e.key, 0) + e.self_device_time_total
print("--- by op")
for k, v in sorted(by_op.items(), key=lambda kv: -kv[1])[:40]:
    print(f"{v/1e3:8.3f} ms {k}")

# ===== .gpu/s/m2.sh =====
# twelfth session, call 2: Gluon backward with two time steps per loop iteration (bwd_gluon=2): correctness, per-stage times, network
source .gpu/s/env.sh
python3 -c 'import monai, ignite, fire, nibabel' 2>/dev/null || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
timeout 200 python3 -m pytest -q -p no:cacheprovider -rA tests/test_triton_ss2d.py -k "gluon" > $OUT/m2_pytest_gluon.log 2>&1; grep -E "^(PASSED|FAILED|ERROR)|passed|failed" $OUT/m2_pytest_gluon.log | tail -14; echo "tests at $(elapsed) s"
timeout 200 python3 scripts/gpu_profile.py scan-configs --kernel-times --configs "default;bwd_gluon=2;bwd_gluon=2,seq_stages=3;bwd_gluon=2,seq_stages=2;bwd_gluon=2,seq_stages=6" --dtype bf16 > $OUT/m2_scan_configs.log 2>&1; grep -v Warn $OUT/m2_scan_configs.log | tail -12
echo "configs at $(elapsed) s"
VMUNET_TRITON_SCAN=bwd_gluon=2 timeout $(( 570 - $(elapsed) )) python3 scripts/benchmark.py --device cuda --backends triton --no-scans --cuda-graph --repeats 20 --dtype bf16 --json $OUT/m2_bench.json > $OUT/m2_bench.log 2>&1; grep -E "^ +triton" $OUT/m2_bench.log | tail -6; echo "bench at $(elapsed) s"

# ===== .gpu/s/m3.sh =====
# twelfth session, call 3: Gluon sequential forward (fwd_gluon=1): tests, per-stage kernel times, network benchmark
source .gpu/s/env.sh
python3 -c 'import monai, ignite, fire, nibabel' 2>/dev/null || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
timeout 230 python3 -m pytest -q -p no:cacheprovider -rA tests/test_triton_ss2d.py -k "gluon or network" > $OUT/m3_pytest.log 2>&1; grep -E "^(PASSED|FAILED|ERROR)|passed|failed|Error" $OUT/m3_pytest.log | tail -24; echo "tests at $(elapsed) s"
timeout 150 python3 scripts/gpu_profile.py scan-configs --kernel-times --configs "default;fwd_gluon=0;fwd_seq_block_d=32,fwd_seq_warps=1" --dtype bf16 > $OUT/m3_scan_configs.log 2>&1; grep -v Warn $OUT/m3_scan_configs.log | tail -9 | cut -c1-400
echo "configs at $(elapsed) s"
timeout $(( 570 - $(elapsed) )) python3 scripts/benchmark.py --device cuda --backends triton --no-scans --cuda-graph --repeats 20 --dtype bf16,fp32 --json $OUT/m3_bench.json > $OUT/m3_bench.log 2>&1; grep -E "^ +triton" $OUT/m3_bench.log | tail -12; echo "bench at $(elapsed) s"

# ===== .gpu/s/m4_dt.py =====
"""Twelfth session: the dt projection + softplus forward as one Triton kernel against bmm + softplus_delta_kernel, at
the four stage shapes, batch 32 (bf16 and fp32 activations): time per call and the largest difference."""
import torch, triton
from vmunet_monai.ops import ss2d_triton as st
from vmunet_monai.ops import dt_proj_triton_kernels as dtk

def timeit(fn, n=30):
    for _ in range(3): fn()
    torch.cuda.synchronize()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record()
    for _ in range(n): fn()
    e.record(); torch.cuda.synchronize()
    return s.elapsed_time(e) / n

shapes = {1: (64, 192, 6), 2: (32, 384, 12), 3: (16, 768, 24), 4: (8, 1536, 48)}
cores = {1: 3, 2: 4, 3: 4, 4: 4}
tiles = [(64, 64, 4), (128, 64, 4), (64, 128, 4), (32, 64, 4), (128, 128, 8)]
for dtype in (torch.bfloat16, torch.float32):
    tot = [0.0] * (1 + len(tiles))
    for stage, (hw, d, r) in shapes.items():
        g = torch.Generator(device="cuda").manual_seed(0)
        m = 32 * hw * hw
        c = r + 32
        x_dbl = (torch.randn(32, hw * hw, 4, c, device="cuda", generator=g)).to(dtype)
        dt_w = (torch.rand(4, d, r, device="cuda", generator=g) * 2 - 1) * r ** -0.5
        bias = torch.randn(4 * d, device="cuda", generator=g) - 4.0
        def ref():
            return st._softplus_delta(st._ss2d_delta(x_dbl, dt_w, r)[1], bias)
        want = ref()
        t_ref = timeit(ref)
        cells = [f"bmm+softplus {t_ref:.3f}"]
        tot[0] += cores[stage] * t_ref
        prec = st._dot_precision(dtype)
        w = st._dt_weight(dt_w, x_dbl)
        xc = x_dbl.contiguous()
        for i, (bm, bd, wp) in enumerate(tiles):
            rp = max(16, st._next_pow2(r))
            out = torch.empty((4, m, d), device="cuda", dtype=torch.float32)
            def fused():
                dtk.dt_softplus_fwd_kernel[(triton.cdiv(m, bm), 4, triton.cdiv(d, bd))](
                    xc, w, bias, out, m, d, 4 * c, c, R=r, RP=rp, BLOCK_M=bm, BLOCK_D=bd, PRECISION=prec, num_warps=wp)
                return out
            got = fused().view_as(want)
            t = timeit(fused)
            tot[i + 1] += cores[stage] * t
            diff = ((got - want).abs() / want.abs().clamp_min(1e-6)).max().item()
            cells.append(f"{bm}x{bd}x{wp} {t:.3f} (rel {diff:.1e})")
        print(dtype, "stage", stage, " | ".join(cells), flush=True)
    print(dtype, "15-core totals ms:", " ".join(f"{t:.3f}" for t in tot), flush=True)

# ===== .gpu/s/m5.sh =====
# twelfth session, call 5: fused dt forward (bf16) + Gluon forward: tests, benchmark, profile; AdamW foreach vs fused
source .gpu/s/env.sh
python3 -c 'import monai, ignite, fire, nibabel' 2>/dev/null || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
timeout 200 python3 -m pytest -q -p no:cacheprovider -rA tests/test_triton_ss2d.py -k "dt_ or fused_dt or softplus or upcast or gluon or network or compile_for_hopper" > $OUT/m5_pytest.log 2>&1; grep -E "^(PASSED|FAILED|ERROR)|passed|failed" $OUT/m5_pytest.log | tail -30; echo "tests at $(elapsed) s"
timeout 150 python3 scripts/benchmark.py --device cuda --backends triton --no-scans --cuda-graph --repeats 20 --dtype bf16,fp32 --json $OUT/m5_bench.json > $OUT/m5_bench.log 2>&1; grep -E "^ +triton" $OUT/m5_bench.log | tail -12; echo "bench at $(elapsed) s"
timeout 60 python3 .gpu/s/m5_adamw.py > $OUT/m5_adamw.log 2>&1; tail -3 $OUT/m5_adamw.log
timeout $(( 560 - $(elapsed) )) python3 scripts/gpu_profile.py network --dtype bf16 --kernels --top 40 > $OUT/m5_profile_net_bf16.log 2>&1; grep -v Warn $OUT/m5_profile_net_bf16.log | cut -c1-150 | grep -A 30 "training step"
echo "end at $(elapsed) s"

# ===== .gpu/s/m5_adamw.py =====
"""Twelfth session: AdamW step alone on VM-UNet's parameters (capturable, as in the graph step): foreach vs fused."""
import torch
from vmunet_monai.networks.nets import VMUNet
m = VMUNet(in_channels=3, out_channels=1, scan_backend="triton").cuda()
for p in m.parameters():
    p.grad = torch.randn_like(p)
for kw in ({"foreach": True}, {"fused": True}):
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=1e-2, capturable=True, **kw)
    for _ in range(3):
        opt.step()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    s = torch.cuda.Stream(); s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        opt.step()
    torch.cuda.current_stream().wait_stream(s)
    with torch.cuda.graph(g):
        opt.step()
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    g.replay(); torch.cuda.synchronize()
    e0.record()
    for _ in range(50):
        g.replay()
    e1.record(); torch.cuda.synchronize()
    print(kw, f"{e0.elapsed_time(e1) / 50:.3f} ms per step (graph replay)")

# ===== .gpu/s/m6.sh =====
# twelfth session, call 6 (final): Gluon tests after a upcast_16bit=0 run, dt forward, graph training step with fused AdamW; benchmark
source .gpu/s/env.sh
python3 -c 'import monai, ignite, fire, nibabel' 2>/dev/null || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
timeout 200 python3 -m pytest -q -p no:cacheprovider -rA tests/test_triton_ss2d.py -k "upcast or gluon or dt_ or fused_dt" tests/test_graph_train_step.py > $OUT/m6_pytest.log 2>&1; grep -E "^(PASSED|FAILED|ERROR)|passed|failed" $OUT/m6_pytest.log | tail -32; echo "tests at $(elapsed) s"
timeout $(( 400 - $(elapsed) )) python3 scripts/benchmark.py --device cuda --backends triton --no-scans --cuda-graph --repeats 20 --dtype bf16,fp32 --json $OUT/m6_bench.json > $OUT/m6_bench.log 2>&1; grep -E "^ +triton|AdamW" $OUT/m6_bench.log | tail -13; echo "bench at $(elapsed) s"

