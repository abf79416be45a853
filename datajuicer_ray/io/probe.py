"""What an input file is, from its name and its first bytes: the preflight's look at the input.

Reads a Parquet footer or a tar shard's first sample, nothing more, and never judges: ``preflight`` turns
what is found into problems. A transient storage fault leaves a file unread (the job's readers retry it);
a file that breaks while being looked at keeps the kind its first bytes gave (the run makes it a
``read_error`` row, as a corrupt file in a big corpus should).
"""

from __future__ import annotations

import contextlib
import json
import posixpath
import tarfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import IO

import pyarrow as pa
import pyarrow.parquet as pq

from datajuicer_ray.io import storage
from datajuicer_ray.io.faults import is_transient_io

# Bytes per request for a tar shard's first sample: a few images and their text, not READ_BLOCK.
SAMPLE_BLOCK = 1 << 20

PROBE_THREADS = 16
# Members of one sample looked at, at most: a shard's first sample has a handful.
MAX_MEMBERS = 64
# What a file is by its name, where the name says so; a name not here is judged by its bytes.
KIND_BY_SUFFIX = {
    **dict.fromkeys((".parquet", ".pq", ".parq"), "parquet"),
    **dict.fromkeys((".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz"), "webdataset"),
    **dict.fromkeys(
        (".json", ".jsonl", ".txt", ".csv", ".tsv", ".md", ".html", ".log", ".crc", ".yaml", ".yml", ".py"),
        "other",
    ),
    **dict.fromkeys((".jpg", ".jpeg", ".png", ".webp", ".gif", ".zip", ".arrow", ".feather"), "other"),
}


@dataclass
class Probe:
    """One file: its kind and, where readable, its columns (Parquet) or its first sample (tar)."""

    path: str
    kind: str | None = None  # parquet | webdataset | compressed | other | empty; None: not read (transient)
    columns: list[str] | None = None  # Parquet columns, or the first sample's member extensions
    types: dict[str, pa.DataType] = field(default_factory=dict)  # Parquet column types
    meta: set[str] = field(default_factory=set)  # keys of the first sample's .json


def kind_by_name(name: str) -> str | None:
    lower = posixpath.basename(name).lower()
    return next((k for s, k in KIND_BY_SUFFIX.items() if lower.endswith(s)), None)


def sniff(head: bytes) -> str:
    """The kind the first 512 bytes say."""
    if not head:
        return "empty"
    if head[:4] == b"PAR1":
        return "parquet"
    if head[257:262] == b"ustar":  # POSIX and GNU tar
        return "webdataset"
    if head[:2] == b"\x1f\x8b" or head[:3] == b"BZh" or head[:6] == b"\xfd7zXZ\x00":
        return "compressed"  # maybe a compressed tar: opening it as one tells
    return "other"


def probe_file(path: str, fmt: str) -> Probe:
    probe = Probe(path)
    try:
        if fmt == "parquet":  # by ranges: the first bytes, then the footer only
            with storage.open_random_access(path) as fh:
                probe.kind = sniff(fh.read(512))
                if probe.kind == "parquet":
                    arrow = pq.ParquetFile(fh).schema_arrow
                    probe.columns, probe.types = list(arrow.names), {f.name: f.type for f in arrow}
        else:  # a stream: the first sample only
            with storage.open_stream(path, SAMPLE_BLOCK) as fh:
                probe.kind = sniff(fh.peek(512)[:512])
                if probe.kind in ("webdataset", "compressed"):
                    first_sample(fh, probe)
    except Exception as err:  # noqa: BLE001 - see the module's docstring
        if is_transient_io(err):
            return Probe(path)
    return probe


def first_sample(fh: IO[bytes], probe: Probe) -> None:
    """Member extensions (and .json keys) of a shard's first sample, grouped as the reader groups them."""
    try:
        tar = tarfile.open(fileobj=fh, mode="r|*")  # noqa: SIM115 - closed by the `with` below
    except tarfile.ReadError:
        probe.kind = "other"
        return
    probe.kind, probe.columns, first = "webdataset", [], None
    with tar:
        for member in tar:
            base = posixpath.basename(member.name)
            if not member.isfile() or base.startswith(("_", ".")) or "." not in base:
                continue
            stem, suffix = base.split(".", 1)
            key = posixpath.join(posixpath.dirname(member.name), stem)
            if first not in (None, key) or len(probe.columns) >= MAX_MEMBERS:
                break
            first = key
            probe.columns.append(suffix.lower())
            if suffix.lower() == "json":
                with contextlib.suppress(ValueError, TypeError):
                    probe.meta = set(json.loads(tar.extractfile(member).read()))


def probe_files(paths: list[str], fmt: str) -> list[Probe]:
    """Probe files at once (it is all waiting on storage)."""
    with ThreadPoolExecutor(max_workers=PROBE_THREADS) as pool:
        return list(pool.map(lambda p: probe_file(p, fmt), paths))
