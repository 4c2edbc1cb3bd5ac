# Eighth session, 2026-11-30 02:05-02:35 UTC, one NVIDIA H200 (device tool): torch 2.11.0+cu130, Triton 3.6.0,
# mamba_ssm 2.3.2.post1 (../shared/tools/mamba_ssm), monai 1.6.1. Each call starts with the package's dependencies
# installed from wheels and mamba_ssm from the shared wheel; all commands run in the repository root.
# ISIC600 = the first 600 sorted image/mask pairs of ../shared/data/isic2017.
#
# Call 1: forward-input variants (the kernel applying softplus itself and reading bf16 inputs; a ScanConfig
# experiment, not committed) -> call1_bench_<variant>.log, call1_net_bf16.log (profile of the in-scan variant),
# call1_pytest_gpu.log (cut by its timeout after 23 passed). "old_fwd" is this session's committed forward.
python3 scripts/benchmark.py --device cuda --backends triton --no-scans --cuda-graph --repeats 20 --dtype bf16
#   with VMUNET_TRITON_SCAN = fwd_softplus_in_scan=0 | fwd_seq_block_d=128,fwd_seq_warps=2 | ... (see the logs' names)
python3 scripts/gpu_profile.py network --dtype bf16 --kernels --top 25
#
# Call 2: SS2D's in_proj as two GEMMs (experiment, not committed) against one GEMM + chunk; seq_stages 2 / 3 / 6 at
# inference; the core at each stage shape with its kernel table -> call2_*.log. The single-GEMM run set the
# experimental module flag vmunet_monai.networks.blocks.ss2d._SPLIT_IN_PROJ = False before running the benchmark.
python3 scripts/benchmark.py --device cuda --backends triton --no-scans --cuda-graph --repeats 20 --dtype bf16
VMUNET_TRITON_SCAN=seq_stages=3 python3 scripts/benchmark.py --device cuda --backends triton --no-scans --cuda-graph --repeats 20 --dtype bf16 --no-train
python3 scripts/gpu_profile.py core --stage 1 --dtype bf16 --kernels --top 8   # and --stage 2, 3 (4: log not kept)
#
# Call 3: dt backward tile / channel-split sweep, bf16 (TF32 products) and fp32 -> call3_dt_tiles_{bf16,fp32}.log;
# whole network with _DT_MIN_PROGRAMS 0 / 1000 / 2000 (old tiles) -> call3_bench_mp*.log; call3_pytest_gpu.log
python3 scripts/gpu_profile.py dt-tiles --dtype bf16
python3 scripts/gpu_profile.py dt-tiles --dtype fp32
#
# Call 4, commit 3457afb (the defaults chosen from call 3) -> final_bench.{log,json}, final_curves.log,
# final_backend_loss_curves.json, final_pytest_gpu.log (21 passed)
python3 scripts/benchmark.py --device cuda --backends triton --no-scans --cuda-graph --repeats 20 --dtype fp32,bf16
python3 scripts/compare_backend_training.py --data_dir ISIC600 --backends triton mamba_ssm --steps 200 --amp bf16
python3 -m pytest -q -p no:cacheprovider tests/test_triton_ss2d.py -k "dt_backward or fused_dt or deterministic or forward_and_gradients or network_outputs or module or compiled"
