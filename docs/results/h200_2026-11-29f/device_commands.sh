# Device calls of the sixth H200 session (2026-11-29 23:2x - 2026-11-30 00:0x UTC), in order; env.sh (as in
# ../h200_2026-11-29d) was sourced by each and its setup() run first; bundle/models/model.pt moved out of the tree
# for the transfer; carry [".whl", ".gpu"]. One NVIDIA H200, torch 2.11.0+cu130, Triton 3.6.0, Nsight Compute
# 2025.3.1, mamba_ssm 2.3.2.post1.
#
# Call 1 (p.sh), HEAD b8a9487 (the fifth session's last commit) + scripts/gpu_profile.py:
#   -> ncu_stage1_bf16_details.txt, pytest_gpu_call1_head.log (42 passed: the refactors of the fifth session that
#      had not run on a GPU)
S="--section SpeedOfLight --section Occupancy --section LaunchStats --section SchedulerStats --section WarpStateStats --section MemoryWorkloadAnalysis --section InstructionStats --section SourceCounters"
ncu --clock-control none --profile-from-start off -k regex:seq_kernel $S -o stage1_bf16 python3 scripts/gpu_profile.py core --stage 1 --dtype bf16
ncu --import stage1_bf16.ncu-rep --page details --print-details all > ncu_stage1_bf16_details.txt
python3 -m pytest -q -p no:cacheprovider tests/test_triton_ss2d.py tests/test_compile.py tests/test_cuda_graph.py
#
# Call 2 (q.sh), same code: where a whole step's GPU time goes (torch.profiler kernel tables)
#   -> profile_net_bf16_before.log, profile_net_fp32_before.log, profile_core_stage1_bf16_before.log
python3 scripts/gpu_profile.py network --dtype bf16 --kernels --top 45
python3 scripts/gpu_profile.py network --dtype fp32 --kernels --top 45
python3 scripts/gpu_profile.py core --stage 1 --dtype bf16 --kernels --top 30
#
# Call 3 (r.sh), commit 00cf89d (LayerNorm kernels; dt projection forward + backward as Triton kernels with tl.dot):
#   -> pytest_gpu_call3.log (cut by its 220 s timeout after 44 passing tests), profile_net_{bf16,fp32}_call3.log,
#      bench_call3_dtdot_ln.{log,json}
python3 -m pytest -q -p no:cacheprovider tests/test_layer_norm.py tests/test_triton_ss2d.py tests/test_cuda_graph.py -k "not hopper"
python3 scripts/gpu_profile.py network --dtype bf16 --kernels --top 25     # and --dtype fp32
python3 scripts/benchmark.py --device cuda --backends triton --dtype fp32,bf16 --no-scans --cuda-graph
#
# Call 4 (s.sh), the dt kernels as rank-1 updates instead of tl.dot (measured slower, reverted):
#   -> pytest_gpu_call4.log (26 passed), profile_net_bf16_call4.log, bench_call4_dtrank1.log
#
# Call 5 (t.sh), commit "dt projection: keep the GEMM + softplus forward ..., fuse only the backward" (the code this
# session ends with):
#   -> final_pytest_gpu.log (16 passed), final_bench.{log,json}, final_curves.log, final_backend_loss_curves.json,
#      final_net_bf16.log
python3 -m pytest -q -p no:cacheprovider tests/test_layer_norm.py tests/test_triton_ss2d.py -k "dt_ or fused or layer_norm or module or softplus"
python3 scripts/benchmark.py --device cuda --backends triton --dtype fp32,bf16 --no-scans --cuda-graph
python3 scripts/compare_backend_training.py --data_dir ISIC2017_600 --backends triton mamba_ssm --steps 200 --amp bf16
python3 scripts/gpu_profile.py network --dtype bf16 --kernels --top 12
