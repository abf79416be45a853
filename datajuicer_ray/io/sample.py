"""The dry run's embedded sample: real photos from scikit-image, written as img2dataset-style Parquet.

Captions are written the way web alt-text is (misspelt, vague, shouty) so the text branch has something to
do. The sample also carries the cases a LAION shard always has: a failed download, truncated bytes, and
the image formats img2dataset passes through untouched (PNG with alpha, palette GIF, WebP, CMYK JPEG,
16-bit PNG, EXIF rotation), so one dry run shows every path through the decoder.

The sample is built once into the cache (``cache.cache_dir()/sample/``), never into ``input.path``: a run
writes nothing outside its output but what it can rebuild. With ``input.format=sample`` there is no
``input.path`` at all; one that is set is a user's data (the dry-run config pointed at a real folder) and
the preflight refuses it rather than curate a synthetic file beside (or instead of) their rows.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from datajuicer_ray.cache import cache_dir

# Bump when the rows change: a table resumed across versions must not see another file under the same name.
SAMPLE_VERSION = 2
SAMPLE_FILE = "sample.parquet"

# (skimage name, caption)
PHOTOS = [
    ("astronaut", "a astronaut posing infront of a flag, nasa photo"),
    ("chelsea", "my cat chelsea!!! so cute"),
    ("coffee", "coffe cup on saucer, morning"),
    ("rocket", "rocket on launch pad before lift off"),
    ("hubble_deep_field", "space picture with lots of galaxys"),
    ("immunohistochemistry", "microscope slide stained tissue"),
    ("coins", "old coins collection, grey"),
    ("camera", "man with camera on tripod, black and white"),
    ("moon", "the moon surface craters"),
    ("page", "scanned page of text from a book"),
    ("brick", "brick wall texture background"),
    ("grass", "green grass texture"),
    ("gravel", "gravel stones close up"),
    ("colorwheel", "colour wheel"),
    ("retina", "eye retina scan image"),
    ("cat", "CAT SITTING ON THE FLOOR LOOKING AT CAMERA"),
]

FORMATS = ("jpeg", "png", "webp")


def _photo(name: str) -> Image.Image:
    import skimage.data

    arr = getattr(skimage.data, name)()
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    return Image.fromarray(arr)


def _encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt.upper(), **kwargs)
    return buf.getvalue()


def _variants() -> list[tuple[str, bytes | None, str, str | None]]:
    """(caption, image bytes, img2dataset status, error message)."""
    rows = []
    for i, (name, caption) in enumerate(PHOTOS):
        img = _photo(name)
        fmt = FORMATS[i % len(FORMATS)]
        rows.append((caption, _encode(img.convert("RGB") if fmt == "jpeg" else img, fmt), "success", None))
    astro, cat, coffee, rocket = (_photo(n) for n in ("astronaut", "chelsea", "coffee", "rocket"))
    # A photo taken sideways: stored rotated, with EXIF orientation 6 saying how to show it.
    exif = Image.Exif()
    exif[0x0112] = 6
    rows.append(
        (
            "astronaut portrait, rotated camera",
            _encode(astro.rotate(90, expand=True), "jpeg", exif=exif),
            "success",
            None,
        )
    )
    rows.append(("cat on a transparent background", _encode(_with_alpha(cat), "png"), "success", None))
    rows.append(("coffee cup, cmyk print scan", _encode(coffee.convert("CMYK"), "jpeg"), "success", None))
    rows.append(
        ("rocket, gif", _encode(rocket.convert("P", palette=Image.Palette.ADAPTIVE), "gif"), "success", None)
    )
    rows.append(("moon, 16-bit scan", _encode(_sixteen_bit(_photo("moon")), "png"), "success", None))
    rows.append(
        ("a wide panorama of the coffee table", _encode(coffee.resize((900, 300)), "webp"), "success", None)
    )
    good = _encode(rocket.convert("RGB"), "jpeg")
    rows.append(("rocket photo (download cut off)", good[: len(good) // 3], "success", None))
    rows.append(("beautiful sunset over the sea", None, "failed_to_download", "HTTP Error 404: Not Found"))
    rows.append(("not an image at all", b"<html>Access denied</html>", "success", None))
    return rows


def _with_alpha(img: Image.Image) -> Image.Image:
    rgba = img.convert("RGBA")
    alpha = np.zeros(rgba.size[::-1], dtype=np.uint8)
    h, w = alpha.shape
    alpha[h // 8 : 7 * h // 8, w // 8 : 7 * w // 8] = 255
    rgba.putalpha(Image.fromarray(alpha))
    return rgba


def _sixteen_bit(img: Image.Image) -> Image.Image:
    arr = np.asarray(img.convert("L"), dtype=np.uint16) * 257
    return Image.fromarray(arr)


def sample_path(rows: int) -> Path:
    """Where the sample of ``rows`` rows lives (one file per version and size: the same bytes each time)."""
    return cache_dir() / "sample" / f"v{SAMPLE_VERSION}-{rows}rows" / SAMPLE_FILE


def write_sample(rows: int = 24) -> Path:
    """Build ``sample.parquet`` (img2dataset columns) in the cache once: every variant, repeated up to
    ``rows`` rows. An existing one is left alone, so a resumed dry run reads the very file it committed."""
    path = sample_path(rows)
    if path.exists():
        return path
    base = _variants()
    table_rows = [base[i % len(base)] for i in range(max(rows, len(base)))]
    n = len(table_rows)
    table = pa.table(
        {
            "key": [f"{i:09d}" for i in range(n)],
            "caption": [r[0] for r in table_rows],
            "jpg": pa.array([r[1] for r in table_rows], pa.binary()),
            "url": [f"https://example.org/sample/{i}" for i in range(n)],
            "status": [r[2] for r in table_rows],
            "error_message": [r[3] for r in table_rows],
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    # Two dry runs may build it at once: each writes its own temporary file and the rename is atomic.
    tmp = path.with_name(f".{SAMPLE_FILE}.{os.getpid()}.tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)
    return path
