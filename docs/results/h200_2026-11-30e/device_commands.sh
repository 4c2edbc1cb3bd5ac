# Eleventh session (2026-11-30), device calls in order. Run from the repository root on the H200 machine with
# carry [.whl, .gpu/s] (git-ignored helper folders: the MONAI/ignite/fire wheels and these scripts).
# Code per call: k1-k3 at 3b732bb (+ the benchmark row of 3ba223c for k3), k4 at 3ba223c, k5-k6 the register-prefetch Gluon
# kernel (fda2188; k6 with rows two steps ahead), k7 the asynchronous-copy Gluon kernel (735674a).
# k1 ran an earlier form of k2_diag.py (only the 'hist2' knock-out); k5_check.py gained its kernel-name assertion for k7.

# ===== .gpu/s/env.sh =====
# sourced by every GPU call script: environment on the device machine
REPO=$(pwd)
export PYTHONPATH=/tmp/site:$REPO PYTHONUNBUFFERED=1
CALL0=$(date +%s)
elapsed() { echo $(( $(date +%s) - CALL0 )); }
setup() {
  python3 -c 'import monai, ignite, fire, nibabel' 2>/dev/null || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  python3 -c 'import torch, selective_scan_cuda' 2>/dev/null || bash .gpu/mamba/install_on_gpu.sh 2>&1 | tail -1
  python3 -c 'import torch, selective_scan_cuda, mamba_ssm, monai; print("mamba_ssm", mamba_ssm.__version__, "monai", monai.__version__)'
}

# ===== .gpu/s/k1.sh =====
# eleventh session, call 1: per-stage bwd_seq / fwd_seq kernel times with variants (history traffic, 16-ch programs, sub-segments); gluon check
source .gpu/s/env.sh
python3 -c 'import monai, ignite, fire, nibabel' 2>/dev/null || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
python3 -c 'import triton, torch; print("triton", triton.__version__, "torch", torch.__version__); import triton.experimental.gluon as g; import triton.experimental.gluon.language as gl; print("gluon ok", [n for n in dir(gl) if not n.startswith("_")][:400])' > $OUT/k1_gluon.log 2>&1; head -c 3000 $OUT/k1_gluon.log; echo
timeout 420 python3 .gpu/s/k1_diag.py "default;hist2;bwd_block_d=16;bwd_block_d=16,hist2;bwd_block_l=32,seg_len=64;bwd_block_l=16,seg_len=64" > $OUT/k1_diag.log 2>&1; grep -v Warn $OUT/k1_diag.log | tail -14
echo "end at $(elapsed) s"

# ===== .gpu/s/k2.sh =====
# eleventh session, call 2: knock-out variants of the backward (what costs what), pipelining depth; stage-1 core kernel table
source .gpu/s/env.sh
python3 -c 'import monai, ignite, fire, nibabel' 2>/dev/null || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
STAGES_RUN=12 timeout 300 python3 .gpu/s/k2_diag.py "default;noexp;nodb;nodc;nodb,nodc;nodudl;hist2,nodb,nodc;seq_stages=2;seq_stages=3;seq_stages=6" > $OUT/k2_diag.log 2>&1; grep -v Warn $OUT/k2_diag.log | tail -14
echo "diag at $(elapsed) s"
timeout 120 python3 scripts/gpu_profile.py core --stage 1 --dtype bf16 --kernels --top 40 > $OUT/k2_core1.log 2>&1; grep -v Warn $OUT/k2_core1.log | cut -c1-150 | tail -75
echo "end at $(elapsed) s"

# ===== .gpu/s/k3.sh =====
# eleventh session, call 3: whole training step of the torch.compile'd network captured as a CUDA graph
source .gpu/s/env.sh
python3 -c 'import monai, ignite, fire, nibabel' 2>/dev/null || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
timeout 280 python3 .gpu/s/k3_cgraph.py bf16 > $OUT/k3_cgraph_bf16.log 2>&1; grep -v Warn $OUT/k3_cgraph_bf16.log | tail -6
echo "bf16 at $(elapsed) s"
timeout 250 python3 .gpu/s/k3_cgraph.py fp32 > $OUT/k3_cgraph_fp32.log 2>&1; grep -v Warn $OUT/k3_cgraph_fp32.log | tail -6
echo "end at $(elapsed) s"

# ===== .gpu/s/k4.sh =====
# eleventh session, call 4: dC in the reverse pass (h_t carried from the step after) + one-kernel du sum: per-stage times, network, GPU tests
source .gpu/s/env.sh
python3 -c 'import monai, ignite, fire, nibabel' 2>/dev/null || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
python3 -c '
import torch
g = torch.Generator(device="cuda").manual_seed(0)
x = (torch.randn(4, 32, 4096, 192, device="cuda", generator=g) * 10).bfloat16()
a = x.sum(0); b = x.sum(0, dtype=torch.float32).bfloat16()
print("bf16 sum vs fp32 sum + cast: max diff", (a.float() - b.float()).abs().max().item(), "unequal", (a != b).sum().item())
' 2>&1 | tail -1
timeout 100 python3 .gpu/s/k2_diag.py "default;seq_stages=6" > $OUT/k4_diag.log 2>&1; grep -v Warn $OUT/k4_diag.log | tail -6
echo "diag at $(elapsed) s"
timeout 150 python3 scripts/benchmark.py --device cuda --backends triton --no-scans --cuda-graph --repeats 20 --dtype fp32,bf16 --json $OUT/k4_bench.json > $OUT/k4_bench.log 2>&1; grep -E "^ +triton" $OUT/k4_bench.log | tail -12; echo "bench at $(elapsed) s"
timeout 240 python3 -m pytest -q -p no:cacheprovider -rA tests/test_triton_ss2d.py > $OUT/k4_pytest_triton_gpu.log 2>&1; grep -E "passed|failed|error" $OUT/k4_pytest_triton_gpu.log | tail -3; echo "tests at $(elapsed) s"
echo "end at $(elapsed) s"

# ===== .gpu/s/k5.sh =====
# eleventh session, call 5: Gluon sequential backward: gradients vs the Triton kernel, per-stage kernel times, network
source .gpu/s/env.sh
python3 -c 'import monai, ignite, fire, nibabel' 2>/dev/null || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
timeout 120 python3 .gpu/s/k5_check.py > $OUT/k5_check.log 2>&1; grep -v Warn $OUT/k5_check.log | tail -12
echo "check at $(elapsed) s"
grep -q "^WORST" $OUT/k5_check.log || exit 0
timeout 150 python3 .gpu/s/k2_diag.py "default;bwd_gluon=1;bwd_gluon=1,bwd_maxnreg=0;bwd_gluon=1,bwd_maxnreg=168" > $OUT/k5_diag.log 2>&1; grep -v Warn $OUT/k5_diag.log | tail -8
echo "diag at $(elapsed) s"
VMUNET_TRITON_SCAN=bwd_gluon=1 timeout 150 python3 scripts/benchmark.py --device cuda --backends triton --no-scans --cuda-graph --repeats 20 --dtype fp32,bf16 --json $OUT/k5_bench.json > $OUT/k5_bench.log 2>&1; grep -E "^ +triton" $OUT/k5_bench.log | tail -12; echo "bench at $(elapsed) s"

# ===== .gpu/s/k6.sh =====
# eleventh session, call 6: Gluon backward with rows two steps ahead: per-stage times; GPU tests (gluon, remaining triton tests, benchmark graph rows)
source .gpu/s/env.sh
python3 -c 'import monai, ignite, fire, nibabel' 2>/dev/null || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
timeout 120 python3 .gpu/s/k2_diag.py "default;bwd_gluon=1;bwd_gluon=1,bwd_maxnreg=0" > $OUT/k6_diag.log 2>&1; grep -v Warn $OUT/k6_diag.log | tail -7
echo "diag at $(elapsed) s"
timeout 200 python3 -m pytest -q -p no:cacheprovider -rA tests/test_triton_ss2d.py -k "gluon or compiled_network or compile_for_hopper or sequential_backward or graph_train_rows" tests/test_benchmark.py > $OUT/k6_pytest_gpu.log 2>&1; grep -E "^(PASSED|FAILED|ERROR|SKIPPED)|passed|failed" $OUT/k6_pytest_gpu.log | tail -22; echo "tests at $(elapsed) s"

# ===== .gpu/s/k7.sh =====
# eleventh session, call 7: Gluon backward with asynchronous-copy rings (cp.async, 16-byte reads): gradients vs Triton, per-stage times, network bf16 if faster, GPU tests
source .gpu/s/env.sh
python3 -c 'import monai, ignite, fire, nibabel' 2>/dev/null || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
timeout 70 python3 .gpu/s/k5_check.py > $OUT/k7_check.log 2>&1; grep -v Warn $OUT/k7_check.log | tail -11
echo "check at $(elapsed) s"
grep -q "^WORST" $OUT/k7_check.log || exit 0
timeout 60 python3 .gpu/s/k2_diag.py "default;bwd_gluon=1" > $OUT/k7_diag.log 2>&1; grep -v Warn $OUT/k7_diag.log | tail -6
echo "diag at $(elapsed) s"
python3 - <<'PY' && { VMUNET_TRITON_SCAN=bwd_gluon=1 timeout 80 python3 scripts/benchmark.py --device cuda --backends triton --no-scans --cuda-graph --repeats 20 --dtype bf16 --json $OUT/k7_bench.json > $OUT/k7_bench.log 2>&1; grep -E "^ +triton" $OUT/k7_bench.log | tail -6; echo "bench at $(elapsed) s"; }
import re, os, sys
t = {m.group(2): float(m.group(1)) for m in re.finditer(r"bwd_seq ([0-9.]+) ms, all kernels [0-9.]+ ms  (\S+)", open(os.environ["OUT"] + "/k7_diag.log").read())}
print("15-core bwd", t); sys.exit(0 if t.get("bwd_gluon=1", 1e9) < 0.97 * t.get("default", 0) else 1)
PY
timeout 110 python3 -m pytest -q -p no:cacheprovider -rA tests/test_triton_ss2d.py tests/test_benchmark.py -k "gluon or graph_train_rows" > $OUT/k7_pytest_gpu.log 2>&1; grep -E "^(PASSED|FAILED|ERROR|SKIPPED)|passed|failed" $OUT/k7_pytest_gpu.log | tail -8; echo "tests at $(elapsed) s"

# ===== .gpu/s/k2_diag.py =====
# """Eleventh session diagnostic: per-stage kernel times of fwd_seq / bwd_seq (profiler), with variants:
# ScanConfig specs and knock-out variants of the bwd kernel (SUBS: wrong values, timing only)."""
# import importlib.util, sys, re, os
# from pathlib import Path
# import torch
# sys.path.insert(0, "scripts")
# from gpu_profile import make_inputs, STAGE_SHAPES, CORES_PER_STAGE
# from vmunet_monai.ops import ss2d_triton as st
# from vmunet_monai.ops import ss2d_triton_seq_kernels as seq
# from torch.profiler import profile, ProfilerActivity
# 
# src = Path(seq.__file__).read_text().replace("from .ss2d_triton_kernels", "from vmunet_monai.ops.ss2d_triton_kernels")
# SUBS = {
#     "hist2": [("hist_base + (t - lo) * STATE", "hist_base + ((t - lo) % 2) * STATE")],
#     "noexp": [("                da = tl.exp2(a2 * dlt[None, :])", "                da = a2 * dlt[None, :] + 1.0")],
#     "nodb": [("                tl.store(db_base + p * sdb_l + offs_n * sdb_n, tl.sum(g * (dlt * uf)[None, :], axis=1), mask=mask_n)", "")],
#     "nodc": [("""                tl.store(dc_base + p * sdc_l + offs_n * sdc_n, tl.sum(h * dy.to(tl.float32)[None, :], axis=1),
#                          mask=mask_n)""", "")],
#     "nodudl": [("tl.store(du_base + p * sdu_l + offs_d * sdu_d, gb * dlt + dskip * dyf, mask=mask_d)", "dd_acc += gb * dlt"),
#                ("tl.store(ddl_base + p * sddl_l + offs_d * sddl_d, d_dlt * _delta_grad(raw, SOFTPLUS), mask=mask_d)", "dd_acc += d_dlt")],
# }
# mods = {}
# def variant_kernel(names):
#     key = tuple(sorted(names))
#     if key not in mods:
#         s2 = src
#         for n in names:
#             for a, b in SUBS[n]:
#                 assert a in s2, (n, a)
#                 s2 = s2.replace(a, b)
#         p = Path(f"/tmp/seq_{'_'.join(key)}.py"); p.write_text(s2)
#         spec = importlib.util.spec_from_file_location(p.stem, p); m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
#         mods[key] = m.bwd_seq_kernel
#     return mods[key]
# kern = st._kernels()
# orig_bwd = kern["bwd_seq"]
# amp = torch.autocast("cuda", dtype=torch.bfloat16)
# variants = [v for v in (sys.argv[1] if len(sys.argv) > 1 else "default;hist2;bwd_block_d=16;bwd_block_l=32,seg_len=64").split(";")]
# before = st.get_config()
# tot = {v: [0.0, 0.0] for v in variants}
# for stage in [int(c) for c in os.environ.get("STAGES_RUN", "1234")]:
#     x, params = make_inputs(stage, 32, torch.device("cuda"))
#     row = []
#     for v in variants:
#         parts = [q for q in v.split(",") if q and q != "default"]
#         subs = [q for q in parts if q in SUBS]
#         spec_s = ",".join(q for q in parts if q not in SUBS)
#         st.set_config(before, **(st.parse_config_spec(spec_s) if spec_s else {}))
#         kern["bwd_seq"] = variant_kernel(subs) if subs else orig_bwd
#         def step():
#             with amp:
#                 y = st.ss2d_scan_triton(x, *params)
#             y.float().square().mean().backward()
#         for _ in range(3):
#             step()
#         torch.cuda.synchronize()
#         with profile(activities=[ProfilerActivity.CUDA]) as prof:
#             for _ in range(5):
#                 step()
#             torch.cuda.synchronize()
#         ks = {e.key: e.device_time_total / 1e3 / 5 for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA}
#         allk = sum(ks.values())
#         b = sum(v for kk, v in ks.items() if kk.startswith("bwd_seq")); f = ks.get("fwd_seq_kernel", 0.0)
#         tot[v][0] += CORES_PER_STAGE[stage] * b; tot[v][1] += CORES_PER_STAGE[stage] * allk
#         info = st.kernel_info().get("bwd", {})
#         row.append(f"{v}: bwd {b:.3f} fwd {f:.3f} all {allk:.3f} ms regs {info.get('n_regs')} sp {info.get('n_spills')}")
#     print(f"stage {stage} {STAGE_SHAPES[stage][:3]}: " + " | ".join(row), flush=True)
# kern["bwd_seq"] = orig_bwd
# st.set_config(before)
# for v in variants:
#     print(f"  15 cores: bwd_seq {tot[v][0]:.2f} ms, all kernels {tot[v][1]:.2f} ms  {v}")

# ===== .gpu/s/k3_cgraph.py =====
# """Eleventh session: train_graph vs train_compiled_graph rows (paper VM-UNet, batch 32, 256x256, triton)."""
# import sys, time, torch
# from vmunet_monai.networks.nets import VMUNet
# from vmunet_monai import benchmark as bm
# dev = torch.device("cuda")
# dtypes = sys.argv[1].split(",") if len(sys.argv) > 1 else ["bf16"]
# torch.manual_seed(0)
# model = VMUNet(in_channels=3, out_channels=1).to(dev)
# init = {k: v.detach().clone() for k, v in model.state_dict().items()}
# model.set_scan_backend("triton").train()
# gen = torch.Generator().manual_seed(0)
# x = torch.randn(32, 3, 256, 256, generator=gen).to(dev)
# target = bm._target(1, 32, 256, dev)
# loss_fn = bm._loss_fn(1)
# for dt in dtypes:
#     amp = bm._DTYPES[dt]
#     for compiled in (False, True):
#         model.load_state_dict(init)
#         t0 = time.time()
#         row = bm._graph_train_row(model, x, target, loss_fn, amp, dev, 20, 3, {"backend": "triton", "dtype": dt}, True, compiled=compiled)
#         print(dt, row.get("mode"), "img/s %.1f" % row.get("images_per_s", float("nan")) if "images_per_s" in row else row,
#               "median ms %.2f" % row.get("time_ms_median", float("nan")), "peak MiB", row.get("peak_mem_mib"),
#               "loss", row.get("last_loss"), "wall %.0f s" % (time.time() - t0), flush=True)
#         torch.cuda.empty_cache()

# ===== .gpu/s/k5_check.py =====
# """Gluon vs Triton sequential backward: gradients of the fused core at the 4 stage shapes (batch 4), fp32 and bf16."""
# import sys, torch
# sys.path.insert(0, "scripts")
# from gpu_profile import make_inputs, STAGE_SHAPES
# from vmunet_monai.ops import ss2d_triton as st
# print("gluon kernel:", st._kernels()["bwd_seq_gluon"] is not None)
# before = st.get_config()
# worst = 0.0
# for dtype in ("fp32", "bf16"):
#     amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == "bf16")
#     for stage in (1, 2, 3, 4):
#         x, params = make_inputs(stage, 4, torch.device("cuda"))
#         grads = []
#         for g in (0, 1):
#             st.set_config(before, bwd_gluon=g)
#             for t in [x, *params]:
#                 t.grad = None
#             with amp:
#                 y = st.ss2d_scan_triton(x, *params)
#             (y.float() * torch.linspace(-1, 1, y.shape[-1], device="cuda")).square().mean().backward()
#             grads.append([t.grad.detach().float().clone() for t in [x, *params]])
#             assert st._LAST_BWD_KERNEL[0] == ("bwd_seq_gluon_kernel" if g else "bwd_seq_kernel"), st._LAST_BWD_KERNEL
#         rel = [((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item() for a, b in zip(*grads)]
#         worst = max(worst, max(rel))
#         print(f"{dtype} stage {stage}: max |gluon - triton| / max |triton| per grad (x, x_proj, dt_w, dt_b, A_logs, Ds):",
#               " ".join(f"{r:.1e}" for r in rel), flush=True)
# st.set_config(before)
# print("WORST", worst)
