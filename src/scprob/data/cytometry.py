"""Cytometry preprocessing: CSV I/O, compensation, asinh/logicle transforms, scaling.

The usual order is ``compensate`` (raw linear fluorescence, flow cytometry) → one transform
(``asinh_transform`` or ``logicle_transform``) → ``scale``.  Each function changes
``adata.X`` in place and returns None (scanpy style), and records itself in
``adata.uns["scprob_cytometry"]``, a JSON-serialisable dict::

    {"compensated": True,
     "spillover": {"channels": [...], "matrix": [[...]]},           # when compensated
     "transform": {"kind": "asinh", "cofactor": 5.0, "markers": [...]},
                # or {"kind": "logicle", "t": 262144.0, "w": 0.5, "m": 4.5, "a": 0.0, "markers": [...]}
     "scale": {"markers": [...], "mean": [...], "std": [...], "max_value": 10.0}}

``apply_preprocessing(new_adata, record)`` replays such a record on new raw data with the
same parameters (same cofactor, same means and standard deviations, not refitted), which is
what a model trained on the recorded data expects.  The steps are kept in that order: a
second transform, a transform after scaling, or compensation after a transform raises
DataError (undo with ``unscale`` / ``inverse_transform`` first).

All functions act on ``adata.X`` (made a dense float32 array if it is not one).  The logicle
transform uses ``flowutils`` (its C implementation of Moore & Parks 2012, which works with
numpy 2); compensation is a single linear solve done with numpy.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from .cytometry_checks import check_finite, check_preprocessed
from .io import atomic_open, make_unique
from .validate import DataError

__all__ = [
    "apply_preprocessing",
    "asinh_transform",
    "check_finite",
    "check_preprocessed",
    "compensate",
    "inverse_transform",
    "logicle_transform",
    "read_csv",
    "scale",
    "unscale",
    "write_csv",
]

RECORD_KEY = "scprob_cytometry"


# --------------------------------------------------------------------------- helpers


def _jsonable(obj):
    """Plain Python (JSON-serialisable) copy of a record, also after an h5ad round trip
    (which turns lists into numpy arrays and bools into numpy bools)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.bool_ | bool):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, bytes):
        return obj.decode()
    if isinstance(obj, np.str_):
        return str(obj)
    return obj


def _record(adata) -> dict:
    rec = adata.uns.get(RECORD_KEY)
    rec = {"compensated": False} if rec is None else _jsonable(dict(rec))
    rec.setdefault("compensated", False)
    return rec


def _save_record(adata, rec: dict) -> None:
    adata.uns[RECORD_KEY] = _jsonable(rec)


def _actualize(adata) -> None:
    """Turn a view into an actual AnnData (its own copy of the data) before changing it:
    with anndata 0.12, setting ``X`` on a view would overwrite the parent's data."""
    if adata.is_view:
        warnings.warn(
            "received a view of an AnnData; making it an actual copy (the parent is left unchanged)", UserWarning, stacklevel=3
        )
        adata._init_as_actual(adata.copy())


def _dense_x(adata) -> np.ndarray:
    """adata.X as a float32 numpy array that may be modified in place (assign it back to
    ``adata.X`` afterwards: that also turns a view into an actual AnnData)."""
    X = adata.X
    if X is None:
        raise DataError("adata.X is empty (None)")
    if getattr(adata, "isbacked", False):
        raise DataError("adata is backed (on disk); load it with adata = adata.to_memory() first")
    if sp.issparse(X):
        return X.toarray().astype(np.float32, copy=False)
    if isinstance(X, np.ndarray) and X.dtype == np.float32 and not adata.is_view:
        return X
    return np.array(X, dtype=np.float32)


def _set_x(adata, X: np.ndarray) -> None:
    if adata.X is not X:
        adata.X = X


def _markers(adata, markers, what: str = "marker") -> tuple[list[str], np.ndarray]:
    """Resolve marker names (None = all) to (names, column indices); DataError names the
    missing ones."""
    names = [str(v) for v in adata.var_names]
    if len(set(names)) != len(names):
        raise DataError("adata.var_names are not unique; call adata.var_names_make_unique() first")
    if markers is None:
        return names, np.arange(len(names))
    if isinstance(markers, str):
        markers = [markers]
    markers = [str(m) for m in markers]
    pos = {n: i for i, n in enumerate(names)}
    missing = [m for m in markers if m not in pos]
    if missing:
        raise DataError(
            f"{what}(s) {missing} not found in adata.var_names (available: {names[:30]}{'...' if len(names) > 30 else ''})"
        )
    if len(set(markers)) != len(markers):
        raise DataError(f"{what}s are listed twice: {sorted({m for m in markers if markers.count(m) > 1})}")
    return markers, np.array([pos[m] for m in markers], dtype=np.int64)


def _check_cols_finite(adata, X: np.ndarray, idx: np.ndarray) -> None:
    check_finite(X[:, idx], [str(adata.var_names[i]) for i in idx], adata.obs_names)


# --------------------------------------------------------------------------- CSV


def read_csv(path: str | os.PathLike, **kwargs) -> ad.AnnData:
    """Read an events × columns CSV: numeric columns become markers (``X``, float32), other
    columns (text, booleans) go to ``obs`` (text as categorical).  ``kwargs`` go to
    ``pandas.read_csv``.  obs_names are ``"0".."n-1"``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CSV file not found: {str(path)!r}")
    try:
        df = pd.read_csv(path, **kwargs)
    except pd.errors.EmptyDataError:
        raise DataError(f"CSV file {str(path)!r} is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise DataError(f"CSV file {str(path)!r} cannot be parsed: {e}") from None
    if df.shape[0] == 0:
        raise DataError(f"CSV file {str(path)!r} has a header but no events (rows)")
    numeric = [c for c in df.columns if pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c])]
    if not numeric:
        raise DataError(f"CSV file {str(path)!r} has no numeric column to use as markers (columns: {list(df.columns)[:20]})")
    other = [c for c in df.columns if c not in numeric]
    X = df[numeric].to_numpy(dtype=np.float32)
    obs = pd.DataFrame(index=[str(i) for i in range(len(df))])
    for c in other:
        s = df[c]
        obs[str(c)] = s.to_numpy() if pd.api.types.is_bool_dtype(s) else pd.Categorical(s.to_numpy())
    var = pd.DataFrame(index=make_unique([str(c) for c in numeric], what=f"column names in {path.name}"))
    return ad.AnnData(X=X, obs=obs, var=var)


def write_csv(adata, path: str | os.PathLike, obs_columns: list[str] | str | None = None, layer: str | None = None) -> Path:
    """Write markers (``X`` or ``layers[layer]``) and the chosen obs columns as a CSV with a
    header and no index, atomically (temporary file + ``os.replace``).  Returns the path."""
    from .validate import get_matrix

    X = get_matrix(adata, layer)
    X = X.toarray() if sp.issparse(X) else np.asarray(X)
    df = pd.DataFrame(X, columns=[str(v) for v in adata.var_names])
    if isinstance(obs_columns, str):
        obs_columns = [obs_columns]
    for c in obs_columns or []:
        if c not in adata.obs.columns:
            raise DataError(f"obs column {c!r} not found in adata.obs (available: {list(adata.obs.columns)})")
        if str(c) in df.columns:
            raise DataError(f"obs column {c!r} has the same name as a marker; rename it before writing")
        df[str(c)] = adata.obs[c].to_numpy()
    with atomic_open(path, "w", newline="", encoding="utf-8") as fh:
        df.to_csv(fh, index=False)
    return Path(path)


# --------------------------------------------------------------------------- compensation


def _spillover_form(spillover, where: str) -> tuple[list[str], np.ndarray]:
    if isinstance(spillover, pd.DataFrame):
        chans = [str(c) for c in spillover.columns]
        mat = spillover.to_numpy(dtype=np.float64)
    elif isinstance(spillover, dict) and "channels" in spillover and "matrix" in spillover:
        chans = [str(c) for c in list(spillover["channels"])]
        try:
            mat = np.asarray(spillover["matrix"], dtype=np.float64)
        except (TypeError, ValueError):
            raise DataError(f"{where}: spillover matrix is not numeric") from None
    else:
        raise DataError(
            f"{where}: spillover must be a DataFrame (columns = channels) or a dict {{'channels', 'matrix'}}, got {type(spillover).__name__}"
        )
    n = len(chans)
    if mat.shape != (n, n):
        raise DataError(f"{where}: spillover matrix has shape {mat.shape} but {n} channels")
    if not np.all(np.isfinite(mat)):
        raise DataError(f"{where}: spillover matrix has NaN or Inf values")
    if len(set(chans)) != n:
        raise DataError(f"{where}: spillover channels are repeated: {chans}")
    return chans, mat


def _channel_index(adata, chans: list[str]) -> np.ndarray:
    names = [str(v) for v in adata.var_names]
    channel_col = [str(v) for v in adata.var["channel"]] if "channel" in adata.var.columns else []
    out, missing = [], []
    for c in chans:
        if c in channel_col:
            out.append(channel_col.index(c))
        elif c in names:
            out.append(names.index(c))
        else:
            missing.append(c)
    if missing:
        raise DataError(
            f"spillover channel(s) {missing} not found in adata.var['channel'] or adata.var_names "
            f"(channels: {channel_col[:30] or names[:30]})"
        )
    return np.array(out, dtype=np.int64)


def _apply_compensation(adata, chans, mat, rec: dict) -> None:
    idx = _channel_index(adata, chans)
    try:
        inv = np.linalg.inv(mat)
    except np.linalg.LinAlgError:
        raise DataError(f"the spillover matrix for channels {chans} is singular; it cannot be inverted") from None
    if not np.all(np.isfinite(inv)):
        raise DataError(f"the spillover matrix for channels {chans} is singular; it cannot be inverted")
    X = _dense_x(adata)
    _check_cols_finite(adata, X, idx)
    X[:, idx] = (X[:, idx].astype(np.float64) @ inv).astype(np.float32)
    _set_x(adata, X)
    rec["compensated"] = True
    rec["spillover"] = {"channels": list(chans), "matrix": mat.tolist()}
    _save_record(adata, rec)


def compensate(adata, spillover=None) -> None:
    """Compensate fluorescence spillover: ``X[:, channels] ← X[:, channels] @ inv(S)``.

    ``spillover``: a DataFrame (columns = channel names, rows in the same order) or the dict
    ``{"channels": [...], "matrix": [[...]]}``; None uses ``adata.uns["fcs"]["spillover"]``
    (read from the FCS file).  Channels are matched to ``var["channel"]`` (the FCS ``$PnN``)
    or to ``var_names``.  Compensation applies to raw, linear data: it refuses to run twice
    or after a transform/scaling."""
    _actualize(adata)
    rec = _record(adata)
    if rec.get("compensated"):
        raise DataError(
            "adata is already compensated (uns['scprob_cytometry']['compensated'] is True); refusing to compensate twice"
        )
    if rec.get("transform") or rec.get("scale"):
        raise DataError("compensate() needs raw linear data but adata is already transformed/scaled; compensate first")
    if spillover is None:
        fcs = adata.uns.get("fcs", {})
        spillover = fcs.get("spillover") if isinstance(fcs, dict) or hasattr(fcs, "get") else None
        if spillover is None:
            raise DataError(
                "no spillover matrix: adata.uns['fcs']['spillover'] is missing (the FCS file had no $SPILLOVER); pass spillover="
            )
        where = "adata.uns['fcs']['spillover']"
    else:
        where = "spillover"
    chans, mat = _spillover_form(spillover, where)
    _apply_compensation(adata, chans, mat, rec)


# --------------------------------------------------------------------------- transforms


def _check_no_transform(rec: dict) -> None:
    if rec.get("scale"):
        raise DataError("adata is already scaled; transform before scale() (or call unscale(adata) first)")
    t = rec.get("transform")
    if t:
        raise DataError(
            f"adata is already transformed ({t.get('kind')} on {len(t.get('markers', []))} markers); "
            "call inverse_transform(adata) first to use another transform"
        )


def asinh_transform(adata, cofactor: float = 5.0, markers: list[str] | None = None) -> None:
    """``X = arcsinh(X / cofactor)`` on ``markers`` (default: all).

    Cofactor 5 is the usual choice for mass cytometry (CyTOF); for fluorescence flow
    cytometry use about 150 (or ``logicle_transform``)."""
    _actualize(adata)
    cofactor = float(cofactor)
    if not math.isfinite(cofactor) or cofactor <= 0:
        raise DataError(f"cofactor must be a positive number, got {cofactor}")
    rec = _record(adata)
    _check_no_transform(rec)
    names, idx = _markers(adata, markers)
    X = _dense_x(adata)
    _check_cols_finite(adata, X, idx)
    X[:, idx] = np.arcsinh(X[:, idx] / np.float32(cofactor))
    _set_x(adata, X)
    rec["transform"] = {"kind": "asinh", "cofactor": cofactor, "markers": names}
    _save_record(adata, rec)


def _logicle_params(t, w, m, a) -> dict:
    t, w, m, a = float(t), float(w), float(m), float(a)
    if not all(math.isfinite(v) for v in (t, w, m, a)):
        raise DataError("logicle parameters t, w, m, a must be finite numbers")
    if t <= 0:
        raise DataError(f"logicle t (top of scale) must be > 0, got {t}")
    if m <= 0:
        raise DataError(f"logicle m (decades) must be > 0, got {m}")
    if w < 0 or w > m / 2:
        raise DataError(f"logicle w (linear decades) must be in [0, m/2] = [0, {m / 2}], got {w}")
    if a < -w or a > m - 2 * w:
        raise DataError(f"logicle a (extra negative decades) must be in [-w, m - 2w] = [{-w}, {m - 2 * w}], got {a}")
    return {"t": t, "w": w, "m": m, "a": a}


def _flowutils_transforms():
    try:
        from flowutils import transforms
    except ImportError as e:  # pragma: no cover - flowutils is a declared dependency
        raise ImportError("logicle_transform needs the flowutils package: pip install flowutils") from e
    return transforms


def logicle(x, t: float = 262144, w: float = 0.5, m: float = 4.5, a: float = 0.0) -> np.ndarray:
    """The logicle function (Parks et al. 2006; Moore & Parks 2012) of an array, in display
    units: ``logicle(t) = 1``, ``logicle(0) = (w + a) / (m + a)``, monotone, linear-like near
    0 and logarithmic (``m`` decades) at the top.  float64 result."""
    p = _logicle_params(t, w, m, a)
    x = np.asarray(x, dtype=np.float64)
    return _flowutils_transforms().logicle(x.ravel(), None, **p).reshape(x.shape)


def logicle_inverse(y, t: float = 262144, w: float = 0.5, m: float = 4.5, a: float = 0.0) -> np.ndarray:
    """Inverse of :func:`logicle`."""
    p = _logicle_params(t, w, m, a)
    y = np.asarray(y, dtype=np.float64)
    return _flowutils_transforms().logicle_inverse(y.ravel(), None, **p).reshape(y.shape)


def logicle_transform(
    adata, markers: list[str] | None = None, t: float = 262144, w: float = 0.5, m: float = 4.5, a: float = 0.0
) -> None:
    """Logicle transform (Parks et al. 2006) of ``markers`` (default: all), for fluorescence
    flow cytometry.  ``t``: top of the data range (262144 for 18-bit instruments); ``w``:
    decades of the near-linear zone; ``m``: decades of the whole display; ``a``: extra
    negative decades.  The result is in display units (about 0..1; ``t`` maps to 1)."""
    _actualize(adata)
    p = _logicle_params(t, w, m, a)
    rec = _record(adata)
    _check_no_transform(rec)
    names, idx = _markers(adata, markers)
    X = _dense_x(adata)
    _check_cols_finite(adata, X, idx)  # flowutils maps NaN to -1 silently
    X[:, idx] = logicle(X[:, idx], **p).astype(np.float32)
    _set_x(adata, X)
    rec["transform"] = {"kind": "logicle", **p, "markers": names}
    _save_record(adata, rec)


def _apply_transform(adata, spec: dict, rec: dict) -> None:
    kind = spec.get("kind")
    if kind == "asinh":
        asinh_transform(adata, cofactor=spec["cofactor"], markers=list(spec["markers"]))
    elif kind == "logicle":
        logicle_transform(adata, markers=list(spec["markers"]), t=spec["t"], w=spec["w"], m=spec["m"], a=spec["a"])
    else:
        raise DataError(f"unknown transform kind {kind!r} in the preprocessing record (expected 'asinh' or 'logicle')")


def inverse_transform(adata) -> None:
    """Undo the recorded asinh/logicle transform (e.g. to write FCS in original units).
    Call ``unscale(adata)`` first if the data were scaled."""
    _actualize(adata)
    rec = _record(adata)
    spec = rec.get("transform")
    if not spec:
        raise DataError("adata has no recorded transform to invert (uns['scprob_cytometry']['transform'] is missing)")
    if rec.get("scale"):
        raise DataError("adata is scaled; call unscale(adata) before inverse_transform(adata)")
    names, idx = _markers(adata, list(spec["markers"]))
    X = _dense_x(adata)
    if spec["kind"] == "asinh":
        X[:, idx] = (np.sinh(X[:, idx].astype(np.float64)) * float(spec["cofactor"])).astype(np.float32)
    elif spec["kind"] == "logicle":
        _check_cols_finite(adata, X, idx)
        X[:, idx] = logicle_inverse(X[:, idx], t=spec["t"], w=spec["w"], m=spec["m"], a=spec["a"]).astype(np.float32)
    else:
        raise DataError(f"unknown transform kind {spec['kind']!r} in uns['scprob_cytometry']")
    _set_x(adata, X)
    del rec["transform"]
    _save_record(adata, rec)


# --------------------------------------------------------------------------- scaling


def _apply_scale(adata, names, idx, mean, std, max_value, rec: dict) -> None:
    X = _dense_x(adata)
    mean = np.asarray(mean, dtype=np.float64)
    std = np.asarray(std, dtype=np.float64)
    Z = (X[:, idx].astype(np.float64) - mean) / std
    if max_value is not None:
        Z = np.clip(Z, -max_value, max_value)
    X[:, idx] = Z.astype(np.float32)
    _set_x(adata, X)
    m_col = np.full(adata.n_vars, np.nan)
    s_col = np.full(adata.n_vars, np.nan)
    m_col[idx], s_col[idx] = mean, std
    adata.var["mean"] = m_col
    adata.var["std"] = s_col
    rec["scale"] = {
        "markers": list(names),
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
        "max_value": None if max_value is None else float(max_value),
    }
    _save_record(adata, rec)


def scale(adata, max_value: float | None = 10.0, markers: list[str] | None = None) -> None:
    """Standardise each marker: ``(X - mean) / std`` clipped to ``±max_value`` (None: no
    clipping).  Stores ``var["mean"]`` and ``var["std"]`` (NaN for markers left alone) and the
    record.  A marker with zero (or non-finite) standard deviation raises DataError."""
    _actualize(adata)
    if max_value is not None and (not math.isfinite(float(max_value)) or float(max_value) <= 0):
        raise DataError(f"max_value must be a positive number or None, got {max_value}")
    rec = _record(adata)
    if rec.get("scale"):
        raise DataError("adata is already scaled; call unscale(adata) first")
    names, idx = _markers(adata, markers)
    X = _dense_x(adata)
    _check_cols_finite(adata, X, idx)
    sub = X[:, idx].astype(np.float64)
    if sub.shape[0] == 0:
        raise DataError("adata has no events to compute means and standard deviations from")
    mean, std = sub.mean(axis=0), sub.std(axis=0)
    bad = [n for n, s in zip(names, std) if not (s > 0 and math.isfinite(s))]
    if bad:
        raise DataError(f"marker(s) {bad} have zero standard deviation (constant values); leave them out with markers=")
    _apply_scale(adata, names, idx, mean, std, max_value, rec)


def unscale(adata) -> None:
    """Undo ``scale`` (values clipped at ``±max_value`` stay clipped)."""
    _actualize(adata)
    rec = _record(adata)
    spec = rec.get("scale")
    if not spec:
        raise DataError("adata has no recorded scaling to undo (uns['scprob_cytometry']['scale'] is missing)")
    names, idx = _markers(adata, list(spec["markers"]))
    X = _dense_x(adata)
    mean = np.asarray(spec["mean"], dtype=np.float64)
    std = np.asarray(spec["std"], dtype=np.float64)
    X[:, idx] = (X[:, idx].astype(np.float64) * std + mean).astype(np.float32)
    _set_x(adata, X)
    for col in ("mean", "std"):
        if col in adata.var.columns:
            del adata.var[col]
    del rec["scale"]
    _save_record(adata, rec)


# --------------------------------------------------------------------------- replay


def apply_preprocessing(adata, record: dict, spillover="auto") -> None:
    """Apply a recorded pipeline (``other.uns["scprob_cytometry"]``, e.g. the training
    data's) to raw ``adata`` with the same parameters: same transform and parameters, same
    means and standard deviations (not refitted), markers matched by name.

    Compensation (if recorded) uses ``spillover``: ``"auto"`` = ``adata``'s own
    ``uns["fcs"]["spillover"]`` if present (spillover is measured per acquisition), else the
    recorded matrix; ``"recorded"`` = the recorded matrix; ``False`` = skip (data already
    compensated); or an explicit DataFrame / dict."""
    _actualize(adata)
    if record is None or not hasattr(record, "get"):
        raise DataError(f"record must be a dict such as other.uns['scprob_cytometry'], got {type(record).__name__}")
    record = _jsonable(dict(record))
    rec = _record(adata)
    if rec.get("compensated") or rec.get("transform") or rec.get("scale"):
        done = [k for k in ("compensated", "transform", "scale") if rec.get(k)]
        raise DataError(f"adata is already preprocessed ({', '.join(done)}); apply_preprocessing needs raw data")

    # check every marker the record needs before changing anything
    needed = []
    for key in ("transform", "scale"):
        if record.get(key):
            needed += [m for m in record[key].get("markers", []) if m not in needed]
    missing = [m for m in needed if m not in set(map(str, adata.var_names))]
    if missing:
        raise DataError(f"marker(s) {missing} of the preprocessing record are missing from adata.var_names")

    if record.get("compensated") and spillover is not False:
        if isinstance(spillover, str) and spillover == "auto":
            fcs = adata.uns.get("fcs", {})
            own = fcs.get("spillover") if hasattr(fcs, "get") else None
            spill = own if own is not None else record.get("spillover")
        elif isinstance(spillover, str) and spillover == "recorded":
            spill = record.get("spillover")
        elif isinstance(spillover, str):
            raise DataError(f"spillover must be 'auto', 'recorded', False, a DataFrame or a dict, got {spillover!r}")
        else:
            spill = spillover
        if spill is None:
            raise DataError(
                "the record says the data were compensated but holds no spillover matrix and adata has none; pass spillover="
            )
        chans, mat = _spillover_form(spill, "spillover")
        _apply_compensation(adata, chans, mat, rec)
    if record.get("transform"):
        _apply_transform(adata, record["transform"], rec)
        rec = _record(adata)
    if record.get("scale"):
        spec = record["scale"]
        names, idx = _markers(adata, list(spec["markers"]))
        mean, std = np.asarray(spec["mean"], dtype=np.float64), np.asarray(spec["std"], dtype=np.float64)
        if mean.shape != (len(names),) or std.shape != (len(names),):
            raise DataError("the scale record's mean/std do not match its markers")
        X = _dense_x(adata)
        _check_cols_finite(adata, X, idx)
        _apply_scale(adata, names, idx, mean, std, spec.get("max_value"), rec)
