# Thirteenth session (2026-11-30 09:00 - 09:47 UTC), one NVIDIA H200 (device tool; torch 2.11.0+cu130, Triton 3.6.0).
# Every call ran from the repository root with the git-ignored helpers carried (.whl = monai / ignite / fire / nibabel
# wheels, .gpu/s = the scripts below, .gpu/mamba + .gpu/isic600 in call 6). `source .gpu/s/env.sh` sets PYTHONPATH,
# installs the wheels into /tmp/site and defines `elapsed` / `setup` (setup also installs mamba_ssm from .gpu/mamba).
# The scripts' texts are reproduced here where they are not in the repository.

# Call 1 (n1.sh) -> n1_diag.log. Per-stage kernel times of ScanConfig variants of the Gluon backward and a knock-out
# (`noshfl`: the reverse step's four cross-lane sums replaced by in-thread partial sums, wrong values, timing only).
# The history-in-shared-memory rows of this call are void (the scratch stride bug below; stage 2 crashed).
python3 .gpu/s/n1_diag.py "default;bwd_hist_smem=1;bwd_hist_smem=1,bwd_block_l=16;bwd_hist_smem=1,bwd_block_l=32;bwd_hist_smem=1,bwd_block_l=16,seg_len=32;bwd_hist_smem=1,bwd_block_l=8;noshfl;noshfl,bwd_hist_smem=1,bwd_block_l=16"

# Call 2 (n2.sh) -> n2_dt.log, n2_diag.log. The dt forward as R fp32 FMAs per element (a variant kernel, not kept)
# against the tl.dot kernel and the GEMM + softplus path; the Gluon backward's history in shared memory (fixed: the
# program-private scratch stride no longer counts the history) at several sub-segment / segment lengths.
python3 .gpu/s/n2_dt.py
python3 .gpu/s/n1_diag.py "default;bwd_hist_smem=1,bwd_block_l=16;bwd_hist_smem=1,bwd_block_l=16,seg_len=32;bwd_hist_smem=1,bwd_block_l=8;bwd_hist_smem=1,bwd_block_l=8,seg_len=32;bwd_hist_smem=1,bwd_block_l=32,seg_len=32"

# Call 3 (n3.sh), code of commit 802172d (aligned B / C rows; history in shared memory from 1024 steps down)
#   -> n3_pytest.log (23 passed), n3_diag.log, n3_bench.{log,json}, n3_ops.log
python3 -m pytest -q -p no:cacheprovider -rA tests/test_triton_ss2d.py -k "gluon or config or sequential_backward or upcast or network"
python3 .gpu/s/n1_diag.py "default"
python3 scripts/benchmark.py --device cuda --backends triton --no-scans --cuda-graph --repeats 20 --dtype bf16 --json n3_bench.json
python3 .gpu/s/n3_ops.py   # aten ops of one bf16 training step by shape and calling source line (torch.profiler, with_stack)

# Call 4 (n4.sh), commit 802172d -> n4_bench.{log,json}, n4_diag_stage1.log, n4_profile_net_bf16.log
python3 scripts/benchmark.py --device cuda --backends triton --no-scans --cuda-graph --repeats 20 --dtype bf16,fp32 --json n4_bench.json
STAGES_RUN=1 python3 .gpu/s/n1_diag.py "default;bwd_hist_smem=1,bwd_block_l=16,seg_len=32;bwd_hist_smem=1,bwd_block_l=16"
python3 scripts/gpu_profile.py network --dtype bf16 --kernels --top 30

# Call 5 (n5.sh), the final code (a212a1e: 16-step sub-segments with the history in shared memory at 64 x 64 too)
#   -> n5_bench.{log,json}, n5_pytest_triton.log (61 passed), n5_pytest_graph.log (17 passed, 1 skipped: mamba_ssm
#      not installed in that call)
python3 scripts/benchmark.py --device cuda --backends triton --no-scans --cuda-graph --repeats 20 --dtype bf16 --json n5_bench.json
python3 -m pytest -q -p no:cacheprovider -rA tests/test_triton_ss2d.py
python3 -m pytest -q -p no:cacheprovider -rA tests/test_graph_train_step.py tests/test_cuda_graph.py

# Call 6 (n6.sh), the final code -> n6_curves.log, n6_backend_loss_curves.json, n6_bench_fp32.{log,json}
setup
python3 scripts/compare_backend_training.py --data_dir .gpu/isic600 --backends triton mamba_ssm --steps 200 --amp bf16 --json n6_backend_loss_curves.json
python3 scripts/benchmark.py --device cuda --backends triton --no-scans --cuda-graph --repeats 20 --dtype fp32 --json n6_bench_fp32.json

# Call 7 (n7.sh), the final code with the review's refactor (no kernel change) -> n7_bundle_bf16_graph_history.json,
# n7_bundle_bf16_graph_run_tail.log: the ISIC bundle's training, bf16, CUDA-graph step (the tenth session's command)
python3 -m vmunet_monai.cli prepare-isic --src .gpu/isic600 --out /root/isic --test_fraction 0 --val_fraction 0.15
python3 -c "import json; p='/root/isic/datalist.json'; d=json.load(open(p)); d['training']=d['training']*4; json.dump(d,open(p,'w'))"
cd /root/b1 && python3 -m monai.bundle run training --config_file configs/train.json --dataset_dir /root/isic --epochs 4 --batch_size 32 --val_interval 4 --num_workers 14 --log_interval 16 --scan_backend triton --validate_data False --amp True

# .gpu/s/n1_diag.py: for each stage shape (scripts/gpu_profile.py make_inputs, batch 32) and each variant (ScanConfig
# fields and / or knock-out names from .gpu/s/n_ko.py), 3 warm-up steps of one core's bf16 training forward + backward
# (ss2d_scan_triton under autocast, loss = mean(y^2)), the gradients' largest difference to the first variant's
# (relative to the largest gradient), then 5 profiled steps: mean device time of the kernels named bwd_seq* / fwd_seq*
# and of all kernels; totals weighted by the 3 / 4 / 4 / 4 cores of stages 1-4.
# .gpu/s/n_ko.py `noshfl`: in bwd_seq_gluon_kernel's reverse step, dC / dB summed over the thread's 4 channels only
# (reshape to (16, 8, 4), sum over the last axis, stored by the 8 lanes to the same addresses) and the per-channel sums
# (B . g, A . x) over the thread's 4 states only (reshape to (4, 4, 32)); the SASS has no SHFL left in that loop.
# .gpu/s/n2_dt.py: per stage, x_dbl ~ N(0, 1) (bf16 or fp32), dt_w ~ U(+-R^-0.5), bias ~ N(-4, 1); ms per call (mean of
# 30 after 3 warm-ups, CUDA events) of softplus(bmm + bias) (GEMM + softplus kernel), dt_softplus_fwd_kernel (64 x 64 x
# 4) and an FMA variant (z += dts[:, r] * w[r, :] for r < R, then the same rounding, bias and softplus) at 7 tiles.
