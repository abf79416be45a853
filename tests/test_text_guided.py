"""Caption-aware scoring: an open_clip model's patch-to-caption similarity blended into DINO's map."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch
import torch.nn.functional as F

from datajuicer_ray.config import TextGuidedConfig, VisionConfig
from datajuicer_ray.io import schema
from datajuicer_ray.vision.geometry import top_k_indices
from datajuicer_ray.vision.scorer import PatchScorer
from datajuicer_ray.vision.text_guided import TINY_CLIP, TextGuide, blend


def views(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 224, 224, 3), dtype=np.uint8)


def test_similarity_is_the_cosine_of_projected_patch_tokens_and_the_caption():
    guide = TextGuide(TINY_CLIP, "cpu")
    v = views(2)
    captions = ["a red square on grass", None]
    sims = guide.similarity(v, captions)
    assert sims[1] is None and sims[0].shape == (14, 14) and (sims[0] >= 0).all()
    # independently, through open_clip's own output_tokens path
    visual = guide.model.visual
    visual.output_tokens = True
    try:
        x = (torch.from_numpy(v[:1]).permute(0, 3, 1, 2).float() / 255 - guide.mean) / guide.std
        with torch.no_grad():
            _, tokens = visual(x)
            text = guide.model.encode_text(guide.tokenizer(captions[:1]), normalize=True)
    finally:
        visual.output_tokens = False
    expect = (F.normalize(tokens @ visual.proj, dim=-1) @ text[0]).clamp(min=0).reshape(14, 14)
    np.testing.assert_allclose(sims[0], expect.detach().double().numpy(), atol=1e-5)


def test_blend_weights_and_normalises_both_maps():
    a, s = np.ones((14, 14)), np.zeros((14, 14))
    s[0, 0] = 5.0
    np.testing.assert_allclose(blend(a, s, 0.0), a / a.sum())
    np.testing.assert_allclose(blend(a, None, 0.7), a / a.sum())
    b = blend(a, s, 0.5)
    assert b.sum() == pytest.approx(1.0) and b[0, 0] == pytest.approx(0.5 / 196 + 0.5)


def _batch(v: np.ndarray, captions: list[str]) -> pa.Table:
    n = len(v)
    return pa.table(
        {
            "key": [str(i) for i in range(n)],
            "caption": captions,
            "status": ["ok"] * n,
            "error": pa.array([None] * n, pa.string()),
            schema.PIXELS_COL: pa.array([x.tobytes() for x in v], pa.binary()),
        }
    )


def test_the_kept_set_moves_toward_what_the_caption_names(monkeypatch):
    """A constructed image whose caption's object sits in the top-left corner: with the caption's map peaked
    there (as a trained CLIP's would be), text-guided scoring keeps the corner that attention alone does not.
    The tiny CLIP's random weights cannot recognise anything, so its similarity map is set here; the real
    similarity path is checked against open_clip above."""
    v = views(1, seed=3)
    corner = np.zeros((14, 14))
    corner[:4, :4] = 1.0
    plain = PatchScorer(VisionConfig(model="tiny-random-dino", device="cpu", keep_ratio=0.25))
    guided_cfg = VisionConfig(
        model="tiny-random-dino",
        device="cpu",
        keep_ratio=0.25,
        scorer="text_guided",
        text_guided=TextGuidedConfig(model=TINY_CLIP, weight=0.6),
    )
    guided = PatchScorer(guided_cfg)
    monkeypatch.setattr(guided.guide, "similarity", lambda views, captions: [corner for _ in captions])
    before = set(plain(_batch(v, ["a cat in the corner"])).column("patch_index").to_pylist()[0])
    row = guided(_batch(v, ["a cat in the corner"])).to_pylist()[0]
    after = set(row["patch_index"])
    in_corner = {r * 14 + c for r in range(4) for c in range(4)}
    assert len(after & in_corner) == 16 > len(before & in_corner)
    assert after == set(top_k_indices(np.asarray(row["patch_scores"], np.float32), 49).tolist())
