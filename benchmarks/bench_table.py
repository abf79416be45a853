"""The Delta table at many input files: driver memory, commit cost per file, resume without reading.

A corpus of N small img2dataset files (tiny JPEGs, 10-20 rows each) is curated in two runs into one table:
the first takes half the files (``input.max_files``), the second all of them and must resume, skipping the
committed half unopened. Measured in the driver: its RSS sampled through the run (flat = state per file is
dropped once committed), the time the Committer spends committing (Delta transactions) per input file,
and, for the resume, how long asking the log about N markers takes and how many files the second run read.

    python benchmarks/bench_table.py                 # N = 2000 files (~25 min on 2 cores)
    python benchmarks/bench_table.py --files 200     # quick
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import sys
import threading
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from benchmarks.common import bench_dir, row


def tiny_corpus(folder: Path, files: int, seed: int = 0) -> int:
    """``files`` img2dataset Parquet files of 10-20 rows of 48x40 JPEGs; returns the row count."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    jpegs = []
    for _ in range(16):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(buf, "JPEG", quality=80)
        jpegs.append(buf.getvalue())
    total = 0
    for f in range(files):
        n = int(rng.integers(10, 21))
        keys = [f"{f:05d}{i:04d}" for i in range(n)]
        pq.write_table(
            pa.table(
                {
                    "key": keys,
                    "caption": [f"tiny photo {k}" for k in keys],
                    "jpg": pa.array([jpegs[(f + i) % 16] for i in range(n)], pa.binary()),
                    "status": ["success"] * n,
                }
            ),
            folder / f"{f:05d}.parquet",
        )
        total += n
    return total


class RssSampler:
    """The driver's resident memory, sampled every ``every_s`` seconds in a thread."""

    def __init__(self, every_s: float = 0.5):
        self.samples: list[tuple[float, float]] = []
        self.every_s = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        t0 = time.time()
        while not self._stop.is_set():
            with open("/proc/self/status") as fh:
                rss = next(int(line.split()[1]) for line in fh if line.startswith("VmRSS"))
            self.samples.append((time.time() - t0, rss / 1024))
            self._stop.wait(self.every_s)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def timed_commits():
    """Wrap Committer.flush to add up the time spent committing, and count the files committed."""
    from datajuicer_ray.io import writer

    spent = {"s": 0.0, "files": 0, "commits": 0}
    original = writer.Committer.flush

    def flush(self):
        t0 = time.perf_counter()
        done = original(self)
        if done:
            spent["s"] += time.perf_counter() - t0
            spent["files"] += len(done)
            spent["commits"] += 1
        return done

    writer.Committer.flush = flush
    return spent, lambda: setattr(writer.Committer, "flush", original)


def run(quick: bool = False, files: int | None = None) -> list[dict]:
    import ray

    from datajuicer_ray.config import load_curate_config
    from datajuicer_ray.io.table import Claim, OutputTable
    from datajuicer_ray.pipeline import curate

    n = files or (200 if quick else 2000)
    base = bench_dir() / f"table-{n}"
    shutil.rmtree(base, ignore_errors=True)
    total = tiny_corpus(base / "in", n)
    out = base / "out"

    def cfg(*extra: str):
        return load_curate_config(
            None,
            [
                f"input.path={base / 'in'}",
                f"output.path={out}",
                "vision.model=tiny-random-dino",
                "vision.image_size=32",  # the driver's path is the subject: tiny views, tiny model
                "vision.batch_size=256",
                "vision.num_gpus=0",
                "output.keep_image=false",
                "ray.progress=false",
                "ray.num_cpus=4",
                *extra,
            ],
        )

    spent, restore = timed_commits()
    try:
        with RssSampler() as rss:
            t0 = time.time()
            first = curate(cfg(f"input.max_files={n // 2}"))
            t_first = time.time() - t0
        commit_first = dict(spent)
        # the resume: which files are committed, asked of the log alone
        table = OutputTable(str(out))
        record = table.latest_run()
        gen = table.generation() or 0
        uris = sorted(str(p) for p in (base / "in").glob("*.parquet"))
        t1 = time.perf_counter()
        known = table.committed_sources()
        t_lookup = time.perf_counter() - t1
        t1 = time.perf_counter()
        claim = Claim(gen, record["fingerprint"])
        table.committed(claim.app_id(u) for u in uris)
        t_markers = time.perf_counter() - t1
        spent.update(s=0.0, files=0, commits=0)
        t0 = time.time()
        second = curate(cfg())
        t_second = time.time() - t0
    finally:
        restore()
        ray.shutdown()
    mem = [m for _, m in rss.samples]
    q = len(mem) // 10 or 1
    early, late = float(np.median(mem[q : 2 * q])), float(np.median(mem[-2 * q : -q] or mem[-q:]))
    result = {
        "files": n,
        "rows": total,
        "first_run": {"files": first["files_committed"], "rows": first["rows_out"], "s": round(t_first, 1)},
        "commit_per_file_ms_first": round(1000 * commit_first["s"] / max(1, commit_first["files"]), 2),
        "commits_first": commit_first["commits"],
        "commit_per_file_ms_second": round(1000 * spent["s"] / max(1, spent["files"]), 2),
        "commits_second": spent["commits"],
        "driver_rss_mb": {"early": round(early, 1), "late": round(late, 1), "max": round(max(mem), 1)},
        "resume_lookup_s_from_file_stats": round(t_lookup, 3),
        "resume_lookup_s_marker_by_marker": round(t_markers, 3),
        "markers_found_before_resume": len(known),
        "second_run": {
            "rows_this_run": second["this_run"]["rows"],
            "files_this_run": second["this_run"]["files"],
            "s": round(t_second, 1),
        },
        "table": {"rows_in": second["rows_in"], "rows_out": second["rows_out"]},
    }
    (base / "result.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    resumed_right = second["this_run"]["rows"] == total - first["rows_out"]
    return [
        row(
            f"Delta table, {n} input files: driver RSS late/early (MB)",
            round(late, 1),
            round(early, 1),
            "<= 1.2 (flat)",
            late / early <= 1.2,
        ),
        row("commit cost per input file (ms)", result["commit_per_file_ms_first"], None, "-", None),
        row(
            "resume: rows of the committed half read again",
            0 if resumed_right else -1,
            None,
            "0",
            resumed_right,
        ),
    ]


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--files", type=int, default=2000)
    args = p.parse_args()
    run(files=args.files)
