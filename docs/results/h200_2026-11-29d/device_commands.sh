# Device calls of the fourth H200 session (2026-11-29, 20:1x-20:45 UTC), in order; env.sh was sourced by each.
# Call D1 (d.sh as below, with --bwd-only on the check): first sequential backward ((BLOCK_D, N) state, no pipelining) -> triton_check_seq_v1.log
# Call D2 (d.sh): transposed (N, BLOCK_D) state + one-step manual prefetch, forward and backward -> triton_check_seq_transposed_prefetch.log
# Call E (e.sh): tl.range(num_stages) pipelining -> triton_check_seq_pipelined.log, bench_seq_fwd_seg16.* (benchmark with the sweep's recommendation)
# Call F (f.sh): segment-parallel sequential backward (bwd_par) -> triton_check_bwd_par.log, bench_bwd_par8.*, pytest_triton_gpu.log
# Call G (g.sh): final defaults (VMUNET_TRITON_SCAN=bwd_par=1) -> bench_final.*, curves.log, backend_loss_curves.json
# Call H (h.sh): the committed code (de8c5c2): tests/test_triton_ss2d.py on the GPU -> pytest_triton_gpu_final.log

### env.sh
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

### d.sh
# call D (fourth session): sequential backward kernel: GPU tests, parity, per-stage timings, backward sweep
source .gpu/s/env.sh
setup || exit 1; echo "setup done at $(elapsed) s"
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_triton_ss2d.py -k "sequential or vanishing or match_reference or deterministic" > $OUT/pytest_seq.log 2>&1; echo "pytest rc=$? at $(elapsed) s"; tail -3 $OUT/pytest_seq.log; grep -E "^E  " $OUT/pytest_seq.log | head -10
timeout $(( 590 - $(elapsed) )) python3 scripts/gpu_triton_check.py --no-torch-path --budget $(( 570 - $(elapsed) )) > $OUT/triton_check.log 2>&1; echo "check rc=$? at $(elapsed) s"
grep -v "^  ok" $OUT/triton_check.log | grep -v -i warn | tail -75 | cut -c1-250

### e.sh
# call E (fourth session): pipelined sequential kernels: GPU tests, parity, timings, sweep (tiles, stages, seg_len),
# then the whole-network benchmark with the recommended configuration
source .gpu/s/env.sh
setup || exit 1; echo "setup done at $(elapsed) s"
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_triton_ss2d.py -k "sequential or vanishing" > $OUT/pytest_seq.log 2>&1; echo "pytest rc=$? at $(elapsed) s"; tail -1 $OUT/pytest_seq.log; grep -E "^E  " $OUT/pytest_seq.log | head -10
timeout 400 python3 scripts/gpu_triton_check.py --no-torch-path --budget 330 > $OUT/triton_check.log 2>&1; echo "check rc=$? at $(elapsed) s"
grep -v "^  ok" $OUT/triton_check.log | grep -v -i warn | sed -n '/^\[4\]/,$p' | cut -c1-250
REC=$(grep -o "RECOMMENDED: VMUNET_TRITON_SCAN=.*" $OUT/triton_check.log | cut -d= -f2-); echo "REC=$REC"
VMUNET_TRITON_SCAN=$REC timeout $(( 590 - $(elapsed) )) python3 scripts/benchmark.py --device cuda --backends triton --dtype fp32,bf16 --no-scans --cuda-graph --json $OUT/bench.json > $OUT/bench.log 2>&1; echo "bench rc=$? at $(elapsed) s"; grep -v INFO $OUT/bench.log | tail -14

### f.sh
# call F (fourth session): segment-parallel sequential backward: GPU tests, parity, timings, sweep (bwd_par, stages,
# seg_len), whole-network benchmark with the default configuration
source .gpu/s/env.sh
setup || exit 1; echo "setup done at $(elapsed) s"
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_triton_ss2d.py -k "sequential or vanishing or match_reference or deterministic or segment" > $OUT/pytest_seq.log 2>&1; echo "pytest rc=$? at $(elapsed) s"; tail -1 $OUT/pytest_seq.log; grep -E "^E  |FAILED" $OUT/pytest_seq.log | head -10
timeout 330 python3 scripts/gpu_triton_check.py --no-torch-path --budget 250 > $OUT/triton_check.log 2>&1; echo "check rc=$? at $(elapsed) s"
grep -v "^  ok" $OUT/triton_check.log | grep -v -i warn | sed -n '/^\[1\]/,$p' | grep -v "^\[2\]" | cut -c1-250
timeout $(( 595 - $(elapsed) )) python3 scripts/benchmark.py --device cuda --backends triton --dtype fp32,bf16 --no-scans --cuda-graph --json $OUT/bench.json > $OUT/bench.log 2>&1; echo "bench rc=$? at $(elapsed) s"; grep -v INFO $OUT/bench.log | tail -14

### g.sh
# call G (fourth session): final defaults (sequential backward, one program per segment chain): whole-network
# benchmark, then 200-step loss curves on real ISIC images, triton vs mamba_ssm
source .gpu/s/env.sh
export VMUNET_TRITON_SCAN=bwd_par=1
setup || exit 1; echo "setup done at $(elapsed) s"
timeout 220 python3 scripts/benchmark.py --device cuda --backends triton --dtype fp32,bf16 --no-scans --cuda-graph --json $OUT/bench.json > $OUT/bench.log 2>&1; echo "bench rc=$? at $(elapsed) s"; grep -v INFO $OUT/bench.log | tail -13
timeout $(( 490 - $(elapsed) )) python3 scripts/compare_backend_training.py --data_dir .gpu/isic600 --backends triton mamba_ssm --steps 200 --amp bf16 --json $OUT/backend_loss_curves.json > $OUT/curves.log 2>&1; echo "curves rc=$? at $(elapsed) s"; tail -8 $OUT/curves.log

### h.sh
# call H (fourth session): the committed kernels (de8c5c2) on the GPU: the Triton backend's test file
source .gpu/s/env.sh
setup || exit 1; echo "setup done at $(elapsed) s"
timeout $(( 270 - $(elapsed) )) python3 -m pytest -q -p no:cacheprovider tests/test_triton_ss2d.py -x -rs > $OUT/pytest_triton_gpu_final.log 2>&1; echo "pytest rc=$? at $(elapsed) s"; tail -4 $OUT/pytest_triton_gpu_final.log; grep -E "^E  |FAILED" $OUT/pytest_triton_gpu_final.log | head
