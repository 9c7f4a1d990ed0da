import math
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from policies.data.convert import ConvertOptions, convert
from policies.data.pointcloud import CloudSpec
from policies.data.sample import CX, CY, FX, FY, generate
from policies.data.transform import TimeOptions
from policies.dp3 import checkpoints
from policies.dp3.config import Dp3Train
from policies.dp3.data import DataShapeError, check_dims, load_buffer
from policies.dp3.infer import load
from policies.dp3.model import Dp3Config
from policies.dp3.train import train
from policies.dp3.zarr_buffer import write_buffer

REPO = Path(__file__).resolve().parents[3]
CFG = Dp3Config(state_dim=8, action_dim=8, num_points=64, down_dims=(16, 32, 64))
FAST = Dp3Train(epochs=200, batch_size=16, lr=1e-3, lr_warmup_steps=5, checkpoint_every=1000, val_every=1000,
                     log_every=5, seed=0)


@pytest.fixture(scope="module")
def buffer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dp3")
    generate(root / "raw", episodes=3, steps=24)
    opts = ConvertOptions(task="pick", cloud=CloudSpec(FX, FY, CX, CY, num_points=64), workers=1,
                          time=TimeOptions(binarize_gripper=True))
    rep = convert(root / "raw", root / "out", opts)
    return write_buffer(rep.episodes, root / "out" / "pick-demo_clean-3.zarr").path


def run(buffer: Path, tmp: Path, s: Dp3Train, resume: bool = False):  # type: ignore[no-untyped-def]
    (tmp / "run").mkdir(parents=True, exist_ok=True)
    return train(CFG, load_buffer(buffer), s, ckpt_dir=tmp / "ckpt", run_dir=tmp / "run", device=torch.device("cpu"),
                 resume=resume, say=lambda m: None)


def test_loss_goes_down_on_the_sample_data(buffer: Path, tmp_path: Path) -> None:
    result = run(buffer, tmp_path, FAST.model_copy(update={"max_steps": 150}))
    first, last = sum(result.losses[:3]) / 3, sum(result.losses[-3:]) / 3
    assert last < 0.5 * first, result.losses


def test_resume_gives_the_same_weights_as_one_run(buffer: Path, tmp_path: Path) -> None:
    one = run(buffer, tmp_path / "one", FAST.model_copy(update={"max_steps": 14}))
    half = run(buffer, tmp_path / "two", FAST.model_copy(update={"max_steps": 7}))
    assert half.global_step == 7
    rest = run(buffer, tmp_path / "two", FAST.model_copy(update={"max_steps": 14}), resume=True)
    assert rest.global_step == 14
    a = checkpoints.load_file(one.last_checkpoint)
    b = checkpoints.load_file(rest.last_checkpoint)
    for part in ("model", "ema_model"):
        for k, v in a["state_dicts"][part].items():
            assert torch.equal(v, b["state_dicts"][part][k]), (part, k)
    sa, sb = a["state_dicts"]["optimizer"]["state"], b["state_dicts"]["optimizer"]["state"]
    assert sa.keys() == sb.keys() and sa
    for k in sa:
        assert torch.equal(sa[k]["exp_avg"], sb[k]["exp_avg"]) and torch.equal(sa[k]["step"], sb[k]["step"])


def test_corrupt_newest_checkpoint_falls_back(buffer: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    run(buffer, tmp_path, FAST.model_copy(update={"max_steps": 3}))
    run(buffer, tmp_path, FAST.model_copy(update={"max_steps": 6}), resume=True)
    newest = tmp_path / "ckpt" / "step-6.ckpt"
    newest.write_bytes(newest.read_bytes()[:1000])  # truncated, as a crash mid-copy would leave it
    found = checkpoints.load_latest(tmp_path / "ckpt")
    assert found is not None and found[0].name == "step-3.ckpt"
    assert "skipping" in caplog.text
    policy = load(found[0], "cpu")
    buf = load_buffer(buffer)
    chunk = policy.act({"point_cloud": buf.point_cloud[0].numpy(), "agent_pos": buf.state[0].numpy()})
    assert chunk.shape == (CFG.n_action_steps, 8)


def test_dim_pinned_in_the_job_but_not_in_the_data_is_refused(buffer: Path) -> None:
    with pytest.raises(DataShapeError) as e:
        check_dims(load_buffer(buffer), {"state_dim": 14, "action_dim": None, "num_points": 64}, "jobs/x.yaml")
    assert "steps.train.state_dim is 14 in jobs/x.yaml" in str(e.value) and "-> 8" in str(e.value)


SCRIPT = """
import sys, torch
from pathlib import Path
from policies.dp3.data import load_buffer
from policies.dp3.model import Dp3Config
from policies.dp3.config import Dp3Train
from policies.dp3.train import train
from policies.signals import exit_code, stop_flag
cfg = Dp3Config(state_dim=8, action_dim=8, num_points=64, down_dims=(16, 32, 64))
s = Dp3Train(epochs=100000, batch_size=16, checkpoint_every=100000, val_every=100000, log_every=1)
r = train(cfg, load_buffer(Path(sys.argv[1])), s, ckpt_dir=Path(sys.argv[2]), run_dir=Path(sys.argv[3]),
          device=torch.device("cpu"), resume=False, say=lambda m: print(m, flush=True), stop=stop_flag())
sys.exit(exit_code(r.stopped_by))
"""


def test_sigterm_during_training_leaves_a_usable_checkpoint(buffer: Path, tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    script = tmp_path / "t.py"
    script.write_text(SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), str(buffer), str(tmp_path / "ckpt"), str(tmp_path / "run")],
                            env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    deadline = time.monotonic() + 120
    for line in proc.stdout:
        if line.startswith("train: step 3/") or time.monotonic() > deadline:
            break
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 143, out
    assert "stopped (SIGTERM)" in out
    found = checkpoints.load_latest(tmp_path / "ckpt")
    assert found is not None and found[1]["loop"]["global_step"] >= 3


DDP_SCRIPT = """
import sys, torch
from pathlib import Path
from policies.dp3.data import load_buffer
from policies.dp3.model import Dp3Config
from policies.dp3.config import Dp3Train
from policies.dp3.train import train
from policies import process_group
cfg = Dp3Config(state_dim=8, action_dim=8, num_points=64, down_dims=(16, 32, 64))
batch = int(sys.argv[6]) if len(sys.argv) > 6 else 16
s = Dp3Train(epochs=100, batch_size=batch, checkpoint_every=1000, val_every=1000, log_every=1, max_steps=int(sys.argv[4]))
r = train(cfg, load_buffer(Path(sys.argv[1])), s, ckpt_dir=Path(sys.argv[2]), run_dir=Path(sys.argv[3]),
          device=torch.device("cpu"), resume=sys.argv[5] == "1", say=lambda m: print(m, flush=True))
process_group.leave()  # as policies.entry does when a step returns
assert not process_group.gloo_threads(), f"the process group outlived leaving it: {process_group.gloo_threads()}"
"""


def test_two_processes_train_and_one_resumes(buffer: Path, tmp_path: Path) -> None:
    """torchrun with 2 processes (gloo on CPU): one checkpoint writer, then resumed by a single process."""
    (tmp_path / "run").mkdir()
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    args = [str(buffer), str(tmp_path / "ckpt"), str(tmp_path / "run")]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(script), *args, "4", "0"], env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stdout[-2000:] + two.stderr[-2000:]
    assert "2 processes (batch 16 split across them)" in two.stdout
    assert two.stdout.count("train: stopped (max_steps) at step 4") == 1  # rank 0 speaks for all
    # both processes timed the all-reduce at the start; the main process reports it, once
    assert two.stdout.count("train: all-reduce across 2 processes (gloo): 8 MB in ") == 1, two.stdout
    assert [p.name for p in (tmp_path / "ckpt").glob("step-*.ckpt")] == ["step-4.ckpt"]
    one = subprocess.run([sys.executable, str(script), *args, "6", "1"], env=env, capture_output=True, text=True,
                         timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    assert "resumed from" in one.stdout and "at step 6" in one.stdout
    assert "all-reduce" not in one.stdout  # nothing to measure for one process


def test_a_last_batch_too_short_for_every_process_is_left_out(buffer: Path, tmp_path: Path) -> None:
    """One row left over for two processes would give one of them an empty batch, whose NaN loss DDP averages into
    both: the epoch ends with its last full batch instead."""
    from policies.dp3.data import val_mask, window_table

    data, s = load_buffer(buffer), Dp3Train()
    rows = window_table(data.episode_ends, ~val_mask(data.n_episodes, s.val_ratio, s.seed), CFG.horizon,
                        CFG.n_obs_steps - 1, CFG.n_action_steps - 1)
    batch = len(rows) - 1  # one window left over
    (tmp_path / "run").mkdir()
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(script), str(buffer), str(tmp_path / "ckpt"), str(tmp_path / "run"), "3", "0", str(batch)],
                         env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stdout[-2000:] + two.stderr[-2000:]
    assert f"{len(rows)} training windows" in two.stdout and "1 batches an epoch" in two.stdout
    losses = [float(line.split(" loss ")[1].split()[0]) for line in two.stdout.splitlines() if " loss " in line]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses), two.stdout


def test_export_to_upstream_layout_and_back(buffer: Path, tmp_path: Path) -> None:
    from policies.dp3.upstream import export_upstream, get_model, import_upstream

    result = run(buffer, tmp_path, FAST.model_copy(update={"max_steps": 2}))
    assert result.last_checkpoint is not None
    out = export_upstream(result.last_checkpoint, tmp_path / "up" / "3000.ckpt")
    from policies.dp3.upstream import read_upstream

    payload = read_upstream(out)
    assert set(payload) == {"cfg", "state_dicts", "pickles"}
    assert {"model", "ema_model", "optimizer"} <= set(payload["state_dicts"])
    assert all(k.split(".")[0] in ("_dummy_variable", "obs_encoder", "model", "mask_generator", "normalizer")
               for k in payload["state_dicts"]["model"])
    assert {"action", "agent_pos", "point_cloud"} <= {k.split(".")[2] for k in payload["state_dicts"]["model"]
                                                      if k.startswith("normalizer.")}
    model = import_upstream(out, result.last_checkpoint)
    assert sum(p.numel() for p in model.parameters()) > 0
    policy = get_model({"checkpoint": str(result.last_checkpoint), "device": "cpu"})
    assert policy.cfg.n_action_steps == 6


def test_dataloader_workers_give_the_same_training(buffer: Path, tmp_path: Path) -> None:
    """num_workers > 0 (buffer in host memory, batches cut in worker processes) trains exactly as the default."""
    a = run(buffer, tmp_path / "a", FAST.model_copy(update={"max_steps": 6}))
    b = run(buffer, tmp_path / "b", FAST.model_copy(update={"max_steps": 6, "num_workers": 2}))
    # Stopped inside an epoch: its loader's workers are gone when train returns. Left alive (they ignore SIGTERM),
    # they kept a CI test process waiting at exit.
    assert not multiprocessing.active_children()
    wa = checkpoints.load_file(a.last_checkpoint)["state_dicts"]["model"]
    wb = checkpoints.load_file(b.last_checkpoint)["state_dicts"]["model"]
    assert all(torch.equal(v, wb[k]) for k, v in wa.items())
