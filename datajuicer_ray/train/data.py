"""The curated table as training batches: Ray Data reads, filters, splits, decodes and tokenizes.

All per-row work happens here, in ``map_batches`` tasks, never in the training loop: decode (PIL, EXIF
transpose, RGB), the canonical view of CONTRACT.md at S (no random crop: it would move pixels away from the
patch an index names), an optional horizontal flip that mirrors the indices too, and tokenization. A batch
leaves as fixed-shape arrays so ``iter_torch_batches`` can stack it:

- ``image``: uint8 [3, S, S] (normalised on the device: 4x less object-store traffic than float32)
- ``text``: int64 [context_length]
- ``patch_index``: int16 [G*G], the kept indices first, then -1

Rows of different kept counts (mass retention) are regrouped on each training worker by
:func:`length_bucketed`, so that a batch holds rows of similar counts and pads only to a near-uniform length.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import ray

from datajuicer_ray.config import ConfigError
from datajuicer_ray.io.curated import CuratedTable
from datajuicer_ray.io.schema import OK
from datajuicer_ray.vision.decode import canonical_pixels
from datajuicer_ray.vision.geometry import Geometry, flip_indices, top_k_indices

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Source:
    """A curated folder as the trainer needs it: parts, image column, geometry."""

    path: str
    parts: tuple[str, ...]
    image_column: str
    geometry: Geometry  # as the table's run recorded it


def open_source(table: CuratedTable) -> Source:
    """Check that ``table`` is a curated table with images; raise ConfigError saying what is wrong."""
    path = table.path
    parts = table.data_files()
    if not parts:
        raise ConfigError(
            f"data.path: no committed rows in {path!r}; point it at a `datajuicer-ray curate` output table"
        )
    column = table.image_column()
    if column is None:
        raise ConfigError(
            f"data.path: {path!r} was curated with output.keep_image=false; training needs the images"
        )
    return Source(path, tuple(parts), column, table.geometry())


def is_held_out(key: str, fraction: float) -> bool:
    """Deterministic hold-out by key hash: the same rows are held out in every run and on every worker."""
    if fraction <= 0:
        return False
    h = int.from_bytes(hashlib.sha1(key.encode("utf-8")).digest()[:8], "big")
    return h / 2**64 < fraction


def training_view(
    pixels: np.ndarray, patch_index: np.ndarray, grid: int, flip: bool
) -> tuple[np.ndarray, np.ndarray]:
    """The view the model sees (uint8 [3, S, S]) and its indices; a flip mirrors both, so indices keep naming
    the same pixels."""
    idx = np.asarray(patch_index, dtype=np.int16)
    if flip:
        pixels = pixels[:, ::-1]
        idx = flip_indices(idx, grid)
    return np.ascontiguousarray(pixels.transpose(2, 0, 1)), idx


_TOKENIZERS: dict[str, Any] = {}


def _tokenizer(model_name: Any):
    """One tokenizer per worker process and model (loading the BPE vocabulary is not free)."""
    from datajuicer_ray.train import factory

    key = repr(model_name)
    if key not in _TOKENIZERS:
        _TOKENIZERS[key] = factory.tokenizer(model_name)
    return _TOKENIZERS[key]


def pick_caption(rewritten: str | None, original: str | None) -> str | None:
    for text in (rewritten, original):
        if text is not None and text.strip():
            return text
    return None


class Decode:
    """``map_batches`` function (pyarrow in, numpy out): one curated batch -> training arrays."""

    def __init__(
        self,
        source: Source,
        model_name: Any,
        caption_column: str,
        val_fraction: float,
        split: str,
        hflip: bool,
        seed: int | None = None,
        keep_ratio: float | None = None,
    ) -> None:
        self.source, self.model_name = source, model_name
        self.caption_column, self.val_fraction = caption_column, val_fraction
        self.split, self.hflip = split, hflip
        # data.keep_ratio: choose from the stored score map, exactly as curation would have at that ratio
        self.keep = None if keep_ratio is None else source.geometry.keep(keep_ratio)
        self.rng = np.random.default_rng(seed)

    def __call__(self, batch: pa.Table) -> dict[str, np.ndarray]:
        g, s = self.source.geometry.grid, self.source.geometry.size
        cols = batch.to_pydict()
        images, texts, indices = [], [], []
        for i, key in enumerate(cols["key"]):
            if cols["status"][i] != OK or is_held_out(key, self.val_fraction) != (self.split == "val"):
                continue
            text = pick_caption(cols[self.caption_column][i], cols["caption"][i])
            if text is None or cols["patch_index"][i] is None:
                continue
            try:
                pixels = canonical_pixels(cols[self.source.image_column][i], s)
            except Exception as err:  # a row curation accepted but this worker cannot read: skip, say so
                log.warning("train data: skipping %s, image does not decode: %s", key, err)
                continue
            flip = self.hflip and bool(self.rng.random() < 0.5)
            img, idx = training_view(pixels, self.kept(cols, i), g, flip)
            padded = np.full(g * g, -1, dtype=np.int16)
            padded[: len(idx)] = idx
            images.append(img)
            texts.append(text)
            indices.append(padded)
        return self._arrays(images, texts, indices)

    def kept(self, cols: dict[str, list], i: int) -> np.ndarray:
        """The row's kept patches: the table's, or re-selected from its score map at data.keep_ratio."""
        if self.keep is None:
            return np.asarray(cols["patch_index"][i])
        scores = cols["patch_scores"][i]
        if scores is None:
            raise ConfigError(
                "data.keep_ratio: the table has no patch_scores (curated before 0.2); re-curate it"
            )
        return top_k_indices(np.asarray(scores, dtype=np.float32), self.keep)

    def _arrays(self, images: list, texts: list[str], indices: list) -> dict[str, np.ndarray]:
        g, s = self.source.geometry.grid, self.source.geometry.size
        tok = _tokenizer(self.model_name)
        if not images:
            ctx = int(tok.context_length)
            return {
                "image": np.zeros((0, 3, s, s), np.uint8),
                "text": np.zeros((0, ctx), np.int64),
                "patch_index": np.zeros((0, g * g), np.int16),
            }
        return {
            "image": np.stack(images),
            "text": tok(texts).numpy().astype(np.int64),
            "patch_index": np.stack(indices),
        }


def decode_batch(batch: pa.Table, **kwargs: Any) -> dict[str, np.ndarray]:
    """A plain function, so decoding runs in stateless tasks (no actor holding a CPU between epochs)."""
    return Decode(**kwargs)(batch)


_COLUMNS = ("key", "caption", "status", "patch_index")


def build_dataset(
    source: Source,
    model_name: Any,
    split: str,
    caption_column: str,
    val_fraction: float,
    hflip: bool,
    batch_rows: int = 64,
    materialize: bool = False,
    keep_ratio: float | None = None,
) -> ray.data.Dataset:
    """Training (``split="train"``) or held-out (``"val"``) rows of a curated folder, decoded."""
    scores = ["patch_scores"] if keep_ratio is not None else []
    columns = list(dict.fromkeys([*_COLUMNS, *scores, caption_column, source.image_column]))
    ds = ray.data.read_parquet(list(source.parts))
    have = set(ds.schema().names)
    missing = [c for c in columns if c not in have]
    if missing:
        raise ConfigError(f"data.path: curated table lacks column(s) {', '.join(missing)}")
    ds = ds.select_columns(columns).map_batches(
        decode_batch,
        fn_kwargs=dict(
            source=source,
            model_name=model_name,
            caption_column=caption_column,
            val_fraction=val_fraction,
            split=split,
            hflip=hflip and split == "train",
            keep_ratio=keep_ratio,
        ),
        batch_format="pyarrow",
        batch_size=batch_rows,
    )
    return ds.materialize() if materialize else ds


def kept_counts(patch_index: np.ndarray) -> np.ndarray:
    """Kept patches per row of a padded [B, L] index array (valid indices first, then -1)."""
    return (np.asarray(patch_index) >= 0).sum(axis=1)


def _take(rows: dict[str, np.ndarray], idx: np.ndarray, longest: int) -> dict[str, np.ndarray]:
    out = {k: v[idx] for k, v in rows.items()}
    # Trim the index to the batch's longest row: past it every row is padding, and shipping it to the device
    # or the model costs time for nothing.
    out["patch_index"] = out["patch_index"][:, :longest]
    return out


def _emit(rows: dict[str, np.ndarray], batch_size: int, rng: np.random.Generator) -> Iterator[dict]:
    """Whole batches out of ``rows`` (a multiple of ``batch_size`` long), grouped by kept count."""
    counts = kept_counts(rows["patch_index"])
    n = len(counts)
    if n == 0:
        return
    if bool((counts == counts[0]).all()):
        # One kept count (fixed retention): keep the stream's own (shuffled) order, so bucketing is a no-op.
        for start in range(0, n, batch_size):
            yield _take(rows, np.arange(start, start + batch_size), int(counts[0]))
        return
    # Stable sort: rows of equal counts stay in the stream's shuffled order. Each batch is a run of the sorted
    # rows, so it spans only ~1/(n/batch_size) of the counts' range; the batches then leave in random order so
    # that short and long batches interleave and the gradient does not drift with the length.
    chunks = np.argsort(counts, kind="stable").reshape(-1, batch_size)
    for c in rng.permutation(len(chunks)):
        yield _take(rows, chunks[c], int(counts[chunks[c]].max()))


def _concat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if len(parts) == 1:
        return parts[0]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def length_bucketed(
    batches: Iterable[dict[str, np.ndarray]], batch_size: int, buffer_batches: int, seed: int
) -> Iterator[dict[str, np.ndarray]]:
    """Regroup a (shuffled) stream of numpy batches into ``batch_size`` batches of similar kept counts.

    Holds ``buffer_batches * batch_size`` rows at a time, sorts them by kept count, cuts the sorted rows into
    whole batches and emits those in a random order (``seed``). Rows left at the end of the stream that do
    not fill a batch are dropped, like ``drop_last``: the number of batches is ``rows // batch_size``, the
    same as unbucketed iteration, so data-parallel workers with equal shards (Ray Train splits with
    ``equal=True``) still take the same number of steps. Fixed retention (one count) passes through in order.
    """
    if batch_size < 1 or buffer_batches < 1:
        raise ValueError(f"length_bucketed: batch_size={batch_size}, buffer_batches={buffer_batches}")
    rng = np.random.default_rng(seed)
    hold = batch_size * buffer_batches
    pending: list[dict[str, np.ndarray]] = []
    held = 0
    for batch in batches:
        n = len(batch["patch_index"])
        if n == 0:
            continue
        pending.append(batch)
        held += n
        while held >= hold:
            rows = _concat(pending)
            yield from _emit({k: v[:hold] for k, v in rows.items()}, batch_size, rng)
            rest = {k: v[hold:] for k, v in rows.items()}
            held -= hold
            pending = [rest] if held else []
    if held >= batch_size:
        rows = _concat(pending)
        whole = held - held % batch_size
        yield from _emit({k: v[:whole] for k, v in rows.items()}, batch_size, rng)
