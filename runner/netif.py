"""Network interfaces for NCCL: read the host's (effect) and choose one (pure). Never a hard-coded eth0."""

from __future__ import annotations

import fcntl
import socket
import struct
from dataclasses import dataclass
from pathlib import Path

_IFF_UP = 0x1
_IFF_LOOPBACK = 0x8
_SIOCGIFADDR = 0x8915

#: Bridges and veths made by container engines and VMs: never the route to another node.
_VIRTUAL = ("docker", "veth", "br-", "virbr", "cni", "flannel")

#: The interfaces every container on docker's bridge network has.
BRIDGE_CONTAINER_INTERFACES = ("lo", "eth0")


@dataclass(frozen=True)
class Interface:
    name: str
    up: bool
    loopback: bool
    ipv4: str | None


def read_interfaces(sys_net: Path = Path("/sys/class/net")) -> list[Interface]:
    """The host's network interfaces with their state and IPv4 address."""
    out = []
    for d in sorted(sys_net.iterdir()) if sys_net.is_dir() else []:
        try:
            flags = int((d / "flags").read_text().strip(), 16)
        except (OSError, ValueError):
            continue
        out.append(Interface(d.name, bool(flags & _IFF_UP), bool(flags & _IFF_LOOPBACK), _ipv4(d.name)))
    return out


def _ipv4(name: str) -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            packed = fcntl.ioctl(s.fileno(), _SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
        except OSError:
            return None
    return socket.inet_ntoa(packed[20:24])


@dataclass(frozen=True)
class NcclChoice:
    ifname: str
    why: str
    problem: str | None = None


def choose_nccl_ifname(
    interfaces: list[Interface], *, explicit: str | None, multi_node: bool, network: str
) -> NcclChoice:
    """NCCL_SOCKET_IFNAME for a step: the job's value (checked), `lo` on one machine, else a routable NIC."""
    names = {i.name for i in interfaces} if network == "host" else set(BRIDGE_CONTAINER_INTERFACES)
    where = "on this host" if network == "host" else "in a bridge-network container"
    if explicit:
        missing = [p for p in _nccl_names(explicit) if not any(n == p or n.startswith(p) for n in names)]
        if missing:
            return NcclChoice(explicit, "set in the job", (
                f"resources.nccl_socket_ifname: no interface matching {', '.join(missing)} exists {where} "
                f"(there: {', '.join(sorted(names))}); NCCL would fail with 'no socket interface found'"))
        return NcclChoice(explicit, "set in the job; the interface exists")
    if not multi_node:
        return NcclChoice("lo", "one machine: ranks talk over loopback, which always exists")
    if network != "host":
        return NcclChoice("eth0", "container's own bridge interface")
    usable = [i for i in interfaces if i.up and not i.loopback and i.ipv4 and not i.name.startswith(_VIRTUAL)]
    if not usable:
        return NcclChoice("lo", "no routable interface", "no interface other than loopback is up with an IPv4 address")
    return NcclChoice(usable[0].name, f"first interface that is up with an address ({usable[0].ipv4})")


def _nccl_names(value: str) -> list[str]:
    # NCCL syntax: comma list, '^' excludes, '=' exact match; only included names must exist.
    if value.startswith("^"):
        return []
    return [p.lstrip("=") for p in value.split(",") if p.strip()]
