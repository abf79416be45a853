"""Batch decode on the scorer's device: JPEGs through ``torchvision.io.decode_jpeg`` (nvJPEG on CUDA) in one
call, everything else through the CPU decoder, with the same row statuses as ``decode.Decoder``.

A row goes to the device only when the CPU decoder would accept it and the device decoder can be trusted
to give the same picture: JPEG magic and end-of-image marker, a header Pillow reads within the limits
(so ``too_large`` is still decided before any pixel is decoded), baseline (not progressive), YCbCr or
greyscale (not CMYK/YCCK). Every other row (PNG, WebP, GIF, CMYK or progressive JPEG, truncated or
undecodable bytes) goes to ``canonical_pixels`` row by row and gets exactly its status and error; so does
a row the device decoder rejects. EXIF orientation is read from the header and applied on the device.

The canonical view is built on the device as ``geometry.canonical_view`` builds it: shorter side to S with
the same rounding, bicubic with antialias, centre crop. Pillow resizes in two passes (horizontal, then
vertical) with 8-bit rounding in between; doing the same keeps the result within 1-2 levels of Pillow's on
the same decoded pixels. What still differs from the CPU view is the decoding: the CPU decoder reduces
large JPEGs in the DCT domain (``decode.DRAFT_MARGIN``), the device decodes at full size, and nvJPEG's
IDCT and chroma upsampling are not libjpeg-turbo's (tests/test_gpu_decode.py measures the agreement).
"""

from __future__ import annotations

import warnings
from collections import Counter

import numpy as np
import torch
import torch.nn.functional as F
from PIL import ExifTags, Image

from datajuicer_ray.config import VisionConfig
from datajuicer_ray.io import schema
from datajuicer_ray.vision.decode import (
    ORIENTATIONS,
    RowRejected,
    canonical_pixels,
    open_header,
    reason,
    upstream_rejection,
)
from datajuicer_ray.vision.device_faults import is_device_fault

# torchvision 0.29 deprecates its image codecs in favour of TorchCodec; decode_jpeg still works and is the
# batched nvJPEG entry point we use. The warning would repeat for every batch of every actor.
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision")

JPEG_MAGIC = b"\xff\xd8\xff"
JPEG_EOI = b"\xff\xd9"
DEVICE_MODES = ("RGB", "L")  # Pillow's mode for YCbCr and greyscale JPEGs; CMYK/YCCK stay on the CPU


def _reraise_device_fault(err: Exception) -> None:
    """A broken device fails every later call too: its errors are raised, not sent to the CPU decoder, so
    the scorer restarts the actor. Out of memory is not one of them: those rows go to the CPU decoder."""
    if is_device_fault(err):
        raise err


def _t(method: Image.Transpose | None):
    """The tensor op ([..., H, W]) that equals ``Image.transpose(method)``."""
    t = Image.Transpose
    return {
        None: lambda x: x,
        t.FLIP_LEFT_RIGHT: lambda x: x.flip(-1),
        t.FLIP_TOP_BOTTOM: lambda x: x.flip(-2),
        t.ROTATE_180: lambda x: x.flip(-2, -1),
        t.ROTATE_90: lambda x: torch.rot90(x, 1, dims=(-2, -1)),  # counter-clockwise
        t.ROTATE_270: lambda x: torch.rot90(x, -1, dims=(-2, -1)),  # clockwise
        t.TRANSPOSE: lambda x: x.transpose(-2, -1),
        t.TRANSVERSE: lambda x: x.transpose(-2, -1).flip(-2, -1),
    }[method]


def device_route(data: bytes, header: Image.Image) -> tuple[bool, Image.Transpose | None]:
    """(goes to the device, EXIF transpose to apply there) for bytes whose header passed the limits."""
    # The tail only: some servers pad with NULs, and a copy of the whole file per row is waste.
    if not data.startswith(JPEG_MAGIC) or not data[-64:].rstrip(b"\x00").endswith(JPEG_EOI):
        return False, None  # not a JPEG, or truncated: the CPU decoder says what is wrong
    if header.format != "JPEG" or header.mode not in DEVICE_MODES:
        return False, None  # MPO (several pictures), CMYK/YCCK
    if header.info.get("progressive") or header.info.get("progression"):
        return False, None  # nvJPEG's batched decoder takes baseline JPEGs
    try:
        orientation = header.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # noqa: BLE001 - a broken EXIF block: let the CPU decoder judge the row
        return False, None
    return True, ORIENTATIONS.get(orientation)


def _resize_axis(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    x = F.interpolate(x, size=(h, w), mode="bicubic", antialias=True, align_corners=False)
    return x.round_().clamp_(0, 255)


def device_view(img: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 [3, h, w] upright -> the canonical view, uint8 [size, size, 3], on the same device."""
    h, w = img.shape[-2:]
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    x = img.unsqueeze(0).float()
    # Pillow's order and rounding: horizontal pass, 8-bit, vertical pass.
    if nw != w:
        x = _resize_axis(x, h, nw)
    if nh != h:
        x = _resize_axis(x, nh, nw)
    left, top = (nw - size) // 2, (nh - size) // 2
    crop = x[0, :, top : top + size, left : left + size]
    return crop.to(torch.uint8).permute(1, 2, 0)


class GpuDecoder:
    """``decoder(images, up_status, up_error) -> (views, statuses, errors)``.

    ``views`` is uint8 [n_ok, S, S, 3] (numpy) for the rows whose status is ``ok``, in row order;
    ``statuses``/``errors`` have one entry per row, as ``decode.Decoder.decode_one`` gives them.
    ``decode()`` is the same but leaves ``views`` as a tensor on the device, for a scorer on that device.
    ``counts`` tallies where rows went: ``device``, ``cpu``, ``device_failed`` (sent to the CPU after the
    device decoder rejected them), ``batch_failed`` (batches the device decoder rejected as a whole).
    """

    def __init__(
        self,
        size: int,
        device: str = "cuda",
        max_pixels: int = VisionConfig.max_pixels,
        max_bytes: int = VisionConfig.max_image_bytes,
    ):
        from torchvision.io import decode_jpeg

        self.size = size
        self.device = torch.device(device)
        self.max_pixels = max_pixels
        self.max_bytes = max_bytes
        self.decode_jpeg = decode_jpeg  # an attribute so tests can make the device decoder fail
        self.counts: Counter[str] = Counter()

    @classmethod
    def from_config(cls, vision: VisionConfig, device: str) -> GpuDecoder:
        return cls(vision.image_size, device, vision.max_pixels, vision.max_image_bytes)

    def __call__(self, images, up_status, up_error) -> tuple[np.ndarray, list[str], list[str | None]]:
        views, statuses, errors = self.decode(images, up_status, up_error)
        return views.cpu().numpy(), statuses, errors

    def decode(self, images, up_status, up_error) -> tuple[torch.Tensor, list[str], list[str | None]]:
        n = len(images)
        statuses: list[str] = [schema.OK] * n
        errors: list[str | None] = [None] * n
        views: dict[int, torch.Tensor] = {}
        on_device: dict[int, Image.Transpose | None] = {}
        on_cpu: list[int] = []
        for i, (data, s, e) in enumerate(zip(images, up_status, up_error)):
            rejected = upstream_rejection(s, e)
            if rejected is None:
                rejected = self._header(data, on_device, on_cpu, i)
            if rejected is not None:
                statuses[i], errors[i] = rejected.status, rejected.error
        on_cpu += self._decode_on_device(images, on_device, views)
        for i in sorted(on_cpu):
            self._decode_on_cpu(images[i], i, views, statuses, errors)
        ok = [views[i] for i in range(n) if statuses[i] == schema.OK]
        empty = torch.empty((0, self.size, self.size, 3), dtype=torch.uint8, device=self.device)
        return (torch.stack(ok) if ok else empty), statuses, errors

    # -- routing ---------------------------------------------------------------------------

    def _header(self, data, on_device: dict, on_cpu: list, i: int) -> RowRejected | None:
        """Apply the header limits (nothing decoded yet) and pick the row's decoder."""
        try:
            header = open_header(data, self.max_pixels, self.max_bytes)
        except RowRejected as err:
            return err
        device, method = device_route(data, header)
        if device:
            on_device[i] = method
        else:
            on_cpu.append(i)
        return None

    # -- decoding --------------------------------------------------------------------------

    def _decode_on_device(self, images, rows: dict, views: dict) -> list[int]:
        """Decode the device rows in one batched call, or row by row if the batch fails; returns the
        rows the device decoder rejected (for the CPU decoder)."""
        if not rows:
            return []
        order = list(rows)
        raw = [torch.frombuffer(bytearray(images[i]), dtype=torch.uint8) for i in order]
        try:
            decoded = self._jpeg(raw)
        except Exception as err:  # noqa: BLE001 - one bad JPEG fails nvJPEG's whole batch
            _reraise_device_fault(err)
            self.counts["batch_failed"] += 1
            decoded = [self._jpeg_one(r) for r in raw]
        failed = []
        for i, img in zip(order, decoded):
            view = None if img is None else self._view(img, rows[i])
            if view is None:
                failed.append(i)
                continue
            views[i] = view
            self.counts["device"] += 1
        self.counts["device_failed"] += len(failed)
        return failed

    def _view(self, img: torch.Tensor, method: Image.Transpose | None) -> torch.Tensor | None:
        try:
            return device_view(_t(method)(img), self.size)
        except Exception as err:  # noqa: BLE001 - an odd shape must not fail the batch: the CPU decides
            _reraise_device_fault(err)
            return None

    def _jpeg(self, raw: list[torch.Tensor]) -> list[torch.Tensor]:
        from torchvision.io import ImageReadMode

        return self.decode_jpeg(raw, mode=ImageReadMode.RGB, device=self.device)

    def _jpeg_one(self, raw: torch.Tensor) -> torch.Tensor | None:
        try:
            return self._jpeg([raw])[0]
        except Exception as err:  # noqa: BLE001 - the CPU decoder gives the row its status
            _reraise_device_fault(err)
            return None

    def _decode_on_cpu(self, data, i: int, views: dict, statuses: list, errors: list) -> None:
        """``canonical_pixels``, with ``Decoder.decode_one``'s statuses."""
        self.counts["cpu"] += 1
        try:
            pixels = canonical_pixels(data, self.size, self.max_pixels, self.max_bytes)
        except RowRejected as err:
            statuses[i], errors[i] = err.status, err.error
            return
        except Exception as err:  # noqa: BLE001 - any surprise stays in its row
            statuses[i], errors[i] = schema.DECODE_ERROR, reason(err)
            return
        views[i] = torch.tensor(pixels, device=self.device)  # a copy: Pillow's array is read-only
