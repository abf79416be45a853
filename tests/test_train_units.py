"""Pure parts of the training job: the training view (flip mirrors indices), hold-out split, captions,
schedule, retrieval metrics, zero-shot on a labelled folder, and config validation."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from datajuicer_ray.config import ConfigError, load_train_config
from datajuicer_ray.train.data import is_held_out, kept_counts, length_bucketed, pick_caption, training_view
from datajuicer_ray.train.evaluate import recall_at_k, retrieval, zero_shot
from datajuicer_ray.train.schedule import warmup_cosine_factor
from datajuicer_ray.vision.decode import canonical_pixels
from datajuicer_ray.vision.geometry import flip_indices

CONF = Path(__file__).resolve().parents[1] / "conf" / "train"


def tiny() -> dict:
    return {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 224, "patch_size": 16, "width": 32, "layers": 1, "head_width": 16},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }


def _jpeg(pixels: np.ndarray, exif_orientation: int | None = None) -> bytes:
    buf = io.BytesIO()
    img = Image.fromarray(pixels)
    if exif_orientation:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        img.save(buf, format="JPEG", quality=95, exif=exif)
    else:
        img.save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def test_flip_mirrors_pixels_and_indices_together():
    pixels = canonical_pixels(_jpeg(skimage.data.coffee()), 224)
    index = np.array([0, 13, 14, 100, 195], dtype=np.int16)
    view, idx = training_view(pixels, index, 14, flip=False)
    fview, fidx = training_view(pixels, index, 14, flip=True)
    assert view.shape == (3, 224, 224) and np.array_equal(idx, index)
    assert np.all(np.diff(fidx) > 0)
    for p in index:
        q = int(flip_indices(np.array([p]), 14)[0])
        assert q in fidx
        (r, c), (fr, fc) = divmod(int(p), 14), divmod(q, 14)
        assert fr == r and fc == 13 - c
        patch = view[:, r * 16 : r * 16 + 16, c * 16 : c * 16 + 16]
        fpatch = fview[:, fr * 16 : fr * 16 + 16, fc * 16 : fc * 16 + 16]
        assert np.array_equal(fpatch, patch[:, :, ::-1])


def test_decode_applies_exif_orientation_before_the_canonical_view():
    photo = skimage.data.chelsea()  # 300 x 451, landscape
    upright = canonical_pixels(_jpeg(photo), 64)
    rotated = canonical_pixels(_jpeg(np.rot90(photo, k=1).copy(), exif_orientation=6), 64)
    # Orientation 6 says "rotate 90 clockwise to display": the decoded view is the upright photo again.
    assert np.abs(rotated.astype(int) - upright.astype(int)).mean() < 8


def test_hold_out_is_deterministic_and_near_the_fraction():
    keys = [f"{i:06d}" for i in range(4000)]
    held = [k for k in keys if is_held_out(k, 0.1)]
    assert held == [k for k in keys if is_held_out(k, 0.1)]
    assert 300 < len(held) < 500
    assert not any(is_held_out(k, 0.0) for k in keys)


def test_caption_falls_back_to_the_original():
    assert pick_caption("a red car", "car") == "a red car"
    assert pick_caption(None, "car") == "car"
    assert pick_caption("  ", "car") == "car"
    assert pick_caption(None, None) is None


def test_warmup_then_cosine():
    f = [warmup_cosine_factor(s, 10, 110) for s in range(110)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert f[10] == pytest.approx(1.0) and f[60] == pytest.approx(0.5) and f[-1] < 0.01
    assert all(a >= b for a, b in zip(f[10:], f[11:], strict=False))


def test_recall_at_k():
    sim = torch.tensor([[0.9, 0.1, 0.0], [0.8, 0.2, 0.1], [0.0, 0.1, 0.5]])
    r = recall_at_k(sim, ks=(1, 2))
    assert r == {"R@1": pytest.approx(2 / 3), "R@2": pytest.approx(1.0)}
    feats = torch.nn.functional.normalize(torch.randn(20, 8), dim=-1)
    perfect = retrieval(feats, feats)
    assert perfect["i2t_R@1"] == 1.0 and perfect["t2i_R@1"] == 1.0 and perfect["pairs"] == 20


class _GreyClip(torch.nn.Module):
    """A CLIP whose answers are known: class ``shade k`` embeds as axis k, and an image embeds as minus its
    grey level's distance to each class's level, so the nearest level wins and ranks follow distance."""

    def __init__(self, levels: list[int], mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.levels = torch.tensor(levels, dtype=torch.float32)
        self.mean, self.std = mean, std

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        return torch.nn.functional.one_hot(tokens[:, 0], len(self.levels)).float()

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        grey = ((images * self.std.view(1, 3, 1, 1) + self.mean.view(1, 3, 1, 1)) * 255).mean(dim=(1, 2, 3))
        return -(grey[:, None] - self.levels[None, :]).abs()


def test_zero_shot_on_a_labelled_folder(tmp_path):
    """Seven classes (more than top-5), images whose best and worst classes are known: top-1 and top-5
    are what the construction says, neither 1.0."""
    levels = [36 * k for k in range(7)]
    names = [f"shade {k}" for k in range(7)]
    # Each folder holds its own grey; two hold a stranger: shade_3 one of level 4 (nearest is shade 4,
    # shade 3 is second: a top-5 hit, a top-1 miss), shade_0 one of level 6 (shade 0 is the farthest: a miss).
    placed = [(k, levels[k]) for k in range(7)] + [(3, levels[4]), (0, levels[6])]
    for i, (k, grey) in enumerate(placed):
        folder = tmp_path / names[k].replace(" ", "_")
        folder.mkdir(exist_ok=True)
        Image.new("RGB", (40, 30), (grey,) * 3).save(folder / f"{i}.png")
    (tmp_path / "shade_0" / "notes.txt").write_text("not an image")

    def tokenize(texts: list[str]) -> torch.Tensor:
        return torch.tensor([[next(k for k, n in enumerate(names) if n in t)] for t in texts])

    def rank(k: int, grey: int) -> int:  # 0 = the nearest class
        return sum(abs(grey - lv) < abs(grey - levels[k]) for lv in levels)

    mean, std = torch.tensor([0.48, 0.46, 0.41]), torch.tensor([0.27, 0.26, 0.28])
    model = _GreyClip(levels, mean, std)
    out = zero_shot(model, tokenize, str(tmp_path), 32, torch.device("cpu"), mean, std, batch_size=4)
    n = len(placed)
    assert out["zero_shot_images"] == n and out["classes"] == len(names)
    assert out["zero_shot_top1"] == pytest.approx(sum(rank(k, g) == 0 for k, g in placed) / n)
    assert out["zero_shot_top5"] == pytest.approx(sum(rank(k, g) < 5 for k, g in placed) / n)
    assert 0 < out["zero_shot_top1"] < out["zero_shot_top5"] < 1


def test_zero_shot_matches_the_model_s_own_logits(tmp_path):
    """A real (random) open_clip model: zero_shot's top-1 is the argmax of a direct computation of image
    features against the mean of each class's normalised template embeddings."""
    from open_clip import SIMPLE_IMAGENET_TEMPLATES

    from datajuicer_ray.train.evaluate import normalise
    from datajuicer_ray.train.factory import create_model, tokenizer

    photos = ["chelsea", "coffee", "rocket", "astronaut", "camera", "moon", "horse"]
    for cls in photos:
        (tmp_path / cls).mkdir()
        Image.fromarray(getattr(skimage.data, cls)()).convert("RGB").save(tmp_path / cls / "0.jpg")
    model = create_model(tiny(), seed=0).eval()
    tok = tokenizer(tiny())
    mean, std = torch.tensor([0.48, 0.46, 0.41]), torch.tensor([0.27, 0.26, 0.28])
    out = zero_shot(model, tok, str(tmp_path), 224, torch.device("cpu"), mean, std, batch_size=3)

    with torch.no_grad():
        classes = []
        for name in sorted(photos):
            emb = model.encode_text(tok([t(name) for t in SIMPLE_IMAGENET_TEMPLATES]), normalize=True)
            classes.append(torch.nn.functional.normalize(emb.mean(dim=0), dim=0))
        pixels = np.stack(
            [
                canonical_pixels((tmp_path / c / "0.jpg").read_bytes(), 224).transpose(2, 0, 1)
                for c in sorted(photos)
            ]
        )
        feats = model.encode_image(normalise(torch.from_numpy(pixels), mean, std), normalize=True)
        logits = feats @ torch.stack(classes, dim=1)
    target = torch.arange(len(photos))
    top5 = logits.topk(5, dim=1).indices
    assert out["classes"] == out["zero_shot_images"] == len(photos)
    assert out["zero_shot_top1"] == pytest.approx(float((logits.argmax(dim=1) == target).float().mean()))
    assert out["zero_shot_top5"] == pytest.approx(float((top5 == target[:, None]).any(dim=1).float().mean()))


@pytest.mark.parametrize(
    "override, key",
    [
        ("train.batch_size=7", "train.batch_size"),
        ("train.precision=fp16", "train.precision"),
        ("data.val_fraction=1.0", "data.val_fraction"),
        ("eval.templates=fancy", "eval.templates"),
        ("train.cpus_per_worker=0", "train.cpus_per_worker"),
        ("data.bucket_buffer=-1", "data.bucket_buffer"),
        ("trian.steps=3", "trian"),
    ],
)
def test_bad_train_config_names_the_key(override, key):
    with pytest.raises(ConfigError, match=key):
        load_train_config(CONF / "dry_run.yaml", [override])


@pytest.mark.parametrize("name", sorted(p.name for p in CONF.glob("*.yaml")))
def test_shipped_configs_load(name):
    cfg = load_train_config(CONF / name, ["data.path=/somewhere"])
    assert cfg.train.steps >= 1


def test_model_geometry_takes_open_clips_defaults_and_checks_the_grid():
    from datajuicer_ray.train import factory

    inline = {
        "embed_dim": 16,
        "vision_cfg": {"width": 32, "layers": 1},
        "text_cfg": {"width": 32, "layers": 1},
    }
    spec = factory.spec(inline)  # sizes left out: open_clip builds 224 px, /16, 77 tokens
    assert (spec.geometry.size, spec.geometry.patch, spec.geometry.grid, spec.context_length) == (
        224,
        16,
        14,
        77,
    )
    assert factory.spec("ViT-B-32").geometry.grid == 7
    odd = {**inline, "vision_cfg": {"width": 32, "layers": 1, "image_size": 100, "patch_size": 16}}
    with pytest.raises(ConfigError, match="model.name: no patch grid"):
        factory.spec(odd)


def test_schedule_is_open_clips_and_transformers_only_in_the_warm_up_start():
    """Ours equals open_clip's own cosine_lr at every step; transformers' cosine-with-warmup equals it after
    the warm-up but starts at 0 (one step late), which is why the schedule is not the library's."""
    from open_clip_train.scheduler import cosine_lr
    from transformers import get_cosine_schedule_with_warmup

    warmup, total = 10, 110
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    open_clip_lr = cosine_lr(opt, 1.0, warmup, total)
    ours = [warmup_cosine_factor(s, warmup, total) for s in range(total)]
    assert ours == pytest.approx([open_clip_lr(s) for s in range(total)], abs=1e-12)
    library = get_cosine_schedule_with_warmup(opt, warmup, total).lr_lambdas[0]
    assert library(0) == 0.0 and ours[0] == pytest.approx(1 / warmup)  # the library wastes step 0
    assert [library(s) for s in range(1, warmup)] == pytest.approx(ours[: warmup - 1])  # one step late
    assert [library(s) for s in range(warmup, total)] == pytest.approx(ours[warmup:], abs=1e-12)
    no_warmup = get_cosine_schedule_with_warmup(opt, 0, total).lr_lambdas[0]
    assert [warmup_cosine_factor(s, 0, total) for s in (0, 1, 55)] == pytest.approx(
        [no_warmup(s) for s in (0, 1, 55)]
    )


def _rows_with_counts(counts: list[int]) -> dict[str, np.ndarray]:
    """A numpy batch as the training shard yields it: ids stand in for images, indices padded with -1."""
    index = np.full((len(counts), 196), -1, dtype=np.int16)
    for row, n in enumerate(counts):
        index[row, :n] = np.arange(n)
    return {"id": np.arange(len(counts)), "patch_index": index}


def _split(rows: dict[str, np.ndarray], sizes: list[int]) -> list[dict[str, np.ndarray]]:
    edges = np.cumsum([0, *sizes])
    return [{k: v[a:b] for k, v in rows.items()} for a, b in zip(edges, edges[1:], strict=False)]


def test_length_buckets_group_similar_counts_and_keep_every_whole_batch():
    counts = np.random.default_rng(0).integers(20, 177, 203).tolist()  # mass retention: counts vary
    stream = _split(_rows_with_counts(counts), [50, 7, 64, 1, 81])  # the stream's batches have any size
    out = list(length_bucketed(stream, batch_size=8, buffer_batches=5, seed=3))
    assert len(out) == 203 // 8  # as many steps as drop_last iteration: DDP ranks stay in step
    ids = np.concatenate([b["id"] for b in out])
    assert len(set(ids.tolist())) == len(ids) == 25 * 8  # no row twice; only the last partial batch dropped
    assert set(ids.tolist()) <= set(range(200))  # dropped rows are from the end of the stream
    spans, longest = [], []
    for b in out:
        n = kept_counts(b["patch_index"])
        assert b["patch_index"].shape[1] == n.max()  # trimmed to the batch's longest row
        assert np.array_equal(n, [counts[i] for i in b["id"]])  # indices travel with their row
        spans.append(int(n.max() - n.min()))
        longest.append(int(n.max()))
    # A buffer of 5 batches: each spans ~1/5 of the counts' range (157); the stream's own batches of 8 ~2/3.
    plain = [np.ptp(counts[i : i + 8]) for i in range(0, 200, 8)]
    assert np.median(spans) < 40 < 90 < np.median(plain)
    # Batches leave in random order, not sorted by length.
    assert longest != sorted(longest) and longest != sorted(longest, reverse=True)
    # The same seed gives the same batches: a resumed epoch replays and skips exactly what was consumed.
    again = list(length_bucketed(_split(_rows_with_counts(counts), [50, 7, 64, 1, 81]), 8, 5, seed=3))
    assert all(np.array_equal(a["id"], b["id"]) for a, b in zip(out, again, strict=True))


def test_length_buckets_are_a_no_op_for_fixed_retention():
    rows = _rows_with_counts([98] * 37)
    out = list(length_bucketed(_split(rows, [10, 27]), batch_size=4, buffer_batches=3, seed=0))
    assert [b["id"].tolist() for b in out] == [list(range(i, i + 4)) for i in range(0, 36, 4)]
    assert all(b["patch_index"].shape == (4, 98) for b in out)


def test_typed_config_in_the_worker_is_the_drivers_config():
    from datajuicer_ray.config import to_dict
    from datajuicer_ray.train.loop import in_model_buckets, typed_config

    cfg = load_train_config(CONF / "dry_run.yaml", ["data.path=/somewhere", "data.bucket_buffer=0"])
    again = typed_config(to_dict(cfg))
    assert again == cfg and isinstance(again.model.name, dict)
    assert again.train.warmup_steps == 5 and again.data.bucket_buffer == 0
    assert in_model_buckets(again) == 4  # no stream bucketing: the in-batch bucketing stays
    assert in_model_buckets(load_train_config(CONF / "dry_run.yaml", ["data.path=/x"])) == 1


def test_the_benchmarks_mass_side_has_fixed_retentions_mean_token_count():
    """bench_train_step --stream compares like with like: same rows' mean kept count (98), and the stream
    bucketing leaves only a few padded tokens per row on the mass side."""
    from benchmarks.bench_train_step import stream_batches

    batches = stream_batches(16, 8, 98)
    assert len(batches) == 8 and all(b.shape[0] == 16 for b in batches)
    assert sum(int((b >= 0).sum()) for b in batches) == 98 * 16 * 8
    assert 98 < np.mean([b.shape[1] for b in batches]) < 98 * 1.08
