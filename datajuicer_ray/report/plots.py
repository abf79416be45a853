"""Summary plots (matplotlib, Agg, no pyplot state), each returned as an inlined PNG data URI."""

from __future__ import annotations

import base64
import io
from collections import Counter

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from datajuicer_ray.io.schema import OK
from datajuicer_ray.report.stats import TOP_CLASSES, FolderStats

OK_COLOR = "#2f9e44"
BAD_COLOR = "#e8590c"
NEUTRAL = "#4c6ef5"
GREY = "#adb5bd"
SIZE = (4.6, 2.7)
DPI = 110


def _figure(title: str) -> tuple[Figure, object]:
    fig = Figure(figsize=SIZE, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set_title(title, fontsize=10, loc="left")
    ax.tick_params(labelsize=8)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return fig, ax


def _png(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _short(label: str, width: int = 28) -> str:
    return label if len(label) <= width else label[: width - 1] + "…"


def _status_color(value: str) -> str:
    if value == OK:
        return OK_COLOR
    if value in ("disabled",) or value.startswith("skipped"):
        return GREY
    return BAD_COLOR


def _min_slots(ax, n: int, slots: int = 4) -> None:
    """Keep bars one thickness whether there are 2 categories or 12."""
    ax.set_ylim(min(0, n - slots) - 0.6, n - 0.4)  # spare room below: the largest bar stays on top


def counts_bar(title: str, counts: Counter | dict) -> str:
    """Horizontal bars, largest first, ok in green and every kind of rejection in orange."""
    fig, ax = _figure(title)
    items = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:12]
    if not items:
        ax.text(0.5, 0.5, "no rows", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return _png(fig)
    labels = [_short(str(k)) for k, _ in items][::-1]
    values = [v for _, v in items][::-1]
    bars = ax.barh(labels, values, height=0.6, color=[_status_color(str(k)) for k, _ in items][::-1])
    _min_slots(ax, len(items))
    ax.bar_label(bars, labels=[f"{v:,}" for v in values], fontsize=8, padding=2)
    ax.margins(x=0.18)
    ax.set_xlabel("rows", fontsize=8)
    return _png(fig)


def objects_per_image(stats: FolderStats) -> str:
    fig, ax = _figure("Objects named per image (ok rows)")
    counts = stats.objects_per_image
    if counts:
        xs = np.arange(0, max(counts) + 1)
        ax.bar(xs, [counts.get(int(x), 0) for x in xs], width=0.6, color=NEUTRAL)
        ax.set_xticks(xs)
        ax.set_xlim(-0.6, max(xs[-1], 4) + 0.6)  # one value should not fill the whole plot
    ax.set_xlabel("objects", fontsize=8)
    ax.set_ylabel("images", fontsize=8)
    return _png(fig)


def top_classes(stats: FolderStats, empty_note: str | None = None) -> str:
    """The most frequent object labels; ``empty_note`` says why there are none when the run knows (a
    scorer without a classification head names no objects at all, whatever the confidence)."""
    fig, ax = _figure(f"Top {TOP_CLASSES} object classes")
    items = stats.classes.most_common(TOP_CLASSES)
    if items:
        labels = [_short(k, 24) for k, _ in items][::-1]
        ax.barh(labels, [v for _, v in items][::-1], height=0.6, color=NEUTRAL)
        _min_slots(ax, len(items))
        ax.tick_params(axis="y", labelsize=7)
    else:
        ax.text(
            0.5,
            0.5,
            empty_note or "no object scored vision.min_confidence or more",
            ha="center",
            va="center",
            transform=ax.transAxes,
            fontsize=9,
            color="#868e96",
        )
        ax.set_axis_off()
    ax.set_xlabel("images", fontsize=8)
    return _png(fig)


def caption_lengths(stats: FolderStats) -> str:
    fig, ax = _figure("Caption length (words)")
    before, after = stats.words("caption"), stats.words("rewritten")
    both = np.concatenate([before, after]) if before.size + after.size else np.zeros(1)
    # Clip the long tail so one runaway caption does not squash the histogram into one bar.
    lo, top = int(np.percentile(both, 1)), max(1, int(np.percentile(both, 99)))
    bins = np.arange(lo, top + 2) if top - lo < 40 else np.linspace(lo, top + 1, 41)
    if before.size:
        ax.hist(
            np.clip(before, lo, top), bins=bins, alpha=0.6, color=GREY, label=f"original (n={before.size:,})"
        )
    if after.size:
        ax.hist(
            np.clip(after, lo, top),
            bins=bins,
            alpha=0.6,
            color=NEUTRAL,
            label=f"rewritten (n={after.size:,})",
        )
    if before.size or after.size:
        ax.legend(fontsize=7, frameon=False)
    ax.set_xlabel("words", fontsize=8)
    ax.set_ylabel("captions", fontsize=8)
    return _png(fig)


def kept_heatmap(stats: FolderStats) -> str:
    """How often each grid position is kept; a centre bias shows as a bright middle."""
    fig, ax = _figure(f"Kept-patch positions ({stats.grid}×{stats.grid})")
    im = ax.imshow(stats.kept_share, cmap="magma", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    cbar = fig.colorbar(im, ax=ax, shrink=0.85)
    cbar.ax.tick_params(labelsize=7)
    cbar.set_label("share of images keeping it", fontsize=7)
    return _png(fig)


def _no_data(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=9, color="#868e96")
    ax.set_axis_off()


def _median_line(ax, values: np.ndarray, fmt: str) -> None:
    med = float(np.median(values))
    ax.axvline(med, color=BAD_COLOR, linewidth=1, linestyle="--")
    ax.text(
        med,
        1.0,
        f" median {fmt.format(med)}",
        transform=ax.get_xaxis_transform(),
        fontsize=7,
        color=BAD_COLOR,
        va="top",
    )


def kept_per_image(stats: FolderStats) -> str:
    """How many patches each image kept: one bar under fixed retention, a spread under mass retention."""
    cells = stats.grid * stats.grid
    fig, ax = _figure(f"Patches kept per image (of {cells})")
    counts = stats.kept_per_image
    if not counts.size:
        _no_data(ax, "no scored rows")
        return _png(fig)
    lo, hi = int(counts.min()), int(counts.max())
    # Whole-patch bins when the range is narrow; about 30 bins over a wide one. A single value (fixed
    # retention) gets a visible bar rather than a zero-width one.
    step = max(1, -(-(hi - lo + 1) // 30))
    bins = np.arange(lo, hi + step + 1, step) - 0.5
    ax.hist(counts, bins=bins, color=NEUTRAL)
    ax.set_xlim(max(0, lo - 0.1 * cells) - 0.5, min(cells, hi + 0.1 * cells) + 0.5)
    _median_line(ax, counts, "{:.0f}")
    ax.set_xlabel("patches kept (len(patch_index))", fontsize=8)
    ax.set_ylabel("images", fontsize=8)
    return _png(fig)


def kept_mass(stats: FolderStats) -> str:
    """The share of each image's score map its kept patches hold (kept_mass)."""
    fig, ax = _figure("Score mass held by the kept patches")
    mass = stats.kept_mass
    if not mass.size:
        _no_data(ax, "no kept_mass in these rows\n(curated before the column existed)")
        return _png(fig)
    ax.hist(np.clip(mass, 0, 1), bins=np.linspace(0, 1, 41), color=NEUTRAL)
    ax.set_xlim(0, 1)
    _median_line(ax, mass, "{:.2f}")
    ax.set_xlabel("kept_mass (share of the image's patch_scores)", fontsize=8)
    ax.set_ylabel("images", fontsize=8)
    return _png(fig)


def all_plots(stats: FolderStats, summary: dict, objects_note: str | None = None) -> list[tuple[str, str]]:
    """(caption, data URI) pairs. Status counts come from _summary.json (the whole run) where it has them;
    ``objects_note`` is the run record's reason for empty ``objects``, if it gives one."""
    by_status = summary.get("by_status") or stats.by_status
    by_rewrite = summary.get("by_rewrite_status") or stats.by_rewrite_status
    source = "whole run (_summary.json)" if summary.get("by_status") else "rows read"
    return [
        (f"Rows by status, {source}", counts_bar("Rows by status", by_status)),
        (f"Rows by rewrite status, {source}", counts_bar("Rows by rewrite_status", by_rewrite)),
        ("Objects per image", objects_per_image(stats)),
        ("Top object classes", top_classes(stats, objects_note)),
        ("Caption length before and after rewriting", caption_lengths(stats)),
        ("Kept-patch position heat map", kept_heatmap(stats)),
        ("Patches kept per image", kept_per_image(stats)),
        ("Score mass held by the kept patches (kept_mass)", kept_mass(stats)),
    ]
