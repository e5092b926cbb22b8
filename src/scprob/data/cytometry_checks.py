"""Checks of cytometry input before any work: non-finite values named by cell and marker
(:func:`check_finite`), and the heuristic "does this look transformed and scaled?" warnings
(:func:`check_preprocessed`) that Scyan gives before training."""

from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp

from .validate import DataError, _first_bad, iter_row_chunks

__all__ = ["check_finite", "check_preprocessed"]


def check_finite(X, marker_names, obs_names) -> None:
    """Raise DataError naming the first cell and marker holding NaN or Inf."""
    for start, block in iter_row_chunks(X):
        hit = _first_bad(block, lambda v: ~np.isfinite(v))
        if hit is not None:
            r, c = hit
            raise DataError(
                f"non-finite value ({block[r, c]}) at cell {str(obs_names[start + r])!r}, marker {str(marker_names[c])!r}; "
                "remove or fix such events before preprocessing"
            )


def _names(names, idx, k: int = 5) -> str:
    shown = [str(names[i]) for i in idx[:k]]
    return ", ".join(shown) + (f" and {len(idx) - k} more" if len(idx) > k else "")


def check_preprocessed(X, marker_names, max_rows: int = 50_000, seed: int = 0) -> list[str]:
    """Heuristic warnings (a list of sentences; empty when the data look fine) about data
    that look untransformed or unscaled.  Nothing is raised.

    - untransformed: a marker's largest absolute value is above 100, or the typical marker
      is strongly right-skewed (median skewness > 5), as raw intensities are;
    - unscaled (only checked when the data look transformed): more than half of the markers
      have |mean| > 0.5 or a standard deviation outside [0.5, 2].

    At most ``max_rows`` random events are looked at."""
    X = X.toarray() if sp.issparse(X) else np.asarray(X)
    if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] == 0:
        return []
    names = [str(n) for n in marker_names]
    if X.shape[0] > max_rows:
        rows = np.random.default_rng(seed).choice(X.shape[0], max_rows, replace=False)
        X = X[np.sort(rows)]
    X = X.astype(np.float64)
    warnings_out: list[str] = []
    finite = np.isfinite(X)
    if not finite.all():
        bad = np.flatnonzero(~finite.all(axis=0))
        warnings_out.append(f"markers {_names(names, bad)} hold NaN or Inf values (see check_finite); they are ignored below.")
        X = np.where(finite, X, np.nan)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        amax = np.nanmax(np.abs(X), axis=0)
        mean = np.nanmean(X, axis=0)
        std = np.nanstd(X, axis=0)
        skew = np.nanmean(((X - mean) / np.where(std > 0, std, np.nan)) ** 3, axis=0)
    big = np.flatnonzero(amax > 100)
    med_skew = float(np.nanmedian(skew)) if np.isfinite(skew).any() else 0.0
    untransformed = big.size > 0 or med_skew > 5
    if untransformed:
        why = (
            f"markers {_names(names, big)} reach |values| above 100"
            if big.size
            else f"the typical marker is strongly right-skewed (median skewness {med_skew:.1f})"
        )
        warnings_out.append(
            f"the data look untransformed: {why}. Transform them first: "
            "scprob.data.cytometry.asinh_transform(adata, cofactor=5) for mass cytometry, cofactor=150 for "
            "flow cytometry, or logicle_transform(adata) for flow cytometry."
        )
    else:
        off = np.flatnonzero((np.abs(mean) > 0.5) | (std < 0.5) | (std > 2))
        if off.size > 0.5 * X.shape[1]:
            warnings_out.append(
                f"the data look unscaled: {off.size} of {X.shape[1]} markers (e.g. {_names(names, off, 3)}) have "
                f"mean far from 0 or standard deviation far from 1. Standardise them: scprob.data.cytometry.scale(adata)."
            )
    return warnings_out
