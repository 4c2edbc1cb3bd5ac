# tenth session device commands (calls 1-6, 2026-11-30 04:52-05:33 UTC): h1.sh sweep + benchmarks + parity tests; h2.sh per-length defaults; h3.sh whole triton GPU test file, graph-step tests, Synapse bundle; h4.sh kernel breakdown + ISIC bundle; h5.sh longer backward sub-segments; h6.sh their per-length default, benchmark, GPU tests
### .gpu/s/h1.sh
# tenth session, call 1: GPU parity of the changed backward; ScanConfig sweep per stage; whole network bf16
source .gpu/s/env.sh
python3 -c 'import monai, ignite, fire, nibabel' 2>/dev/null || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader
timeout 100 python3 scripts/gpu_profile.py scan-configs --dtype bf16 --repeats 10 --configs "default;seg_len=16;seg_len=32;bwd_maxnreg=168;seg_len=16,bwd_maxnreg=168;bwd_maxnreg=128" > $OUT/h1_scan_configs_bf16.log 2>&1; grep -v Warn $OUT/h1_scan_configs_bf16.log | tail -12; echo "sweep at $(elapsed) s"
timeout 110 python3 scripts/benchmark.py --device cuda --backends triton --no-scans --cuda-graph --repeats 20 --dtype bf16 --json $OUT/h1_bench_default.json > $OUT/h1_bench_default.log 2>&1; grep -E "^ +triton" $OUT/h1_bench_default.log | tail -6; echo "bench1 at $(elapsed) s"
VMUNET_TRITON_SCAN=seg_len=16,bwd_maxnreg=168 timeout 110 python3 scripts/benchmark.py --device cuda --backends triton --no-scans --cuda-graph --repeats 20 --dtype bf16 --json $OUT/h1_bench_seg16_mr168.json > $OUT/h1_bench_seg16_mr168.log 2>&1; grep -E "^ +triton" $OUT/h1_bench_seg16_mr168.log | tail -6; echo "bench2 at $(elapsed) s"
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_triton_ss2d.py -k "sequential_backward or match_reference or segment_length or vanishing or deterministic or network_outputs" > $OUT/h1_pytest_gpu.log 2>&1; tail -3 $OUT/h1_pytest_gpu.log; echo "end at $(elapsed) s"
### .gpu/s/h2.sh
# tenth session, call 2: per-length seg_len / maxnreg (default) against fixed choices; whole network fp32 + bf16; GPU tests
source .gpu/s/env.sh
python3 -c 'import monai, ignite, fire, nibabel' 2>/dev/null || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
timeout 110 python3 scripts/gpu_profile.py scan-configs --dtype bf16 --repeats 10 --configs "default;seg_len=128,bwd_maxnreg=0;seg_len=32,bwd_maxnreg=0;seg_len=64,bwd_maxnreg=0;seg_len=128,bwd_maxnreg=168;seg_len=32,bwd_maxnreg=168" > $OUT/h2_scan_configs_bf16.log 2>&1; grep -v Warn $OUT/h2_scan_configs_bf16.log | tail -12; echo "sweep at $(elapsed) s"
timeout 150 python3 scripts/benchmark.py --device cuda --backends triton --no-scans --cuda-graph --repeats 20 --dtype fp32,bf16 --json $OUT/h2_bench.json > $OUT/h2_bench.log 2>&1; grep -E "^ +triton" $OUT/h2_bench.log | tail -12; echo "bench at $(elapsed) s"
timeout 250 python3 -m pytest -q -p no:cacheprovider tests/test_triton_ss2d.py > $OUT/h2_pytest_gpu.log 2>&1; tail -3 $OUT/h2_pytest_gpu.log; echo "end at $(elapsed) s"
### .gpu/s/h3.sh
# tenth session, call 3: the whole triton GPU test file; graph-step GPU tests; the Synapse bundle with the graph step
source .gpu/s/env.sh
python3 -c 'import monai, ignite, fire, nibabel' 2>/dev/null || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
python3 -c 'import h5py' 2>/dev/null || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu/h5/*.whl
timeout 320 python3 -m pytest -q -p no:cacheprovider -rA tests/test_triton_ss2d.py > $OUT/h3_pytest_triton_gpu.log 2>&1; grep -E "passed|failed|error" $OUT/h3_pytest_triton_gpu.log | tail -3; echo "triton tests at $(elapsed) s"
timeout 80 python3 -m pytest -q -p no:cacheprovider tests/test_graph_train_step.py > $OUT/h3_pytest_graph_gpu.log 2>&1; tail -1 $OUT/h3_pytest_graph_gpu.log; echo "graph tests at $(elapsed) s"
rm -rf /root/syn; mkdir -p /root/syn/lists/lists_Synapse; cp -r .gpu/synapse/train_npz /root/syn/
ls /root/syn/train_npz | sed 's/.npz$//' > /root/syn/lists/lists_Synapse/train.txt
python3 -m vmunet_monai.cli stack_synapse --npz_dir /root/syn/train_npz --case case0031 --list_file /root/syn/lists/lists_Synapse/test_vol.txt 2>&1 | tail -1
rm -rf /root/synb; cp -r bundle /root/synb
(cd /root/synb && timeout -s INT 120 python3 -m monai.bundle run training --config_file configs/synapse_train.json --meta_file configs/synapse_metadata.json --dataset_dir /root/syn --epochs 4 --val_interval 4 --batch_size 8 --num_workers 8 --scan_backend triton --amp True > run.log 2>&1; echo "synapse rc=$?")
grep -h "CUDA-graph\|Error\|Epoch\[.\] Complete\|Mean_Dice\|mean_dice\|File \"/work" /root/synb/run.log | cut -c1-220 | head -16
cp /root/synb/run.log $OUT/h3_synapse_run.log; cp $(find /root/synb/eval -name history.json | head -1) $OUT/h3_synapse_history.json 2>/dev/null
echo "end at $(elapsed) s"
### .gpu/s/h4.sh
# tenth session, call 4: kernel breakdown of the bf16 network step with the new defaults; the ISIC bundle (bf16, graph step)
source .gpu/s/env.sh
python3 -c 'import monai, ignite, fire, nibabel' 2>/dev/null || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
timeout 90 python3 scripts/gpu_profile.py network --dtype bf16 --kernels --top 30 > $OUT/h4_profile_net_bf16.log 2>&1; grep -v Warn $OUT/h4_profile_net_bf16.log | sed -n '1,3p;/training step:/,+12p' | cut -c1-150; echo "profile at $(elapsed) s"
rm -rf /root/isic /root/pack; python3 -m vmunet_monai.cli prepare-isic --src .gpu/isic600 --out /root/isic --test_fraction 0 --val_fraction 0.15 2>&1 | tail -1
python3 -c "
import json; p='/root/isic/datalist.json'; d=json.load(open(p)); d['training']=d['training']*4; json.dump(d,open(p,'w')); print(len(d['training']), 'training entries')"
rm -rf /root/b1; cp -r bundle /root/b1; rm -f /root/b1/models/model.pt
(cd /root/b1 && timeout -s INT 150 python3 -m monai.bundle run training --config_file configs/train.json --dataset_dir /root/isic --epochs 3 --batch_size 32 --val_interval 3 --num_workers 14 --log_interval 16 --scan_backend triton --validate_data False --amp True > run.log 2>&1; echo "bundle rc=$?")
python3 - <<'PY'
import json; h=json.load(open('/root/b1/eval/history.json'))
print([(r.get('epoch'), round(r.get('train_loss',0),4), round(r.get('train_time_s',0),2)) for r in h], 'val_dsc', h[-1].get('val_dsc'))
PY
grep -h "CUDA-graph" /root/b1/run.log | head -3 | cut -c1-200
cp /root/b1/eval/history.json $OUT/h4_bundle_bf16_graph_history.json; tail -30 /root/b1/run.log > $OUT/h4_bundle_bf16_graph_run_tail.log
echo "end at $(elapsed) s"
### .gpu/s/h5.sh
# tenth session, call 5: longer backward sub-segments (history of bwd_block_l steps) in place of the recomputation pass
source .gpu/s/env.sh
python3 -c 'import monai, ignite, fire, nibabel' 2>/dev/null || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
timeout 150 python3 scripts/gpu_profile.py scan-configs --dtype bf16 --repeats 10 --configs "default;bwd_block_l=32,seg_len=32,bwd_maxnreg=0;bwd_block_l=32,seg_len=32,bwd_maxnreg=168;bwd_block_l=64,seg_len=64,bwd_maxnreg=0;bwd_block_l=32,seg_len=64,bwd_maxnreg=0;bwd_block_l=64,seg_len=64,bwd_maxnreg=168;default" > $OUT/h5_scan_configs_bf16.log 2>&1; grep -v Warn $OUT/h5_scan_configs_bf16.log | tail -12; echo "end at $(elapsed) s"
### .gpu/s/h6.sh
# tenth session, call 6: 64-step sub-segments at 64 x 64 in the per-length default; whole network fp32 + bf16; triton GPU tests
source .gpu/s/env.sh
python3 -c 'import monai, ignite, fire, nibabel' 2>/dev/null || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
timeout 150 python3 scripts/benchmark.py --device cuda --backends triton --no-scans --cuda-graph --repeats 20 --dtype fp32,bf16 --json $OUT/h6_bench.json > $OUT/h6_bench.log 2>&1; grep -E "^ +triton" $OUT/h6_bench.log | tail -12; echo "bench at $(elapsed) s"
timeout 230 python3 -m pytest -q -p no:cacheprovider -rA tests/test_triton_ss2d.py > $OUT/h6_pytest_triton_gpu.log 2>&1; grep -E "passed|failed|error" $OUT/h6_pytest_triton_gpu.log | tail -3; echo "tests at $(elapsed) s"
[ $(elapsed) -lt 330 ] && { timeout 50 python3 scripts/gpu_profile.py scan-configs --dtype bf16 --repeats 10 --configs "default;bwd_block_l=16,seg_len=32,bwd_maxnreg=0" > $OUT/h6_scan_configs_bf16.log 2>&1; grep -v Warn $OUT/h6_scan_configs_bf16.log | tail -6; }
echo "end at $(elapsed) s"
