"""Run every benchmark this machine can run and print one table: figure, ours, reference, ratio, target, met.

Each benchmark module exposes ``run(quick: bool) -> list[dict]``. A module that is missing or fails prints
one "error: ..." row and the others go on; GPU figures are reported as skipped on a machine without one.

    python benchmarks/run_all.py --quick                          # under 10 minutes on 2 CPU cores
    python benchmarks/run_all.py --quick --markdown out/bench.md  # also write the table as Markdown
    python benchmarks/run_all.py --only pipeline,memory           # a subset, full sizes
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import platform
import sys
import time
import traceback
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import markdown, print_rows, row

# (short name, module): the order keeps the cheap figures first.
BENCHMARKS = [
    ("attention", "benchmarks.bench_attention"),
    ("guard", "benchmarks.bench_guard"),
    ("precision", "benchmarks.bench_precision"),
    ("allocator", "benchmarks.bench_allocator"),
    ("row_shards", "benchmarks.bench_row_shards"),
    ("decode", "benchmarks.bench_decode"),
    ("pipeline", "benchmarks.bench_pipeline"),
    ("memory", "benchmarks.bench_memory"),
    ("train_step", "benchmarks.bench_train_step"),
    ("rewrite", "benchmarks.bench_rewrite"),
    ("gpu", "benchmarks.bench_gpu"),
]
KEYS = ("figure", "ours", "reference", "ratio", "target", "met")


def run_one(name: str, module: str, quick: bool) -> list[dict]:
    """The module's rows, each tagged with the benchmark name; one error row if it cannot run."""
    try:
        rows = importlib.import_module(module).run(quick)
        bad = [r for r in rows if not isinstance(r, dict) or not set(KEYS) <= set(r)]
        if not rows or bad:
            raise TypeError(
                f"run() must return a non-empty list of dicts with keys {KEYS}; got {bad or rows!r}"
            )
    except Exception as err:  # noqa: BLE001 - one broken benchmark must not hide the others
        traceback.print_exc()
        return [row(f"{name}: error: {type(err).__name__}: {str(err).splitlines()[0][:160] if str(err) else ''}",
                    None, None, "-", False)]  # fmt: skip
    return [{**r, "figure": f"{name}: {r['figure']}"} for r in rows]


def environment() -> str:
    from importlib.metadata import PackageNotFoundError, version

    parts = [f"python {platform.python_version()}"]
    for pkg in ("torch", "ray", "transformers", "open-clip-torch", "pillow", "pyarrow"):
        with contextlib.suppress(PackageNotFoundError):
            parts.append(f"{pkg} {version(pkg)}")
    return ", ".join(parts)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="short runs (under 10 minutes on 2 cores)")
    ap.add_argument("--markdown", metavar="PATH", help="also write the table as Markdown to PATH")
    ap.add_argument(
        "--only", default="", help="comma-separated subset: " + ",".join(n for n, _ in BENCHMARKS)
    )
    args = ap.parse_args(argv)
    only = {x.strip() for x in args.only.split(",") if x.strip()}
    unknown = only - {n for n, _ in BENCHMARKS}
    if unknown:
        ap.error(f"--only: unknown benchmark(s) {sorted(unknown)}")
    print(f"[run_all] {environment()}; quick={args.quick}", flush=True)
    began = time.perf_counter()
    rows: list[dict] = []
    for name, module in BENCHMARKS:
        if only and name not in only:
            continue
        t = time.perf_counter()
        print(f"[run_all] {name} ...", flush=True)
        got = run_one(name, module, args.quick)
        print(f"[run_all] {name}: {len(got)} rows in {time.perf_counter() - t:.0f} s", flush=True)
        print_rows(got)
        rows += got
    total = time.perf_counter() - began
    print(f"\n[run_all] all benchmarks in {total:.0f} s\n")
    print_rows(rows)
    if args.markdown:
        path = Path(args.markdown)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(markdown(rows))
        print(f"[run_all] wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
