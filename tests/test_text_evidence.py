"""What the guard refused stays visible: the ``rewrite_candidate`` column in the output and in the report."""

from __future__ import annotations

import pyarrow as pa

from datajuicer_ray.io import columns, schema
from datajuicer_ray.io.writer import to_output_table
from datajuicer_ray.report.html import render_card
from datajuicer_ray.report.inspect import make_card


def _batch(**extra) -> pa.Table:
    n = 2
    cols = {
        "key": ["a", "b"],
        "caption": ["a dog in a park", "a cat"],
        "status": ["ok", "ok"],
        "error": pa.array([None] * n, pa.string()),
        columns.ROW_COL: pa.array([0, 1], pa.int64()),
    }
    return pa.table({**cols, **extra})


def test_candidate_follows_rewrite_status_in_the_contract():
    names = schema.output_schema(None).names
    assert names[names.index("rewrite_status") + 1] == "rewrite_candidate"
    assert schema.output_schema(None).field("rewrite_candidate").nullable


def test_writer_takes_the_candidate_from_the_batch_or_writes_nulls():
    rewritten = _batch(
        caption_rewritten=pa.array([None, "A cat."], pa.string()),
        rewrite_status=["rejected:invented", "ok"],
        rewrite_candidate=pa.array(["A dog in a park near a castle.", None], pa.string()),
    )
    out = to_output_table(rewritten, None, "file:///in.parquet")
    assert out["rewrite_candidate"].to_pylist() == ["A dog in a park near a castle.", None]
    off = to_output_table(_batch(), None, "file:///in.parquet")  # rewriting off: no text branch columns
    assert off["rewrite_candidate"].to_pylist() == [None, None]
    assert off["rewrite_status"].to_pylist() == ["disabled", "disabled"]


def test_report_card_shows_the_rejected_candidate_beside_the_caption():
    row = {
        "key": "a",
        "caption": "a dog in a park",
        "caption_rewritten": None,
        "rewrite_status": "rejected:invented",
        "rewrite_candidate": "A dog in a park near a <castle>.",
        "status": "ok",
    }
    card = make_card(row, 224, 14, images_kept=False)
    assert card.rewritten_html is None
    assert "<ins>" in card.candidate_html and "&lt;castle&gt;" in card.candidate_html  # diffed, escaped
    block = render_card(card, 14)
    assert "rejected (invented)" in block and f"<s>{card.candidate_html}</s>" in block
    accepted = make_card(
        {**row, "caption_rewritten": "A dog in a park.", "rewrite_status": "ok"}, 224, 14, False
    )
    assert accepted.candidate_html is None and accepted.rewritten_html is not None
    assert "candidate" not in render_card(accepted, 14)


def test_the_page_shows_the_candidate_block():
    row = {
        "key": "a",
        "caption": "a dog in a park",
        "caption_rewritten": None,
        "rewrite_status": "rejected:invented",
        "rewrite_candidate": "A dog in a park near a castle.",
        "status": "ok",
    }
    page = render_card(make_card(row, 224, 14, images_kept=False), 14)
    assert '<div class="cap candidate"><span class="lab">rejected (invented)</span>' in page
