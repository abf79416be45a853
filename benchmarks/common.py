"""What every benchmark shares: the ViT-S/16-sized scorer, a photo corpus, alternated timing, result rows.

Absolute times drift on a shared machine (other jobs run on the same cores), so every figure is a ratio of
two sides measured in one run, alternating A B A B ..., and reported as the median with its spread.
"""

from __future__ import annotations

import io
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
SEED = 0
# DINO ViT-S/16 (facebook/dino-vits16): the architecture a real scorer has, random weights.
VIT_S16 = dict(
    hidden_size=384,
    num_hidden_layers=12,
    num_attention_heads=6,
    intermediate_size=1536,
    patch_size=16,
    image_size=224,
)


def bench_dir() -> Path:
    d = Path(os.environ.get("DATAJUICER_RAY_BENCH_DIR", REPO / "out" / "bench"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def vit_s16_dir() -> Path:
    """A ViT-S/16 (DINO v1 layout: ViTModel, no pooler) with seeded random weights, saved once; loaded
    back through ``vision.model=<dir>``, the same from_pretrained path real weights take."""
    import torch
    from transformers import ViTConfig, ViTModel

    from datajuicer_ray.vision.normalization import save_image_processor

    target = bench_dir() / f"vit-s16-random-seed{SEED}"
    if (target / "config.json").exists():
        return target
    cfg = ViTConfig(**VIT_S16)
    cfg.architectures = ["ViTModel"]
    torch.manual_seed(SEED)
    model = ViTModel(cfg, add_pooling_layer=False)
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp)
    save_image_processor(tmp)
    tmp.rename(target)
    return target


def photos_rgb() -> list:
    import skimage.data
    from PIL import Image

    from datajuicer_ray.io.sample import PHOTOS

    out = []
    for name, _ in PHOTOS:
        arr = getattr(skimage.data, name)()
        if arr.dtype == bool:
            arr = arr.astype(np.uint8) * 255
        out.append(Image.fromarray(arr).convert("RGB"))
    return out


def photo_crop(photos: list, i: int, smallest: float) -> tuple:
    """The ``i``-th distinct crop (each side ``smallest``-1.0 of the photo's) of a real photo, and its rng."""
    rng = np.random.default_rng(i)
    img = photos[i % len(photos)]
    w, h = img.size
    cw, ch = int(w * rng.uniform(smallest, 1.0)), int(h * rng.uniform(smallest, 1.0))
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    return img.crop((x, y, x + cw, y + ch)), rng


def web_jpeg(photos: list, i: int) -> bytes:
    """A web-sized JPEG (longer side 400-640 px, like a LAION download) cut from a real photo."""
    crop, rng = photo_crop(photos, i, 0.6)
    side = int(rng.integers(400, 641))
    scale = side / max(crop.size)
    crop = crop.resize((max(1, round(crop.width * scale)), max(1, round(crop.height * scale))))
    buf = io.BytesIO()
    crop.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def photo_parquet(n: int, files: int = 1) -> Path:
    """img2dataset Parquet of ``n`` real-photo JPEGs in ``files`` files (written once per size)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = bench_dir() / f"photos-{n}-{files}"
    if (folder / "_done").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    photos = photos_rgb()
    per = -(-n // files)
    for f in range(files):
        rows = range(f * per, min(n, (f + 1) * per))
        table = pa.table(
            {
                "key": [f"{i:09d}" for i in rows],
                "caption": [f"photo {i}" for i in rows],
                "jpg": pa.array([web_jpeg(photos, i) for i in rows], pa.binary()),
                "url": [f"https://example.org/{i}.jpg" for i in rows],
                "status": ["success"] * len(rows),
                "error_message": pa.array([None] * len(rows), pa.string()),
            }
        )
        pq.write_table(table, folder / f"part-{f:03d}.parquet")
    (folder / "_done").touch()
    return folder


# ----------------------------------------------------------------------------------------------
# timing


def alternate(sides: dict[str, Callable[[], float]], reps: int) -> dict[str, list[float]]:
    """Run the sides in turn, ``reps`` rounds; each callable returns its own measured value."""
    out: dict[str, list[float]] = {k: [] for k in sides}
    for r in range(reps):
        order = list(sides) if r % 2 == 0 else list(reversed(sides))  # no side always goes first
        for k in order:
            out[k].append(sides[k]())
    return out


def timed(fn: Callable[[], object]) -> float:
    began = time.perf_counter()
    fn()
    return time.perf_counter() - began


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def spread(xs: list[float], unit: str = "", digits: int = 2) -> str:
    """'median m (min-max, n=k)': the spread shows how much the shared machine moved the figure."""
    f = f"{{:.{digits}f}}"
    return f"{f.format(median(xs))}{unit} ({f.format(min(xs))}-{f.format(max(xs))}, n={len(xs)})"


def row(
    figure: str,
    ours: float | None,
    reference: float | None,
    target: str,
    met: bool | None,
    ratio: float | None = None,
) -> dict:
    if ratio is None and ours is not None and reference:
        ratio = ours / reference
    return {
        "figure": figure,
        "ours": ours,
        "reference": reference,
        "ratio": ratio,
        "target": target,
        "met": met,
    }


def skipped(figure: str, target: str, why: str) -> dict:
    return {"figure": f"{figure} [skipped: {why}]", "ours": None, "reference": None, "ratio": None,
            "target": target, "met": None}  # fmt: skip


# ----------------------------------------------------------------------------------------------
# printing


def fmt(x) -> str:
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "NO"
    if isinstance(x, float):
        return f"{x:.3g}" if abs(x) < 1000 else f"{x:.0f}"
    return str(x)


def met_text(met) -> str:
    return "-" if met is None else ("met" if met else "NOT met")


COLUMNS = ("figure", "ours", "reference", "ratio", "target", "met")


def table_lines(rows: list[dict]) -> list[str]:
    cells = [[str(r.get("figure", ""))] + [fmt(r.get(c)) for c in COLUMNS[1:4]] +
             [str(r.get("target", "")), met_text(r.get("met"))] for r in rows]  # fmt: skip
    widths = [max(len(c), *(len(x[i]) for x in cells)) if cells else len(c) for i, c in enumerate(COLUMNS)]
    line = lambda xs: "  ".join(x.ljust(w) for x, w in zip(xs, widths))  # noqa: E731
    return [line(COLUMNS), line(["-" * w for w in widths]), *(line(c) for c in cells)]


def markdown(rows: list[dict]) -> str:
    out = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        cells = [str(r.get("figure", ""))] + [fmt(r.get(c)) for c in COLUMNS[1:4]]
        cells += [str(r.get("target", "")), met_text(r.get("met"))]
        out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(out) + "\n"


def print_rows(rows: list[dict]) -> None:
    print("\n".join(table_lines(rows)), flush=True)


def main_for(run: Callable[[bool], list[dict]], doc: str | None) -> None:
    """The command line every simple benchmark shares: ``--quick``, then the rows as a table."""
    import argparse

    ap = argparse.ArgumentParser(description=(doc or "").strip().splitlines()[0] if doc else None)
    ap.add_argument("--quick", action="store_true", help="a short run")
    print_rows(run(ap.parse_args().quick))
