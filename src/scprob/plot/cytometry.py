"""Figures for cytometry annotation (Scyan): marker heatmap, population sizes, loss curve,
confusion matrix against manual gates."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .figures import _plt

UNASSIGNED = "unassigned"


def _labels(pops) -> np.ndarray:
    """Population names as strings, NaN (unassigned) as ``"unassigned"``."""
    return pd.Series(pops, dtype=object).fillna(UNASSIGNED).astype(str).to_numpy()


def _order(values: np.ndarray, order: Sequence[str] | None) -> list[str]:
    present = set(values)
    first = [p for p in (order or []) if p in present]
    rest = sorted(present - set(first) - {UNASSIGNED})
    return first + rest + ([UNASSIGNED] if UNASSIGNED in present else [])


def plot_marker_heatmap(
    X: np.ndarray,
    markers: Sequence[str],
    pops,
    path: str | Path,
    table: pd.DataFrame | None = None,
    order: Sequence[str] | None = None,
) -> Path:
    """Median of each marker (columns) per predicted population (rows), with the knowledge
    table's expectation (+ / −) written in the cells it specifies."""
    plt = _plt()
    labels = _labels(pops)
    rows = _order(labels, order)
    med = pd.DataFrame(np.asarray(X, dtype=np.float64), columns=list(markers)).groupby(labels).median().loc[rows]
    counts = pd.Series(labels).value_counts()
    vmax = float(np.nanmax(np.abs(med.to_numpy()))) if med.size else 1.0
    fig, ax = plt.subplots(figsize=(1.2 + 0.45 * len(markers), 1.2 + 0.35 * len(rows)))
    im = ax.imshow(med.to_numpy(), cmap="RdBu_r", vmin=-vmax, vmax=vmax, aspect="auto")
    if table is not None:
        for i, p in enumerate(rows):
            for j, m in enumerate(markers):
                if p in table.index and m in table.columns and np.isfinite(v := float(table.loc[p, m])) and v != 0:
                    ax.text(j, i, "+" if v > 0 else "−", ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(markers)), list(markers), rotation=90, fontsize=8)
    ax.set_yticks(range(len(rows)), [f"{p} ({counts[p]})" for p in rows], fontsize=8)
    ax.set_title("median marker value per predicted population (+/−: knowledge table)", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.03, pad=0.02)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_population_sizes(pops, path: str | Path, batches=None, order: Sequence[str] | None = None) -> Path:
    """Percentage of cells per predicted population (every population of ``order``, empty
    ones too), one bar per batch (if given)."""
    plt = _plt()
    labels = _labels(pops)
    rows = list(order or []) + [r for r in _order(labels, order) if r not in set(order or [])]
    groups = np.asarray(batches).astype(str) if batches is not None else np.full(len(labels), "all cells")
    pct = pd.crosstab(labels, groups, normalize="columns").reindex(rows).fillna(0) * 100
    n_b = pct.shape[1]
    h = 0.8 / n_b
    fig, ax = plt.subplots(figsize=(7, 1.0 + (0.25 + 0.1 * n_b) * len(rows)))
    cmap = plt.get_cmap("tab10" if n_b <= 10 else "tab20")
    y = np.arange(len(rows))
    for k, b in enumerate(pct.columns):
        ax.barh(y - 0.4 + h * (k + 0.5), pct[b].to_numpy(), height=h, color=cmap(k % cmap.N), label=str(b))
    ax.set_yticks(y, rows, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("% of cells")
    ax.set_title("population sizes" + (" per batch" if batches is not None else ""), fontsize=10)
    if batches is not None and n_b <= 20:
        ax.legend(frameon=False, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_confusion(truth, pops, path: str | Path, order: Sequence[str] | None = None) -> Path:
    """Row-normalised confusion matrix: manual label (rows) vs predicted population."""
    plt = _plt()
    t, p = _labels(truth), _labels(pops)
    rows = _order(t, order)
    cols = _order(np.concatenate([p, np.array(rows)]), order)
    cm = pd.crosstab(t, p).reindex(index=rows, columns=cols).fillna(0)
    frac = cm.div(cm.sum(1).replace(0, 1), axis=0).to_numpy()
    fig, ax = plt.subplots(figsize=(1.5 + 0.4 * len(cols), 1.2 + 0.35 * len(rows)))
    ax.imshow(frac, cmap="Blues", vmin=0, vmax=1, aspect="auto")
    for i, j in zip(*np.nonzero(cm.to_numpy())):
        ax.text(j, i, int(cm.iat[i, j]), ha="center", va="center", fontsize=7, color="white" if frac[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(cols)), cols, rotation=90, fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    ax.set_xlabel("predicted population")
    ax.set_ylabel("manual label")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
