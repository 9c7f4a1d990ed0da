#!/bin/bash
# DP3 training throughput through `runner train` itself (local executor) on 1 and 2 GPUs, and `runner stop` of a
# 2-GPU run. Run from the repository root on a machine with two GPUs:   bash bench/dp3_runner_scaling.sh
# Writes sample_data/raw/scale (80 generated episodes x 100 frames), sample_data/converted_scale, and
# ${BENCH_DIR:-/tmp/dp3_runner_scaling}/jobs/scale_dp3.yaml with its runs beside it; prints the median samples/s of each run (its metrics.jsonl after the
# first three logged windows) and the 2-GPU / 1-GPU ratio. Results: docs/dp3.md.
# COMPILE=true (the default, as DP3 jobs have it) compiles the training step: the 1-GPU run compiles, the 2-GPU run
# finds the same graph (256 windows a GPU) in the job's compile cache. GPUS="1 2" the GPU counts; STOP=0 skips the
# `runner stop` check; TRAIN_TIMEOUT (seconds a training run, default 420 compiled, 150 not).
set -u
COMPILE=${COMPILE:-true}; GPUS=${GPUS:-"1 2"}; STOP=${STOP:-1}
TRAIN_TIMEOUT=${TRAIN_TIMEOUT:-$([ "$COMPILE" = true ] && echo 420 || echo 150)}
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
OUT=${BENCH_DIR:-/tmp/dp3_runner_scaling}; mkdir -p "$OUT"
nvidia-smi topo -m 2>/dev/null | head -4  # NV# between the GPUs: NVLink; PIX/PXB/PHB/SYS: PCIe or the host
t0=$(date +%s); el() { echo "$(( $(date +%s) - t0 ))s"; }
python3 -c "from pathlib import Path; from policies.data.sample import generate; generate(Path('sample_data/raw/scale'), episodes=80, steps=100)"
echo "generated $(el)"
mkdir -p $OUT/jobs
JOB=$OUT/jobs/scale_dp3.yaml
cat > $JOB <<YAML
name: scale_dp3
policy: dp3
task: scale
data: {raw: $PWD/sample_data/raw/scale, converted: $PWD/sample_data/converted_scale}
outputs: {runs_dir: $OUT/runs}
resources: {gpus: 1, shm: 1g}
steps:
  convert:
    intrinsics: {fx: 120.0, fy: 120.0, cx: 80.0, cy: 60.0, depth_scale: 0.001}
    crop: {min: [-1.0, -1.0, 0.2], max: [1.0, 1.0, 1.5]}
    num_points: 1024
    workers: 24
  train: {epochs: 100000, max_steps: 160, batch_size: 256, checkpoint_every: 100000, val_every: 100000, compile: $COMPILE, lr_warmup_steps: 10}
YAML
R="python3 -m runner.cli"
timeout 150 $R convert $JOB --executor local > $OUT/s_convert.txt 2>&1; echo "convert rc=$? $(el)"; tail -2 $OUT/s_convert.txt
for g in $GPUS; do
  timeout "$TRAIN_TIMEOUT" $R train $JOB --executor local resources.gpus=$g steps.train.batch_size=$((256*g)) > $OUT/s_train$g.txt 2>&1; echo "train $g GPU(s) rc=$? $(el)"
  grep -E "parameters|step 160/|all-reduce|GB/s" $OUT/s_train$g.txt | tail -4
done
OUT=$OUT python3 - <<'PY'
import glob, json, statistics
import os
runs = sorted(glob.glob(os.environ["OUT"] + "/runs/scale_dp3/*/metrics.jsonl"))
rates = []
for path in runs:
    rows = [json.loads(l) for l in open(path) if "samples_per_s" in l]
    r = [x["samples_per_s"] for x in rows][3:]
    rates.append(statistics.median(r) if r else 0.0)
    print(path, "median samples/s after 3 windows:", round(rates[-1]), "windows", len(r))
for rate, path in zip(rates[1:], runs[1:]):
    if rates[0]:
        print(f"{path.split('/')[-2]} / the first run ({runs[0].split('/')[-2]}) through runner train: {rate / rates[0]:.2f}x")
PY
[ "$STOP" = 1 ] || exit 0
# uncompiled: the check is the stop (one checkpoint, every rank gone), not the speed
( timeout 120 $R train $JOB --executor local resources.gpus=2 steps.train.batch_size=512 steps.train.max_steps=100000 steps.train.compile=false > $OUT/s_stop.txt 2>&1; echo "stopped run rc=$?" > $OUT/s_stop_rc.txt ) &
for i in $(seq 1 80); do grep -q "samples/s" $OUT/s_stop.txt 2>/dev/null && break; sleep 1; done
$R stop scale_dp3 --runs-dir $OUT/runs > $OUT/s_stop_cmd.txt 2>&1; echo "runner stop rc=$? $(el)"; cat $OUT/s_stop_cmd.txt
wait; cat $OUT/s_stop_rc.txt; grep -E "stopped|recorded as|interrupted|failed" $OUT/s_stop.txt | tail -4
echo "left: $(pgrep -fc 'policies.dp3.steps' || true) step processes $(el)"
