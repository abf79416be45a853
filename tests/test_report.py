"""The HTML report: sampling, overlays, caption diffs, plots and the page, on a curated-like folder.

``write_curated_like`` builds a folder with the contract's columns (real Parquet, real JPEG/PNG bytes from
scikit-image's photos, rejected rows, several files and row groups); the browser test renders it too.
"""

from __future__ import annotations

import io
import random
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from skimage import data as photos

from datajuicer_ray.io.curated import CuratedTable
from datajuicer_ray.report import groups, inspect, stats
from datajuicer_ray.report.captions import diff_words
from datajuicer_ray.report.overlay import DIM, ImageUnreadable, decode_image, keep_mask, overlay, render_views
from datajuicer_ray.vision.decode import canonical_pixels
from datajuicer_ray.vision.geometry import canonical_view
from tests.support.spy import count_delta_loads
from tests.support.tables import write_table

PHOTOS = ["astronaut", "chelsea", "coffee", "rocket", "camera", "coins"]
LABELS = ["tabby cat", "espresso", "space shuttle", "coin", "suit", "cup", "missile"]
S, P, G = 224, 16, 14


def _jpeg(name: str, fmt: str = "JPEG") -> bytes:
    img = Image.fromarray(getattr(photos, name)())
    img.thumbnail((320, 320))
    buf = io.BytesIO()
    img.convert("RGB").save(buf, fmt)
    return buf.getvalue()


def _rows(n: int, rng: random.Random, file_no: int) -> list[dict]:
    rows = []
    for i in range(n):
        key = f"{file_no:03d}{i:05d}"
        caption = f"a photo of {rng.choice(LABELS)} on a table, number {i}"
        row = {
            "key": key,
            "jpg": _jpeg(PHOTOS[(i + file_no) % len(PHOTOS)]),
            "caption": caption,
            "caption_rewritten": None,
            "rewrite_status": "disabled",
            "patch_grid": G,
            "patch_index": sorted(rng.sample(range(G * G), 98)),
            "objects": [
                {"label": lab, "score": 0.9 - 0.1 * k} for k, lab in enumerate(rng.sample(LABELS, i % 3))
            ],
            "status": "ok",
            "error": None,
        }
        if i % 2 == 0:
            row["caption_rewritten"] = caption.replace("a photo of", "a close-up photograph showing")
            row["rewrite_status"] = "ok"
        if i % 7 == 3:
            row.update(
                jpg=b"not an image",
                status="decode_error",
                error="UnidentifiedImageError: cannot identify",
                patch_grid=None,
                patch_index=None,
                objects=None,
                caption_rewritten=None,
                rewrite_status="skipped:decode_error",
            )
        if i % 11 == 5:
            row.update(
                jpg=None,
                status="upstream:failed_to_download",
                error="HTTP 404",
                patch_grid=None,
                patch_index=None,
                objects=None,
                caption_rewritten=None,
                rewrite_status="skipped:upstream",
            )
        rows.append(row)
    return rows


def write_curated_like(
    out: Path, files: int = 3, rows_per_file: int = 16, row_group: int = 8, keep_image: bool = True
) -> Path:
    """A folder in the curated layout (io/curated.py) with the contract's columns."""
    rng = random.Random(7)
    counts: dict[str, int] = {}
    rewrites: dict[str, int] = {}
    chunks = []
    for f in range(files):
        rows = _rows(rows_per_file, rng, f)
        for r in rows:
            counts[r["status"]] = counts.get(r["status"], 0) + 1
            rewrites[r["rewrite_status"]] = rewrites.get(r["rewrite_status"], 0) + 1
        chunks.append(rows)
    total = files * rows_per_file
    run = {
        "config": {
            "input": {"columns": {"image": "jpg"}},
            "output": {"keep_image": keep_image},
            "vision": {"keep_ratio": 0.5, "model": "tiny-random"},
        },
        "geometry": {"S": S, "P": P, "G": G},
        "models": {"scorer": "tiny-random", "rewriter": "tiny-random"},
    }
    summary = {
        "rows_in": total,
        "rows_out": total,
        "by_status": counts,
        "by_rewrite_status": rewrites,
        "images_per_s": 12.5,
    }
    return write_table(
        out, chunks, run, summary, image_column="jpg" if keep_image else None, row_group=row_group
    )


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return write_curated_like(tmp_path_factory.mktemp("curated"))


# --- overlay ---------------------------------------------------------------------------------------------


def test_overlay_dims_dropped_patches_and_keeps_kept_ones():
    view = Image.new("RGB", (S, S), (200, 200, 200))
    kept = [0, G + 1, G * G - 1]
    out = np.asarray(overlay(view, kept, G)).astype(int)
    cell = S // G
    # Inside a kept cell (away from the outline) pixels are untouched; a dropped cell is dimmed.
    assert tuple(out[cell + cell // 2, cell + cell // 2]) == (200, 200, 200)
    assert tuple(out[cell // 2, 3 * cell + cell // 2]) == (round(200 * DIM),) * 3
    assert keep_mask(kept, G).sum() == 3


def test_overlay_rejects_out_of_range_indices():
    with pytest.raises(ValueError, match="out of range"):
        keep_mask([0, G * G], G)


def test_decode_honours_exif_orientation():
    # Left half red, right half blue, stored with orientation 6 (rotate 90 clockwise to display upright).
    arr = np.zeros((60, 100, 3), dtype=np.uint8)
    arr[:, :50] = (255, 0, 0)
    arr[:, 50:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", exif=exif, quality=95)
    img = decode_image(buf.getvalue())
    assert img.size == (60, 100) and img.mode == "RGB"
    top, bottom = np.asarray(img)[5, 30], np.asarray(img)[95, 30]
    assert top[0] > 200 and top[2] < 60, top  # the red half is now on top
    assert bottom[2] > 200 and bottom[0] < 60, bottom


def test_decode_composites_alpha_and_reports_garbage():
    rgba = Image.new("RGBA", (40, 30), (0, 0, 0, 0))
    buf = io.BytesIO()
    rgba.save(buf, "PNG")
    assert np.asarray(decode_image(buf.getvalue())).min() == 255  # transparent -> white
    with pytest.raises(ImageUnreadable, match="UnidentifiedImageError"):
        decode_image(b"\x89PNG garbage")
    with pytest.raises(ImageUnreadable, match="no image bytes"):
        decode_image(None)


def test_render_views_matches_the_canonical_view():
    data = _jpeg("chelsea")
    view, masked = render_views(data, list(range(G * G)), S, G)
    reference = canonical_view(Image.open(io.BytesIO(data)).convert("RGB"), S)
    diff = np.abs(np.asarray(view, dtype=int) - np.asarray(reference, dtype=int))
    assert view.size == (S, S) and diff.mean() < 3  # same crop (draft decoding may differ by a little)
    assert np.array_equal(np.asarray(view), np.asarray(masked))  # everything kept: nothing dimmed
    # a web-sized JPEG, decoded reduced by curation: the report shows exactly the scorer's pixels
    big = io.BytesIO()
    Image.open(io.BytesIO(data)).convert("RGB").resize((1400, 1050)).save(big, "JPEG", quality=90)
    view, _ = render_views(big.getvalue(), None, S, G)
    assert np.array_equal(np.asarray(view), canonical_pixels(big.getvalue(), S))


def test_card_of_an_ok_row_whose_bytes_do_not_decode_says_why():
    row = {
        "key": "k",
        "status": "ok",
        "rewrite_status": "disabled",
        "caption": "c",
        "patch_grid": G,
        "patch_index": [1, 2],
        "objects": [],
        "_image": b"\xff\xd8 truncated",
    }
    card = inspect.make_card(row, S, G, images_kept=True)
    assert card.view_uri is None and card.image_note.startswith("no picture: UnidentifiedImageError")
    assert " at 0x" not in card.image_note


# --- caption diff ----------------------------------------------------------------------------------------


def test_diff_marks_removed_and_added_words_and_escapes():
    old, new = diff_words("a <b> cat on the mat", "a <b> black cat on a mat")
    assert old == "a &lt;b&gt; cat on <del>the</del> mat"
    assert new == "a &lt;b&gt; <ins>black</ins> cat on <ins>a</ins> mat"
    same = diff_words("x y", "x y")
    assert "<ins>" not in same[1] and "<del>" not in same[0]


# --- sampling ----------------------------------------------------------------------------------------------


def test_sampling_is_seeded_reads_few_groups_and_attaches_the_right_images(tmp_path):
    big = write_curated_like(tmp_path / "big", files=12, rows_per_file=24, row_group=4)
    table = pq.read_table(CuratedTable(str(big)).data_files())
    by_key = dict(zip(table["key"].to_pylist(), table["jpg"].to_pylist(), strict=True))

    def draw(seed: int) -> inspect.RowSample:
        rng = random.Random(seed)
        return inspect.sample_rows(groups.plan(CuratedTable(str(big)), rng), 10, rng, "jpg")

    a, b, c = draw(1), draw(1), draw(2)
    assert [r["key"] for r in a.rows] == [r["key"] for r in b.rows]
    assert [r["key"] for r in a.rows] != [r["key"] for r in c.rows]
    assert len({r["key"] for r in a.rows}) == 10
    # 72 row groups in the folder: the sample reads the few it needs, not the folder.
    assert len(a.groups_read) == inspect.MIN_GROUPS
    assert all(r.get("_image") == by_key[r["key"]] for r in a.rows)


def test_sampling_a_small_folder_returns_every_row(folder):
    rng = random.Random(0)
    got = inspect.sample_rows(groups.plan(CuratedTable(str(folder)), rng), 500, rng, "jpg")
    assert len(got.rows) == 48


def test_plan_caps_the_files_it_opens(tmp_path):
    big = write_curated_like(tmp_path / "many", files=6, rows_per_file=4, row_group=4)
    gp = groups.plan(CuratedTable(str(big)), random.Random(0), max_files=2)
    assert (gp.files_opened, gp.files_total, len(gp.groups), gp.complete) == (2, 6, 2, False)


def test_stats_count_the_whole_small_folder(folder):
    table = pq.read_table(CuratedTable(str(folder)).data_files())
    rows = table.drop_columns(["jpg"]).to_pylist()
    ok = [r for r in rows if r["status"] == "ok"]
    got = stats.collect(groups.plan(CuratedTable(str(folder)), random.Random(0)), G, seed=0)
    assert got.rows == 48 and got.groups_read == got.groups_planned == 6
    assert got.by_status == Counter(r["status"] for r in rows)
    assert got.objects_per_image == Counter(len(r["objects"]) for r in ok)
    assert got.classes == Counter(o["label"] for r in ok for o in r["objects"])
    expected = np.zeros(G * G)
    for r in ok:
        expected[r["patch_index"]] += 1
    assert np.allclose(got.kept_share.reshape(-1), expected / len(ok))
    assert got.words("rewritten").size == sum(r["caption_rewritten"] is not None for r in rows)


def _scored_row(key: str, kept: int, mass: float | None, grid: int = G) -> dict:
    return {
        "key": key,
        "caption": "a photo",
        "rewrite_status": "disabled",
        "patch_grid": grid,
        "patch_index": list(range(kept)),
        "patch_scores": [1.0] * (grid * grid),
        "kept_mass": mass,
        "objects": [],
        "status": "ok",
    }


def test_report_shows_kept_counts_and_kept_mass(tmp_path):
    """Mass retention: kept counts differ per row; the report plots their spread and that of kept_mass,
    skipping rejected rows, rows on another grid, and rows without kept_mass (older tables)."""
    rows = [
        _scored_row(f"k{i}", kept, mass) for i, (kept, mass) in enumerate([(20, 0.6), (40, 0.61), (90, 0.7)])
    ]
    rows.append(_scored_row("old", 98, None))  # curated before kept_mass existed
    rows.append(_scored_row("other-grid", 10, 0.9, grid=7))
    rows.append(
        {
            "key": "bad",
            "caption": "x",
            "rewrite_status": "skipped:decode_error",
            "status": "decode_error",
            "error": "broken",
        }
    )
    run = {
        "config": {"vision": {"retention": "mass", "keep_mass": 0.6}},
        "geometry": {"S": S, "P": P, "G": G},
    }
    folder = write_table(tmp_path / "mass", [rows], run, image_column=None)
    got = stats.collect(groups.plan(CuratedTable(str(folder)), random.Random(0)), G, seed=0)
    assert sorted(got.kept_per_image.tolist()) == [20, 40, 90, 98]
    assert sorted(got.kept_mass.tolist()) == pytest.approx([0.6, 0.61, 0.7])
    page = inspect.build_report(CuratedTable(str(folder)), sample=3)
    assert 'alt="Patches kept per image"' in page
    assert 'alt="Score mass held by the kept patches (kept_mass)"' in page
    assert "<b>65/196</b><span>kept / image (median)</span>" in page
    assert "<b>0.61</b><span>kept_mass (median)</span>" in page
    assert "<b>0.6</b><span>keep mass</span>" in page


def test_empty_objects_plot_says_why_when_the_run_knows():
    from datajuicer_ray.report.html import _objects_note

    no_head = {"models": {"objects": {"source": None, "note": "x has no image-classification head ..."}}}
    assert "no classification head" in _objects_note(no_head)
    assert _objects_note({"models": {"objects": {"source": "scorer", "note": None}}}) is None
    assert _objects_note({}) is None


def test_report_of_a_fixed_retention_table_without_kept_mass(folder):
    got = stats.collect(groups.plan(CuratedTable(str(folder)), random.Random(0)), G, seed=0)
    assert set(got.kept_per_image.tolist()) == {98} and got.kept_mass.size == 0
    page = inspect.build_report(CuratedTable(str(folder)), sample=2)
    assert "<b>98/196</b><span>kept / image (median)</span>" in page
    assert "kept_mass (median)" not in page and "<b>0.5</b><span>keep ratio</span>" in page


# --- the page ----------------------------------------------------------------------------------------------


def _cards(page: str) -> list[str]:
    return re.findall(r'<article class="card[^"]*"[^>]*>', page)


def test_report_page_is_self_contained_and_shows_what_was_curated(folder):
    page = inspect.build_report(CuratedTable(str(folder)), sample=20, seed=3)
    cards = _cards(page)
    assert len(cards) == 20
    # Nothing fetched: every src/href is inline.
    assert not re.search(r'(src|href)="(?!data:)', page)
    statuses = {re.search(r'data-status="([^"]+)"', c).group(1) for c in cards}
    assert "ok" in statuses and statuses - {"ok"}, statuses  # the seed draws rejected rows too
    ok_cards = page.count('class="masked"')
    assert ok_cards == sum('data-status="ok"' in c for c in cards)
    # A rejected row shows its reason in place of the picture, and the detail below it.
    assert '<div class="missing">rejected: decode_error</div>' in page
    assert '<div class="error">UnidentifiedImageError: cannot identify</div>' in page
    assert "<ins>close-up photograph showing</ins>" in page
    assert page.count('<figure><img src="data:image/png;base64,') == 8
    assert "Plots from every row of the folder (48 rows)" in page
    assert "tiny-random" in page and "keep_ratio" in page


def test_report_says_when_plots_cover_part_of_the_folder(folder):
    page = inspect.build_report(CuratedTable(str(folder)), sample=4, seed=0, max_stat_rows=10)
    assert re.search(r"Plots from 1[0-9] of 48 rows: [23] row groups chosen at random", page)


def test_report_without_images(tmp_path):
    bare = write_curated_like(tmp_path / "bare", files=1, keep_image=False)
    page = inspect.build_report(CuratedTable(str(bare)), sample=5)
    assert "<img class" not in page
    assert page.count("output.keep_image=false") == 5


def test_cli_writes_the_file_and_rejects_bad_input(folder, tmp_path, capsys):
    from datajuicer_ray.cli import main

    out = tmp_path / "r" / "report.html"
    assert main(["inspect", str(folder), "--sample", "6", "--out", str(out)]) == 0
    assert len(_cards(out.read_text())) == 6
    assert main(["inspect", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x.html")]) == 2
    assert "no committed rows" in capsys.readouterr().err
    assert main(["inspect", str(folder), "--sample", "0", "--out", str(tmp_path / "y.html")]) == 2
    assert not (tmp_path / "x.html").exists() and not (tmp_path / "y.html").exists()


def test_markup_in_the_table_is_shown_as_text_never_run(tmp_path):
    """Captions, keys, errors, labels and the run record are text from the web or a user: the page escapes
    every one of them (the templates' autoescaping), and the only <script> is the report's own."""
    hostile = "<script>alert(1)</script>"
    rows = _rows(4, random.Random(1), 0)
    rows[0].update(key=f"k{hostile}", caption=f"a cat {hostile}", caption_rewritten=f"a cat {hostile} sat")
    rows[0].update(rewrite_status="ok", objects=[{"label": 'cat" onmouseover="x', "score": 0.9}])
    rows[1].update(caption=hostile, caption_rewritten=None, rewrite_status=f"rejected:{hostile}")
    rows[1]["rewrite_candidate"] = f"{hostile} a dog"
    rows[2].update(status="decode_error", error=hostile, jpg=b"junk", patch_index=None, patch_grid=None)
    run = {"config": {"vision": {"model": hostile}}, "geometry": {"S": S, "P": P, "G": G}, "models": {}}
    out = write_table(tmp_path / "t", [rows], run, {"rows_in": 4, "rows_out": 4, "by_status": {"ok": 3}})

    page = inspect.build_report(CuratedTable(str(out)), sample=4)

    assert page.count("<script>") == 1 and page.count("</script>") == 1  # the page's own filter script
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert page.count("&lt;script&gt;") >= 6  # key, caption, rewrite, candidate, error, config, status
    assert 'onmouseover="x' not in page  # an attribute value cannot close its quotes
    # The diff still marks words up: escaping is of the text, not of the report's own tags.
    assert "<ins>sat</ins>" in page


def test_inspect_loads_the_table_log_once(tmp_path, monkeypatch, capsys):
    """The preflight and the report share one handle: the command loads the Delta log once."""
    folder = write_curated_like(tmp_path / "curated")
    loads = count_delta_loads(monkeypatch)
    assert inspect.inspect_from_cli(str(folder), 4, str(tmp_path / "report.html"), 0) == 0
    assert loads == {str(folder): 1}
