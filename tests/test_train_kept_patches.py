"""The kept-patch forward against open_clip's own: equality with all patches, exact token selection, flips,
and independence from batch-mates' lengths under padding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from datajuicer_ray.train.factory import create_model
from datajuicer_ray.train.kept_patches import KeptPatchCLIP, encode_image_kept, install, token_positions
from datajuicer_ray.vision.geometry import flip_indices

G = 14


def tiny(pool_type: str = "tok", **vision) -> dict:
    return {
        "embed_dim": 32,
        "vision_cfg": {
            "image_size": 224,
            "patch_size": 16,
            "width": 64,
            "layers": 2,
            "head_width": 32,
            "mlp_ratio": 2.0,
            "pool_type": pool_type,
            **vision,
        },
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }


@pytest.fixture(scope="module")
def model():
    return create_model(tiny(), seed=1).eval()


@pytest.fixture(scope="module")
def images():
    return torch.randn(4, 3, 224, 224, generator=torch.Generator().manual_seed(0))


def _tokens_entering_ln_pre(model, images, index=None) -> torch.Tensor:
    """What the patch-dropout slot hands on: [CLS]+patch tokens after the positional embedding."""
    seen = {}
    handle = model.visual.patch_dropout.register_forward_hook(lambda m, i, o: seen.setdefault("x", o))
    try:
        with torch.no_grad():
            encode_image_kept(model, images, index)
    finally:
        handle.remove()
    return seen["x"]


@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("pool_type", ["tok", "avg"])
def test_all_patches_equal_stock_open_clip(images, mode, pool_type):
    stock = create_model(tiny(pool_type), seed=3)
    ours = create_model(tiny(pool_type), seed=3)
    install(ours)
    stock.train(mode == "train")
    ours.train(mode == "train")
    every = torch.arange(G * G).expand(len(images), -1)
    with torch.no_grad():
        expected = stock.encode_image(images, normalize=True)
        got = encode_image_kept(ours, images, every)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_indices_select_exactly_those_tokens(model, images):
    install(model)
    full = _tokens_entering_ln_pre(model, images)
    rng = np.random.default_rng(0)
    index = torch.stack([torch.from_numpy(np.sort(rng.choice(G * G, 98, replace=False))) for _ in images])
    kept = _tokens_entering_ln_pre(model, images, index)
    assert kept.shape == (4, 99, full.shape[-1])
    for b in range(len(images)):
        torch.testing.assert_close(kept[b, 0], full[b, 0], atol=0, rtol=0)  # [CLS] first, untouched
        torch.testing.assert_close(kept[b, 1:], full[b, 1 + index[b]], atol=0, rtol=0)


def test_features_depend_on_which_patches_are_kept(model, images):
    a = encode_image_kept(model, images[:1], torch.arange(0, 98)[None])
    b = encode_image_kept(model, images[:1], torch.arange(98, 196)[None])
    assert not torch.allclose(a, b, atol=1e-3)


def test_flipped_image_with_flipped_indices_sees_the_same_pixels(model, images):
    """Mirror the image and its indices: each kept token covers the mirrored pixels of the same patch."""
    install(model)
    index = torch.tensor([[0, 1, 15, 30, 100, 195]])
    flipped_index = torch.from_numpy(flip_indices(index[0].numpy(), G).astype(np.int64))[None]
    img = images[:1]
    flipped = torch.flip(img, dims=[3])
    pixels = img.unfold(2, 16, 16).unfold(3, 16, 16).reshape(1, 3, G * G, 16, 16)
    flipped_pixels = flipped.unfold(2, 16, 16).unfold(3, 16, 16).reshape(1, 3, G * G, 16, 16)
    for p in index[0].tolist():
        q = int(flip_indices(np.array([p]), G)[0])
        torch.testing.assert_close(flipped_pixels[0, :, q], torch.flip(pixels[0, :, p], dims=[-1]))
    # And the gather reads the flipped image at those flipped positions, in ascending order.
    full = _tokens_entering_ln_pre(model, flipped)
    kept = _tokens_entering_ln_pre(model, flipped, flipped_index)
    torch.testing.assert_close(kept[0, 1:], full[0, 1 + flipped_index[0]], atol=0, rtol=0)
    assert torch.all(flipped_index[0].diff() > 0)


@pytest.mark.parametrize("pool_type", ["tok", "avg"])
def test_variable_lengths_do_not_leak_between_batch_mates(images, pool_type):
    model = create_model(tiny(pool_type), seed=2).eval()
    lengths = [98, 40, 1, 196]
    rng = np.random.default_rng(1)
    rows = [np.sort(rng.choice(G * G, n, replace=False)) for n in lengths]
    padded = torch.full((4, max(lengths)), -1, dtype=torch.long)
    for b, r in enumerate(rows):
        padded[b, : len(r)] = torch.from_numpy(r)
    with torch.no_grad():
        together = encode_image_kept(model, images, padded, buckets=1)  # one call, padded to 196
        bucketed = encode_image_kept(model, images, padded, buckets=2)  # sorted by length, two calls
        alone = torch.cat(
            [encode_image_kept(model, images[b : b + 1], padded[b : b + 1, : lengths[b]]) for b in range(4)]
        )
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(bucketed, alone, atol=1e-5, rtol=0)  # same features, same order


def test_padding_positions_and_mask():
    idx = torch.tensor([[3, 7, -1], [1, 2, 5]])
    token_index, pad = token_positions(idx)
    assert token_index.tolist() == [[0, 4, 8, 4], [0, 2, 3, 6]]
    assert pad.tolist() == [[False, False, False, True], [False, False, False, False]]
    assert token_positions(torch.tensor([[1, 2]]))[1] is None  # no padding: no mask, fast attention path


def test_wrapper_trains_through_kept_patches(images):
    clip = create_model(tiny(), seed=0)
    model = KeptPatchCLIP(clip).train()
    text = torch.randint(1, 1000, (4, 16))
    index = torch.arange(98).expand(4, -1)
    image_f, text_f, scale = model(images, text, index)
    (image_f @ text_f.T * scale).logsumexp(1).mean().backward()
    assert clip.visual.conv1.weight.grad is not None and clip.visual.conv1.weight.grad.abs().sum() > 0
    # The checkpointable state is the stock open_clip one (no wrapper prefix, no extra parameters).
    assert set(clip.state_dict()) == set(create_model(tiny(), seed=0).state_dict())


def test_rejects_a_tower_without_patch_embedding():
    with pytest.raises(TypeError, match="VisionTransformer"):
        install(torch.nn.Linear(2, 2))
