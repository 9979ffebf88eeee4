"""A multi-node Ray cluster on 127.0.0.1: one head and N worker raylets, for tests and laptop demos.

    python infra/local/cluster.py start --workers 1 --cpus-per-node 1 --state /tmp/ganpipe-cluster.json
    python infra/local/cluster.py stop --state /tmp/ganpipe-cluster.json

Every process it starts lives under its own --temp-dir, and `stop` ends exactly the processes whose
command line names that directory: other Ray clusters on the machine are left alone (no `ray stop`).
Token auth stays on, as `ray start` sets it up; clients need RAY_AUTH_MODE=token and the token.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LOOPBACK = "127.0.0.1"
# Ray maps "127.0.0.1" to the machine's external address once multi-node is enabled, so each node gets
# its own other loopback address instead: head 127.0.0.2, workers 127.0.0.3, 127.0.0.4, ...
NODE_IPS = [f"127.0.0.{i}" for i in range(2, 40)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def _env() -> dict:
    # "=0" means single-node mode, which refuses worker nodes; "=1" allows them, and every node is still
    # pinned to a 127.0.0.x address by --node-ip-address below, so all cluster traffic stays on loopback.
    # The venv's bin first on PATH: job entrypoints say `python` and must get this environment's.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return {**os.environ, "PATH": path, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1", "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_AUTH_MODE": "token"}


def _ray_cli() -> str:
    return str(Path(sys.executable).with_name("ray"))


def start(workers: int = 1, cpus_per_node: int = 1, temp_dir: str | None = None,
          worker_resources: dict[str, float] | None = None) -> dict:
    """Start head + `workers` worker nodes (each declaring `worker_resources`, if given); returns addresses
    and the temp dir that identifies them."""
    temp_dir = temp_dir or tempfile.mkdtemp(prefix="ganpipe-ray-")
    port, dash = _free_port(), _free_port()
    head_ip = NODE_IPS[0]
    head = [_ray_cli(), "start", "--head", f"--node-ip-address={head_ip}", f"--port={port}",
            f"--dashboard-host={LOOPBACK}", f"--dashboard-port={dash}", f"--temp-dir={temp_dir}",
            *_node_args(cpus_per_node)]
    info = {"address": f"{head_ip}:{port}", "dashboard": f"http://{LOOPBACK}:{dash}", "temp_dir": temp_dir,
            "nodes": workers + 1}
    try:
        _run(head)
        for ip in NODE_IPS[1:workers + 1]:
            start_node(info, ip, cpus_per_node, worker_resources)
    except BaseException:
        stop(temp_dir)
        raise
    return info


def start_node(info: dict, ip: str, cpus: int = 1, resources: dict[str, float] | None = None,
               env: dict[str, str] | None = None) -> None:
    """Join a worker node at `ip` (a 127.0.0.x address) to the cluster `info`; `env` is added to the
    environment of its processes (and so of the tasks it runs)."""
    extra = [f"--resources={json.dumps(resources)}"] if resources else []
    _run([_ray_cli(), "start", f"--address={info['address']}", f"--node-ip-address={ip}",
          *_node_args(cpus), *extra], env)


def kill_node(info: dict, ip: str) -> int:
    """SIGKILL every process of the worker node at `ip`, as a machine failure would; returns how many."""
    pids = [pid for pid in own_pids(info["temp_dir"]) if _node_ip(pid) == ip]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return len(pids)


def _node_ip(pid: int) -> str | None:
    """The node address on a Ray process's command line (raylet, agents and workers all carry one)."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return None
    for i, arg in enumerate(args):
        for flag in ("--node-ip-address", "--node_ip_address"):
            if arg.startswith(flag + "="):
                return arg.split("=", 1)[1]
            if arg == flag and i + 1 < len(args):
                return args[i + 1]
    return None


def _node_args(cpus: int) -> list[str]:
    return [f"--num-cpus={cpus}", "--num-gpus=0", "--disable-usage-stats", *_agent_ports()]


def _agent_ports() -> list[str]:
    # Agents bind every interface, so two nodes on one machine must not share the default agent ports.
    return [f"--dashboard-agent-listen-port={_free_port()}", f"--dashboard-agent-grpc-port={_free_port()}",
            f"--metrics-export-port={_free_port()}"]


def _run(cmd: list[str], env: dict[str, str] | None = None) -> None:
    out = subprocess.run(cmd, env={**_env(), **(env or {})}, capture_output=True, text=True, timeout=180)
    if out.returncode:
        raise RuntimeError(f"{' '.join(cmd[:3])} failed: {out.stderr.strip().splitlines()[-1:]}")


def own_pids(temp_dir: str) -> list[int]:
    """PIDs whose command line mentions this cluster's temp dir or its session files."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if temp_dir in cmdline:
                pids.append(int(entry.name))
    return pids


def stop(temp_dir: str, grace_s: float = 10.0) -> int:
    """SIGTERM this cluster's processes, SIGKILL stragglers; returns how many were signalled."""
    pids = own_pids(temp_dir)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in own_pids(temp_dir):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + grace_s
        while own_pids(temp_dir) and time.time() < deadline:
            time.sleep(0.2)
    shutil.rmtree(temp_dir, ignore_errors=True)
    return len(pids)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["start", "stop"])
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--cpus-per-node", type=int, default=1)
    parser.add_argument("--state", default=os.path.join(tempfile.gettempdir(), "ganpipe-cluster.json"))
    args = parser.parse_args()
    if args.action == "start":
        info = start(args.workers, args.cpus_per_node)
        Path(args.state).write_text(json.dumps(info))
        print(json.dumps(info))
    else:
        info = json.loads(Path(args.state).read_text())
        print(f"stopped {stop(info['temp_dir'])} processes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
