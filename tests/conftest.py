"""Shared fixtures: one local Ray for the test session, and a dry-run curated folder built once."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# Throwaway local clusters only: no token written to ~/.ray by tests.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent


def start_local_ray(fresh: bool = False, **init_kwargs):
    """Four logical CPUs on the 2-core test machine: the dry run holds two actor pools (scorer and
    rewriter, one CPU each) while its read, decode and write tasks still need room to be scheduled.
    ``fresh``: stop a running Ray first, so the new one's workers see this process's environment (and
    ``init_kwargs``, e.g. a ``runtime_env``)."""
    import ray

    if fresh and ray.is_initialized():
        ray.shutdown()
    if not ray.is_initialized():
        ray.init(
            address="local",
            num_cpus=4,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
            **init_kwargs,
        )
    ray.data.DataContext.get_current().enable_progress_bars = False
    return ray


def pytest_sessionfinish(session, exitstatus):
    """Stop the session's local Ray while every module is still whole. Left to Ray's own atexit hook it stops
    during the interpreter's exit, beside the teardown of the other native libraries the tests loaded (torch,
    deltalake, pyarrow); one CI run ended there in a segfault after every test had passed (exit 139, not
    reproduced in two full runs since). ``make test`` also sets PYTHONFAULTHANDLER, so that a crash there
    prints every thread's stack."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray shared by every test that needs one (start-up costs ~4 s); re-started only if a
    module (the multi-node fault tests) shut it down for a cluster of its own."""
    return start_local_ray()


@pytest.fixture(scope="session")
def curated_dir(tmp_path_factory) -> Path:
    """The dry run (conf/dry_run.yaml) curated once per session into a temporary folder."""
    from datajuicer_ray.config import load_curate_config
    from datajuicer_ray.pipeline import curate

    start_local_ray()
    base = tmp_path_factory.mktemp("dry_run")
    cfg = load_curate_config(
        REPO / "conf" / "dry_run.yaml",
        [f"output.path={base / 'curated'}", "ray.progress=false"],
    )
    curate(cfg)
    return base / "curated"
