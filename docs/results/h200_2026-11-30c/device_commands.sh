# ninth session device commands (call 1..5); g1.sh: first version; g2.sh: A/B, benchmark, bundle eager vs graph; g3.sh: capture-failure diagnosis; g4.sh: final bundle run (call 4 as shown for tests; call 5 bf16 only, timeout 170)
### .gpu/s/g1.sh
# call 1 (ninth session): GPU tests of the CUDA-graph training step; the bundle's training eager vs graph
source .gpu/s/env.sh
python3 -c 'import monai, ignite, fire, nibabel' 2>/dev/null || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
python3 -c 'import torch, monai, triton; print(torch.__version__, monai.__version__, triton.__version__)' || exit 1
nvidia-smi -L; nproc
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_graph_train_step.py tests/test_cuda_graph.py > $OUT/g1_pytest_gpu.log 2>&1; tail -15 $OUT/g1_pytest_gpu.log; echo "tests at $(elapsed) s"
rm -rf /root/isic /root/pack; python3 -m vmunet_monai.cli prepare-isic --src .gpu/isic600 --out /root/isic --test_fraction 0 --val_fraction 0.15 2>&1 | tail -1
run() { # name, extra args
  rm -rf /root/$1; cp -r bundle /root/$1; rm -f /root/$1/models/model.pt
  (cd /root/$1 && timeout ${T:-75} python3 -m monai.bundle run training --config_file configs/train.json --dataset_dir /root/isic --epochs 4 --batch_size 32 --val_interval 4 --num_workers 12 --log_interval 4 --scan_backend triton $2 > run.log 2>&1; echo "$1 rc=$?")
  python3 - "$1" <<'PY'
import json,sys
n=sys.argv[1]; h=json.load(open(f'/root/{n}/eval/history.json'))
print(n, [(r.get('epoch'), round(r.get('train_loss',0),4), round(r.get('train_time_s',0),2)) for r in h], 'val_dsc', h[-1].get('val_dsc'))
PY
  grep -h "CUDA-graph" /root/$1/run.log | head -4
  mkdir -p /root/pack/$1; cp /root/$1/run.log /root/$1/eval/history.json /root/pack/$1/ 2>/dev/null
  echo "$1 done at $(elapsed) s"
}
run bf16_graph "--amp True"
run bf16_eager "--amp True --cuda_graph False"
run fp32_graph ""
run fp32_eager "--cuda_graph False"
tar czf $OUT/g1_runs.tgz -C /root pack
echo "end at $(elapsed) s"
### .gpu/s/g2.sh
# call 2 (ninth session): GPU tests; weight pre-cast A/B; benchmark; the bundle's training eager vs graph on 4x data
source .gpu/s/env.sh
python3 -c 'import monai, ignite, fire, nibabel' 2>/dev/null || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_graph_train_step.py tests/test_cuda_graph.py > $OUT/g2_pytest_gpu.log 2>&1; tail -3 $OUT/g2_pytest_gpu.log; echo "tests at $(elapsed) s"
timeout 90 python3 .gpu/s/precast_ab.py 2>&1 | grep -v Warn | tee $OUT/g2_precast_ab.log; echo "ab at $(elapsed) s"
timeout 130 python3 scripts/benchmark.py --device cuda --backends triton --no-scans --cuda-graph --repeats 20 --dtype fp32,bf16 --json $OUT/g2_bench.json > $OUT/g2_bench.log 2>&1; grep -E "^ +triton" $OUT/g2_bench.log | tail -12; echo "bench at $(elapsed) s"
rm -rf /root/isic /root/pack; python3 -m vmunet_monai.cli prepare-isic --src .gpu/isic600 --out /root/isic --test_fraction 0 --val_fraction 0.15 2>&1 | tail -1
python3 -c "
import json; p='/root/isic/datalist.json'; d=json.load(open(p)); d['training']=d['training']*4; json.dump(d,open(p,'w')); print(len(d['training']), 'training entries')"
run() { # name, extra args
  rm -rf /root/$1; cp -r bundle /root/$1
  (cd /root/$1 && timeout ${T:-70} python3 -m monai.bundle run training --config_file configs/train.json --dataset_dir /root/isic --epochs 3 --batch_size 32 --val_interval 3 --num_workers 14 --log_interval 16 --scan_backend triton --validate_data False $2 > run.log 2>&1; echo "$1 rc=$?")
  python3 - "$1" <<'PY'
import json,sys
n=sys.argv[1]; h=json.load(open(f'/root/{n}/eval/history.json'))
print(n, [(r.get('epoch'), round(r.get('train_loss',0),4), round(r.get('train_time_s',0),2)) for r in h], 'val_dsc', h[-1].get('val_dsc'))
PY
  grep -h "CUDA-graph" /root/$1/run.log | head -3
  mkdir -p /root/pack/$1; cp /root/$1/run.log /root/$1/eval/history.json /root/pack/$1/ 2>/dev/null
  echo "$1 done at $(elapsed) s"
}
run bf16_graph "--amp True"
run bf16_eager "--amp True --cuda_graph False"
run fp32_graph ""
run fp32_eager "--cuda_graph False"
tar czf $OUT/g2_runs.tgz -C /root pack
echo "end at $(elapsed) s"
### .gpu/s/g3.sh
source .gpu/s/env.sh
python3 -c 'import monai, ignite, fire, nibabel' 2>/dev/null || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
timeout 100 python3 -m pytest -q -p no:cacheprovider tests/test_graph_train_step.py -k learning_rate > $OUT/g3_lr_alone.log 2>&1; tail -2 $OUT/g3_lr_alone.log; echo "at $(elapsed) s"
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_graph_train_step.py > $OUT/g3_all.log 2>&1; tail -3 $OUT/g3_all.log; echo "at $(elapsed) s"
grep -n "Traceback" -A40 $OUT/g3_*.log | grep -v "^.*site-packages/torch/jit" | head -80
### .gpu/s/g4.sh
source .gpu/s/env.sh
python3 -c 'import monai, ignite, fire, nibabel' 2>/dev/null || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
rm -rf /root/isic /root/pack; python3 -m vmunet_monai.cli prepare-isic --src .gpu/isic600 --out /root/isic --test_fraction 0 --val_fraction 0.15 2>&1 | tail -1
python3 -c "
import json; p='/root/isic/datalist.json'; d=json.load(open(p)); d['training']=d['training']*4; json.dump(d,open(p,'w')); print(len(d['training']), 'training entries')"
run() { # name, extra args
  rm -rf /root/$1; cp -r bundle /root/$1
  (cd /root/$1 && timeout -s INT ${T:-170} python3 -m monai.bundle run training --config_file configs/train.json --dataset_dir /root/isic --epochs 3 --batch_size 32 --val_interval 3 --num_workers 14 --log_interval 16 --scan_backend triton --validate_data False $2 > run.log 2>&1; echo "$1 rc=$?")
  python3 - "$1" <<'PY'
import json,sys
n=sys.argv[1]; h=json.load(open(f'/root/{n}/eval/history.json'))
print(n, [(r.get('epoch'), round(r.get('train_loss',0),4), round(r.get('train_time_s',0),2)) for r in h], 'val_dsc', h[-1].get('val_dsc'))
PY
  grep -h "CUDA-graph\|Error\|File \"/work" /root/$1/run.log | head -12
  mkdir -p /root/pack/$1; cp /root/$1/run.log /root/$1/eval/history.json /root/pack/$1/ 2>/dev/null
  echo "$1 done at $(elapsed) s"
}
run bf16_graph "--amp True"

tar czf $OUT/g4_runs.tgz -C /root pack
echo "end at $(elapsed) s"
### .gpu/s/precast_ab.py
# A/B on the device: bf16 inference batch 32 as a CUDA graph, with and without the weight pre-cast
import statistics, torch
from vmunet_monai.networks import VMUNet, CUDAGraphModule
torch.manual_seed(0)
net = VMUNet(scan_backend="triton").cuda().eval()
x = torch.randn(32, 3, 256, 256, device="cuda")
mods = {"precast": CUDAGraphModule(net), "autocast casts": CUDAGraphModule(net, precast_weights=False)}
outs = {}
with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
    for k, m in mods.items():
        outs[k] = m(x)
    ref = net(x)
    print("bitwise equal to eager:", {k: torch.equal(v, ref) for k, v in outs.items()})
    times = {k: [] for k in mods}
    for _ in range(6):
        for k, m in mods.items():
            g = m._graphs[next(iter(m._graphs))].graph
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(); s.record()
            for _ in range(20):
                g.replay()
            e.record(); torch.cuda.synchronize()
            times[k].append(s.elapsed_time(e) / 20)
for k, v in times.items():
    print(f"{k}: median {statistics.median(v):.3f} ms per batch of 32 = {32000 / statistics.median(v):.0f} img/s; all {[round(t, 3) for t in v]}")
