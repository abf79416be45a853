"""Input files in the layouts our users have: img2dataset Parquet and WebDataset, LAION and DataComp."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image


def photo(i: int, size=(160, 120), fmt="JPEG") -> bytes:
    rng = np.random.RandomState(i)
    arr = rng.randint(0, 256, (size[1] // 8, size[0] // 8, 3)).astype(np.uint8)
    img = Image.fromarray(arr).resize(size, Image.Resampling.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def img2dataset_parquet(path: Path, n: int, start: int = 0, failed: tuple[int, ...] = ()) -> Path:
    """img2dataset's output table: key, caption, jpg, url, status, error_message, width, height."""
    rows = range(start, start + n)
    table = pa.table(
        {
            "key": [f"{i:09d}" for i in rows],
            "caption": [f"photo number {i}" for i in rows],
            "jpg": pa.array([None if i in failed else photo(i) for i in rows], pa.binary()),
            "url": [f"https://example.org/{i}.jpg" for i in rows],
            "status": ["failed_to_download" if i in failed else "success" for i in rows],
            "error_message": ["HTTP Error 404: Not Found" if i in failed else None for i in rows],
            "width": [None if i in failed else 160 for i in rows],
            "height": [None if i in failed else 120 for i in rows],
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=max(1, n // 3))
    return path


def webdataset_tar(path: Path, n: int, start: int = 0) -> Path:
    """img2dataset's WebDataset shard: {key}.jpg|png|webp + {key}.txt + {key}.json, in key order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fmts = ("jpg", "png", "webp")
    with tarfile.open(path, "w") as tar:
        for i in range(start, start + n):
            key = f"{i:09d}"
            ext = fmts[i % 3]
            members = {
                f"{key}.{ext}": photo(i, fmt={"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}[ext]),
                f"{key}.txt": f"shard photo {i}".encode(),
                f"{key}.json": json.dumps(
                    {"key": key, "status": "success", "caption": f"shard photo {i}"}
                ).encode(),
            }
            for name, data in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path
