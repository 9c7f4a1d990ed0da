from pathlib import Path

from runner.netif import Interface, choose_nccl_ifname, read_interfaces

IFACES = [Interface("lo", True, True, "127.0.0.1"), Interface("docker0", True, False, "172.17.0.1"),
          Interface("enp5s0", True, False, "10.1.2.3"), Interface("ib0", False, False, None)]


def test_one_machine_uses_loopback_never_eth0() -> None:
    c = choose_nccl_ifname(IFACES, explicit=None, multi_node=False, network="bridge")
    assert c.ifname == "lo" and c.problem is None


def test_multi_node_picks_a_real_up_interface_with_an_address() -> None:
    c = choose_nccl_ifname(IFACES, explicit=None, multi_node=True, network="host")
    assert c.ifname == "enp5s0"
    none = choose_nccl_ifname(IFACES[:2], explicit=None, multi_node=True, network="host")
    assert none.problem and "no interface" in none.problem


def test_explicit_value_wins_and_is_checked() -> None:
    ok = choose_nccl_ifname(IFACES, explicit="enp", multi_node=True, network="host")
    assert ok.ifname == "enp" and ok.problem is None
    bad = choose_nccl_ifname(IFACES, explicit="eth0", multi_node=True, network="host")
    assert bad.ifname == "eth0" and "no interface matching eth0" in (bad.problem or "")
    assert "enp5s0" in (bad.problem or "")
    # In a bridge-network container the interfaces are the container's own: lo and eth0.
    assert choose_nccl_ifname(IFACES, explicit="eth0", multi_node=False, network="bridge").problem is None
    assert choose_nccl_ifname(IFACES, explicit="^docker", multi_node=True, network="host").problem is None


def test_read_interfaces_from_sysfs(tmp_path: Path) -> None:
    for name, flags in (("lo", "0x9"), ("eth9", "0x1002")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "flags").write_text(flags + "\n")
    got = {i.name: i for i in read_interfaces(tmp_path)}
    assert got["lo"].up and got["lo"].loopback
    assert not got["eth9"].up and not got["eth9"].loopback
    assert read_interfaces(tmp_path / "missing") == []
