# The scripts run on the nvidia-h200-x2 machine on 2026-11-29, concatenated in this order:
# env.sh (sourced by each); c12.sh (call 1: wheels, data, then stopped at the mamba_ssm import check, which
# imported selective_scan_cuda before torch); c2.sh (call 2, the same from mamba_ssm on: issue 7 runs, then
# the bf16 and float32 trainings in the background); c3.sh (call 3: benchmark, GPU tests, fallback copy of
# the float32 run's best model via pack8.sh); c4.sh (call 4: stop the float32 run, pack8.sh); c5.sh (call 5:
# exit-stall fix and multi-GPU evaluation rerun after the fixes).

# sourced by every GPU call script: environment on the device machine
REPO=$(pwd)
export PYTHONPATH=/tmp/site:$REPO PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
CALL0=$(date +%s)
elapsed() { echo $(( $(date +%s) - CALL0 )); }
wait_until() { while [ "$(elapsed)" -lt "$1" ]; do sleep 5; done; }
status() { for d in run3 run8; do [ -f /root/$d/eval/history.json ] && python3 -c "
import json,sys;h=json.load(open('/root/$d/eval/history.json'));r=h[-1]
print('$d', 'epochs', len(h), 'last', {k:round(v,4) if isinstance(v,float) else v for k,v in r.items() if k in ('epoch','train_loss','val_dsc','val_miou','epoch_time_s','train_time_s','val_time_s')}, 'best dsc', max(x.get('val_dsc',0) for x in h))"; done; }
# call 1+2: wheels, data, mamba_ssm; issue 7; then issues 3 and 8 in the background
source .gpu/s/env.sh
nvidia-smi -L; nproc; python3 -c 'import torch; print(torch.__version__, torch.cuda.device_count())'
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
python3 -c 'import monai, ignite, fire, nibabel; print("monai", monai.__version__)' || exit 1
rm -rf /root/isic
/usr/bin/time -f "prepare %e s" python3 -m vmunet_monai.cli prepare-isic --src .gpu/isic2017 --out /root/isic --test_fraction 0 --val_fraction 0.15 2>&1 | tail -3
python3 -c "import json;d=json.load(open('/root/isic/datalist.json'));print(len(d['training']),len(d['validation']), [e for e in d['validation'] if '0000395' in e['image']])"
# then issue 3 (GPU 0, bf16, 30 epochs) and issue 8 (GPU 1, fp32, paper recipe 300 epochs) in the background
bash .gpu/mamba/install_on_gpu.sh 2>&1 | tail -1
python3 -c "import selective_scan_cuda, mamba_ssm; print('mamba_ssm', mamba_ssm.__version__)" || exit 1
for d in ddp2 ddp1; do rm -rf /root/$d; cp -r bundle /root/$d; done
COMMON="--dataset_dir /root/isic --epochs 4 --amp True --scan_backend mamba_ssm --num_workers 8 --log_interval 10"
cd /root/ddp2 && timeout 220 python3 -m torch.distributed.run --standalone --nnodes=1 --nproc_per_node=2 --log-dir /root/ddp2/torchrun_logs --redirects 3 --tee 3 -m monai.bundle run training --config_file "['configs/train.json','configs/multi_gpu_train.json']" $COMMON --batch_size 16 > /root/ddp2/run.log 2>&1; echo "ddp2 rc=$? at $(elapsed) s"
cd /root/ddp1 && CUDA_VISIBLE_DEVICES=0 timeout 200 python3 -m torch.distributed.run --standalone --nnodes=1 --nproc_per_node=1 -m monai.bundle run training --config_file "['configs/train.json','configs/multi_gpu_train.json']" $COMMON --batch_size 32 > /root/ddp1/run.log 2>&1; echo "ddp1 rc=$? at $(elapsed) s"
EVAL="--dataset_dir /root/isic --eval_split validation --save_overlays False --scan_backend mamba_ssm --num_workers 8"
cd /root/ddp2 && timeout 150 python3 -m torch.distributed.run --standalone --nnodes=1 --nproc_per_node=2 -m monai.bundle run --config_file "['configs/train.json','configs/evaluate.json','configs/multi_gpu_evaluate.json']" $EVAL --output_dir /root/ddp2/eval2gpu > /root/ddp2/eval2.log 2>&1; echo "eval2 rc=$? at $(elapsed) s"
cd /root/ddp2 && CUDA_VISIBLE_DEVICES=0 timeout 150 python3 -m monai.bundle run --config_file "['configs/train.json','configs/evaluate.json']" $EVAL --output_dir /root/ddp2/eval1gpu > /root/ddp2/eval1.log 2>&1; echo "eval1 rc=$? at $(elapsed) s"
cd $REPO
for d in run3 run8; do rm -rf /root/$d; cp -r bundle /root/$d; done
RUN="python3 -m monai.bundle run training --config_file configs/train.json --dataset_dir /root/isic --scan_backend mamba_ssm --num_workers 12 --log_interval 25 --checkpoint_interval 10"
cd /root/run3 && CUDA_VISIBLE_DEVICES=0 setsid nohup bash -c "date +%s.%N > start.txt; $RUN --epochs 30 --amp True > run.log 2>&1; echo \$? > rc.txt; date +%s.%N > end.txt" > /dev/null 2>&1 < /dev/null &
cd /root/run8 && CUDA_VISIBLE_DEVICES=1 setsid nohup bash -c "date +%s.%N > start.txt; $RUN > run.log 2>&1; echo \$? > rc.txt; date +%s.%N > end.txt" > /dev/null 2>&1 < /dev/null &
sleep 2; pgrep -f "monai.bundle run training" | head; echo "launched at $(elapsed) s"
cd $REPO
mkdir -p /root/pack7 && for d in ddp2 ddp1; do mkdir -p /root/pack7/$d; cp -r /root/$d/eval /root/$d/run.log /root/pack7/$d/ 2>/dev/null; done
cp -r /root/ddp2/torchrun_logs /root/ddp2/eval2gpu /root/ddp2/eval1gpu /root/ddp2/eval1.log /root/ddp2/eval2.log /root/pack7/ddp2/ 2>/dev/null
ls /root/ddp2/models /root/ddp1/models > /root/pack7/models_listing.txt 2>&1
find /root/pack7 -name "*.png" -delete; find /root/pack7 -name "events.out*" -delete
tar czf $OUT/issue7.tgz -C /root pack7; ls -la $OUT
for f in /root/ddp2/eval2gpu/evaluation/metrics.json /root/ddp2/eval1gpu/evaluation/metrics.json; do echo $f; cat $f; done
wait_until ${1:-540}
status; tail -2 /root/run3/run.log /root/run8/run.log
echo "call12 done in $(elapsed) s"
# call 2: mamba_ssm; issue 7 (2 GPUs vs 1 GPU, 4 epochs, same global batch; evaluation 2 vs 1 GPU);
# then issue 3 (GPU 0, bf16, 30 epochs) and issue 8 (GPU 1, fp32, paper recipe 300 epochs) in the background
source .gpu/s/env.sh
python3 -c "import torch, selective_scan_cuda" 2>/dev/null || { cat .gpu/mamba/mamba_whl_part_* > /tmp/mamba_ssm-2.3.2.post1-cp312-cp312-linux_x86_64.whl; python3 -m pip install -q --no-deps --no-index /tmp/mamba_ssm-2.3.2.post1-cp312-cp312-linux_x86_64.whl; }
python3 -c "import torch, selective_scan_cuda, mamba_ssm; print('mamba_ssm', mamba_ssm.__version__)" || exit 1
for d in ddp2 ddp1; do rm -rf /root/$d; cp -r bundle /root/$d; done
COMMON="--dataset_dir /root/isic --epochs 4 --amp True --scan_backend mamba_ssm --num_workers 8 --log_interval 10"
cd /root/ddp2 && timeout 220 python3 -m torch.distributed.run --standalone --nnodes=1 --nproc_per_node=2 --log-dir /root/ddp2/torchrun_logs --redirects 3 --tee 3 -m monai.bundle run training --config_file "['configs/train.json','configs/multi_gpu_train.json']" $COMMON --batch_size 16 > /root/ddp2/run.log 2>&1; echo "ddp2 rc=$? at $(elapsed) s"
cd /root/ddp1 && CUDA_VISIBLE_DEVICES=0 timeout 200 python3 -m torch.distributed.run --standalone --nnodes=1 --nproc_per_node=1 -m monai.bundle run training --config_file "['configs/train.json','configs/multi_gpu_train.json']" $COMMON --batch_size 32 > /root/ddp1/run.log 2>&1; echo "ddp1 rc=$? at $(elapsed) s"
EVAL="--dataset_dir /root/isic --eval_split validation --save_overlays False --scan_backend mamba_ssm --num_workers 8"
cd /root/ddp2 && timeout 150 python3 -m torch.distributed.run --standalone --nnodes=1 --nproc_per_node=2 -m monai.bundle run --config_file "['configs/train.json','configs/evaluate.json','configs/multi_gpu_evaluate.json']" $EVAL --output_dir /root/ddp2/eval2gpu > /root/ddp2/eval2.log 2>&1; echo "eval2 rc=$? at $(elapsed) s"
cd /root/ddp2 && CUDA_VISIBLE_DEVICES=0 timeout 150 python3 -m monai.bundle run --config_file "['configs/train.json','configs/evaluate.json']" $EVAL --output_dir /root/ddp2/eval1gpu > /root/ddp2/eval1.log 2>&1; echo "eval1 rc=$? at $(elapsed) s"
cd $REPO
for d in run3 run8; do rm -rf /root/$d; cp -r bundle /root/$d; done
RUN="python3 -m monai.bundle run training --config_file configs/train.json --dataset_dir /root/isic --scan_backend mamba_ssm --num_workers 12 --log_interval 25 --checkpoint_interval 10"
cd /root/run3 && CUDA_VISIBLE_DEVICES=0 setsid nohup bash -c "date +%s.%N > start.txt; $RUN --epochs 30 --amp True > run.log 2>&1; echo \$? > rc.txt; date +%s.%N > end.txt" > /dev/null 2>&1 < /dev/null &
cd /root/run8 && CUDA_VISIBLE_DEVICES=1 setsid nohup bash -c "date +%s.%N > start.txt; $RUN > run.log 2>&1; echo \$? > rc.txt; date +%s.%N > end.txt" > /dev/null 2>&1 < /dev/null &
sleep 2; pgrep -f "monai.bundle run training" | head; echo "launched at $(elapsed) s"
cd $REPO
mkdir -p /root/pack7 && for d in ddp2 ddp1; do mkdir -p /root/pack7/$d; cp -r /root/$d/eval /root/$d/run.log /root/pack7/$d/ 2>/dev/null; done
cp -r /root/ddp2/torchrun_logs /root/ddp2/eval2gpu /root/ddp2/eval1gpu /root/ddp2/eval1.log /root/ddp2/eval2.log /root/pack7/ddp2/ 2>/dev/null
ls /root/ddp2/models /root/ddp1/models > /root/pack7/models_listing.txt 2>&1
find /root/pack7 -name "*.png" -delete; find /root/pack7 -name "events.out*" -delete
tar czf $OUT/issue7.tgz -C /root pack7; ls -la $OUT
for f in /root/ddp2/eval2gpu/evaluation/metrics.json /root/ddp2/eval1gpu/evaluation/metrics.json; do echo $f; cat $f; done
wait_until ${1:-540}
status; tail -2 /root/run3/run.log /root/run8/run.log
echo "call2 done in $(elapsed) s"
# call 3: wait for issue 3's run, GPU tests and the CUDA-graph benchmark on GPU 0 (issue 8 trains on GPU 1)
source .gpu/s/env.sh
while [ ! -f /root/run3/end.txt ] && [ "$(elapsed)" -lt 440 ]; do sleep 5; done
status; echo "run3 rc=$(cat /root/run3/rc.txt 2>/dev/null) wall=$(python3 -c "print(float(open('/root/run3/end.txt').read())-float(open('/root/run3/start.txt').read()))" 2>/dev/null)"
mkdir -p /root/pack3 && cp -r /root/run3/eval /root/run3/run.log /root/run3/start.txt /root/run3/end.txt /root/run3/models/model_info.json /root/pack3/ 2>/dev/null
find /root/pack3 -name "events.out*" -delete
CUDA_VISIBLE_DEVICES=0 timeout 75 python3 scripts/benchmark.py --device cuda --backends triton,mamba_ssm --dtype fp32,bf16 --no-train --no-scans --cuda-graph --json /root/pack3/bench_graph.json > /root/pack3/bench_graph.log 2>&1; echo "bench rc=$? at $(elapsed) s"; cat /root/pack3/bench_graph.log | tail -25
CUDA_VISIBLE_DEVICES=0 timeout 45 python3 -m pytest -q -p no:cacheprovider tests/test_cuda_graph.py -rs > /root/pack3/pytest_gpu.log 2>&1; echo "pytest rc=$? at $(elapsed) s"; tail -15 /root/pack3/pytest_gpu.log
tar czf $OUT/issue3_and_5.tgz -C /root pack3
bash .gpu/s/pack8.sh
wait_until ${1:-540}
status; echo "call3 done in $(elapsed) s"
# the issue-8 run's best model as fp16 parts plus its history, into $OUT
python3 - <<'PY'
import torch, os
state = torch.load("/root/run8/models/model.pt", map_location="cpu", weights_only=True)
half = {k: (v.half() if v.is_floating_point() else v) for k, v in state.items()}
torch.save(half, "/root/model_fp16.pt")
print("fp16 model", os.path.getsize("/root/model_fp16.pt"))
PY
rm -f $OUT/model_fp16.pt.part-*; split -b 15000000 /root/model_fp16.pt $OUT/model_fp16.pt.part-
mkdir -p /root/pack8 && cp -r /root/run8/eval/history.json /root/run8/eval/learning_curve.png /root/run8/models/model_info.json /root/run8/start.txt /root/pack8/ 2>/dev/null
tail -c 20000 /root/run8/run.log > /root/pack8/run_tail.log; head -c 5000 /root/run8/run.log > /root/pack8/run_head.log
tar czf $OUT/issue8.tgz -C /root pack8; ls -la $OUT
# call 4: let issue 8's run go on for $1 seconds, stop it, bring back its best model and history
source .gpu/s/env.sh
wait_until ${1:-60}
status
pkill -TERM -f "monai.bundle run training"; sleep 5
bash .gpu/s/pack8.sh
echo "call4 done in $(elapsed) s"
# call 5: exit-stall fix and multi-GPU evaluation after the fixes (300 ISIC pairs; 1 GPU train, eval on 2 vs 1 GPU)
source .gpu/s/env.sh
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
cat .gpu/mamba/mamba_whl_part_* > /tmp/mamba_ssm-2.3.2.post1-cp312-cp312-linux_x86_64.whl; python3 -m pip install -q --no-deps --no-index /tmp/mamba_ssm-2.3.2.post1-cp312-cp312-linux_x86_64.whl
python3 -m vmunet_monai.cli prepare-isic --src .gpu/isic300 --out /root/isic300 --test_fraction 0 --val_fraction 0.15 2>&1 | tail -1
rm -rf /root/b && cp -r bundle /root/b && cd /root/b
T=$(date +%s.%N); CUDA_VISIBLE_DEVICES=0 timeout 100 python3 -m monai.bundle run training --config_file configs/train.json --dataset_dir /root/isic300 --epochs 2 --scan_backend mamba_ssm --num_workers 12 > train.log 2>&1; echo "train rc=$? total $(python3 -c "import time;print(round(time.time()-$T,1))") s; process exit at $(date -u +%T.%N)"; grep "Engine run finished" train.log | tail -1
EVAL="--dataset_dir /root/isic300 --eval_split validation --scan_backend mamba_ssm --num_workers 8"
T=$(date +%s.%N); timeout 60 python3 -m torch.distributed.run --standalone --nnodes=1 --nproc_per_node=2 -m monai.bundle run --config_file "['configs/train.json','configs/evaluate.json','configs/multi_gpu_evaluate.json']" $EVAL --output_dir /root/b/ev2 > ev2.log 2>&1; echo "eval2 rc=$? $(python3 -c "import time;print(round(time.time()-$T,1))") s"
T=$(date +%s.%N); CUDA_VISIBLE_DEVICES=0 timeout 60 python3 -m monai.bundle run --config_file "['configs/train.json','configs/evaluate.json']" $EVAL --output_dir /root/b/ev1 > ev1.log 2>&1; echo "eval1 rc=$? $(python3 -c "import time;print(round(time.time()-$T,1))") s"
python3 - <<'PY'
import json
a = json.load(open("/root/b/ev1/evaluation/metrics.json")); b = json.load(open("/root/b/ev2/evaluation/metrics.json"))
print("1 GPU", json.dumps(a)); print("2 GPU", json.dumps(b))
same_rows = open("/root/b/ev1/evaluation/per_image_scores.csv").read() == open("/root/b/ev2/evaluation/per_image_scores.csv").read()
print("confusion equal", a["confusion_matrix"] == b["confusion_matrix"], "rows equal", same_rows,
      "max metric diff", max(abs(a["metrics"][k] - b["metrics"][k]) for k in a["metrics"]))
PY
tail -3 ev2.log ev1.log 2>/dev/null | cut -c1-300
mkdir -p /root/p5 && cp train.log ev1.log ev2.log /root/p5/ && cp -r ev1/evaluation /root/p5/ev1 && cp -r ev2/evaluation /root/p5/ev2 && rm -rf /root/p5/ev*/overlays && tar czf $OUT/call5.tgz -C /root p5
echo "call5 done in $(elapsed) s"
