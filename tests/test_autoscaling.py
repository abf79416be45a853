"""Autoscaling and preemption drills for the curation job, on Ray's real autoscaler (v1) over its fake
multi-node provider (tests/support/autoscaling.py): worker nodes are launched and terminated by the autoscaler, as
process groups on this machine. A custom resource ("scorer_slot") stands in for GPUs, so the scorer actors need
a worker node the autoscaler has to add.

  - scale-up from 0 scorer nodes: the job waits for the autoscaler, a node comes up, every row is written
    once, and the node goes away after the run (idle timeout);
  - spot preemption: a scorer node's raylet is SIGKILLed mid-run; the job still writes every row once;
  - GPU detection: `gpus_available_or_scalable` sees a GPU node type at 0 workers.

Rows are checked by key and inputs by the commits that name them (tests/support/tables.py, through the Delta log)."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.support.autoscaling import (
    MB,
    SCORER_NODE_TYPE,
    FakeAutoscalingCluster,
    NodeWatch,
)
from tests.support.drills import drill_corpus, drill_overrides, run_in_thread
from tests.support.tables import committed_inputs, read_keys

pytestmark = [
    pytest.mark.slow,  # `make test` (CI) runs slow tests too
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds cluster processes in /proc"),
]

FILES, ROWS = 8, 12
DELAY_S = "0.6"  # per scorer batch: slow enough to preempt a node mid-run, fast enough for CI
MEASURED: dict[str, float] = {}  # printed at the end of the module (pytest -s, or the -rA report)


@pytest.fixture(scope="module")
def fake_env():
    """The driver on 127.0.0.1 like the cluster (ray_constants reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER at
    import time: by now ray is imported, so patch the constant too); the module-wide local Ray of other test
    modules shut down (re-started after us on demand)."""
    import ray
    import ray._private.ray_constants as ray_constants

    if ray.is_initialized():
        ray.shutdown()
    old_env = os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")
    old_flag = ray_constants.ENABLE_RAY_CLUSTER
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    yield
    if ray.is_initialized():
        ray.shutdown()
    ray_constants.ENABLE_RAY_CLUSTER = old_flag
    if old_env is None:
        os.environ.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
    else:
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = old_env
    if MEASURED:
        print("\n[autoscaling] " + ", ".join(f"{k}={v:.1f}" for k, v in MEASURED.items()))


def connect(cluster: FakeAutoscalingCluster) -> None:
    import ray

    if ray.is_initialized() and ray.get_runtime_context().gcs_address != cluster.address:
        ray.shutdown()
    if not ray.is_initialized():
        ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
    ray.data.DataContext.get_current().enable_progress_bars = False


@pytest.fixture(scope="module")
def cluster(fake_env):
    """Head: 2 CPUs, no scorer_slot. Autoscaler: 0-2 `scorer` nodes (1 CPU + 1 scorer_slot each)."""
    import ray

    c = FakeAutoscalingCluster(SCORER_NODE_TYPE, env={"DATAJUICER_RAY_SCORER_DELAY_S": DELAY_S})
    t0 = time.time()
    with c:
        MEASURED["head_start"] = time.time() - t0
        connect(c)
        yield c
        ray.shutdown()


@pytest.fixture()
def corpus(tmp_path) -> tuple[Path, set[str]]:
    return tmp_path / "in", drill_corpus(tmp_path / "in", FILES, ROWS)


def finish(thread: threading.Thread, result: dict, cluster: FakeAutoscalingCluster, timeout: float = 240):
    thread.join(timeout=timeout)
    assert not thread.is_alive(), f"the job did not finish in {timeout:g} s; {cluster.logs_hint()}"
    assert "error" not in result, result.get("error")
    return result["summary"]


def assert_exactly_once(out: Path, keys: set[str]) -> None:
    got = read_keys(out)
    twice = [k for k, n in Counter(got).items() if n > 1]
    assert not twice, f"rows written twice: {twice[:5]}"
    missing = sorted(set(keys) - set(got))
    assert not missing, f"{len(missing)} rows missing: {missing[:5]}"
    assert sorted(got) == sorted(keys)


def committed_files(out: Path) -> int:
    """Input files committed so far, from the commits that name them (a commit may carry several)."""
    return committed_inputs(out) if (out / "_delta_log").exists() else 0


def wait_for_commits(out: Path, n: int, thread: threading.Thread, timeout: float = 180) -> None:
    t0 = time.time()
    while committed_files(out) < n:
        assert thread.is_alive(), "the job ended before committing anything"
        assert time.time() - t0 < timeout, f"fewer than {n} input files committed after {timeout:g} s"
        time.sleep(0.2)


# ----------------------------------------------------------------------------------------------
# GPU detection (datajuicer_ray.runtime.gpus_available_or_scalable)


def test_gpu_node_type_at_zero_workers_counts_as_gpus(fake_env):
    """A cluster whose only GPU node type is scaled to 0: no GPU in `ray.cluster_resources()`, yet the
    autoscaler can add one."""
    import ray

    from datajuicer_ray.runtime import autoscaler_node_types, cluster_has_gpus, gpus_available_or_scalable

    gpu_type = {
        "gpu": {
            "resources": {"CPU": 1, "GPU": 1, "object_store_memory": 100 * MB},  # fake GPUs: never launched
            "node_config": {},
            "min_workers": 0,
            "max_workers": 1,
        }
    }
    with FakeAutoscalingCluster(gpu_type) as c:
        connect(c)
        try:
            assert not cluster_has_gpus()
            types = autoscaler_node_types()
            assert types is not None and types["gpu"]["resources"]["GPU"] == 1, types
            assert types["gpu"]["max_workers"] == 1
            assert gpus_available_or_scalable()
            assert c.alive_worker_nodes() == 0  # asking launched nothing

            # A cluster config published in the GCS (what Ray Data and Ray Train read) comes first.
            from ray.core.generated import autoscaler_pb2

            published = autoscaler_pb2.ClusterConfig(
                node_group_configs=[
                    autoscaler_pb2.NodeGroupConfig(name="cpu", resources={"CPU": 4}, max_count=3)
                ]
            )
            c.gcs().report_cluster_config(published.SerializeToString())
            assert set(autoscaler_node_types()) == {"cpu"}
            assert not gpus_available_or_scalable()
        finally:
            ray.shutdown()


def test_no_gpu_node_type_means_no_gpus(cluster):
    from datajuicer_ray.runtime import autoscaler_node_types, gpus_available_or_scalable

    connect(cluster)
    types = autoscaler_node_types()
    assert types is not None and "scorer" in types, types  # the node types are visible...
    assert not gpus_available_or_scalable()  # ...and none has a GPU


def test_node_types_invisible_without_an_autoscaler(fake_env):
    """A plain local Ray (no autoscaling config): nothing to scale, no GPU."""
    import ray

    from datajuicer_ray.runtime import autoscaler_node_types, gpus_available_or_scalable

    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        assert autoscaler_node_types() is None
        assert not gpus_available_or_scalable()
    finally:
        ray.shutdown()


def test_gpu_node_types_from_a_launcher_config(tmp_path, monkeypatch):
    """The config-file path without a cluster: a launcher's ~/ray_bootstrap_config.yaml (YAML), per-type and
    cluster-wide max_workers."""
    from datajuicer_ray import runtime

    def launcher_config(gpu_max: int, cluster_max: int) -> str:
        path = tmp_path / f"bootstrap-{gpu_max}-{cluster_max}.yaml"
        path.write_text(
            f"max_workers: {cluster_max}\n"
            "head_node_type: head\n"
            "available_node_types:\n"
            "  head: {resources: {CPU: 8}, node_config: {}, max_workers: 0}\n"
            "  cpu: {resources: {CPU: 16}, node_config: {}, min_workers: 1, max_workers: 4}\n"
            f"  gpu_spot: {{resources: {{CPU: 8, GPU: 1}}, node_config: {{}}, max_workers: {gpu_max}}}\n"
        )
        return str(path)

    monkeypatch.setattr(runtime, "cluster_has_gpus", lambda: False)
    monkeypatch.setattr(runtime, "_node_types_from_gcs", lambda: None)
    for gpu_max, cluster_max, expected in [(2, 4, True), (0, 4, False), (2, 0, False)]:
        path = launcher_config(gpu_max, cluster_max)
        monkeypatch.setattr(runtime, "_autoscaler_config_path", lambda p=path: p)
        assert runtime.gpus_available_or_scalable() is expected, (gpu_max, cluster_max)
    monkeypatch.setattr(runtime, "_autoscaler_config_path", lambda: None)
    assert runtime.autoscaler_node_types() is None
    assert runtime.gpus_available_or_scalable() is False


# ----------------------------------------------------------------------------------------------
# the curation job on an autoscaling cluster


def test_scale_up_from_zero_then_down(cluster, corpus, tmp_path):
    connect(cluster)
    assert cluster.alive_worker_nodes() == 0, "a scorer node is already up"
    out = tmp_path / "out"
    t0 = time.time()
    with NodeWatch(cluster) as watch:
        thread, result = run_in_thread(drill_overrides(corpus[0], out))
        MEASURED["first_node_up"] = cluster.wait_for_worker_nodes(1, timeout=120, exact=False)
        summary = finish(thread, result, cluster)
        MEASURED["scale_up_job"] = time.time() - t0
        # The actor pool is gone with the job: the nodes are idle and the autoscaler removes them.
        MEASURED["scale_down_after_job"] = cluster.wait_for_worker_nodes(0, timeout=90)
    MEASURED["max_scorer_nodes"] = watch.max_alive
    assert 1 <= watch.max_alive <= SCORER_NODE_TYPE["scorer"]["max_workers"]
    assert summary["rows_in"] == summary["rows_out"] == FILES * ROWS
    assert committed_files(out) == FILES
    assert_exactly_once(out, corpus[1])


def test_scorer_node_preempted_mid_run(cluster, corpus, tmp_path):
    """One scorer actor, so one scorer node: preempting it leaves no scorer_slot in the cluster until the
    autoscaler replaces the node (the GCS declares it dead first)."""
    connect(cluster)
    out = tmp_path / "out"
    t0 = time.time()
    with NodeWatch(cluster) as watch:
        thread, result = run_in_thread([*drill_overrides(corpus[0], out), "vision.max_actors=1"])
        wait_for_commits(out, 2, thread)
        before = set(watch.up)
        killed = cluster.kill_worker_raylet()
        t_kill = time.time()
        assert committed_files(out) < FILES, "the job finished before the node could be preempted"
        summary = finish(thread, result, cluster)
        MEASURED["preempted_job"] = time.time() - t0
        while killed not in watch.dead and time.time() - t_kill < 60:  # normally long since seen
            time.sleep(0.2)
    assert killed in watch.dead, "the preempted node never showed as dead in the GCS"
    MEASURED["preempted_node_marked_dead"] = watch.dead[killed] - t_kill
    # A replacement node comes up when scoring was still to do; if the lost node had already scored every
    # row (only commits left), none is needed. Either way every row must come out exactly once (below).
    replacements = [t for n, t in watch.up.items() if n not in before]
    if replacements:
        MEASURED["replacement_node_up"] = min(replacements) - t_kill
    assert summary["rows_in"] == summary["rows_out"] == FILES * ROWS
    assert committed_files(out) == FILES
    assert_exactly_once(out, corpus[1])
