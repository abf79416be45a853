"""Connecting to Ray: the cluster a job was submitted to, the one RAY_ADDRESS names, or a local one."""

from __future__ import annotations

import logging
import os

import ray

from datajuicer_ray.config import RayConfig

log = logging.getLogger(__name__)


def init_ray(cfg: RayConfig) -> str:
    """Start or join Ray once; returns how it was reached ("existing", "cluster" or "local")."""
    if ray.is_initialized():
        return "existing"
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    kwargs: dict = {"log_to_driver": True, "configure_logging": False}
    if address:
        # Under `ray job submit` the driver runs on the head node and RAY_ADDRESS points at it.
        ray.init(address=address, **kwargs)
        mode = "cluster"
    else:
        if cfg.num_cpus:
            kwargs["num_cpus"] = cfg.num_cpus
        ray.init(include_dashboard=False, **kwargs)
        mode = "local"
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = cfg.progress
    # One bad row must never drop a block: our stages catch row errors themselves, so any error that
    # reaches Ray Data is a bug or a lost node, and the block is retried rather than skipped.
    ctx.max_errored_blocks = 0
    log.info("ray: %s (%s)", mode, ray.cluster_resources())
    return mode


def cluster_has_gpus() -> bool:
    return ray.cluster_resources().get("GPU", 0) > 0
