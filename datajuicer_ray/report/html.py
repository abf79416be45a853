"""Page rendering: one self-contained HTML document (inline CSS, JS and images; nothing fetched)."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from html import escape
from typing import TYPE_CHECKING, Any

import numpy as np

from datajuicer_ray.io.schema import OK, REWRITE_DISABLED, REWRITE_OK
from datajuicer_ray.report import plots
from datajuicer_ray.report.assets import CSS, JS
from datajuicer_ray.report.captions import rejected_block
from datajuicer_ray.report.groups import GroupPlan
from datajuicer_ray.report.stats import FolderStats
from datajuicer_ray.vision.geometry import Geometry

if TYPE_CHECKING:
    from datajuicer_ray.report.inspect import Card


@dataclass
class Report:
    output_dir: str
    run_info: dict[str, Any]
    summary: dict[str, Any]
    geometry: Geometry
    cards: list[Card]
    stats: FolderStats
    group_plan: GroupPlan
    sample_groups: int
    seed: int


def _attr(value: Any) -> str:
    return escape(str(value), quote=True)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _kpis(r: Report) -> str:
    s, cfg = r.summary, r.run_info.get("config", {})
    by_status = s.get("by_status") or r.stats.by_status
    rows_out = s.get("rows_out", r.stats.rows if r.group_plan.complete else None)
    rejected = sum(v for k, v in by_status.items() if k != OK)
    rewritten = (s.get("by_rewrite_status") or r.stats.by_rewrite_status).get(REWRITE_OK, 0)
    g = r.geometry
    items = [
        ("rows in", s.get("rows_in", "?")),
        ("rows out", rows_out if rows_out is not None else "?"),
        (OK, by_status.get(OK, 0)),
        ("rejected", rejected),
        ("rewritten", rewritten),
        ("images / s", s.get("images_per_s", "?")),
        _retention(cfg.get("vision", {})),
        *_kept_kpis(r.stats, g.grid),
        ("canonical view", f"S={g.size} P={g.patch} G={g.grid}"),
    ]
    return "".join(
        f'<div class="kpi"><b>{escape(_fmt(v))}</b><span>{escape(k)}</span></div>' for k, v in items
    )


def _retention(vision: dict[str, Any]) -> tuple[str, Any]:
    """What decided the kept counts: a fixed ratio, or a share of each image's score mass."""
    if vision.get("retention") == "mass":
        return ("keep mass", vision.get("keep_mass", "?"))
    return ("keep ratio", vision.get("keep_ratio", "?"))


def _kept_kpis(stats: FolderStats, grid: int) -> list[tuple[str, Any]]:
    """Medians of the rows the plots cover; absent where no row was scored."""
    items: list[tuple[str, Any]] = []
    if stats.kept_per_image.size:
        items.append(("kept / image (median)", f"{np.median(stats.kept_per_image):.0f}/{grid * grid}"))
    if stats.kept_mass.size:
        items.append(("kept_mass (median)", f"{np.median(stats.kept_mass):.2f}"))
    return items


def _coverage(r: Report) -> str:
    st, gp = r.stats, r.group_plan
    if gp.complete and st.groups_read == st.groups_planned:
        return f"Plots from every row of the folder ({st.rows:,} rows)."
    total = r.summary.get("rows_out")
    of = f" of {total:,}" if isinstance(total, int) else ""
    return (
        f"Plots from {st.rows:,}{of} rows: {st.groups_read:,} row groups chosen at random from "
        f"{gp.files_opened:,} of {gp.files_total:,} files (the report reads a bounded part of large folders). "
        "Status counts come from _summary.json and cover the whole run."
    )


def _objects_note(run_info: dict[str, Any]) -> str | None:
    """Why `objects` is empty in every row, shortened for a plot (_run.json's models.objects.note)."""
    objects = (run_info.get("models") or {}).get("objects") or {}
    if objects.get("source") is None and objects.get("note"):
        return "the scorer has no classification head\nand no vision.classifier: no objects"
    return None


def _plots(r: Report) -> str:
    figures = "".join(
        f'<figure><img src="{uri}" alt="{_attr(caption)}" title="{_attr(caption)}"></figure>'
        for caption, uri in plots.all_plots(r.stats, r.summary, _objects_note(r.run_info))
    )
    return f'<p class="note">{escape(_coverage(r))}</p><div class="plots">{figures}</div>'


def _flatten(prefix: str, value: Any) -> list[tuple[str, Any]]:
    if isinstance(value, dict) and value:
        return [kv for k, v in value.items() for kv in _flatten(f"{prefix}.{k}" if prefix else str(k), v)]
    return [(prefix, value)]


def _when(value: Any) -> Any:
    """Epoch seconds as a UTC time a person reads; anything else as it is."""
    if isinstance(value, (int, float)):
        return datetime.fromtimestamp(value, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return value


def _kv_table(pairs: list[tuple[str, Any]]) -> str:
    rows = "".join(f"<tr><td>{escape(k)}</td><td>{escape(_fmt(v))}</td></tr>" for k, v in pairs)
    return f'<table class="kv">{rows}</table>'


def _run(r: Report) -> str:
    info = r.run_info
    facts = _flatten("models", info.get("models", {})) + _flatten("geometry", info.get("geometry", {}))
    facts += [(k, _when(info[k])) for k in ("started_at", "ended_at") if k in info]
    facts += _flatten("versions", info.get("versions", {}))
    facts += [(f"summary.{k}", v) for k, v in r.summary.items() if not isinstance(v, dict)]
    config = json.dumps(info.get("config", {}), indent=2, sort_keys=True, default=str)
    raw = json.dumps({k: v for k, v in info.items() if k != "config"}, indent=2, default=str)
    missing = "" if info else '<p class="note">No _run.json in this folder.</p>'
    return (
        f'{missing}<div class="run"><div>{_kv_table(facts) if facts else ""}</div><div>'
        f"<details><summary>Resolved config (_run.json)</summary><pre>{escape(config)}</pre></details>"
        f"<details><summary>Run metadata</summary><pre>{escape(raw)}</pre></details></div></div>"
    )


def _options(counts: Counter, label: str) -> str:
    opts = [f'<option value="">all {escape(label)}</option>']
    opts += [
        f'<option value="{_attr(v)}">{escape(v)} ({n})</option>'
        for v, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    ]
    return "".join(opts)


def _filters(cards: list[Card]) -> str:
    statuses = Counter(c.status for c in cards)
    classes = Counter(label for c in cards for label in {label for label, _ in c.objects})
    rewritten = Counter("yes" if c.rewritten_html is not None else "no" for c in cards)
    rw = "".join(f'<option value="{v}">{v} ({rewritten.get(v, 0)})</option>' for v in ("yes", "no"))
    return (
        '<div class="filters">'
        f'<label>status<select id="f-status">{_options(statuses, "statuses")}</select></label>'
        f'<label>object<select id="f-class">{_options(classes, "objects")}</select></label>'
        f'<label>rewritten<select id="f-rewritten"><option value="">either</option>{rw}</select></label>'
        '<span class="legend">bright: kept patches · dimmed: dropped · hover a picture to see it whole · '
        '<del>removed</del> <ins>added</ins> by the rewrite</span><span id="shown"></span></div>'
    )


def _thumb(c: Card) -> str:
    if c.view_uri is None:
        return f'<div class="thumb"><div class="missing">{escape(c.image_note or "no picture")}</div></div>'
    layers = ""
    if c.overlay_uri is not None:
        layers += f'<img class="masked" src="{c.overlay_uri}" alt="kept patches of {_attr(c.key)}">'
        layers += f'<img class="plain" src="{c.view_uri}" alt="canonical view of {_attr(c.key)}">'
    else:
        layers += f'<img src="{c.view_uri}" alt="canonical view of {_attr(c.key)}">'
    return f'<div class="thumb">{layers}</div>'


def _card(c: Card, grid: int) -> str:
    bad = c.status != OK
    badges = f'<span class="badge {"bad" if bad else "good"}">{escape(c.status)}</span>'
    if c.rewrite_status not in (REWRITE_OK, REWRITE_DISABLED):
        badges += f'<span class="badge bad">rewrite {escape(c.rewrite_status)}</span>'
    if c.kept is not None:
        badges += f'<span class="badge">kept {c.kept}/{grid * grid}</span>'
    error = f'<div class="error">{escape(c.error)}</div>' if c.error else ""
    objects = "".join(
        f'<span class="obj">{escape(label)}<i>{score:.2f}</i></span>' for label, score in c.objects
    )
    caption = c.caption_html if c.caption_html is not None else "<em>no caption</em>"
    rewrite = ""
    if c.rewritten_html is not None:
        rewrite = f'<div class="cap"><span class="lab">rewritten</span>{c.rewritten_html}</div>'
    rewrite += rejected_block(c.candidate_html, c.rewrite_status)  # what the guard refused, and why
    classes = json.dumps(sorted({label for label, _ in c.objects}))
    return (
        f'<article class="card{" rejected" if bad else ""}" data-status="{_attr(c.status)}" '
        f'data-rewritten="{"yes" if c.rewritten_html is not None else "no"}" data-classes="{_attr(classes)}">'
        f'{_thumb(c)}<div class="body"><div class="head">{badges}</div><div class="key">{escape(c.key)}</div>'
        f'{error}<div class="objects">{objects}</div>'
        f'<div class="cap"><span class="lab">{"original" if rewrite else "caption"}</span>{caption}</div>'
        f"{rewrite}</div></article>"
    )


def render(r: Report) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    cards = "".join(_card(c, r.geometry.grid) for c in r.cards)
    sample_note = (
        f"{len(r.cards)} rows drawn at random (seed {r.seed}) from {r.sample_groups} row groups; "
        "the canonical view each row was scored on."
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Curation report · {escape(r.output_dir)}</title>
<style>{CSS}</style></head>
<body>
<header><h1>Curation report</h1><div class="sub">{escape(r.output_dir)} · built {stamp}</div>
<div class="kpis">{_kpis(r)}</div></header>
<section id="summary"><h2>Summary</h2>{_plots(r)}</section>
<section id="sample"><h2>Sampled rows</h2><p class="note">{escape(sample_note)}</p>
{_filters(r.cards)}<div class="cards">{cards}</div></section>
<section id="run"><h2>Run</h2>{_run(r)}</section>
<pre id="selftest-result"></pre>
<script>{JS}</script>
</body></html>
"""
