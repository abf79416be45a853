"""Page rendering: one self-contained HTML document (inline CSS, JS and images; nothing fetched), from the
Jinja2 templates in ``templates/``: ``page.html`` and ``card.html`` (not ``report.html``: .gitignore keeps
written reports, ``report*.html``, out of git). This module gathers what they show."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from markupsafe import Markup

from datajuicer_ray.io.schema import OK, REWRITE_DISABLED, REWRITE_OK
from datajuicer_ray.report import plots
from datajuicer_ray.report.assets import CSS, JS
from datajuicer_ray.report.groups import GroupPlan
from datajuicer_ray.report.stats import FolderStats
from datajuicer_ray.vision.geometry import Geometry


@dataclass
class Card:
    """One sampled row, ready to render."""

    key: str
    status: str
    error: str | None
    rewrite_status: str
    objects: list[tuple[str, float]]
    # Escaped HTML (Markup), with the rewrite's diff marked up: captions.diff_words or markupsafe.escape.
    caption_html: Markup | None
    rewritten_html: Markup | None
    kept: int | None = None
    # The rewrite the guard rejected (or that did not parse), diffed against the caption; None otherwise.
    candidate_html: Markup | None = None
    view_uri: str | None = None
    overlay_uri: str | None = None
    image_note: str | None = None


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


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _labels_json(objects: list[tuple[str, float]]) -> str:
    """A card's object classes for the page's filter script (``data-classes``); escaped by the template."""
    return json.dumps(sorted({label for label, _ in objects}))


def _kpis(r: Report) -> list[tuple[str, Any]]:
    s, cfg = r.summary, r.run_info.get("config", {})
    by_status = s.get("by_status") or r.stats.by_status
    rows_out = s.get("rows_out", r.stats.rows if r.group_plan.complete else None)
    rejected = sum(v for k, v in by_status.items() if k != OK)
    rewritten = (s.get("by_rewrite_status") or r.stats.by_rewrite_status).get(REWRITE_OK, 0)
    g = r.geometry
    return [
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
    """Why `objects` is empty in every row, shortened for a plot (the run record's models.objects.note)."""
    objects = (run_info.get("models") or {}).get("objects") or {}
    if objects.get("source") is None and objects.get("note"):
        return "the scorer has no classification head\nand no vision.classifier: no objects"
    return None


def _flatten(prefix: str, value: Any) -> list[tuple[str, Any]]:
    if isinstance(value, dict) and value:
        return [kv for k, v in value.items() for kv in _flatten(f"{prefix}.{k}" if prefix else str(k), v)]
    return [(prefix, value)]


def _when(value: Any) -> Any:
    """Epoch seconds as a UTC time a person reads; anything else as it is."""
    if isinstance(value, (int, float)):
        return datetime.fromtimestamp(value, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return value


def _by_count(counts: Counter) -> list[tuple[str, int]]:
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))


_ENV = Environment(
    loader=PackageLoader("datajuicer_ray.report", "templates"),
    # Escaping is the default for the page: a caption, key or error is text from the web, and one
    # "<script>" in it must show as text, not run. Markup (the caption diffs, CSS and JS) is the exception.
    autoescape=select_autoescape(["html"]),
    undefined=StrictUndefined,  # a misspelt field fails the report instead of rendering as nothing
    trim_blocks=True,
    lstrip_blocks=True,
)
_ENV.filters.update(fmt=_fmt, labels_json=_labels_json)
_ENV.globals.update(OK=OK, REWRITE_OK=REWRITE_OK, REWRITE_DISABLED=REWRITE_DISABLED)


def render_card(c: Card, grid: int) -> str:
    """One card's HTML, as the page shows it."""
    return str(_ENV.get_template("card.html").module.card(c, grid))  # type: ignore[attr-defined]


def render(r: Report) -> str:
    info = r.run_info
    facts = _flatten("models", info.get("models", {})) + _flatten("geometry", info.get("geometry", {}))
    facts += [(k, _when(info[k])) for k in ("started_at", "ended_at") if k in info]
    facts += _flatten("versions", info.get("versions", {}))
    facts += [(f"summary.{k}", v) for k, v in r.summary.items() if not isinstance(v, dict)]
    rewritten = Counter("yes" if c.rewritten_html is not None else "no" for c in r.cards)
    return _ENV.get_template("page.html").render(
        output_dir=r.output_dir,
        stamp=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        css=Markup(CSS),
        js=Markup(JS),
        kpis=_kpis(r),
        coverage=_coverage(r),
        plots=plots.all_plots(r.stats, r.summary, _objects_note(r.run_info)),
        sample_note=(
            f"{len(r.cards)} rows drawn at random (seed {r.seed}) from {r.sample_groups} row groups; "
            "the canonical view each row was scored on."
        ),
        statuses=_by_count(Counter(c.status for c in r.cards)),
        classes=_by_count(Counter(label for c in r.cards for label in {label for label, _ in c.objects})),
        rewritten=[(v, rewritten.get(v, 0)) for v in ("yes", "no")],
        cards=r.cards,
        grid=r.geometry.grid,
        has_run_info=bool(info),
        facts=facts,
        config=json.dumps(info.get("config", {}), indent=2, sort_keys=True, default=str),
        raw=json.dumps({k: v for k, v in info.items() if k != "config"}, indent=2, default=str),
    )
