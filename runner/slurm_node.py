"""Run on every node of a Slurm step (`srun python3 -m runner.slurm_node [--check-port] -- CMD...`): sets this
node's rank, finds the network interface that routes to MASTER_ADDR for NCCL (never a fixed name; `--ifname`
overrides), optionally checks that every node reaches MASTER_ADDR:MASTER_PORT+1 before training starts, then
execs CMD with that environment. A failure names the node and the interface."""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time

#: Set on each node by the batch script and this helper, and passed into the container by name.
NODE_ENV = ("MASTER_ADDR", "MASTER_PORT", "RUNNER_NUM_MACHINES", "RUNNER_MACHINE_RANK", "NCCL_SOCKET_IFNAME",
            "GLOO_SOCKET_IFNAME", "SLURM_JOB_ID", "SLURM_RESTART_COUNT", "SLURMD_NODENAME", "RUNNER_SLURM_GRACE_S",
            "PET_NNODES", "PET_NODE_RANK", "PET_MASTER_ADDR", "PET_MASTER_PORT")


def route_interface(addr: str) -> str | None:
    """The interface the kernel uses to reach `addr` (`ip route get`), or None. On the node that holds `addr` (the
    rendezvous node itself) the route is `local ... dev lo`: the interface is then the one carrying that address,
    which the other nodes reach it through; lo only when `addr` is a loopback address."""
    try:
        ip = socket.gethostbyname(addr)
        out = _ip("route", "get", ip)
        words = out.split()
        if words[:1] == ["local"] and not ip.startswith("127."):
            words = _ip("-4", "addr", "show", "to", ip).replace(":", " ").split()[1:2]
            return words[0] if words else None
    except (OSError, subprocess.SubprocessError):
        return None
    return words[words.index("dev") + 1] if "dev" in words else None


def _ip(*args: str) -> str:
    return subprocess.run(["ip", "-o", *args], capture_output=True, text=True, timeout=5).stdout


def check_reach(rank: int, nodes: int, addr: str, port: int, timeout_s: float = 60.0, node: str = "") -> str | None:
    """Rank 0 accepts one connection from every other node on `port`; the others connect and say their name. None
    when all is well. Rank 0 waits a little longer than the others, so that a node which cannot reach it fails first,
    with its own name and interface."""
    if rank == 0:
        heard: list[str] = []
        with socket.socket() as srv:
            srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            srv.bind(("", port))
            srv.listen(nodes)
            deadline = time.monotonic() + timeout_s + 10
            try:
                while len(heard) < nodes - 1:
                    srv.settimeout(max(0.1, deadline - time.monotonic()))
                    conn, peer = srv.accept()
                    with conn:
                        conn.settimeout(5)
                        heard.append(conn.recv(256).decode(errors="replace").strip() or peer[0])
            except TimeoutError:
                got = f" (heard from {', '.join(heard)})" if heard else ""
                return f"only {len(heard)} of {nodes - 1} other node(s) reached {addr}:{port} within {timeout_s + 10:g} s{got}"
        return None
    deadline = time.monotonic() + timeout_s
    last: OSError | None = None
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((addr, port), timeout=min(5.0, max(0.1, deadline - time.monotonic()))) as c:
                c.sendall((node or socket.gethostname()).encode())
            return None
        except OSError as e:
            last = e
            time.sleep(1)
    return f"cannot reach {addr}:{port} within {timeout_s:g} s ({last})"


def free_port_pair(tries: int = 50) -> int:
    """A port P such that P (the rendezvous) and P+1 (the reach check) are both free on this node."""
    for _ in range(tries):
        with socket.socket() as a:
            a.bind(("", 0))
            port = int(a.getsockname()[1])
            if port >= 65535:
                continue
            with socket.socket() as b:
                try:
                    b.bind(("", port + 1))
                except OSError:
                    continue
                return port
    msg = "no free port pair found"
    raise OSError(msg)


def main(argv: list[str] | None = None) -> int:
    if (argv is None and sys.argv[1:2] == ["--free-port"]) or argv == ["--free-port"]:
        print(free_port_pair())  # the batch script runs on the first node, the rendezvous: the port is free there
        return 0
    ap = argparse.ArgumentParser(prog="runner.slurm_node")
    ap.add_argument("--ifname", help="NCCL_SOCKET_IFNAME from the job (no detection)")
    ap.add_argument("--check-port", action="store_true", help="check MASTER_ADDR:MASTER_PORT+1 from every node first")
    ap.add_argument("--reach-timeout", type=float, default=60.0, help="seconds the check waits for every node")
    ap.add_argument("command", nargs=argparse.REMAINDER)
    a = ap.parse_args(argv)
    cmd = a.command[1:] if a.command[:1] == ["--"] else a.command
    env = os.environ
    node = env.get("SLURMD_NODENAME") or socket.gethostname()
    rank = int(env.get("SLURM_NODEID", "0"))
    env["RUNNER_MACHINE_RANK"] = str(rank)
    master = env.get("MASTER_ADDR", "127.0.0.1")
    ifname = a.ifname or route_interface(master)
    if not ifname:
        print(f"[runner] node {node}: no interface routes to MASTER_ADDR={master}; set resources.nccl_socket_ifname",
              file=sys.stderr)
        return 2
    env["NCCL_SOCKET_IFNAME"] = env["GLOO_SOCKET_IFNAME"] = ifname  # gloo: CPU training and torch's CPU collectives
    # torchrun (DP3) reads its multi-node arguments from PET_*; accelerate (RDT) gets them from policies/rdt/launch.py.
    env.update({"PET_NNODES": env.get("RUNNER_NUM_MACHINES", "1"), "PET_NODE_RANK": str(rank),
                "PET_MASTER_ADDR": master, "PET_MASTER_PORT": env.get("MASTER_PORT", "29500")})
    print(f"[runner] node {node}: rank {rank} of {env.get('RUNNER_NUM_MACHINES', '1')}, NCCL_SOCKET_IFNAME={ifname} "
          f"(routes to {master})", flush=True)
    if a.check_port:
        problem = check_reach(rank, int(env.get("RUNNER_NUM_MACHINES", "1")), master, int(env["MASTER_PORT"]) + 1,
                              a.reach_timeout, node)
        if problem:
            print(f"[runner] node {node} (interface {ifname}): {problem}", file=sys.stderr)
            return 2
    if os.path.basename(cmd[0]) in ("apptainer", "singularity"):
        # `apptainer exec --containall` starts from a clean environment: these reach it through APPTAINERENV_*.
        env.update({f"APPTAINERENV_{k}": env[k] for k in NODE_ENV if k in env})
    os.execvpe(cmd[0], cmd, env)


if __name__ == "__main__":
    sys.exit(main())
