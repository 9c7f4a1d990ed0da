#!/bin/bash
# RDT-1B fine-tuning throughput through `runner train` itself (local executor) on 1 and 2 GPUs. Run from the
# repository root on a machine with two GPUs:   bash bench/rdt_runner_scaling.sh
# Random weights (nothing is downloaded): RDT-1B, the full-size SigLIP so400m, a random 2-layer T5 encoder 4096 wide
# (T5-XXL's width); 12 generated episodes x 60 frames converted by `runner convert`; batch 16 a GPU, compile off
# (COMPILE=true: on, the job default), 30 steps (STEPS=N), the optimizer state sharded across the GPUs (the default;
# SHARD=false: DDP), on 1 then 2 GPUs (GPUS="1 2 4": those counts, each above 1 compared with the same call's 1-GPU
# run). Prints the median samples/s of each run (its metrics.jsonl after the first two windows of 5 steps) and the
# ratios. Writes under ${BENCH_DIR:-/tmp/rdt_runner_scaling}. Results: docs/rdt.md.
set -u
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
W=${BENCH_DIR:-/tmp/rdt_runner_scaling}; mkdir -p "$W"
nvidia-smi topo -m 2>/dev/null | head -4  # NV# between the GPUs: NVLink; PIX/PXB/PHB/SYS: PCIe or the host
t0=$(date +%s); el() { echo "$(( $(date +%s) - t0 ))s"; }
W=$W python3 - <<'PY'
import os, sys
from pathlib import Path
from policies.data.sample import generate
from policies.rdt.embed import save_tiny_t5
sys.path.insert(0, "bench")
from rdt import save_siglip
w = Path(os.environ["W"])
if not (w / "raw").exists():
    generate(w / "raw", episodes=12, steps=60)
if not (w / "t5").exists():
    save_tiny_t5(w / "t5", "Pick up the red cube and move it to the right.".split(), d_model=4096)
save_siglip(w / "siglip")
PY
echo "weights and data $(el)"
cat > "$W/rdt_scale.yaml" <<YAML
name: rdt_scale
policy: rdt
task: sample_pick
data: {raw: $W/raw, converted: $W/converted}
weights: {t5: $W/t5, siglip: $W/siglip}
outputs: {runs_dir: $W/runs}
resources: {gpus: 1, shm: 8g}
steps:
  convert: {cameras: {cam_high: front}, image_size: [160, 120], binarize_gripper: true, instructions: [Pick up the red cube and move it to the right.], workers: 8}
  train: {model_size: 1b, max_train_steps: ${STEPS:-30}, train_batch_size: 16, checkpointing_period: 100000, lr_warmup_steps: 5, num_workers: 4, img_history_size: 2, zero_stage: 2, logger: none, log_every: 5, compile: ${COMPILE:-false}, shard_optimizer: ${SHARD:-true}}
YAML
R="python3 -m runner.cli"
timeout 200 $R convert "$W/rdt_scale.yaml" --executor local > "$W/convert.txt" 2>&1; echo "convert rc=$? $(el)"
rate() { python3 -c "
import glob, json, statistics, sys
p = sorted(glob.glob('$W/runs/rdt_scale/*/metrics.jsonl'))[-1]
r = [json.loads(l)['samples_per_s'] for l in open(p) if 'samples_per_s' in l][2:]
print(round(statistics.median(r), 1))"; }
for g in ${GPUS:-1 2}; do
  timeout 300 $R train "$W/rdt_scale.yaml" --executor local resources.gpus=$g > "$W/train$g.txt" 2>&1
  echo "train $g GPU(s) rc=$? $(el)"; grep -E "RDT \(|all-reduce|GB/s" "$W/train$g.txt" | tail -3
  eval "r$g=$(rate)"; eval "echo \"$g GPU(s): median samples/s \$r$g\""
done
for g in ${GPUS:-1 2}; do
  eval "rg=\${r$g:-}"
  [ "$g" != 1 ] && [ -n "${r1:-}" ] && [ -n "$rg" ] && python3 -c "print(f'$g GPUs / 1 GPU through runner train: {$rg / $r1:.2f}x')"
done
