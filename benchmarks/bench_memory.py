"""Streaming memory: peak memory of a whole curation job at N and 4N input rows.

The job is the real CLI in a fresh process, so its process tree is the whole job: the driver, the local
Ray it starts (GCS, raylet, dashboard agents) and every Ray worker (read/decode/write tasks, the scorer
actor). A sampler walks that tree every 0.2 s and sums, per sample:
- PSS (proportional set size): each shared page counted once across processes, so Ray's shared-memory
  object store is not counted once per worker that maps it. This is the figure we judge;
- RSS, for comparison (counts shared pages in every process that touched them, so it overstates).
The peak of each sum over the run is reported. A streaming job's peak should not grow with its input:
target peak(4N) / peak(N) <= 1.25. Input: shards of 50 web-sized JPEGs (N=200: 4 files, 4N: 16 files), so
that N already gives Ray every file it can work on at once: peak memory follows how many tasks run in
parallel (each decode worker is a process of its own), and a one-file N against a many-file 4N would measure
that parallelism, not streaming (seen here: 1 file vs 3 files gave 1.45x with 13 vs 16 processes).

    python benchmarks/bench_memory.py --quick   # N=200 and 800, tiny DINO scorer, 1 run each
    python benchmarks/bench_memory.py           # N=500 and 2000, ViT-S/16-sized scorer, 2 runs each
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil

from benchmarks.bench_pipeline import curate_args, equal_priority_env
from benchmarks.common import (
    alternate,
    bench_dir,
    main_for,
    median,
    photo_parquet,
    row,
    spread,
    vit_s16_dir,
)

TARGET = 1.25
ROWS_PER_FILE = 50
GIB = 2**30


def tree_memory(root: psutil.Process) -> tuple[int, int, int]:
    """(sum PSS, sum RSS, processes) over ``root`` and all its descendants, now."""
    pss = rss = count = 0
    try:
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0, 0, 0
    for p in procs:
        try:
            info = p.memory_full_info()
        except psutil.Error:  # a worker that exited between listing and reading
            continue
        pss += getattr(info, "pss", info.rss)
        rss += info.rss
        count += 1
    return pss, rss, count


class PeakSampler(threading.Thread):
    def __init__(self, pid: int, every_s: float = 0.2):
        super().__init__(daemon=True)
        self.root = psutil.Process(pid)
        self.every_s = every_s
        self.peak_pss = self.peak_rss = self.max_procs = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            pss, rss, n = tree_memory(self.root)
            self.peak_pss, self.peak_rss = max(self.peak_pss, pss), max(self.peak_rss, rss)
            self.max_procs = max(self.max_procs, n)
            self.stop.wait(self.every_s)


def command_peak(cmd: list[str]) -> dict:
    """Run ``cmd`` at equal priority; its process tree's peak PSS and RSS, most processes, and wall time
    (RuntimeError with the log's tail if it fails)."""
    began = time.perf_counter()
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=equal_priority_env()
    )
    sampler = PeakSampler(proc.pid)
    sampler.start()
    log, _ = proc.communicate()
    sampler.stop.set()
    sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(
            f"{Path(cmd[0]).name} {' '.join(cmd[1:4])} failed ({proc.returncode}):\n{log[-3000:]}"
        )
    return {
        "pss": sampler.peak_pss,
        "rss": sampler.peak_rss,
        "procs": sampler.max_procs,
        "wall": time.perf_counter() - began,
    }


def curate_peak(n: int, model: str, batch: int) -> dict:
    input_dir = photo_parquet(n, files=max(1, n // ROWS_PER_FILE))
    out_dir = bench_dir() / "memory-out"
    shutil.rmtree(out_dir, ignore_errors=True)
    return command_peak(
        [sys.executable, "-m", "datajuicer_ray.cli", *curate_args(input_dir, out_dir, Path(model), batch)]
    )


def measure(n: int, model: str, model_name: str, reps: int, batch: int = 32) -> list[dict]:
    photo_parquet(n, files=max(1, n // ROWS_PER_FILE))  # inputs are made before anything is timed
    photo_parquet(4 * n, files=max(1, 4 * n // ROWS_PER_FILE))
    runs: dict[str, list[dict]] = {"N": [], "4N": []}

    def side(key: str, rows: int):
        def go() -> float:
            res = curate_peak(rows, model, batch)
            runs[key].append(res)
            print(f"  {key}={rows}: PSS {res['pss'] / GIB:.2f} GiB, RSS {res['rss'] / GIB:.2f} GiB, "
                  f"{res['procs']} processes, {res['wall']:.0f} s", flush=True)  # fmt: skip
            return res["pss"]

        return go

    alternate({"N": side("N", n), "4N": side("4N", 4 * n)}, reps)
    pss_n = [r["pss"] / GIB for r in runs["N"]]
    pss_4n = [r["pss"] / GIB for r in runs["4N"]]
    rss_n = [r["rss"] / GIB for r in runs["N"]]
    rss_4n = [r["rss"] / GIB for r in runs["4N"]]
    growth = median(pss_4n) / median(pss_n)
    where = f"{model_name}, N={n} vs 4N={4 * n}, {reps} run(s) each, up to {max(r['procs'] for r in runs['4N'])} processes"
    return [
        row(
            f"peak memory growth 4N vs N, sum of PSS over driver + Ray + workers [{where}; GiB at N {spread(pss_n)}, "
            f"at 4N {spread(pss_4n)}]",
            median(pss_4n),
            median(pss_n),
            f"<= {TARGET}",
            growth <= TARGET,
        ),
        row(
            f"peak memory growth 4N vs N, sum of RSS (shared pages counted per process) [GiB at N {spread(rss_n)}, "
            f"at 4N {spread(rss_4n)}]",
            median(rss_4n),
            median(rss_n),
            "measured (PSS is the judged figure)",
            None,
        ),
    ]


def run(quick: bool) -> list[dict]:
    if quick:
        return measure(200, "tiny-random-dino", "tiny DINO ViT /16 scorer", 1)
    return measure(500, str(vit_s16_dir()), "ViT-S/16-sized scorer", 2)


def main() -> None:
    main_for(run, __doc__)


if __name__ == "__main__":
    main()
