"""Starting and stopping Ray: a local Ray's autoscaler monitor is stopped before Ray stops its GCS (Ray 2.60
stops the GCS first and the monitor then hangs for its 1 s grace period); a cluster's monitor is never touched.

Each case runs in a fresh process: it starts (and stops) a Ray of its own, as the CLI does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds Ray's processes in /proc")

PROLOGUE = """
import json, os
import ray
from datajuicer_ray import runtime
from datajuicer_ray.config import RayConfig

def alive(pid):
    return not runtime._has_exited(pid)

def stop_and_watch(monitors):
    seen = {}
    real = ray.shutdown
    def shutdown():  # what Ray's own shutdown finds when it starts stopping the GCS
        seen["monitor_alive_when_ray_stops"] = any(alive(p) for p in monitors)
        real()
    ray.shutdown = shutdown
    runtime.shutdown_ray()
    return seen
"""


def run(body: str) -> dict:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    code = PROLOGUE + textwrap.dedent(body)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_local_ray_stops_its_monitor_before_the_gcs():
    got = run(
        """
        assert runtime.init_ray(RayConfig(num_cpus=1)) == "local"
        monitors = runtime._monitor_pids()
        node = ray._private.worker._global_node
        others = [p.process.pid for kind, infos in node.all_processes.items() for p in infos if "monitor" != kind]
        seen = stop_and_watch(monitors)
        print(json.dumps({"monitors": len(monitors), **seen,
                          "left": [p for p in monitors + others if alive(p)]}))
        """
    )
    assert got["monitors"] == 1  # found by its GCS address
    assert got["monitor_alive_when_ray_stops"] is False
    assert got["left"] == []  # and Ray stopped everything else


def test_a_cluster_driver_leaves_the_cluster_monitor_running():
    """Also after a local Ray of its own earlier in the same process."""
    got = run(
        """
        from ray.cluster_utils import Cluster
        runtime.init_ray(RayConfig(num_cpus=1))  # a local Ray earlier in this process, stopped by hand
        ray.shutdown()
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
        assert runtime.init_ray(RayConfig(address=cluster.address)) == "cluster"
        monitors = runtime._monitor_pids()
        seen = stop_and_watch(monitors)
        print(json.dumps({"monitors": len(monitors), **seen,
                          "alive_after": [p for p in monitors if alive(p)]}))
        cluster.shutdown()
        """
    )
    assert got["monitors"] == 1
    assert got["monitor_alive_when_ray_stops"] is True
    assert got["alive_after"] != []  # the driver left; the cluster (and its autoscaler) stays up


def test_a_local_ray_gives_its_cpu_actors_one_arena_without_a_runtime_env():
    """Ray's own workers inherit the environment of the Ray started here: a CPU actor pool needs no
    runtime_env there (an actor with one gets a worker started for it instead of an idle prestarted one),
    and the driver's own environment is left as it was. Joining a cluster still asks for the runtime_env."""
    got = run(
        """
        from datajuicer_ray.allocator import CPU_ACTOR_ENV
        from datajuicer_ray.config import VisionConfig
        from ray.cluster_utils import Cluster
        name = next(iter(CPU_ACTOR_ENV))
        os.environ.pop(name, None)  # as a user who never set it
        before = os.environ.get(name)
        runtime.init_ray(RayConfig(num_cpus=1))
        kwargs = runtime.actor_pool_kwargs(VisionConfig(), num_gpus=0)
        worker_env = ray.get(ray.remote(lambda: os.environ.get(name)).remote())
        after = os.environ.get(name)
        runtime.shutdown_ray()
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
        runtime.init_ray(RayConfig(address=cluster.address))
        joined = runtime.actor_pool_kwargs(VisionConfig(), num_gpus=0)
        ray.shutdown()
        cluster.shutdown()
        print(json.dumps({"local": "runtime_env" in kwargs, "worker": worker_env, "want": CPU_ACTOR_ENV[name],
                          "before": before, "after": after, "joined": joined.get("runtime_env")}))
        """
    )
    assert got["local"] is False
    assert got["worker"] == got["want"]
    assert got["after"] == got["before"] is None
    assert got["joined"] == {"env_vars": {"MALLOC_ARENA_MAX": got["want"]}}
