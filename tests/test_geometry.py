"""Patch-grid geometry: canonical view, area resampling onto the target grid, top-k, flips."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from datajuicer_ray.vision.geometry import (
    area_resample_matrix,
    canonical_view,
    flip_indices,
    keep_count,
    resample_scores,
    top_k_indices,
)


@pytest.mark.parametrize("size", [(640, 427), (300, 451), (224, 224), (100, 50), (3000, 224)])
def test_canonical_view_is_a_centred_square(size):
    img = Image.new("RGB", size, (0, 0, 0))
    # a white column in the middle must stay in the middle of the crop
    arr = np.zeros((size[1], size[0], 3), np.uint8)
    arr[:, size[0] // 2 - 2 : size[0] // 2 + 2] = 255
    img = Image.fromarray(arr)
    view = canonical_view(img, 224)
    assert view.size == (224, 224)
    cols = np.asarray(view)[:, :, 0].mean(axis=0)
    centroid = float((cols * np.arange(224)).sum() / cols.sum())
    assert abs(centroid - 111.5) <= 2


def test_resample_matrix_is_exact_area_weighting():
    r = area_resample_matrix(16, 14)
    assert r.shape == (14, 16)
    np.testing.assert_allclose(r.sum(axis=1), 1.0)
    # target cell 0 covers source [0, 16/14): all of cell 0 and 1/7 of cell 1
    np.testing.assert_allclose(r[0, :2], [1 / (16 / 14), (16 / 14 - 1) / (16 / 14)])
    # every source cell contributes the same total area (16/14 target widths ... scaled)
    np.testing.assert_allclose(r.sum(axis=0), np.full(16, 14 / 16))


def test_dinov2_map_onto_vit16_grid_keeps_mass_and_position():
    m = np.zeros((16, 16))
    m[15, 15] = 1.0  # bottom-right scorer patch
    out = resample_scores(m, 14)
    assert out.shape == (14, 14)
    # mean is preserved by area resampling
    assert out.mean() == pytest.approx(m.mean())
    assert np.unravel_index(np.argmax(out), out.shape) == (13, 13)
    assert out[:12, :].sum() == 0 and out[:, :12].sum() == 0
    constant = resample_scores(np.full((16, 16), 0.25), 14)
    np.testing.assert_allclose(constant, 0.25)


def test_top_k_on_a_hand_made_map():
    m = np.zeros((4, 4))
    m[0, 3], m[2, 1], m[3, 3], m[1, 1] = 0.9, 0.8, 0.7, 0.6
    np.testing.assert_array_equal(top_k_indices(m, 3), [3, 9, 15])
    idx = top_k_indices(m, keep_count(0.5, 4))
    assert len(idx) == 8 and list(idx) == sorted(set(idx.tolist()))
    # ties go to the lower index: deterministic
    np.testing.assert_array_equal(top_k_indices(np.ones((3, 3)), 4), [0, 1, 2, 3])
    assert top_k_indices(m, 0).size == 0 and top_k_indices(m, 99).size == 16


def test_flip_mirrors_columns_and_is_an_involution():
    g = 14
    idx = np.array([0, 13, 14, 100, 195], np.int16)
    flipped = flip_indices(idx, g)
    assert sorted(flipped.tolist()) == sorted([13, 0, 27, 109, 182])
    np.testing.assert_array_equal(flip_indices(flipped, g), idx)
    # the flipped indices name the same pixels of the flipped image
    img = np.random.RandomState(0).rand(g, g)
    assert np.allclose(np.sort(img.reshape(-1)[idx]), np.sort(img[:, ::-1].reshape(-1)[flipped]))


def test_mass_retention_keeps_more_of_a_flat_map_than_of_a_peaked_one():
    from datajuicer_ray.vision.geometry import mass_keep_count

    flat = np.ones((14, 14))
    peaked = np.full((14, 14), 0.01)
    peaked[5:8, 5:8] = 10.0  # nine cells hold ~98% of the mass
    assert mass_keep_count(flat, 0.6, 20, 176) == round(0.6 * 196)
    assert mass_keep_count(peaked, 0.6, 1, 196) <= 9
    assert mass_keep_count(peaked, 0.6, 20, 176) == 20  # clamped from below
    assert mass_keep_count(flat, 0.99, 20, 176) == 176  # and from above
    k = mass_keep_count(peaked, 0.6, 1, 196)
    kept = top_k_indices(peaked, k)
    assert peaked.reshape(-1)[kept].sum() / peaked.sum() >= 0.6
    assert peaked.reshape(-1)[top_k_indices(peaked, k - 1)].sum() / peaked.sum() < 0.6  # the fewest


def test_geometry_from_the_config_and_back_from_the_run_record():
    from datajuicer_ray.config import VisionConfig
    from datajuicer_ray.vision.geometry import Geometry

    geo = Geometry.from_vision(VisionConfig(image_size=112, patch_size=14, keep_ratio=0.25))
    assert (geo.grid, geo.cells, geo.keep_count, geo.keep(0.5)) == (8, 64, 16, 32)
    run = {"geometry": {**geo.record(), "keep_ratio": 0.25, "retention": "fixed"}}
    assert Geometry.from_record(run, "t") == geo


@pytest.mark.parametrize(
    ("run", "error", "message"),
    [
        ({}, FileNotFoundError, "t: no run record"),  # never a guess at 224/16
        ({"geometry": {}}, FileNotFoundError, "t: no run record"),
        ({"geometry": {"S": 224}}, ValueError, "unusable"),
        ({"geometry": {"S": 224, "P": 16, "G": 16}}, ValueError, "G=16 but S/P = 14"),
        ({"geometry": {"S": 230, "P": 16, "G": 14}}, ValueError, "S=230 is not a positive multiple of P=16"),
    ],
)
def test_a_table_without_a_usable_geometry_is_an_error(run, error, message):
    from datajuicer_ray.vision.geometry import Geometry

    with pytest.raises(error, match=message):
        Geometry.from_record(run, "t")
