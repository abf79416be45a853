"""Shared fixtures: one local Ray for the test session, and a dry-run curated folder built once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Throwaway local clusters only: no token written to ~/.ray by tests.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent


def start_local_ray():
    """Four logical CPUs on the 2-core test machine: the dry run holds two actor pools (scorer and
    rewriter, one CPU each) while its read, decode and write tasks still need room to be scheduled."""
    import ray

    if not ray.is_initialized():
        ray.init(
            address="local", num_cpus=4, include_dashboard=False, log_to_driver=False, configure_logging=False
        )
    ray.data.DataContext.get_current().enable_progress_bars = False
    return ray


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
