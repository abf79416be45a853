"""An img2dataset shard of 10,000 rows in ONE row group streams through with bounded memory.

img2dataset writes each shard as one Parquet file of ``number_sample_per_shard`` rows (10,000 by default)
and pyarrow puts them all in one row group: hundreds of MB of JPEGs at its default 256 px. A reader that takes a
row group, or a whole column chunk, at once holds all of it. Ours (``io/storage.py`` ``open_parquet``)
reads the footer, then streams the wanted column chunks ``READ_BLOCK`` bytes at a time and decodes
``input.rows_per_block`` rows per block.

Figures, each measured in fresh processes in one run, at 10,000 rows in one row group against a quarter of
that in one row group (a streaming reader's peak does not grow with the row group: target <= 1.25):
- the read stage alone: peak RSS of a process that reads the shard through ``reader.read_file``, less that
  of a process that only imports the same modules; and the same for pyarrow's defaults
  (``ParquetFile.iter_batches``, which takes a whole column chunk per read) for comparison;
- the whole job (the real CLI, tiny DINO scorer): peak memory, summed PSS over the driver, its local Ray
  and every worker (``bench_memory.PeakSampler``).

    python benchmarks/bench_big_row_group.py --quick   # 2,500 and 10,000 rows, read stage + job, 1 run each
    python benchmarks/bench_big_row_group.py           # the same, 2 runs each
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


from benchmarks.bench_memory import command_peak
from benchmarks.common import (
    REPO,
    alternate,
    bench_dir,
    main_for,
    median,
    photo_crop,
    photos_rgb,
    row,
    spread,
)

ROWS = 10_000  # img2dataset's number_sample_per_shard
SIDE = 256  # img2dataset's image_size
TARGET = 1.25
MIB, GIB = 2**20, 2**30


def img2dataset_jpeg(photos: list, i: int) -> bytes:
    """A distinct 256 px JPEG as img2dataset writes it by default (resize_mode=border, quality 95)."""
    crop, _ = photo_crop(photos, i, 0.5)
    crop.thumbnail((SIDE, SIDE))
    buf = io.BytesIO()
    crop.save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def one_row_group_shard(n: int) -> Path:
    """``n`` rows of img2dataset Parquet in one row group (written once per size)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = bench_dir() / f"img2dataset-{n}-one-row-group" / "00000.parquet"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    photos = photos_rgb()
    table = pa.table(
        {
            "key": [f"{i:09d}" for i in range(n)],
            "caption": [f"photo {i}" for i in range(n)],
            "jpg": pa.array([img2dataset_jpeg(photos, i) for i in range(n)], pa.binary()),
            "url": [f"https://example.org/{i}.jpg" for i in range(n)],
            "status": ["success"] * n,
            "error_message": pa.array([None] * n, pa.string()),
            "width": [SIDE] * n,
            "height": [SIDE] * n,
        }
    )
    tmp = path.with_suffix(".tmp")
    pq.write_table(table, tmp, row_group_size=n)
    assert pq.ParquetFile(tmp).metadata.num_row_groups == 1
    tmp.rename(path)
    return path


# A child process: read the shard one way, print its peak RSS. VmHWM, not ru_maxrss: Linux carries a
# parent's ru_maxrss over fork and exec into the child.
CHILD = """
import sys
import pyarrow.parquet as pq
from datajuicer_ray.config import ColumnsConfig
from datajuicer_ray.io.reader import InputFile, file_id_for, read_file
path, how = sys.argv[1], sys.argv[2]
rows = 0
if how == "ours":
    for t in read_file(InputFile(path, file_id_for(path), "parquet"), ColumnsConfig(), 256):
        rows += t.num_rows
elif how == "whole":
    for b in pq.ParquetFile(path).iter_batches(batch_size=256, columns=["key", "caption", "jpg", "status"]):
        rows += b.num_rows
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(rows, int(hwm.split()[1]) * 1024)
"""


def read_peak(path: Path, how: str) -> tuple[int, int]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), how],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    ).stdout.split()
    return int(out[0]), int(out[1])


def read_stage(small: Path, big: Path, reps: int) -> list[dict]:
    base = [read_peak(big, "imports")[1] for _ in range(reps)]
    peaks: dict[str, list[float]] = {}

    def side(how: str, path: Path, rows: int):
        def go() -> float:
            got, peak = read_peak(path, how)
            assert got == rows, (how, rows, got)
            peaks.setdefault(f"{how}@{rows}", []).append((peak - median(base)) / MIB)
            print(f"  read {how} {rows}: +{peaks[f'{how}@{rows}'][-1]:.0f} MiB over imports", flush=True)
            return peaks[f"{how}@{rows}"][-1]

        return go

    alternate(
        {
            f"{how}@{rows}": side(how, path, rows)
            for how in ("ours", "whole")
            for path, rows in ((small, ROWS // 4), (big, ROWS))
        },
        reps,
    )
    m = {k: median(v) for k, v in peaks.items()}
    size = big.stat().st_size / MIB
    spreads = ", ".join(f"{k} {spread(v, digits=0)}" for k, v in peaks.items())
    where = (
        f"one row group each, {size:.0f} MiB at {ROWS} rows; peak RSS in MiB over a bare import: {spreads}"
    )
    return [
        row(
            f"read stage peak RSS growth, {ROWS} vs {ROWS // 4} rows, ours (ranges, 256-row blocks) [{where}]",
            m[f"ours@{ROWS}"],
            m[f"ours@{ROWS // 4}"],
            f"<= {TARGET}",
            m[f"ours@{ROWS}"] / m[f"ours@{ROWS // 4}"] <= TARGET,
        ),
        row(
            f"read stage peak RSS at {ROWS} rows, ours vs pyarrow's defaults (a whole column chunk per read; "
            f"their growth {ROWS} vs {ROWS // 4}: {m[f'whole@{ROWS}'] / m[f'whole@{ROWS // 4}']:.2f})",
            m[f"ours@{ROWS}"],
            m[f"whole@{ROWS}"],
            "measured",
            None,
        ),
    ]


def job_peak(path: Path) -> dict:
    out_dir = bench_dir() / "big-row-group-out"
    shutil.rmtree(out_dir, ignore_errors=True)
    cmd = [
        sys.executable, "-m", "datajuicer_ray.cli", "curate", str(REPO / "conf" / "dry_run.yaml"),
        f"input.path={path}", "input.format=parquet", f"output.path={out_dir}", "output.mode=overwrite",
        "vision.model=tiny-random-dino", "vision.batch_size=32", "rewrite.enabled=false", "ray.progress=false",
        "ray.num_cpus=3",
    ]  # fmt: skip
    return command_peak(cmd)


def whole_job(small: Path, big: Path, reps: int) -> list[dict]:
    pss: dict[str, list[float]] = {"small": [], "big": []}

    def side(key: str, path: Path):
        def go() -> float:
            res = job_peak(path)
            pss[key].append(res["pss"] / GIB)
            print(
                f"  job {key}: PSS {res['pss'] / GIB:.2f} GiB, RSS {res['rss'] / GIB:.2f} GiB, {res['wall']:.0f} s"
            )
            return pss[key][-1]

        return go

    alternate({"small": side("small", small), "big": side("big", big)}, reps)
    growth = median(pss["big"]) / median(pss["small"])
    return [
        row(
            f"job peak memory, {ROWS} vs {ROWS // 4} rows, each shard one row group, sum of PSS over driver + "
            f"Ray + workers [tiny DINO; GiB at {ROWS}: {spread(pss['big'])}, at {ROWS // 4}: {spread(pss['small'])}]",
            median(pss["big"]),
            median(pss["small"]),
            f"<= {TARGET}",
            growth <= TARGET,
        )
    ]


def run(quick: bool) -> list[dict]:
    reps = 1 if quick else 2
    big, small = one_row_group_shard(ROWS), one_row_group_shard(ROWS // 4)
    return read_stage(small, big, reps) + whole_job(small, big, reps)


def main() -> None:
    main_for(run, __doc__)


if __name__ == "__main__":
    main()
