"""`datajuicer-ray inspect`: sample a curated folder and write one self-contained HTML report.

Sampling reads only what it shows: Parquet footers of at most ``groups.MAX_FILES`` files, then a few row groups
chosen at random (seeded), their small columns first, and the image bytes of the picked rows last, streamed.
"""

from __future__ import annotations

import bisect
import os
import random
import re
import sys
from dataclasses import dataclass, field

import pyarrow as pa
from markupsafe import Markup, escape

from datajuicer_ray.io import storage
from datajuicer_ray.io.curated import CuratedTable
from datajuicer_ray.io.schema import OK
from datajuicer_ray.report import html as page
from datajuicer_ray.report.captions import diff_words
from datajuicer_ray.report.groups import GroupPlan, RowGroup, plan, read_group, stream_column
from datajuicer_ray.report.html import Card
from datajuicer_ray.report.overlay import ImageUnreadable, data_uri, render_views
from datajuicer_ray.report.stats import MAX_STAT_ROWS, collect

SAMPLE_COLUMNS = [
    "key",
    "caption",
    "caption_rewritten",
    "rewrite_status",
    "rewrite_candidate",
    "patch_grid",
    "patch_index",
    "objects",
    "status",
    "error",
]
# Pillow's messages name a Python object's address ("<_io.BytesIO object at 0x7f...>"): noise to a reader.
_ADDRESS = re.compile(r" ?<[^<>]* at 0x[0-9a-f]+>")
# Spread a sample over at least this many row groups (when the folder has them), not one group's neighbours.
MIN_GROUPS = 6


@dataclass
class RowSample:
    rows: list[dict]
    groups_read: list[RowGroup] = field(default_factory=list)


def sample_rows(group_plan: GroupPlan, n: int, rng: random.Random, image_col: str | None) -> RowSample:
    """Up to ``n`` rows drawn at random from a few row groups; image bytes attached under ``"_image"``."""
    tables: list[pa.Table] = []
    groups: list[RowGroup] = []
    pooled = 0
    enough_groups = min(MIN_GROUPS, len(group_plan.groups))
    for group in group_plan.groups:
        if pooled >= n and len(groups) >= enough_groups:
            break
        table = read_group(group, SAMPLE_COLUMNS)
        if table.num_rows:
            tables.append(table)
            groups.append(group)
            pooled += table.num_rows
    starts = [0]
    for t in tables:
        starts.append(starts[-1] + t.num_rows)
    picks = rng.sample(range(pooled), min(n, pooled))
    located = [(bisect.bisect_right(starts, p) - 1, p) for p in picks]
    rows = [tables[t].slice(p - starts[t], 1).to_pylist()[0] for t, p in located]
    if image_col and image_col in group_plan.columns:
        _attach_images(rows, located, starts, groups, image_col)
    return RowSample(rows, groups)


def _attach_images(rows: list[dict], located, starts, groups: list[RowGroup], image_col: str) -> None:
    wanted: dict[int, dict[int, int]] = {}  # table -> row in group -> position in rows
    for pos, (t, p) in enumerate(located):
        wanted.setdefault(t, {})[p - starts[t]] = pos
    for t, rows_in_group in wanted.items():
        offset = 0
        for chunk in stream_column(groups[t], image_col):
            for r in range(offset, offset + len(chunk)):
                if r in rows_in_group:
                    rows[rows_in_group[r]]["_image"] = chunk[r - offset].as_py()
            offset += len(chunk)
            if offset > max(rows_in_group):
                break


def make_card(row: dict, size: int, grid: int, images_kept: bool) -> Card:
    objects = [(o["label"], float(o["score"])) for o in (row.get("objects") or [])]
    caption, rewritten = row.get("caption"), row.get("caption_rewritten")
    candidate = row.get("rewrite_candidate") if rewritten is None else None
    candidate_html: Markup | None = None
    if caption is not None and rewritten is not None:
        caption_html, rewritten_html = diff_words(caption, rewritten)
    elif caption is not None and candidate is not None:
        # Beside the caption, what the model wrote and the guard refused: the diff shows what it changed.
        (caption_html, candidate_html), rewritten_html = diff_words(caption, candidate), None
    else:
        caption_html = escape(caption) if caption is not None else None
        rewritten_html = escape(rewritten) if rewritten is not None else None
        candidate_html = escape(candidate) if candidate is not None else None
    patches = row.get("patch_index")
    card = Card(
        key=str(row.get("key")),
        status=row.get("status") or "?",
        error=_ADDRESS.sub("", row["error"]) if row.get("error") else None,
        rewrite_status=row.get("rewrite_status") or "?",
        objects=objects,
        caption_html=caption_html,
        rewritten_html=rewritten_html,
        kept=len(patches) if patches is not None else None,
        candidate_html=candidate_html,
    )
    if not images_kept:
        card.image_note = "images not kept in this folder (output.keep_image=false)"
        return card
    row_grid = row.get("patch_grid") or grid
    try:
        view, masked = render_views(row.get("_image"), patches, size, int(row_grid))
        card.view_uri = data_uri(view)
        card.overlay_uri = data_uri(masked) if masked is not None else None
    except (ImageUnreadable, ValueError) as err:
        # A rejected row's own reason says more than the report's second attempt at decoding it.
        reason = f"rejected: {card.status}" if card.status != OK else f"no picture: {err}"
        card.image_note = _ADDRESS.sub("", reason)
    return card


def build_report(
    table: CuratedTable, sample: int = 48, seed: int = 0, max_stat_rows: int = MAX_STAT_ROWS
) -> str:
    """The HTML of the report of one curated table."""
    if sample < 1:
        raise ValueError(f"--sample must be at least 1, got {sample}")
    rng = random.Random(seed)
    group_plan = plan(table, rng)  # first: "not a curated table" is the error to give
    run_info, summary = table.run_info(), table.stored_summary()
    geo = table.geometry()
    image_col = table.image_column()
    output_dir = table.path
    drawn = sample_rows(group_plan, sample, rng, image_col)
    images_kept = bool(image_col and image_col in group_plan.columns)
    cards = [make_card(r, geo.size, geo.grid, images_kept) for r in drawn.rows]
    stats = collect(group_plan, geo.grid, seed, max_rows=max_stat_rows)
    return page.render(
        page.Report(
            output_dir=output_dir,
            run_info=run_info,
            summary=summary,
            geometry=geo,
            cards=cards,
            stats=stats,
            group_plan=group_plan,
            sample_groups=len(drawn.groups_read),
            seed=seed,
        )
    )


def inspect_from_cli(output_dir: str, sample: int, out: str, seed: int) -> int:
    from datajuicer_ray import preflight

    # A bad --out (a folder, a place we cannot write) fails now, not after the report is built.
    table = CuratedTable(output_dir)  # opened once: the preflight and the report share its log
    preflight.check_inspect(table, out, sample)
    try:
        text = build_report(table, sample=sample, seed=seed)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {output_dir}: {err}", file=sys.stderr)
        return 2
    fs, path = storage.filesystem(out)  # the report may go to object storage too
    parent = os.path.dirname(path)
    if parent:
        fs.create_dir(parent, recursive=True)
    with fs.open_output_stream(path) as fh:
        fh.write(text.encode("utf-8"))
    print(f"wrote {out} ({len(text.encode()) / 1e6:.1f} MB, {sample} rows asked)")
    return 0
