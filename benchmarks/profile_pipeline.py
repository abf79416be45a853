"""Where a `datajuicer-ray curate` run spends the machine's CPU, by process: the profile behind the pipeline
figures in docs/benchmarks.md.

Runs bench_pipeline.py's pipeline side once (same inputs, same command line, same environment) and samples
the CPU time of the driver and every process under it (Ray's GCS, raylet, dashboard and agents, the task
workers, the scorer actor, Ray Data's own actors) every 0.1 s with psutil. Prints CPU seconds per process
kind over the whole run and over a steady-state window, beside the machine's capacity (wall x cores), and
the driver's progress lines with their times. No instrumentation in the code under test.

It also reads the machine's own counters (/proc/stat), which count every process, short-lived ones too: how
many CPU seconds sat idle before the scorer was ready. Start-up work moved into that idle time is the most
that overlapping the start-up can gain; the rest of the start-up is CPU the machine had to spend. With
``--bare`` it runs bench_pipeline's bare loop once as well and prints its CPU seconds: the difference is the
work the pipeline adds (a quiet machine is assumed: the counters see everything that runs). Reading every
process's /proc files ten times a second costs the profiler ~1.3 CPU s a run, which the machine's counters
see too; ``--machine-only`` reads only the machine's counters, for the start-up and whole-run figures.

    python benchmarks/profile_pipeline.py                          # N=1000, steady window 25-45 s
    python benchmarks/profile_pipeline.py --machine-only --bare    # idle CPU at start-up; CPU s of each side
    python benchmarks/profile_pipeline.py --n 150 --window 10 20
"""

from __future__ import annotations

import argparse
import bisect
import os
import resource
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import psutil

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bench_pipeline import BATCH, ROWS_PER_FILE, curate_args, equal_priority_env, run_bare
from benchmarks.common import bench_dir, photo_parquet, vit_s16_dir

# Ray's own processes, by a word of their command line; Python workers name themselves `ray::<what>`.
SYSTEM = ("gcs_server", "raylet", "dashboard.py", "log_monitor", "monitor.py")


def kind(proc: psutil.Process, driver_pid: int) -> str:
    if proc.pid == driver_pid:
        return "driver (datajuicer-ray curate)"
    cmd = proc.cmdline()
    title = cmd[0] if cmd else "?"
    if title.startswith("ray::"):
        return title.split(" ")[0]
    line = " ".join(cmd[:3])
    return next((k for k in SYSTEM if k in line), Path(title).name)


class Sampler:
    """CPU seconds (user + system) of every process in the tree, by pid, as last seen."""

    def __init__(self, root_pid: int):
        self.root = psutil.Process(root_pid)
        self.cpu: dict[int, float] = {}
        self.kinds: dict[int, str] = {}

    def sample(self) -> None:
        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        for p in procs:
            try:
                t = p.cpu_times()
                name = kind(p, self.root.pid)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            self.cpu[p.pid] = t.user + t.system
            # A worker's title follows its task (ray::IDLE between tasks): keep the last busy one.
            if p.pid not in self.kinds or name not in ("ray::IDLE", "?"):
                self.kinds[p.pid] = name

    def by_kind(self, since: dict[int, float] | None = None) -> dict[str, float]:
        out: dict[str, float] = defaultdict(float)
        for pid, cpu in self.cpu.items():
            out[self.kinds[pid]] += cpu - (since or {}).get(pid, 0.0)
        return dict(out)


def machine_cpu() -> tuple[float, float]:
    """(busy, idle) CPU seconds of the whole machine since boot; iowait counts as idle."""
    with open("/proc/stat") as fh:
        ticks = [int(v) for v in fh.readline().split()[1:]]
    hz = os.sysconf("SC_CLK_TCK")
    idle = ticks[3] + ticks[4]
    return (sum(ticks[:8]) - idle) / hz, idle / hz


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def profile(n: int, window: tuple[float, float], bare: bool, every: float, per_process: bool) -> None:
    inputs = photo_parquet(n, files=max(1, n // ROWS_PER_FILE))
    exe = Path(sys.executable).with_name("datajuicer-ray")
    argv = [str(exe)] if exe.exists() else [sys.executable, "-m", "datajuicer_ray.cli"]
    out = bench_dir() / "profile-out"
    # Before the clock starts: vit_s16_dir() imports torch to check or build the model (~4 s).
    argv += curate_args(inputs, out, vit_s16_dir(), BATCH)
    began = time.perf_counter()
    proc = subprocess.Popen(
        argv,
        env=equal_priority_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[tuple[float, str]] = []
    reader = threading.Thread(
        target=lambda: lines.extend((time.perf_counter() - began, ln.rstrip()) for ln in proc.stdout),
        daemon=True,
    )
    reader.start()
    sampler, at_start, at_end = Sampler(proc.pid), None, None
    machine = [(0.0, *machine_cpu())]  # (seconds since launch, busy, idle)
    while proc.poll() is None:
        if per_process:
            sampler.sample()
        now = time.perf_counter() - began
        machine.append((now, *machine_cpu()))
        if at_start is None and now >= window[0]:
            at_start = dict(sampler.cpu)
        if at_end is None and now >= window[1]:
            at_end = sampler.by_kind(at_start)
        time.sleep(every)
    wall = time.perf_counter() - began
    reader.join(timeout=5)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    own = resource.getrusage(resource.RUSAGE_SELF)
    print(
        f"curate N={n}: exit {proc.returncode}, wall {wall:.1f} s, {cores} cores, load {os.getloadavg()[0]:.2f}; "
        f"this profiler took {own.ru_utime + own.ru_stime:.1f} CPU s (sampling every {every:g} s)"
    )
    tables = [("whole run", sampler.by_kind(), wall)] if per_process else []
    if per_process and at_end is not None:
        tables.append((f"steady window {window[0]:g}-{window[1]:g} s", at_end, window[1] - window[0]))
    for title, cpu, span in tables:
        print(f"\n{title}: {sum(cpu.values()):.1f} CPU s of {cores * span:.1f} available")
        for name, seconds in sorted(cpu.items(), key=lambda kv: -kv[1]):
            if seconds >= 0.05:
                print(f"  {seconds:7.2f}  {name}")
    ready = next((t for t, line in lines if "ready in" in line), None)
    if ready is not None:
        i = min(bisect.bisect_left([m[0] for m in machine], ready), len(machine) - 1)
        at, busy, idle = machine[i][0], machine[i][1] - machine[0][1], machine[i][2] - machine[0][2]
        print(
            f"\nmachine until the scorer was ready ({at:.1f} s): {busy:.1f} CPU s busy, {idle:.1f} idle; "
            f"whole run: {machine[-1][1] - machine[0][1]:.1f} busy, {machine[-1][2] - machine[0][2]:.1f} idle"
        )
    print("\ndriver output:")
    for t, line in lines:
        if "[curate]" in line or "ready in" in line:
            print(f"  {t:6.1f} s  {line[:140]}")
    if bare:
        before, (busy0, idle0) = children_cpu(), machine_cpu()
        res = run_bare(inputs, vit_s16_dir(), BATCH, n)
        busy1, idle1 = machine_cpu()
        print(
            f"\nbare loop N={n}: wall {res['wall']:.1f} s, its process {children_cpu() - before:.1f} CPU s "
            f"(load {res['load_s']:.1f} s, scoring {res['score_s']:.1f} s); machine {busy1 - busy0:.1f} busy, "
            f"{idle1 - idle0:.1f} idle"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--window", type=float, nargs=2, default=(25.0, 45.0), metavar=("FROM", "TO"))
    ap.add_argument("--bare", action="store_true", help="also run the bare loop once: its CPU seconds")
    ap.add_argument(
        "--every", type=float, default=0.1, help="seconds between samples (the profiler's own cost)"
    )
    ap.add_argument(
        "--machine-only",
        action="store_true",
        help="read only the machine's counters, without the ~1.3 CPU s that sampling each process costs",
    )
    args = ap.parse_args()
    profile(args.n, tuple(args.window), args.bare, args.every, not args.machine_only)


if __name__ == "__main__":
    main()
