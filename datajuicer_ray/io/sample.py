"""The dry run's embedded sample: real photos from scikit-image, written as img2dataset-style Parquet.

Captions are written the way web alt-text is (misspelt, vague, shouty) so the text branch has something to
do. The sample also carries the cases a LAION shard always has: a failed download, truncated bytes, and
the image formats img2dataset passes through untouched (PNG with alpha, palette GIF, WebP, CMYK JPEG,
16-bit PNG, EXIF rotation), so one dry run shows every path through the decoder.

The sample is written into a folder of its own: ``input.path`` when it is missing or holds nothing but our
sample. A folder with other files in it is a user's data (the dry-run config with a real ``input.path``):
writing a synthetic file there would change their data and mix fake rows into the real ones, so it is refused.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from datajuicer_ray.config import ConfigError

SAMPLE_FILE = "sample.parquet"
_TMP_FILE = ".sample.parquet.tmp"  # left by a write that was killed: ours too

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


def _foreign_entries(path: Path) -> list[str]:
    """What a folder holds besides our sample (a missing folder holds nothing)."""
    if not path.is_dir():
        return []
    return sorted(p.name for p in path.iterdir() if p.name not in (SAMPLE_FILE, _TMP_FILE))


def folder_problem(folder: object) -> tuple[str, str] | None:
    """Why the sample must not be written at ``folder`` as (what is wrong, how to fix it); None: it may."""
    if not isinstance(folder, (str, Path)) or any(ch in str(folder) for ch in "*?["):
        return (
            f"input.format=sample writes its sample into one folder of its own, not {folder!r}",
            "give input.path one new folder, or set input.format=parquet to curate these files",
        )
    if "://" in str(folder):
        return (f"{folder} is not local; the dry run's sample is a local folder", "give a local folder")
    path = Path(folder)
    if path.exists() and not path.is_dir():
        return (f"{folder} is a file", "give input.format=sample a folder of its own")
    foreign = _foreign_entries(path)
    if foreign:
        more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
        return (
            f"{folder} holds files that are not the dry run's sample ({foreign[0]!r}{more}), and "
            "input.format=sample would write a synthetic sample.parquet among them",
            "set input.format=parquet (or webdataset) to curate these files, or give input.path a new folder",
        )
    return None


def write_sample(folder: str | Path, rows: int = 24) -> Path:
    """Write ``sample.parquet`` (img2dataset columns) once: every variant, repeated up to ``rows`` rows.

    Refuses (ConfigError) a folder that holds anything else: nothing outside the output is ever changed."""
    problem = folder_problem(folder)
    if problem:
        raise ConfigError(f"input.path: {problem[0]}; {problem[1]}")
    folder = Path(folder)
    path = folder / SAMPLE_FILE
    if path.exists():  # same bytes every time; leaving it alone keeps a resumed dry run's input unchanged
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
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / _TMP_FILE
    pq.write_table(table, tmp)
    tmp.replace(path)
    return path
