"""Ray for the jobs: connecting (the cluster a job was submitted to, the one RAY_ADDRESS names, or a local
one), what the cluster has or could add, and the actor pools stages run on."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import ray

from datajuicer_ray.allocator import CPU_ACTOR_ENV
from datajuicer_ray.config import ActorPoolConfig, RayConfig

log = logging.getLogger(__name__)

# The GCS address of the Ray that init_ray started here, which ends with this process (see shutdown_ray).
_started_local: str | None = None


def init_ray(cfg: RayConfig) -> str:
    """Start or join Ray once; returns how it was reached ("existing", "cluster" or "local")."""
    global _started_local
    if ray.is_initialized():
        return "existing"
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    kwargs: dict = {"log_to_driver": True, "configure_logging": False}
    if address:
        # Under `ray job submit` the driver runs on the head node and RAY_ADDRESS points at it.
        ray.init(address=address, **kwargs)
        mode = "cluster"
        _started_local = None  # a cluster's processes are never ours to stop
    else:
        if cfg.num_cpus:
            kwargs["num_cpus"] = cfg.num_cpus
        # The processes of a Ray started here inherit the environment, so its CPU actors get their one
        # malloc arena without a runtime_env of their own (see actor_pool_kwargs).
        with _environment(CPU_ACTOR_ENV):
            ray.init(include_dashboard=False, **kwargs)
        mode = "local"
        _started_local = ray.get_runtime_context().gcs_address
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = cfg.progress
    # One bad row must never drop a block: our stages catch row errors themselves, so any error that
    # reaches Ray Data is a bug or a lost node, and the block is retried rather than skipped.
    ctx.max_errored_blocks = 0
    log.info("ray: %s (%s)", mode, ray.cluster_resources())
    return mode


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """``values`` in this process's environment while the block runs (a value the user set is kept)."""
    added = {k: v for k, v in values.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


def _local_ray_is_ours() -> bool:
    """Whether the Ray this process is connected to is the one init_ray started here."""
    return (
        _started_local is not None
        and ray.is_initialized()
        and ray.get_runtime_context().gcs_address == _started_local
    )


def shutdown_ray() -> None:
    """Stop the Ray that init_ray started here, or leave the cluster's.

    Ray 2.60 stops a local Ray's GCS before its autoscaler monitor; the monitor's SIGTERM handler then
    reports its own "failure" to the GCS that is gone and hangs until Ray SIGKILLs it after a grace
    period (most of the shutdown: docs/benchmarks.md). The monitor of a Ray that ends with this
    process has nothing to save, so it is killed first; the rest stop as Ray stops them.
    """
    global _started_local
    if _local_ray_is_ours():
        for pid in _monitor_pids():
            with contextlib.suppress(ProcessLookupError):  # it may have gone by itself
                os.kill(pid, signal.SIGKILL)
            _wait_exited(pid, timeout_s=1.0)
    _started_local = None
    ray.shutdown()


def _has_exited(pid: int) -> bool:
    """Whether ``pid`` has exited; a zombie has (Ray's own handle on it reaps it)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError):
        return True


def _wait_exited(pid: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not _has_exited(pid) and time.monotonic() < deadline:
        time.sleep(0.005)


def actor_pool_kwargs(
    pool: ActorPoolConfig, num_gpus: float | None = None, resources: dict[str, float] | None = None
) -> dict[str, Any]:
    """``map_batches`` arguments that run a callable-class stage on an actor pool sized by ``pool``.

    GPUs and extra resources are arguments, not pool keys, because only the scorer has them (and the
    scorer's GPU count is resolved against the cluster first, ``pipeline.scorer_resources``). Keys that
    are not given are left out rather than set to 0 or None, so the operator's remote args stay exactly
    what the stage asked for: Ray Data fuses neighbouring operators whose remote args match.

    A pool without GPUs runs its model on the CPU, on a thread of the actor: its processes get
    ``allocator.CPU_ACTOR_ENV`` (one malloc arena), so each batch reuses the memory the last one freed. A
    Ray that init_ray started here already gave it to every worker (they inherit it): there the pool asks
    for no runtime_env, because an actor with one of its own gets a worker started for it, through Ray's
    setup_worker (two Python starts), instead of one of the idle workers Ray prestarts, on every local
    job's critical path (what that costs: docs/benchmarks.md).
    """
    kwargs: dict[str, Any] = {
        "compute": ray.data.ActorPoolStrategy(min_size=pool.min_actors, max_size=pool.max_actors),
        "batch_size": pool.batch_size,
        "num_cpus": pool.num_cpus,
    }
    if num_gpus is not None:
        kwargs["num_gpus"] = num_gpus
    if not num_gpus and not _local_ray_is_ours():
        kwargs["runtime_env"] = {"env_vars": dict(CPU_ACTOR_ENV)}
    if resources:
        kwargs["resources"] = dict(resources)
    return kwargs


def cluster_has_gpus() -> bool:
    return ray.cluster_resources().get("GPU", 0) > 0


# ----------------------------------------------------------------------------------------------
# What the autoscaler could add. Ray 2.60 has no public API for it (ray-project/ray#37838). Two sources:
#  1. the cluster config in the GCS (`ray._private.state.state.get_cluster_config()`, internal KV
#     `__autoscaler` / `__autoscaler_cluster_config`), which Ray Data and Ray Train read. In Ray 2.60 no open
#     source autoscaler writes it (`GcsClient.report_cluster_config` has no caller, ray-project/ray#63012);
#     platforms that do, and a cluster set up to publish it, are read first.
#  2. the autoscaler's own config file, when the driver runs on the head node (`ray job submit`, the
#     launcher's `~/ray_bootstrap_config.yaml`): its process (autoscaler/_private/monitor.py, or v2's
#     autoscaler/v2/monitor.py) is started with `--autoscaling-config=PATH` and `--gcs-address=`.
# Neither is visible to a driver off the head, or on KubeRay (the autoscaler is a sidecar container that
# builds its config from the RayCluster resource): there we know only the GPUs that are up.


def _node_types_from_gcs() -> dict[str, dict] | None:
    try:
        config = ray._private.state.state.get_cluster_config()
    except Exception as err:  # noqa: BLE001 - an internal API: any failure means "not known"
        log.debug("no cluster config from the GCS: %s", err)
        return None
    if config is None or not config.node_group_configs:
        return None
    return {
        (g.name or f"group{i}"): {
            "resources": dict(g.resources),
            "min_workers": int(g.min_count),
            "max_workers": int(g.max_count),  # -1: unbounded
        }
        for i, g in enumerate(config.node_group_configs)
    }


_MONITOR_SCRIPTS = ("autoscaler/_private/monitor.py", "autoscaler/v2/monitor.py")


def _monitors() -> Iterator[tuple[int, dict[str, str]]]:
    """(pid, its ``--key=value`` options) of every autoscaler monitor on this machine (Linux /proc)."""
    if not os.path.isdir("/proc"):
        return
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as fh:
                args = [a.decode(errors="replace") for a in fh.read().split(b"\0") if a]
        except OSError:
            continue
        if any(a.endswith(_MONITOR_SCRIPTS) for a in args[:4]):
            yield int(entry.name), dict(a[2:].split("=", 1) for a in args if a.startswith("--") and "=" in a)


def _monitor_pids() -> list[int]:
    """The autoscaler monitor of the Ray this driver is connected to: the one started with its GCS."""
    gcs_address = ray.get_runtime_context().gcs_address
    return [pid for pid, opts in _monitors() if opts.get("gcs-address") == gcs_address]


def _autoscaler_config_path() -> str | None:
    """`--autoscaling-config` of this cluster's autoscaler, if it runs on this machine (Linux /proc)."""
    if not ray.is_initialized():
        return None
    gcs_address = ray.get_runtime_context().gcs_address
    node = ray._private.worker._global_node
    session = getattr(node, "session_name", None) if node is not None else None
    for pid, opts in _monitors():
        ours = opts.get("gcs-address") == gcs_address or (
            session and f"/{session}/" in opts.get("logs-dir", "") + "/"
        )
        if ours and opts.get("autoscaling-config"):
            path = os.path.expanduser(opts["autoscaling-config"])
            return path if os.path.isabs(path) else os.path.join(f"/proc/{pid}/cwd", path)
    return None


def _node_types_from_config_file(path: str) -> dict[str, dict] | None:
    import yaml  # a Ray dependency; JSON is YAML too

    try:
        with open(path) as fh:
            config = yaml.safe_load(fh) or {}
    except (OSError, yaml.YAMLError) as err:
        log.debug("cannot read the autoscaling config %s: %s", path, err)
        return None
    types = config.get("available_node_types")
    if not isinstance(types, dict):
        return None
    cluster_max = config.get("max_workers")  # the cluster-wide cap on worker nodes
    out = {}
    for name, t in types.items():
        t = t or {}
        max_workers = t.get("max_workers", cluster_max if cluster_max is not None else -1)
        if cluster_max is not None and max_workers != -1:
            max_workers = min(max_workers, cluster_max)
        out[name] = {
            "resources": dict(t.get("resources") or {}),
            "min_workers": int(t.get("min_workers") or 0),
            "max_workers": int(max_workers),
        }
    return out


def autoscaler_node_types() -> dict[str, dict] | None:
    """The node types this cluster's autoscaler launches, ``{name: {"resources": {...}, "min_workers": n,
    "max_workers": n}}`` (max -1: unbounded), or None where this driver cannot see them (no autoscaler, a
    driver off the head node, KubeRay). Needs a connected driver."""
    types = _node_types_from_gcs()
    if types is not None:
        return types
    path = _autoscaler_config_path()
    return _node_types_from_config_file(path) if path else None


def gpus_available_or_scalable() -> bool:
    """True if the cluster has GPUs now, or its autoscaler can add a node type that has GPUs (even one at 0
    workers now). Unlike `cluster_has_gpus`, right on an autoscaling cluster whose GPU nodes are scaled to zero,
    as far as the autoscaler's node types are visible (see `autoscaler_node_types`)."""
    if cluster_has_gpus():
        return True
    types = autoscaler_node_types()
    if not types:
        return False
    gpu_types = [
        name for name, t in types.items() if float(t["resources"].get("GPU", 0)) > 0 and t["max_workers"] != 0
    ]
    if gpu_types:
        log.info("no GPU up yet; the autoscaler can add GPU node types %s", gpu_types)
    return bool(gpu_types)
