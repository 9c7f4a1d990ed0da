"""The start-of-training all-reduce measure: NCCL's bus-bandwidth arithmetic, when a slow link is worth a warning,
and nothing measured without a group of several processes. The measure itself runs through torchrun in
tests/policies/dp3/test_train.py (two gloo processes)."""

from __future__ import annotations

import pytest
import torch

from policies.interconnect import SLOW_GBPS, Link, measure

MB64 = 64 * 2**20


def test_bus_bandwidth_is_a_ring_all_reduce_s_traffic_over_the_time() -> None:
    # two processes: each sends and receives the whole buffer once (2(n-1)/n = 1)
    assert Link(2, "nccl", MB64, MB64 / 36e9, True).bus_gbps == pytest.approx(36.0)
    # four processes: 1.5 buffers each
    assert Link(4, "nccl", MB64, MB64 / 100e9, True).bus_gbps == pytest.approx(150.0)


def test_gpus_of_one_machine_averaging_at_host_memory_speed_are_warned_with_what_to_check() -> None:
    slow = Link(2, "nccl", MB64, MB64 / 36e9, True, peer_access=False)
    assert slow.describe() == ("train: all-reduce across 2 processes (nccl, GPU peer access no): 64 MB in 1.86 ms, "
                               "36 GB/s bus bandwidth")
    w = slow.warning()
    assert w is not None and "36 GB/s" in w and "under 2x" in w
    assert "nvidia-smi topo -m" in w and "NCCL_P2P_DISABLE" in w


@pytest.mark.parametrize("link", [
    Link(2, "nccl", MB64, MB64 / (SLOW_GBPS * 3e9), True),  # NVLink speed
    Link(2, "gloo", MB64, MB64 / 1e9, True),  # CPU processes: no GPU link to speak of
    Link(16, "nccl", MB64, MB64 / 20e9, False),  # several machines: the network's speed is expected
    Link(2, "cpu:gloo,cuda:nccl", MB64, MB64 / (SLOW_GBPS * 2e9), True),
])
def test_no_warning_where_the_speed_is_as_expected(link: Link) -> None:
    assert link.warning() is None


def test_the_mixed_backend_name_of_a_default_group_counts_as_nccl() -> None:
    assert Link(2, "cpu:gloo,cuda:nccl", MB64, MB64 / 30e9, True).warning() is not None


def test_one_process_measures_nothing() -> None:
    assert not torch.distributed.is_initialized()
    assert measure(torch.device("cpu")) is None
