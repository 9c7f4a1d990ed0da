"""A process group joined through policies.process_group is freed by destroy_process_group even when the modules
that default to the then-current group are imported after joining, as torch.compile and diffusers import them."""

from __future__ import annotations

import ctypes
import importlib
import json
import os
import threading
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from policies import process_group
from policies.process_group import gloo_threads


def _rank(rank: int, world: int, store: str, out: str, prepared: bool, late: str) -> None:
    init = f"file://{store}"
    if prepared:
        if late.startswith("deepspeed"):  # as make_accelerator prepares where DeepSpeed may run
            process_group.prepare((process_group.DEEPSPEED_COMM,))
        process_group.join("gloo", init_method=init, rank=rank, world_size=world)
    else:
        dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    for name in late.split(","):
        importlib.import_module(name)
    parts = [torch.empty(3) for _ in range(world)]
    dist.all_gather(parts, torch.full((3,), float(rank)))
    dist.destroy_process_group()
    threads = process_group.settle() if prepared else gloo_threads()  # settled: gloo's loop may end a moment later
    Path(out, f"rank{rank}.json").write_text(json.dumps({"threads": threads,
                                                          "gathered": [p.tolist() for p in parts]}))
    if not prepared:  # the group leaked, as shown: skip the shutdown at which such a process can abort (exit 134)
        os._exit(0)


def _run(tmp_path: Path, prepared: bool, late: str) -> list[dict[str, list]]:
    mp.spawn(_rank, args=(2, str(tmp_path / "store"), str(tmp_path), prepared, late), nprocs=2, join=True)
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]


@pytest.mark.parametrize("late", ["torch._dynamo", "diffusers", "deepspeed.comm.torch"])
def test_a_joined_group_is_freed_whatever_is_imported_after_joining(tmp_path: Path, late: str) -> None:
    if importlib.util.find_spec(late.split(".")[0]) is None:
        pytest.skip(f"{late} is not installed")
    ranks = _run(tmp_path, True, late)
    assert [r["gathered"] for r in ranks] == [[[0.0] * 3, [1.0] * 3]] * 2
    assert [r["threads"] for r in ranks] == [[], []]


def test_without_preparing_the_group_outlives_destroy(tmp_path: Path) -> None:
    """The failure `prepare` prevents, shown on this torch (2.13): torch.distributed.nn.functional imported after
    joining keeps the group and its gloo threads alive past destroy_process_group. Should a torch release stop
    capturing the group, this test fails and `prepare` can go."""
    ranks = _run(tmp_path, False, "torch.distributed.nn.functional")
    assert all(any("gloo" in t for t in r["threads"]) for r in ranks)


def _step_process(rank: int, store: str, out: str) -> None:
    """Joins a group, then runs a step through policies.entry.main, which (the context missing here) returns 2."""
    from policies.entry import main

    process_group.join("gloo", init_method=f"file://{store}", rank=rank, world_size=1)
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(4, 2))  # gone before the step returns
    model(torch.randn(3, 4)).sum().backward()
    del model
    code = main("dp3", {"train": lambda ctx: 0}, ["train"])
    Path(out).write_text(json.dumps({"code": code, "threads": gloo_threads(), "joined": dist.is_initialized()}))


def test_a_step_process_leaves_its_group_when_the_step_returns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RUNNER_CONTEXT", raising=False)
    out = tmp_path / "out.json"
    mp.spawn(_step_process, args=(str(tmp_path / "store"), str(out)), nprocs=1, join=True)
    assert json.loads(out.read_text()) == {"code": 2, "threads": [], "joined": False}


def _named_thread(name: bytes, started: threading.Event, release: threading.Event) -> None:
    """Takes `name` as its OS-level name (what /proc lists, as gloo's threads are named), then waits for `release`."""
    ctypes.CDLL(None).prctl(15, name, 0, 0, 0)  # PR_SET_NAME
    started.set()
    release.wait(5)


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux's /proc")
def test_settle_waits_for_a_gloo_thread_that_is_still_ending() -> None:
    started, release = threading.Event(), threading.Event()
    thread = threading.Thread(target=_named_thread, args=(b"gloo_tcp_test", started, release))
    thread.start()
    started.wait(5)
    try:
        assert process_group.settle(0.05) == ["gloo_tcp_test"]  # still running after the limit: named
        threading.Timer(0.2, release.set).start()
        t = time.monotonic()
        assert process_group.settle(3.0) == []  # ended within the limit: waited for
        assert 0.1 < time.monotonic() - t < 2.5
    finally:
        release.set()
        thread.join()
    assert gloo_threads() == []
