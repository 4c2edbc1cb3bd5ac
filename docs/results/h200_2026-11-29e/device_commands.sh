# Device calls of the fifth H200 session (2026-11-29, 22:0x-22:5x UTC), in order; env.sh (as in ../h200_2026-11-29d) was
# sourced by each; bundle/models/model.pt moved out of the tree for the transfer; carry [".whl", ".gpu"].
# Call I (i.sh), commit "Triton scan: softplus(delta + bias) in one elementwise kernel ...":
#   -> pytest_triton_gpu_call1.log, triton_check_presoftplus.log
# Call J (j.sh), commit 3fc26fa (fwd_seq=2): -> pytest_triton_gpu_call2.log, bench_fwdseq_auto.{log,json}
#   (its --compile run failed to compile: 'module:function' backend strings; fixed in 639159c)
# Call K (k.sh), commit 639159c: -> pytest_triton_gpu_call3.log (1 failure: compiled-vs-eager tolerance 1e-5, measured
#   1.5e-5; tolerance 1e-4 in 54a652b), bench_final.{log,json}, bench_compile.{log,json}
# Call L (l.sh), commit 54a652b: -> pytest_triton_gpu_call4.log, curves.log, backend_loss_curves.json
# Call M (m.sh), commit 54a652b: -> pytest_gpu_final.log (2 failures, fixed after: the AOT kernel-info test needs a
#   ptxas the GPU machine's Triton 3.6 lacks; tests/test_compile.py on torch 2.11, where torch.compiler.is_exporting()
#   is True under torch.compile), bench_compile_fp32.{log,json}
# Call N (n.sh, twice): torch 2.11 is_compiling / is_exporting probe (.gpu/s/diag.py): is_exporting True under
#   torch.compile; with the fix _compiling() True. The second call's test_compile run did not finish (budget).

### i.sh
source .gpu/s/env.sh
setup || exit 1; echo "setup done at $(elapsed) s"
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_triton_ss2d.py -k "not network_outputs" > $OUT/pytest_triton_gpu.log 2>&1
timeout $(( 585 - $(elapsed) )) python3 scripts/gpu_triton_check.py --no-torch-path --budget $(( 560 - $(elapsed) )) > $OUT/triton_check.log 2>&1

### j.sh / k.sh
timeout 240 python3 scripts/benchmark.py --device cuda --backends triton --dtype fp32,bf16 --no-scans --cuda-graph --json $OUT/bench.json > $OUT/bench.log 2>&1
timeout $(( 590 - $(elapsed) )) python3 scripts/benchmark.py --device cuda --backends triton --dtype bf16 --no-scans --compile --json $OUT/bench_compile.json > $OUT/bench_compile.log 2>&1

### l.sh
timeout $(( 590 - $(elapsed) )) python3 scripts/compare_backend_training.py --data_dir .gpu/isic600 --backends triton mamba_ssm --steps 200 --amp bf16 --json $OUT/backend_loss_curves.json > $OUT/curves.log 2>&1

### m.sh
timeout 260 python3 -m pytest -q -p no:cacheprovider tests/test_triton_ss2d.py tests/test_compile.py tests/test_cuda_graph.py > $OUT/pytest_gpu_final.log 2>&1
timeout $(( 540 - $(elapsed) )) python3 scripts/benchmark.py --device cuda --backends triton --dtype fp32 --no-scans --compile --json $OUT/bench_compile_fp32.json > $OUT/bench_compile_fp32.log 2>&1
