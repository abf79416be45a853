"""Test tooling: a real Ray autoscaler (v1) over Ray's fake multi-node provider, every node a set of
processes on this machine, plus helpers that read a curated output folder.

Why not ``ray.cluster_utils.AutoscalingCluster``: in the 2.60 wheel it reads a config file the wheel lacks, and
its start/shutdown run ``ray stop --force``, which kills every Ray process of the user on the machine (other test
runs included). Ray 2.60's fake provider needs the fixes below before it runs.

Here the head is ``ray start --head`` with its own temp dir, its own ports and an autoscaling config we write;
every process of the cluster (head services, the autoscaler, the worker nodes it launches, their workers) carries
a marker in its environment, and shutdown signals exactly those processes, by PID.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

MARKER_ENV = "DATAJUICER_RAY_FAKE_CLUSTER"  # set in the head's environment; every child inherits it
HEAD_NODE_TYPE = "ray.head.default"  # the fake provider's name for the head (FAKE_HEAD_NODE_TYPE)
MB = 2**20

# The curation drills' worker node type: one CPU and a custom resource standing in for a GPU.
SCORER_NODE_TYPE = {
    "scorer": {
        "resources": {"CPU": 1, "scorer_slot": 1, "object_store_memory": 100 * MB},
        "node_config": {},
        "min_workers": 0,
        "max_workers": 2,
    }
}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def _environ_has(pid: int, needle: bytes) -> bool:
    try:
        return needle in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:  # gone, or not ours
        return False


class FakeAutoscalingCluster:
    """A head node plus an autoscaler that launches worker nodes (process groups on this machine).

    ``worker_node_types`` is the launcher config's ``available_node_types`` minus the head, e.g.
    ``{"scorer": {"resources": {"CPU": 1, "scorer_slot": 1, "object_store_memory": 100 * MB},
    "node_config": {}, "min_workers": 0, "max_workers": 2}}``. Use as a context manager.
    """

    def __init__(
        self,
        worker_node_types: dict | None = None,
        head_cpus: int = 2,
        head_object_store_memory: int = 150 * MB,
        head_resources: dict | None = None,
        idle_timeout_minutes: float = 0.1,
        start_timeout_s: float = 60,
        env: dict | None = None,
    ):
        self.worker_node_types = SCORER_NODE_TYPE if worker_node_types is None else worker_node_types
        self.head_cpus = head_cpus
        self.head_object_store_memory = head_object_store_memory
        self.head_resources = head_resources or {}
        self.idle_timeout_minutes = idle_timeout_minutes
        self.start_timeout_s = start_timeout_s
        # Extra environment for every process of the cluster. Worker nodes are launched by the autoscaler
        # (a child of `ray start`), so the driver's environment never reaches their actors: set it here.
        self.extra_env = dict(env or {})
        self.tag = uuid.uuid4().hex[:12]
        # Short and ours alone: Ray's Unix sockets live under it (108-byte path limit).
        self.temp_dir = Path(tempfile.mkdtemp(prefix=f"rayfake-{self.tag[:6]}-", dir="/tmp"))
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.config_path = self.temp_dir / "autoscaling.json"
        self._gcs = None

    # ------------------------------------------------------------------------------------------
    # lifecycle

    def config(self) -> dict:
        """The autoscaling config: the fake provider, the head's node type and ours."""
        head = {
            "resources": {"CPU": self.head_cpus, **self.head_resources},
            "node_config": {},
            "max_workers": 0,
        }
        return {
            "cluster_name": f"fake-{self.tag}",
            "max_workers": sum(t.get("max_workers", 0) for t in self.worker_node_types.values()),
            "upscaling_speed": 1.0,
            "idle_timeout_minutes": self.idle_timeout_minutes,
            "provider": {
                "type": "fake_multinode",
                "use_node_id_as_ip": True,
                "disable_node_updaters": True,
                "disable_launch_config_check": True,
                # Without it the provider points new nodes at <node ip>:6379.
                "gcs_address": self.address,
            },
            "available_node_types": {HEAD_NODE_TYPE: head, **self.worker_node_types},
            "head_node_type": HEAD_NODE_TYPE,
            "auth": {"ssh_user": "ubuntu"},
            "docker": {},
            "file_mounts": {},
            "cluster_synced_files": [],
            "file_mounts_sync_continuously": False,
            "rsync_exclude": [],
            "rsync_filter": [],
            "initialization_commands": [],
            "setup_commands": [],
            "head_setup_commands": [],
            "worker_setup_commands": [],
            "head_start_ray_commands": [],
            "worker_start_ray_commands": [],
        }

    def env(self) -> dict:
        return {
            **os.environ,
            MARKER_ENV: self.tag,
            "RAY_FAKE_CLUSTER": "1",
            "AUTOSCALER_UPDATE_INTERVAL_S": "1",
            "RAY_AUTH_MODE": "disabled",
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
            "RAY_USAGE_STATS_ENABLED": "0",
            **self.extra_env,
        }

    def start(self) -> FakeAutoscalingCluster:
        """Start the head (and with it the autoscaler); returns once the autoscaler has reported."""
        atexit.register(self.shutdown)  # an interrupted test run leaves no cluster behind
        try:
            self._start()
        except BaseException:
            self.shutdown()
            raise
        return self

    def _start(self) -> None:
        self.config_path.write_text(json.dumps(self.config(), indent=1))
        cmd = [
            str(Path(sys.executable).with_name("ray")),
            "start",
            "--head",
            "--node-ip-address=127.0.0.1",
            f"--port={self.port}",
            f"--temp-dir={self.temp_dir}",
            f"--autoscaling-config={self.config_path}",
            f"--num-cpus={self.head_cpus}",
            f"--object-store-memory={self.head_object_store_memory}",
            "--include-dashboard=false",
            "--disable-usage-stats",
            # Every listening port our own, so that two clusters (two test runs) can share the machine.
            f"--dashboard-port={free_port()}",  # a minimal dashboard (job API) starts even so
            f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}",
            f"--metrics-export-port={free_port()}",
        ]
        if self.head_resources:
            cmd.append(f"--resources={json.dumps(self.head_resources)}")
        env = {**self.env(), "AUTOSCALER_METRIC_PORT": str(free_port())}  # the autoscaler's Prometheus port
        log_path = self.temp_dir / "ray-start.log"
        with open(log_path, "wb") as log:
            proc = subprocess.run(
                cmd, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=self.start_timeout_s
            )
        if proc.returncode != 0:
            text = log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"ray start --head failed ({proc.returncode}):\n{text}")
        self._wait_for_autoscaler()

    def _wait_for_autoscaler(self) -> None:
        """Until the autoscaler (monitor) has published its first status: it is then reading load."""
        t0 = time.time()
        while time.time() - t0 < self.start_timeout_s:
            if "autoscaler_report" in self.autoscaler_status():
                return
            time.sleep(0.5)
        raise TimeoutError(
            f"the autoscaler published no status in {self.start_timeout_s:g} s; {self.logs_hint()}"
        )

    def shutdown(self) -> None:
        """SIGTERM, then SIGKILL, every process of this cluster (and only those); then remove its files."""
        atexit.unregister(self.shutdown)
        self._gcs = None
        pids = self.pids()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.time() + 10
        while time.time() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.2)
        for pid in self.pids():  # leftovers, and anything forked meanwhile
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.time() + 10
        while time.time() < deadline and self.pids():
            time.sleep(0.2)
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> FakeAutoscalingCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.shutdown()

    def pids(self) -> list[int]:
        """Processes of this cluster: the marker in their environment, or our temp dir on their command
        line (a process that cleared its environment still names its session dir)."""
        needle = f"{MARKER_ENV}={self.tag}".encode()
        me, out = os.getpid(), []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == me:
                continue
            pid = int(entry.name)
            if _environ_has(pid, needle) or any(str(self.temp_dir) in a for a in _cmdline(pid)):
                out.append(pid)
        return out

    def logs_hint(self) -> str:
        return f"logs under {self.temp_dir}/session_latest/logs (monitor.* is the autoscaler)"

    # ------------------------------------------------------------------------------------------
    # state

    def gcs(self):
        if self._gcs is None:
            from ray._raylet import GcsClient

            self._gcs = GcsClient(address=self.address)
        return self._gcs

    def nodes(self) -> list[dict]:
        """Every node the GCS knows: node_id (hex), alive, is_head, resources (total)."""
        out = []
        for node_id, info in self.gcs().get_all_node_info(timeout=10).items():
            out.append(
                {
                    "node_id": node_id.hex(),
                    "alive": info.state == 0,  # GcsNodeInfo.ALIVE
                    "is_head": info.is_head_node,
                    "resources": dict(info.resources_total),
                }
            )
        return out

    def alive_worker_nodes(self) -> int:
        return sum(1 for n in self.nodes() if n["alive"] and not n["is_head"])

    def wait_for_worker_nodes(self, n: int, timeout: float = 90, exact: bool = True) -> float:
        """Wait until ``n`` worker nodes are alive (``exact=False``: at least ``n``); returns the seconds it took."""
        t0 = time.time()
        while True:
            have = self.alive_worker_nodes()
            if have == n or (not exact and have >= n):
                return time.time() - t0
            if time.time() - t0 > timeout:
                raise TimeoutError(
                    f"{have} worker nodes alive after {timeout:g} s, wanted {n}; {self.logs_hint()}"
                )
            time.sleep(0.25)

    def raylet_pids(self) -> dict[str, int]:
        """Node id (hex) -> raylet PID, for this cluster's raylets."""
        out = {}
        for pid in self.pids():
            args = _cmdline(pid)
            if not args or not os.path.basename(args[0]).startswith("raylet"):
                continue
            for a in args:
                if a.startswith("--node_id="):
                    out[a.split("=", 1)[1]] = pid
        return out

    def kill_worker_raylet(self, node_id: str | None = None) -> str:
        """SIGKILL the raylet of a live worker node (the first one, or ``node_id``): a spot preemption, the
        node gone without a word. The node's workers die with it. Returns the node id."""
        alive = [n["node_id"] for n in self.nodes() if n["alive"] and not n["is_head"]]
        if node_id is None:
            if not alive:
                raise RuntimeError("no live worker node to preempt")
            node_id = sorted(alive)[0]
        raylets = self.raylet_pids()
        if node_id not in raylets:
            raise RuntimeError(f"no raylet process for node {node_id} (have {sorted(raylets)})")
        os.kill(raylets[node_id], signal.SIGKILL)
        return node_id

    def autoscaler_status(self) -> dict:
        """The autoscaler's last published status (what ``ray status`` prints), or {}."""
        raw = self.gcs().internal_kv_get(b"__autoscaling_status", None)
        return json.loads(raw) if raw else {}


class NodeWatch:
    """Samples the cluster's worker nodes in a thread (every ``period`` s) while a drill runs: when each was
    first seen alive and first seen dead (``time.time()``), and the most alive at once. A context manager."""

    def __init__(self, cluster: FakeAutoscalingCluster, period: float = 0.5):
        self.cluster, self.period = cluster, period
        self.up: dict[str, float] = {}
        self.dead: dict[str, float] = {}
        self.max_alive = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):  # a slow GCS reply: try again next round
                now, alive = time.time(), 0
                for n in self.cluster.nodes():
                    if n["is_head"]:
                        continue
                    if n["alive"]:
                        alive += 1
                        self.up.setdefault(n["node_id"], now)
                    else:
                        self.dead.setdefault(n["node_id"], now)
                self.max_alive = max(self.max_alive, alive)
            self._stop.wait(self.period)

    def __enter__(self) -> NodeWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
