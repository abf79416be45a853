"""`datajuicer-ray submit`: hand curate or train to a running Ray cluster as a Ray job.

The command it builds is plain ``ray job submit``, so anything learnt here carries over to the Ray docs:

    ray job submit --address ADDR --working-dir . [--runtime-env FILE] [--no-wait] \
        -- python jobs/<job>.py CONFIG OVERRIDES...

The config is loaded and validated here first: a typo in a key fails in a second on the laptop, not
after the upload and a cluster scale-up. An address nobody answers at is said in one line with the way to
reach a cluster's dashboard, not in Ray's two chained tracebacks.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import IO, Any

from datajuicer_ray import preflight
from datajuicer_ray.config import ConfigError, load_curate_config, load_train_config

# The local end of `ray dashboard cluster/aws.yaml` (SSH tunnel) or `kubectl port-forward ... 8265:8265`:
# the Job API is never exposed beyond the cluster network, so a laptop reaches it through one of these.
DEFAULT_ADDRESS = "http://127.0.0.1:8265"
DEFAULT_RUNTIME_ENV = Path("cluster/runtime_env.yaml")
JOBS = {"curate": load_curate_config, "train": load_train_config}
# What `ray job submit` says when nothing answers at the address (ray/dashboard/modules/dashboard_sdk.py).
UNREACHABLE = "Failed to connect to Ray at address"


def validate_job_config(job: str, config: str, overrides: list[str]) -> Any:
    """Load the config exactly as the job will on the cluster; raises ConfigError on any bad key."""
    if job not in JOBS:
        raise ConfigError(f"job: {job!r} is not one of {', '.join(JOBS)}")
    return JOBS[job](config, list(overrides))


def resolve_address(address: str | None) -> str:
    """--address, else $RAY_API_SERVER_ADDRESS / $RAY_ADDRESS (as `ray job submit` reads them), else the tunnel."""
    return (
        address
        or os.environ.get("RAY_API_SERVER_ADDRESS")
        or os.environ.get("RAY_ADDRESS")
        or DEFAULT_ADDRESS
    )


def resolve_runtime_env(runtime_env: str | None, working_dir: Path) -> str | None:
    """The given runtime env file, else cluster/runtime_env.yaml when the working dir has one."""
    if runtime_env is not None:
        if not Path(runtime_env).is_file():
            raise ConfigError(f"--runtime-env: file not found: {runtime_env}")
        return runtime_env
    default = working_dir / DEFAULT_RUNTIME_ENV
    return str(DEFAULT_RUNTIME_ENV) if default.is_file() else None


def check_travels_with_working_dir(path: str, working_dir: Path, what: str) -> None:
    """The job runs on the cluster from the uploaded working dir: a file outside it is not there."""
    resolved = Path(path).resolve()
    if not resolved.is_relative_to(working_dir.resolve()):
        raise ConfigError(
            f"{what}: {path} is outside the working dir {working_dir} that `ray job submit --working-dir .` "
            "uploads; the job could not read it on the cluster. Put it under the repo (e.g. conf/)."
        )


def build_submit_argv(
    job: str,
    config: str,
    overrides: list[str],
    address: str,
    runtime_env: str | None = None,
    no_wait: bool = False,
) -> list[str]:
    """The `ray job submit` argv; the entrypoint goes last, one argv item per override.

    Ray joins the entrypoint with shlex.join, so an override holding spaces or quotes arrives intact.
    """
    argv = ["ray", "job", "submit", "--address", address, "--working-dir", "."]
    if runtime_env:
        argv += ["--runtime-env", runtime_env]
    if no_wait:
        argv.append("--no-wait")
    return [*argv, "--", "python", f"jobs/{job}.py", config, *overrides]


def submit_from_cli(args: argparse.Namespace) -> int:
    """Validate, then run (or with --dry-print, print) `ray job submit`; returns its exit code.

    Run from the repository root: that is the working dir the job is uploaded from.
    """
    working_dir = Path.cwd()
    overrides = list(args.overrides or [])
    check_travels_with_working_dir(args.config, working_dir, "config")
    preflight.check_submit(validate_job_config(args.job, args.config, overrides))
    entry = working_dir / "jobs" / f"{args.job}.py"
    if not entry.is_file():
        raise ConfigError(f"job: {entry} not found; run `datajuicer-ray submit` from the repository root")
    runtime_env = resolve_runtime_env(args.runtime_env, working_dir)
    address = resolve_address(args.address)
    argv = build_submit_argv(args.job, args.config, overrides, address, runtime_env, bool(args.no_wait))
    if args.dry_print:
        print(shlex.join(argv))
        return 0
    rc, held = _run(argv, working_dir)
    if rc and UNREACHABLE in held:
        raise ConfigError(
            f"--address: no Ray dashboard answers at {address}; open the tunnel (`ray dashboard "
            "cluster/aws.yaml`, or `kubectl port-forward svc/<head service> 8265:8265`) or pass --address "
            "(or set RAY_ADDRESS) to the dashboard's http://HOST:8265"
        )
    if rc and held:
        if getattr(args, "debug", False):
            sys.stderr.write(held)
        last = held.strip().splitlines()[-1]
        print(f"error: ray job submit: {last}; run again with --debug for its traceback", file=sys.stderr)
    return rc


def _relay_stderr(stream: IO[str]) -> str:
    """Pass `ray job submit`'s stderr through as it comes, but hold back a traceback (returned)."""
    held: list[str] = []
    for line in stream:
        if held or line.startswith("Traceback (most recent call last)"):
            held.append(line)
        else:
            sys.stderr.write(line)
            sys.stderr.flush()
    return "".join(held)


def _run(argv: list[str], working_dir: Path) -> tuple[int, str]:
    """Run `ray job submit`; its exit code and the traceback it printed, if any."""
    ray_cli = shutil.which("ray") or str(Path(sys.executable).with_name("ray"))
    if not Path(ray_cli).exists():
        raise ConfigError("the `ray` command is not installed here (pip install 'ray[default]==2.60.0')")
    env = dict(os.environ)
    # Our clusters run with token auth; the Ray client only sends its token when the mode says so.
    env.setdefault("RAY_AUTH_MODE", "token")
    with subprocess.Popen(
        [ray_cli, *argv[1:]], cwd=working_dir, env=env, stderr=subprocess.PIPE, text=True
    ) as proc:
        held = _relay_stderr(proc.stderr)
        return proc.wait(), held
