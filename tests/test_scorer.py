"""The scorer: [CLS] attention from the last layer's q/k equals eager attention; scores land on the target
grid; objects come from the classification head with the threshold applied; failures stay in their rows."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from datajuicer_ray.config import VisionConfig
from datajuicer_ray.io import columns
from datajuicer_ray.vision import models
from datajuicer_ray.vision.geometry import resample_scores, top_k_indices
from datajuicer_ray.vision.models import scorer_run_info
from datajuicer_ray.vision.scorer import PatchScorer


def views(n=3, seed=0) -> np.ndarray:
    return np.random.RandomState(seed).randint(0, 256, (n, 224, 224, 3)).astype(np.uint8)


def eager_cls_attention(lm: models.LoadedModel, pixels: torch.Tensor) -> torch.Tensor:
    """Reference: the same weights with eager attention and output_attentions (what we avoid in production)."""
    from transformers import AutoModel, AutoModelForImageClassification

    auto = AutoModelForImageClassification if lm.has_head else AutoModel
    kwargs = {"add_pooling_layer": False} if lm.model.config.model_type == "vit" and not lm.has_head else {}
    eager = auto.from_pretrained(lm.path, attn_implementation="eager", **kwargs).eval()
    with torch.no_grad():
        out = eager(pixel_values=pixels, output_attentions=True)
    return out.attentions[-1].mean(dim=1)[:, 0]


@pytest.mark.parametrize("name", ["tiny-random", "tiny-random-dino", "tiny-random-dinov2-registers"])
def test_cls_attention_equals_eager_attention(name):
    scorer = PatchScorer(VisionConfig(model=name, dtype="fp32", device="cpu"))
    assert scorer.scorer.model.config._attn_implementation == "sdpa"
    pixels = scorer._pixels(views(), scorer.scorer, 224)
    scorer._forward(scorer.scorer, pixels, 224)
    ours = scorer.probe.cls_attention()
    ref = eager_cls_attention(scorer.scorer, pixels)
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


def test_register_tokens_are_not_patches():
    scorer = PatchScorer(VisionConfig(model="tiny-random-dinov2-registers", device="cpu"))
    assert scorer.scorer.num_prefix_tokens == 5  # [CLS] + 4 registers
    pixels = scorer._pixels(views(1), scorer.scorer, 224)
    scorer._forward(scorer.scorer, pixels, 224)
    full = scorer.probe.cls_attention()
    assert full.shape[1] == 1 + 4 + 16 * 16
    maps, _ = scorer.score(views(1))
    expected = resample_scores(full[:, 5:].reshape(1, 16, 16).double().numpy(), 14)
    np.testing.assert_allclose(maps, expected, atol=1e-12)


def test_dinov2_14_scores_are_resampled_onto_the_16_grid():
    scorer = PatchScorer(VisionConfig(model="tiny-random", device="cpu", patch_size=16))
    assert scorer.scorer.patch_size == 14 and scorer.grid == 14
    v = views(2)
    raw, _ = scorer._model_outputs(v)  # on the model's own grid
    assert raw.shape == (2, 16, 16)
    maps, _ = scorer.score(v)
    assert maps.shape == (2, 14, 14)
    np.testing.assert_allclose(maps, resample_scores(raw, 14), atol=1e-12)
    # area resampling keeps the mean attention per unit area
    np.testing.assert_allclose(maps.mean(axis=(1, 2)), raw.mean(axis=(1, 2)), rtol=1e-9)


def test_a_cpu_batch_scored_in_row_shards_matches_one_forward():
    """On a CPU each thread runs its own rows through the model; every shard's probe reads its own rows'
    [CLS] attention, and the shards come back in row order (maps and class probabilities)."""
    scorer = PatchScorer(VisionConfig(model="tiny-random", device="cpu", num_cpus=2))
    assert scorer.cpu_threads == 2 and scorer.scorer.has_head
    v = views(5)
    whole_maps, whole_probs = scorer._on_threads(v, 2)  # one forward over all rows
    whole_maps = resample_scores(whole_maps, scorer.grid)
    for _ in range(3):  # shards run at the same time: a probe shared between threads would mix rows
        maps, probs = scorer.score(v)
        np.testing.assert_allclose(maps, whole_maps, rtol=1e-5, atol=1e-9)
        np.testing.assert_allclose(probs, whole_probs, rtol=1e-5, atol=1e-7)
        for m, w in zip(maps, whole_maps):
            assert top_k_indices(m, scorer.k).tolist() == top_k_indices(w, scorer.k).tolist()
    assert len({round(float(m.max()), 9) for m in maps}) == 5  # five different rows, not one row repeated


def confident_model(tmp_path, label_id: int) -> str:
    """A tiny DINOv2 classifier whose head is sure of one class: a real checkpoint, saved and reloaded."""
    lm = models.load_model("tiny-random")
    with torch.no_grad():
        lm.model.classifier.weight.zero_()
        lm.model.classifier.bias.zero_()
        lm.model.classifier.bias[label_id] = 12.0  # softmax 0.876 over 1000 classes
        lm.model.classifier.bias[label_id + 1] = 10.0  # 0.119: under the threshold
    path = tmp_path / "confident"
    lm.model.save_pretrained(path)
    from transformers import AutoImageProcessor

    AutoImageProcessor.from_pretrained(lm.path).save_pretrained(path)
    return str(path)


def batch_of(v: np.ndarray, statuses: list[str]) -> pa.Table:
    return pa.table(
        {
            "status": pa.array(statuses, pa.string()),
            "error": pa.array([None] * len(statuses), pa.string()),
            columns.PIXELS_COL: pa.array(
                [x.tobytes() if s == "ok" else None for x, s in zip(v, statuses)], pa.binary()
            ),
        }
    )


def test_stage_keeps_top_patches_and_thresholds_objects(tmp_path):
    path = confident_model(tmp_path, 281)
    scorer = PatchScorer(VisionConfig(model=path, device="cpu", min_confidence=0.7))
    v = views(3)
    out = scorer(batch_of(v, ["ok", "decode_error", "ok"]))
    assert out.column("status").to_pylist() == ["ok", "decode_error", "ok"]
    index = out.column("patch_index").to_pylist()
    assert index[1] is None and out.column("objects").to_pylist()[1] is None
    maps, _ = scorer.score(v[[0, 2]])
    for got, m in zip([index[0], index[2]], maps):
        assert got == top_k_indices(m, 98).tolist() and len(got) == 98
    objects = out.column("objects").to_pylist()[0]
    label = scorer.scorer.id2label[281]
    assert [o["label"] for o in objects] == [label]  # the 0.11 class is under min_confidence
    e = np.exp([12.0, 10.0])
    assert objects[0]["score"] == pytest.approx(e[0] / (e.sum() + 998), rel=1e-5)
    low = PatchScorer(VisionConfig(model=path, device="cpu", min_confidence=0.05, max_objects=5))
    objs = low(batch_of(v[:1], ["ok"])).column("objects").to_pylist()[0]
    assert [o["label"] for o in objs][:2] == [label, scorer.scorer.id2label[282]]
    assert [o["score"] for o in objs] == sorted((o["score"] for o in objs), reverse=True)


def test_model_without_head_scores_patches_and_explains_empty_objects():
    vision = VisionConfig(model="tiny-random-dino", device="cpu")
    out = PatchScorer(vision)(batch_of(views(2), ["ok", "ok"]))
    assert out.column("objects").to_pylist() == [[], []]
    assert all(len(i) == 98 for i in out.column("patch_index").to_pylist())
    info = scorer_run_info(vision)
    assert info["objects"]["source"] is None and "no image-classification head" in info["objects"]["note"]


def test_separate_classifier_names_objects_for_a_headless_scorer():
    vision = VisionConfig(
        model="tiny-random-dino",
        classifier="tiny-random-vit-classifier",
        device="cpu",
        min_confidence=0.0,
        max_objects=3,
    )
    out = PatchScorer(vision)(batch_of(views(2), ["ok", "ok"]))
    assert [len(o) for o in out.column("objects").to_pylist()] == [3, 3]
    assert scorer_run_info(vision)["objects"]["source"] == "classifier"


@pytest.mark.parametrize(
    "name", ["tiny-random", "tiny-random-dino", "tiny-random-dinov2-registers", "tiny-random-vit-classifier"]
)
def test_model_config_read_as_json_agrees_with_autoconfig(name):
    from transformers import AutoConfig

    path = models.resolve(name)
    fast, full = models.model_config(path), AutoConfig.from_pretrained(path)
    assert type(fast) is not type(full)  # the JSON path was taken
    for key in ("model_type", "architectures", "patch_size", "num_register_tokens"):
        assert getattr(fast, key) == getattr(full, key, 0), key
    if full.architectures[0].endswith("ForImageClassification"):
        assert {int(k): v for k, v in fast.id2label.items()} == full.id2label


def test_the_driver_never_imports_torch(tmp_path):
    """Planning a job, its run record and naming its stages import no torch or transformers: ~2-3 s of the
    job's start-up that only the scorer actor needs (and pays itself)."""
    import subprocess
    import sys

    models.resolve("tiny-random-dino")  # built (with torch) here, read as JSON there
    code = (
        "import sys\n"
        "import datajuicer_ray.cli, datajuicer_ray.pipeline\n"
        "from datajuicer_ray.config import VisionConfig\n"
        "from datajuicer_ray.vision.models import scorer_run_info\n"
        "scorer_run_info(VisionConfig(model='tiny-random-dino'))\n"
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_out_of_memory_halves_the_batch_and_loses_no_row(monkeypatch):
    """CUDA OOM cannot happen on this CPU machine: the model forward is made to raise it above 2 rows."""
    scorer = PatchScorer(VisionConfig(model="tiny-random-dino", device="cpu", batch_size=8))
    real = scorer.score

    def flaky(v, captions=None):
        if len(v) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(v, captions)

    monkeypatch.setattr(scorer, "score", flaky)
    out = scorer(batch_of(views(8), ["ok"] * 8))
    assert out.column("status").to_pylist() == ["ok"] * 8
    assert scorer.max_batch == 2


def test_a_row_that_fails_alone_is_reported_in_its_row(monkeypatch):
    scorer = PatchScorer(VisionConfig(model="tiny-random-dino", device="cpu", batch_size=4))
    real = scorer.score
    poison = views(4)
    poison[2, 0, 0, 0] = 7
    poison[2, 0, 0, 1] = 7

    def fails_on_row_2(v, captions=None):
        if any(x[0, 0, 0] == 7 and x[0, 0, 1] == 7 for x in v):
            raise RuntimeError("NaN in attention")
        return real(v, captions)

    monkeypatch.setattr(scorer, "score", fails_on_row_2)
    out = scorer(batch_of(poison, ["ok"] * 4))
    assert out.column("status").to_pylist() == ["ok", "ok", "score_error", "ok"]
    assert "NaN in attention" in out.column("error").to_pylist()[2]
    assert out.column("patch_index").to_pylist()[2] is None


def test_bf16_autocast_scores_close_to_fp32():
    v = views(2)
    fp32, _ = PatchScorer(VisionConfig(model="tiny-random", device="cpu", dtype="fp32")).score(v)
    bf16, _ = PatchScorer(VisionConfig(model="tiny-random", device="cpu", dtype="bf16")).score(v)
    # bf16 moves scores a little; the kept patches stay mostly the same
    assert np.abs(fp32 - bf16).max() < 0.1 * fp32.max()
    assert len(set(top_k_indices(fp32[0], 98)) & set(top_k_indices(bf16[0], 98))) >= 80


def test_a_model_that_cannot_load_says_so():
    with pytest.raises(RuntimeError, match="cannot load vision model 'no/such-model'"):
        models.load_model("no/such-model")
