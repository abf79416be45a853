"""The pictures of ``bench_scorers.py`` (docs/scorers/*.png): overlays drawn by the report's own
``overlay``, composed with matplotlib (Agg) and saved as small palette PNGs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from datajuicer_ray.vision.geometry import keep_count, top_k_indices

FIXED = (0.25, 0.5, 0.75)  # the fixed keep ratios shown beside mass retention
SIZE, GRID = 224, 14  # the canonical view and the contract's grid (docs/contract.md, "Geometry")


@dataclass
class Scored:
    """One image under one scorer: its view, the stored map and what mass retention kept."""

    name: str
    view: np.ndarray  # uint8 [S, S, 3]
    scores: np.ndarray  # float32 [G*G], the row's patch_scores
    mass_index: np.ndarray  # the row's patch_index under vision.retention=mass
    attention: np.ndarray  # [CLS] -> patch attention on the scorer's own grid, sums to <= 1
    prefix_share: float  # [CLS] attention on [CLS] itself and any register tokens
    norms: np.ndarray  # last-layer output norms of the patch tokens (before the final LayerNorm)

    def fixed_index(self, ratio: float) -> np.ndarray:
        return top_k_indices(self.scores, keep_count(ratio, GRID))

    def mass_of(self, index: np.ndarray) -> float:
        return float(self.scores[index].sum() / self.scores.sum())

    def top_share(self, n: int = 3) -> float:
        """Share of the patch attention held by its ``n`` strongest tokens."""
        return float(np.sort(self.attention)[::-1][:n].sum() / self.attention.sum())

    def norm_ratio(self) -> float:
        """Largest patch-token norm over the median one: Darcet et al.'s artifact tokens stand out here."""
        return float(self.norms.max() / np.median(self.norms))

    def top_on_border(self, n: int = 3) -> int:
        """How many of the ``n`` most attended tokens lie on the grid's outer ring (23% of a 16 x 16 grid)."""
        g = int(round(len(self.attention) ** 0.5))
        rows, cols = np.divmod(np.argsort(-self.attention)[:n], g)
        return int(((rows == 0) | (rows == g - 1) | (cols == 0) | (cols == g - 1)).sum())

    def top_norm_percentile(self, n: int = 3) -> float:
        """Where the ``n`` most attended tokens rank among all patch norms (100 = the largest norms)."""
        ranks = self.norms.argsort().argsort() / (len(self.norms) - 1) * 100
        return float(ranks[np.argsort(-self.attention)[:n]].mean())


def _tile(s: Scored, index: np.ndarray, side: int) -> Image.Image:
    from datajuicer_ray.report.overlay import overlay

    return overlay(Image.fromarray(s.view), index, GRID).resize((side, side), Image.Resampling.LANCZOS)


def _save(fig, path: Path) -> None:
    """Small PNGs: rendered once, then quantised to a 256-colour palette (photos survive it well enough)."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi)
    img = Image.open(buf).convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT)
    img.save(path, optimize=True)


def _grid(rows: list[list[tuple[Image.Image, str]]], path: Path, side: int = 150) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ncol = max(len(r) for r in rows)
    fig = Figure(figsize=(ncol * side / 100, len(rows) * (side + 22) / 100), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(rows), ncol, squeeze=False)
    for r, row in enumerate(rows):
        for c in range(ncol):
            ax = axes[r][c]
            ax.set_axis_off()
            if c < len(row):
                ax.imshow(row[c][0])
                ax.set_title(row[c][1], fontsize=7)
    _save(fig, path)


def retention_figure(scored: list[Scored], path: Path) -> None:
    rows = []
    for s in scored:
        row = [(_tile(s, s.fixed_index(r), 150), f"{s.name[:22]}: fixed {r}") for r in FIXED]
        row.append((_tile(s, s.mass_index, 150), f"mass 0.6: {len(s.mass_index)} kept"))
        rows.append(row)
    _grid(rows, path)


def sample_figure(scored: list[Scored], path: Path, per_row: int = 4) -> None:
    tiles = []
    for s in scored:
        tiles.append((_tile(s, s.fixed_index(0.5), 130), f"{s.name[:26]}\nfixed 0.5"))
        tiles.append((_tile(s, s.mass_index, 130), f"mass 0.6: {len(s.mass_index)} kept"))
    rows = [tiles[i : i + 2 * per_row] for i in range(0, len(tiles), 2 * per_row)]
    _grid(rows, path, side=130)


def attention_figure(scored: list[Scored], path: Path) -> None:
    """The raw [CLS] attention over each view, its three strongest tokens circled."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ncol = 4
    nrow = -(-len(scored) // ncol)
    fig = Figure(figsize=(ncol * 2.0, nrow * 2.25), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    for i, s in enumerate(scored):
        ax = fig.add_subplot(nrow, ncol, i + 1)
        g = int(round(len(s.attention) ** 0.5))
        ax.imshow(s.view)
        ax.imshow(s.attention.reshape(g, g), cmap="inferno", alpha=0.6, extent=(0, SIZE, SIZE, 0))
        for t in np.argsort(-s.attention)[:3]:
            y, x = (np.array(divmod(int(t), g)) + 0.5) * SIZE / g
            ax.add_patch(_circle(x, y))
        ax.set_title(f"{s.name[:22]}: top-3 hold {s.top_share(3):.0%}", fontsize=7)
        ax.set_axis_off()
    _save(fig, path)


def _circle(x: float, y: float):
    from matplotlib.patches import Circle

    return Circle((x, y), 9, fill=False, color="#40c057", linewidth=1.4)


def layouts_figure(by_model: dict[str, list[Scored]], names: tuple[str, ...], path: Path) -> None:
    rows = []
    for name in names:
        row = []
        for model, scored in by_model.items():
            s = next(x for x in scored if x.name == name)
            row.append((_tile(s, s.fixed_index(0.5), 150), f"{model}\n{name}, fixed 0.5"))
        rows.append(row)
    _grid(rows, path)
