"""What the fault and autoscaling drills share: a corpus with a failed download per file, a curation job
whose scorer actors only fit on worker nodes (a custom resource stands in for a GPU), and a way to run it
in the background while the drill breaks something."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

from tests.support.inputs import img2dataset_parquet


def drill_corpus(folder: Path, files: int, rows: int) -> set[str]:
    """``files`` img2dataset files of ``rows`` rows (keys 1000*i + j), each with one failed download."""
    keys = set()
    for i in range(files):
        img2dataset_parquet(folder / f"{i:05d}.parquet", rows, start=1000 * i, failed=(1000 * i + 3,))
        keys |= {f"{j:09d}" for j in range(1000 * i, 1000 * i + rows)}
    return keys


def tiny_job(inp, out, *extra: str, rows_per_block: int = 4) -> list[str]:
    """The overrides of a small curation job: the tiny DINO on CPU, small batches and blocks, no progress bar."""
    return [
        f"input.path={inp}",
        f"output.path={out}",
        "vision.model=tiny-random-dino",
        "vision.batch_size=4",
        "vision.num_gpus=0",
        f"input.rows_per_block={rows_per_block}",
        "ray.progress=false",
        *extra,
    ]


def drill_overrides(inp: Path, out: Path, *extra: str, on_workers: bool = True) -> list[str]:
    """A small, slow-enough curation job. ``on_workers``: the scorer actors need a ``scorer_slot`` (only worker
    nodes have one); else they share one node with small decode tasks."""
    placement = (
        ["vision.min_actors=1", "vision.max_actors=2", "vision.resources={scorer_slot: 1}"]
        if on_workers
        else ["vision.decode_num_cpus=0.25"]
    )
    return tiny_job(inp, out, "vision.num_cpus=0.5", *placement, *extra)


def curate_argv(config_dir: Path, overrides: list[str]) -> list[str]:
    """The `datajuicer-ray curate` command line of a job given wholly by ``overrides`` (an empty config)."""
    config = config_dir / "job.yaml"
    config.write_text("{}\n")
    return [sys.executable, "-m", "datajuicer_ray.cli", "curate", str(config), *overrides]


def curate_process(config_dir: Path, overrides: list[str], address: str) -> subprocess.Popen:
    """A driver in its own process that joins the Ray at ``address``, as `ray job submit` drivers do; its
    output (stdout and stderr) is read with ``communicate``."""
    return subprocess.Popen(
        curate_argv(config_dir, overrides),
        env={**os.environ, "RAY_ADDRESS": address},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def run_in_thread(cfg_overrides: list[str]) -> tuple[threading.Thread, dict]:
    """Start ``curate`` in a thread; the dict gets its ``summary`` or the ``error`` it raised."""
    from datajuicer_ray.config import load_curate_config
    from datajuicer_ray.pipeline import curate

    result: dict = {}

    def target():
        try:
            result["summary"] = curate(load_curate_config(None, cfg_overrides))
        except BaseException as err:  # noqa: BLE001 - surfaced by the test
            result["error"] = err

    t = threading.Thread(target=target, daemon=True)
    t.start()
    return t, result
