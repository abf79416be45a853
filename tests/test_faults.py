"""Faults on a simulated multi-node cluster (ray.cluster_utils.Cluster, one machine): a worker node
removed, a scorer actor killed, the driver killed. Each time the output holds every input row exactly once,
checked by key. A custom resource ("scorer_slot") stands in for GPUs, so scorer actors live on workers."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.drills import curate_argv, drill_corpus, drill_overrides, run_in_thread
from tests.support.tables import committed_inputs, read_keys

FILES, ROWS = 10, 12
DELAY_S = "0.6"  # per scorer batch: slow enough to be killed mid-run, fast enough for CI


@pytest.fixture(scope="module")
def cluster():
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()  # the module-wide local Ray of other test modules; restarted after us on demand
    os.environ["DATAJUICER_RAY_SCORER_DELAY_S"] = DELAY_S
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "object_store_memory": 200 * 2**20})
    yield c
    ray.shutdown()
    c.shutdown()
    os.environ.pop("DATAJUICER_RAY_SCORER_DELAY_S", None)


def add_workers(cluster, n):
    return [
        cluster.add_node(num_cpus=1, resources={"scorer_slot": 1}, object_store_memory=150 * 2**20)
        for _ in range(n)
    ]


@pytest.fixture()
def corpus(tmp_path) -> tuple[Path, set[str]]:
    return tmp_path / "in", drill_corpus(tmp_path / "in", FILES, ROWS)


def assert_exactly_once(out: Path, keys: set[str]) -> None:
    keys_out = read_keys(out)
    assert len(keys_out) == len(set(keys_out)), "a row was written twice"
    assert set(keys_out) == keys, f"missing: {sorted(keys - set(keys_out))[:5]}"
    assert committed_inputs(out) == FILES


def wait_for_commits(out: Path, n: int, timeout: float = 120) -> None:
    t0 = time.time()
    while not (out / "_delta_log").exists() or committed_inputs(out) < n:
        assert time.time() - t0 < timeout, "the run made no progress"
        time.sleep(0.2)


def test_worker_node_removed_mid_run(cluster, corpus, tmp_path):
    import ray

    workers = add_workers(cluster, 2)
    ray.init(address=cluster.address, log_to_driver=False) if not ray.is_initialized() else None
    out = tmp_path / "out"
    thread, result = run_in_thread(drill_overrides(corpus[0], out))
    wait_for_commits(out, 2)
    cluster.remove_node(workers[0], allow_graceful=False)
    thread.join(timeout=300)
    assert "error" not in result, result.get("error")
    assert result["summary"]["rows_in"] == result["summary"]["rows_out"] == FILES * ROWS
    assert_exactly_once(out, corpus[1])


def scorer_pids() -> list[int]:
    """Processes whose title Ray set to the scorer actor's (works without the dashboard)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if cmdline.startswith("ray::") and "PatchScorer" in cmdline:
                pids.append(int(proc.name))
    return pids


def test_scorer_actor_killed_mid_run(cluster, corpus, tmp_path):
    import ray

    add_workers(cluster, 1)
    if not ray.is_initialized():
        ray.init(address=cluster.address, log_to_driver=False)
    out = tmp_path / "out"
    thread, result = run_in_thread(drill_overrides(corpus[0], out))
    wait_for_commits(out, 2)
    pids = scorer_pids()
    assert pids, "no scorer actor process found"
    os.kill(pids[0], signal.SIGKILL)  # a crash, not a polite exit
    thread.join(timeout=300)
    assert "error" not in result, result.get("error")
    assert_exactly_once(out, corpus[1])


def test_driver_killed_mid_run_then_rerun(cluster, corpus, tmp_path):
    import ray

    if not ray.is_initialized():
        ray.init(address=cluster.address, log_to_driver=False)
    if not any(n["Alive"] and n["Resources"].get("scorer_slot") for n in ray.nodes()):
        add_workers(cluster, 1)  # run on its own, this test has no worker node yet
    out = tmp_path / "out"
    cmd = curate_argv(tmp_path, drill_overrides(corpus[0], out))
    # the driver stops before its second commit until the hold is lifted, and is killed there
    hold = tmp_path / "drill" / "hold_second_commit"
    hold.parent.mkdir()
    hold.touch()
    env = {**os.environ, "RAY_ADDRESS": cluster.address, "DATAJUICER_RAY_DRILL_DIR": str(hold.parent)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_commits(out, 1)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        hold.unlink()
        if proc.poll() is None:
            proc.kill()
    finished_before = committed_inputs(out)
    assert 1 <= finished_before < FILES
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"resuming: {finished_before} of {FILES} input files already committed" in rerun.stdout
    assert_exactly_once(out, corpus[1])
