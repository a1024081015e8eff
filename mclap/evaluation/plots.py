"""PNG figures for the evaluators, drawn with matplotlib's object-oriented API (no pyplot, so no
display or global backend is involved)."""

from __future__ import annotations

import pathlib

import matplotlib
import numpy as np
from matplotlib.figure import Figure


def new_figure(panels: int = 1, width: float = 5.5, height: float = 4.0) -> tuple[Figure, list]:
  """A figure with `panels` axes side by side."""
  figure = Figure(figsize=(width * panels, height))
  axes = figure.subplots(1, panels, squeeze=False)[0]
  return figure, list(axes)


def save(figure: Figure, path: pathlib.Path) -> str:
  """Writes the figure; returns its file name (the report links plots by name)."""
  figure.tight_layout()
  figure.savefig(path, dpi=110)
  return path.name


def overlaid_histograms(ax, series: dict[str, np.ndarray], xlabel: str, title: str, bins: int = 40) -> None:
  """Density histograms of several samples on shared bins, so their shapes compare directly."""
  values = [np.asarray(v, np.float64) for v in series.values() if len(v)]
  edges = np.histogram_bin_edges(np.concatenate(values), bins=bins)
  for name, v in series.items():
    ax.hist(v, bins=edges, density=True, alpha=0.55, label=f"{name} (n={len(v)})")
  ax.set_xlabel(xlabel)
  ax.set_ylabel("density")
  ax.set_title(title)
  ax.legend()


def colours(count: int) -> list:
  """`count` distinguishable colours (tab10, or tab20 beyond ten; repeating beyond twenty)."""
  palette = matplotlib.colormaps["tab10" if count <= 10 else "tab20"]
  return [palette(i % palette.N) for i in range(count)]
