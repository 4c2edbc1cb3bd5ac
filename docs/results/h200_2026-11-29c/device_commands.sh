# Device calls of the third H200 session (2026-11-29, 18:5x-19:2x UTC), in order; env.sh was sourced by each.
# Call A (a.sh): first adjoint kernel (h_t - delta B u form): GPU tests + check/sweep -> triton_check_first_adjoint.log
# Call B (b.sh): gather form + upcast_16bit -> pytest_triton_gpu_full.log, triton_check_sweep.log
# Call C (c.sh): final adjoint kernel (h_{t-1} scan + adjoint scan) -> compare_bwd.log, pytest_triton_gpu_subset.log, bench.*, curves.log
# Call D: loss curves with mamba_ssm first (its own repeat) -> curves_mamba_repeat.log
# Call E: 16-bit gradient partials -> bench_lowmem.*

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

### a.sh
# call A: GPU tests of the triton backend, then parity + timings + backward tile sweep
source .gpu/s/env.sh
nvidia-smi -L; setup || exit 1; echo "setup done at $(elapsed) s"
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_triton_ss2d.py -rs > $OUT/pytest_triton_gpu.log 2>&1; echo "pytest rc=$? at $(elapsed) s"; tail -5 $OUT/pytest_triton_gpu.log
timeout $(( 575 - $(elapsed) )) python3 scripts/gpu_triton_check.py --bwd-only --no-torch-path --budget $(( 540 - $(elapsed) )) > $OUT/triton_check.log 2>&1; echo "check rc=$? at $(elapsed) s"
grep -v "^  ok" $OUT/triton_check.log | tail -60

### b.sh
# call B: GPU tests of the triton backend, then parity + timings + backward tile sweep
source .gpu/s/env.sh
nvidia-smi -L; setup || exit 1; echo "setup done at $(elapsed) s"
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_triton_ss2d.py -rs > $OUT/pytest_triton_gpu.log 2>&1; echo "pytest rc=$? at $(elapsed) s"; tail -3 $OUT/pytest_triton_gpu.log; grep -E "^E  " $OUT/pytest_triton_gpu.log | head -10
timeout $(( 580 - $(elapsed) )) python3 scripts/gpu_triton_check.py --bwd-only --no-torch-path --budget $(( 560 - $(elapsed) )) > $OUT/triton_check.log 2>&1; echo "check rc=$? at $(elapsed) s"
grep -v "^  ok" $OUT/triton_check.log | grep -v -i "warn" | tail -62 | cut -c1-240

### c.sh
# call C: backward-kernel comparison (parity + timing; picks the faster correct one), GPU tests of the kernels,
# whole-network benchmark (triton vs mamba_ssm, CUDA graphs), 200-step loss curves on real ISIC images
source .gpu/s/env.sh
setup || exit 1; echo "setup done at $(elapsed) s"
timeout 150 python3 scripts/gpu_triton_check.py --compare-bwd > $OUT/compare_bwd.log 2>&1; echo "compare rc=$? at $(elapsed) s"
grep -v "^  ok" $OUT/compare_bwd.log | cut -c1-200 | tail -16
BEST=$(grep -o "BEST_BWD_ADJOINT=[01]" $OUT/compare_bwd.log | cut -d= -f2); export VMUNET_TRITON_SCAN=bwd_adjoint=${BEST:-0}; echo "using VMUNET_TRITON_SCAN=$VMUNET_TRITON_SCAN"
timeout 90 python3 -m pytest -q -p no:cacheprovider tests/test_triton_ss2d.py -k "vanishing or agree or match_reference or upcast" > $OUT/pytest_triton_gpu.log 2>&1; echo "pytest rc=$? at $(elapsed) s"; tail -1 $OUT/pytest_triton_gpu.log
timeout 200 python3 scripts/benchmark.py --device cuda --backends triton,mamba_ssm --dtype fp32,bf16 --no-scans --cuda-graph --json $OUT/bench.json > $OUT/bench.log 2>&1; echo "bench rc=$? at $(elapsed) s"; grep -v INFO $OUT/bench.log | tail -22
timeout $(( 590 - $(elapsed) )) python3 scripts/compare_backend_training.py --data_dir .gpu/isic600 --backends triton mamba_ssm --steps 200 --amp bf16 --json $OUT/backend_loss_curves.json > $OUT/curves.log 2>&1; echo "curves rc=$? at $(elapsed) s"; tail -8 $OUT/curves.log

### call D
source .gpu/s/env.sh; setup; export VMUNET_TRITON_SCAN=bwd_adjoint=1; python3 scripts/compare_backend_training.py --data_dir .gpu/isic600 --backends mamba_ssm triton --steps 200 --amp bf16 --json $OUT/backend_loss_curves_mamba_repeat.json

### call E
export PYTHONPATH=/tmp/site:$(pwd); python3 scripts/benchmark.py --device cuda --backends triton --dtype fp32,bf16 --no-scans --json $OUT/bench_lowmem.json

# .gpu/isic600: the first 600 (sorted) ISIC 2017 training pairs of ../shared/data/isic2017; .whl: monai 1.6.1, pytorch-ignite 0.5.5, fire, termcolor, nibabel wheels; .gpu/mamba: ../shared/tools/mamba_ssm wheel parts + install_on_gpu.sh
