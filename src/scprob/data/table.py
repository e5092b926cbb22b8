"""Knowledge tables (Scyan): populations x markers, entries -1 (negative) / 1 (positive)
/ empty (= NaN, not informative), with optional hierarchy levels.  Values strictly
between -1 and 1 (e.g. 0 or 0.5 for "mid" / "low" expression, as in published Scyan
tables) are accepted as intermediate targets.

A table is a CSV whose first column names the populations; further columns named
``"level..."`` (e.g. ``"level"``, ``"level 1"``, ``"level 2"``) or holding no number at all
are hierarchy levels (coarser groupings of the populations); all other columns are
markers (a word among a marker's numbers, e.g. ``"pos"``, is an error, not a level).  A DataFrame may also
carry the levels as extra index levels (a MultiIndex whose first level is the
population).  :func:`read_table` returns a :class:`KnowledgeTable`; every problem is a
:class:`DataError` naming the population, marker and value.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .validate import DataError


@dataclass
class KnowledgeTable:
    rho: pd.DataFrame  # populations x markers, float: -1, 1 or NaN
    levels: pd.DataFrame  # populations x level names (may have no columns)

    @property
    def populations(self) -> list[str]:
        return [str(p) for p in self.rho.index]

    @property
    def markers(self) -> list[str]:
        return [str(m) for m in self.rho.columns]

    def to_frame(self) -> pd.DataFrame:
        """The table as read: levels as extra index levels when present."""
        if self.levels.shape[1] == 0:
            return self.rho.copy()
        idx = pd.MultiIndex.from_frame(self.levels.reset_index())
        return pd.DataFrame(self.rho.to_numpy(), index=idx, columns=self.rho.columns)


def _is_level_column(name, col: pd.Series) -> bool:
    """A hierarchy level: named "level..." or holding no number at all.  A column mixing
    numbers and words is a marker column with a typo (reported by read_table)."""
    if str(name).strip().lower().startswith("level"):
        return True
    vals = col.dropna()
    if vals.empty:
        return False
    return pd.to_numeric(vals, errors="coerce").isna().all()


def read_table(table: str | os.PathLike | pd.DataFrame | KnowledgeTable) -> KnowledgeTable:
    """Parse and validate a knowledge table (path to a CSV, or a DataFrame)."""
    if isinstance(table, KnowledgeTable):
        return table
    if isinstance(table, (str, os.PathLike)):
        if not os.path.exists(table):
            raise FileNotFoundError(f"knowledge table {os.fspath(table)!r} does not exist")
        try:
            df = pd.read_csv(table, index_col=0)
        except Exception as e:  # noqa: BLE001 - any parser failure becomes one clear error
            raise DataError(f"cannot read knowledge table {os.fspath(table)!r}: {e}") from e
    elif isinstance(table, pd.DataFrame):
        df = table.copy()
    else:
        raise TypeError(f"table must be a CSV path or a pandas DataFrame, got {type(table).__name__}")
    if isinstance(df.index, pd.MultiIndex):
        names = [str(n) if n is not None else f"level {i}" for i, n in enumerate(df.index.names)]
        flat = df.index.to_frame(index=False)
        flat.columns = names
        df.index = pd.Index(flat.iloc[:, 0].astype(str), name=names[0])
        levels = flat.iloc[:, 1:].set_index(df.index)
    else:
        df.index = df.index.astype(str)
        level_cols = [c for c in df.columns if _is_level_column(c, df[c])]
        levels = df[level_cols].apply(lambda s: s.map(lambda v: v if pd.isna(v) else str(v)))  # empty stays NaN
        df = df.drop(columns=level_cols)
    if df.shape[0] == 0 or df.shape[1] == 0:
        raise DataError("the knowledge table needs at least one population (row) and one marker (column)")
    df.columns = [str(c).strip() for c in df.columns]
    dup = df.index[df.index.duplicated()].unique().tolist()
    if dup:
        raise DataError(f"duplicate population name(s) in the knowledge table: {dup}")
    dup_m = pd.Index(df.columns)[pd.Index(df.columns).duplicated()].unique().tolist()
    if dup_m:
        raise DataError(f"duplicate marker column(s) in the knowledge table: {dup_m}")
    num = df.apply(pd.to_numeric, errors="coerce")
    bad = num.isna() & df.notna() | ~(num.isna() | ((num >= -1) & (num <= 1)))
    if bad.to_numpy().any():
        r, c = np.argwhere(bad.to_numpy())[0]
        raise DataError(
            f"knowledge table values must be -1, 1, empty (NaN) or an intermediate level in (-1, 1); population {df.index[r]!r}, "
            f"marker {df.columns[c]!r} has {df.iat[r, c]!r} ({int(bad.to_numpy().sum())} bad entries in all)"
        )
    empty_rows = num.index[num.isna().all(axis=1)].tolist()
    if empty_rows:
        raise DataError(f"population(s) {empty_rows} have no known marker (all NaN): the table cannot place them")
    if len(num) < 2:
        raise DataError("the knowledge table needs at least two populations")
    return KnowledgeTable(rho=num.astype(float), levels=levels.loc[num.index])
