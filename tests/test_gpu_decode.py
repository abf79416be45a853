"""The device decoder's logic on CPU (torchvision's decode_jpeg runs on CPU too): which rows go to the
device, the fallbacks, row statuses identical to the CPU Decoder's, and pixels close enough to the CPU
canonical view that the kept patches agree."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from datajuicer_ray.config import VisionConfig
from datajuicer_ray.io.columns import IMAGE_COL, UPSTREAM_ERROR_COL, UPSTREAM_STATUS_COL
from datajuicer_ray.vision.decode import ORIENTATIONS, Decoder, canonical_pixels
from datajuicer_ray.vision.gpu_decode import GpuDecoder, _t, device_view

S = 224


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def photo(w: int = 480, h: int = 320, name: str = "astronaut") -> Image.Image:
    import skimage.data

    return (
        Image.fromarray(getattr(skimage.data, name)()).convert("RGB").resize((w, h), Image.Resampling.BICUBIC)
    )


def cpu_decoder_rows(images, statuses, errors):
    """What the CPU Decoder makes of the same rows: (statuses, errors, views of ok rows)."""
    batch = pa.table(
        {
            IMAGE_COL: pa.array(images, pa.binary()),
            UPSTREAM_STATUS_COL: pa.array(statuses, pa.string()),
            UPSTREAM_ERROR_COL: pa.array(errors, pa.string()),
        }
    )
    out = Decoder(VisionConfig())(batch)
    st, er = out.column("status").to_pylist(), out.column("error").to_pylist()
    views = [np.frombuffer(p, np.uint8).reshape(S, S, 3) for p in out.column("_pixels").to_pylist() if p]
    return st, er, views


def header_bomb(w: int, h: int) -> bytes:
    data = bytearray(encode(Image.new("RGB", (64, 48), (9, 9, 9)), "JPEG"))
    at = data.find(b"\xff\xc0")
    data[at + 5 : at + 9] = h.to_bytes(2, "big") + w.to_bytes(2, "big")
    return bytes(data)


def mixed_rows():
    g = photo()
    jpeg = encode(g, "JPEG", quality=90)
    rows = [
        ("jpeg", jpeg, None, None),
        ("jpeg_gray", encode(g.convert("L"), "JPEG"), "success", None),
        ("png", encode(g, "PNG"), None, None),
        ("webp", encode(g, "WEBP"), None, None),
        ("gif", encode(g.convert("P", palette=Image.Palette.ADAPTIVE), "GIF"), None, None),
        ("cmyk", encode(g.convert("CMYK"), "JPEG"), None, None),
        ("progressive", encode(g, "JPEG", progressive=True), None, None),
        ("truncated", jpeg[: len(jpeg) // 2], None, None),
        ("html", b"<html>403 Forbidden</html>", None, None),
        ("magic_only", b"\xff\xd8\xff" + b"\x00" * 50 + b"\xff\xd9", None, None),
        ("empty", b"", None, None),
        ("none", None, None, None),
        ("bomb", header_bomb(30000, 30000), None, None),
        ("upstream", None, "failed_to_download", "HTTP Error 404: Not Found"),
        ("big_jpeg", encode(photo(1600, 1100), "JPEG", quality=90), None, None),
    ]
    names, images, statuses, errors = zip(*rows)
    return list(names), list(images), list(statuses), list(errors)


def test_rows_route_by_format_and_statuses_match_the_cpu_decoder():
    names, images, statuses, errors = mixed_rows()
    dec = GpuDecoder(S, device="cpu")
    views, got_status, got_error = dec(images, statuses, errors)
    want_status, want_error, want_views = cpu_decoder_rows(images, statuses, errors)
    assert got_status == want_status and got_error == want_error
    assert dict(zip(names, got_status))["bomb"] == "too_large"
    assert views.dtype == np.uint8 and views.shape == (len(want_views), S, S, 3)
    # baseline YCbCr/grey JPEGs on the device; everything else the header let through on the CPU
    assert dec.counts["device"] == 3  # jpeg, jpeg_gray, big_jpeg
    assert dec.counts["cpu"] == 6  # png, webp, gif, cmyk, progressive, truncated
    # JPEG magic and end marker but no readable header: rejected by the header check, decoded nowhere
    assert dict(zip(names, got_status))["magic_only"] == "decode_error"
    assert dec.counts["batch_failed"] == 0 and dec.counts["device_failed"] == 0
    for got, want in zip(views, want_views):
        assert np.abs(got.astype(int) - want.astype(int)).mean() < 2.0


def test_too_large_is_decided_from_the_header_before_any_decoding(monkeypatch):
    from PIL import ImageFile

    calls = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: calls.append("pillow"))
    dec = GpuDecoder(S, device="cpu", max_pixels=4_000_000)
    dec.decode_jpeg = lambda raw, **kw: calls.append("device")
    _, status, error = dec([header_bomb(5000, 4000), header_bomb(30000, 30000)], [None] * 2, [None] * 2)
    assert status == ["too_large", "too_large"] and calls == []
    assert "vision.max_pixels=4000000" in error[0] and "decompression bomb" in error[1].lower()


def test_a_failed_batch_falls_back_row_by_row(monkeypatch):
    from torchvision.io import decode_jpeg

    good = [encode(photo(400 + 40 * i, 300), "JPEG", quality=90) for i in range(3)]
    seen = []

    def flaky(raw, **kw):  # the batch fails; alone, the second row still fails
        seen.append(len(raw))
        if len(raw) > 1 or bytes(raw[0].numpy()) == good[1]:
            raise RuntimeError("nvjpeg: unsupported")
        return decode_jpeg(raw, **kw)

    dec = GpuDecoder(S, device="cpu")
    dec.decode_jpeg = flaky
    views, status, error = dec(good, [None] * 3, [None] * 3)
    assert status == ["ok"] * 3 and error == [None] * 3 and seen == [3, 1, 1, 1]
    assert dec.counts == {"batch_failed": 1, "device": 2, "device_failed": 1, "cpu": 1}
    reference = np.stack([canonical_pixels(d, S) for d in good])
    assert np.array_equal(views[1], reference[1])  # the CPU decoder's own view
    assert np.abs(views.astype(int) - reference.astype(int)).mean() < 1.0


def test_empty_and_all_rejected_batches():
    dec = GpuDecoder(S, device="cpu")
    views, status, error = dec([], [], [])
    assert views.shape == (0, S, S, 3) and status == [] and error == []
    views, status, _ = dec([None, b"x"], [None, "failed_to_download"], [None, None])
    assert views.shape == (0, S, S, 3) and status == ["empty", "upstream:failed_to_download"]


def test_decode_keeps_views_on_the_device():
    dec = GpuDecoder(S, device="cpu")
    views, status, _ = dec.decode([encode(photo(), "JPEG")], [None], [None])
    assert isinstance(views, torch.Tensor) and views.dtype == torch.uint8 and views.shape == (1, S, S, 3)
    assert views.device == torch.device("cpu") and status == ["ok"]


@pytest.mark.parametrize("method", list(Image.Transpose))
def test_tensor_transposes_match_pillow(method):
    arr = np.random.default_rng(0).integers(0, 255, (5, 7, 3), dtype=np.uint8)
    want = np.asarray(Image.fromarray(arr).transpose(method))
    got = _t(method)(torch.from_numpy(arr).permute(2, 0, 1)).permute(1, 2, 0).numpy()
    assert np.array_equal(got, want)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_on_the_device(orientation):
    upright = photo(520, 360)
    undo = {6: 8, 8: 6}
    stored = (
        upright.transpose(ORIENTATIONS[undo.get(orientation, orientation)]) if orientation > 1 else upright
    )
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(stored, "JPEG", quality=95, exif=exif)
    dec = GpuDecoder(S, device="cpu")
    views, status, _ = dec([data], [None], [None])
    assert status == ["ok"] and dec.counts["device"] == 1
    cpu = canonical_pixels(data, S).astype(int)
    assert np.abs(views[0].astype(int) - cpu).mean() < 1.0


@pytest.mark.parametrize(("w", "h"), [(451, 300), (300, 451), (224, 224), (100, 80), (1000, 999)])
def test_device_view_is_pillows_canonical_view(w, h):
    from datajuicer_ray.vision.geometry import canonical_view

    img = photo(w, h, "chelsea")
    want = np.asarray(canonical_view(img, S)).astype(int)
    got = device_view(torch.from_numpy(np.array(img)).permute(2, 0, 1), S).numpy().astype(int)
    diff = np.abs(got - want)
    assert diff.max() <= 2 and diff.mean() < 0.05


def test_kept_patches_agree_with_the_cpu_canonical_view():
    """Web-sized JPEGs (longer side 400-2,000 px) decoded both ways and scored by the tiny DINO: the kept
    patches must agree (IoU >= 0.97). Large ones differ most: the CPU decodes them in the DCT domain."""
    from benchmarks.bench_decode import corpus, iou, kept
    from datajuicer_ray.vision.scorer import PatchScorer

    data = [d for d, _ in corpus(24)]
    dec = GpuDecoder(S, device="cpu")
    views, status, _ = dec(data, [None] * len(data), [None] * len(data))
    assert status == ["ok"] * len(data) and dec.counts["device"] == len(data)
    cpu = np.stack([canonical_pixels(d, S) for d in data])
    pixel = float(np.abs(views.astype(int) - cpu.astype(int)).mean())
    scorer = PatchScorer(VisionConfig(model="tiny-random-dino", device="cpu"))
    ious = [iou(a, b) for a, b in zip(kept(scorer, views), kept(scorer, cpu))]
    print(f"\ndevice vs CPU view: mean |pixel difference| {pixel:.3f}, kept-patch IoU mean "
          f"{np.mean(ious):.4f} min {min(ious):.3f} over {len(data)} images")  # fmt: skip
    assert pixel < 2.0
    assert np.mean(ious) >= 0.97


def test_a_broken_device_is_raised_not_routed_to_the_cpu():
    def broken(raw, **kw):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    dec = GpuDecoder(S, device="cpu")
    dec.decode_jpeg = broken
    with pytest.raises(RuntimeError, match="CUDA error"):
        dec([encode(photo(), "JPEG")], [None], [None])


def test_out_of_memory_on_the_device_sends_the_rows_to_the_cpu_decoder():
    """Not a broken device: a batch too big for the device's memory is decoded by the CPU decoder."""

    def full(raw, **kw):
        raise RuntimeError("CUDA error: out of memory")

    dec = GpuDecoder(S, device="cpu")
    dec.decode_jpeg = full
    views, statuses, _ = dec([encode(photo(), "JPEG"), encode(photo(), "JPEG")], [None, None], [None, None])
    assert statuses == ["ok", "ok"] and len(views) == 2 and dec.counts["cpu"] == 2


def test_a_device_fault_while_decoding_restarts_the_scorer_actor(monkeypatch):
    """The scorer decoding on its device (vision.decode=gpu) treats a fault of the decoder as a broken
    device, as it does one of the model: the actor exits for Ray to restart it, no row is marked."""
    from datajuicer_ray.vision.scorer import PatchScorer

    scorer = PatchScorer(VisionConfig(model="tiny-random-dino", device="cpu"), decode_on_device=True)

    def broken(raw, **kw):
        raise RuntimeError("Failed to synchronize CUDA stream: 700")

    scorer.gpu_decoder.decode_jpeg = broken

    class Restarted(Exception):
        pass

    def restart(err):
        raise Restarted(str(err))

    monkeypatch.setattr(scorer, "_restart", restart)
    batch = pa.table(
        {
            "key": ["a"],
            "caption": ["x"],
            IMAGE_COL: pa.array([encode(photo(), "JPEG")], pa.binary()),
            UPSTREAM_STATUS_COL: pa.array([None], pa.string()),
            UPSTREAM_ERROR_COL: pa.array([None], pa.string()),
        }
    )
    with pytest.raises(Restarted, match="synchronize CUDA stream"):
        scorer(batch)
