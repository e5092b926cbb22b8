"""Read and write FCS (Flow Cytometry Standard) files as AnnData.

``read_fcs`` reads FCS 2.0, 3.0, 3.1 (and 3.2 files that use no 3.2-only per-channel
datatypes) in list mode, little- or big-endian, with datatype ``F`` (float32), ``D``
(float64) or ``I`` (unsigned integers of 8/16/32/64 bits per channel, ``$PnB``, masked to
the next power of two of ``$PnR`` as the standard asks).  ``write_fcs`` writes FCS 3.1
with datatype ``F``, little- or big-endian, atomically.

Why not ``flowio``: flowio 1.4.0 installs and works under numpy 2, but it does not do what
we need.  Its TEXT parser deletes every ``$`` character from keys *and values* and
lowercases the keys (so a value such as a JSON category map with ``$`` in a name comes back
changed, and the original keywords are lost), and it mis-splits a value that ends with a
doubled delimiter; its writer only writes little-endian ``F`` data from a flat Python list
with a fixed ``/`` delimiter; integer bit masking runs as a per-byte Python loop; and
corrupt files surface as raw ``ValueError``/``KeyError``/``EOFError``.  The format is small,
so this module reads the segments with numpy (structured dtypes for mixed bit widths) and
reports every problem as :class:`~scprob.data.validate.DataError` naming the file.

What ``X`` holds: the values stored in the DATA segment, as float32.  For integer data,
channels recorded on a log amplifier (``$PnE`` = ``f1,f2`` with ``f1 > 0``) are converted to
linear values ``f2 * 10 ** (f1 * x / $PnR)`` (as flowCore and FlowJo do); ``$PnG`` gains and
``$TIMESTEP`` are not applied (they are kept in ``uns["fcs"]["text"]``).

Observation columns written by ``write_fcs(obs_columns=...)`` are extra channels; the
keyword ``SCPROB_OBS_COLUMNS`` holds a JSON object ``{column: codes_keyword or null}`` and
each categorical/string column has a keyword ``SCPROB_<COLUMN>_CODES`` (column name upper-
cased, characters other than A-Z/0-9 replaced by ``_``) holding JSON ``{"1": "name", ...}``;
code 0 means NaN/unassigned.  ``read_fcs`` moves these channels back to ``obs`` (categorical
columns restored from their codes); other tools simply see extra channels.  The record of
``scprob.data.cytometry`` preprocessing (``uns["scprob_cytometry"]``) travels in the keyword
``SCPROB_CYTOMETRY`` (JSON) and is restored by ``read_fcs``.
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from .fcs_text import (
    Keywords,
    build_text,
    byte_order,
    choose_delimiter,
    header_int,
    parse_spillover,
    parse_text,
    read_segment,
    sanitize_keyword,
    spillover_to_text,
)
from .io import atomic_open, make_unique
from .validate import DataError

__all__ = ["read_fcs", "write_fcs"]

_HEADER_LEN = 58
_TEXT_START = 256  # where write_fcs puts the TEXT segment (header padded with spaces)
_HEADER_LIMIT = 99_999_999  # largest offset the 8-character HEADER fields can hold
_SPILL_KEYS = ("$SPILLOVER", "SPILL", "$SPILL", "SPILLOVER")
_OBS_KEY = "SCPROB_OBS_COLUMNS"
_RECORD_KEY = "SCPROB_CYTOMETRY"
_DEFAULT_RANGE = 262144


# --------------------------------------------------------------------------- reading


def read_fcs(path: str | os.PathLike) -> ad.AnnData:
    """Read an FCS file into an AnnData (events × channels, float32, dense).

    ``var_names`` are the ``$PnS`` marker names where set, else the ``$PnN`` channel names
    (repeated names get ``-1``, ``-2``... with a warning); ``var["channel"]`` holds ``$PnN``,
    ``var["marker"]`` holds ``$PnS`` (or ``""``).  ``uns["fcs"]`` holds ``"text"`` (every
    TEXT keyword, as in the file), ``"path"`` (the file name) and, when the file has a
    ``$SPILLOVER``/``SPILL``/``$SPILL`` keyword, ``"spillover"`` = ``{"channels", "matrix"}``.
    See the module docstring for the exact meaning of the values.

    Raises FileNotFoundError for a missing file and DataError (naming the file) for a file
    that is not FCS, is truncated, or cannot be parsed.
    """
    path = Path(path)
    where = f"FCS file {str(path)!r}"
    if not path.is_file():
        if path.exists():
            raise DataError(f"{where} is not a file")
        raise FileNotFoundError(f"FCS file not found: {str(path)!r}")
    file_size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(_HEADER_LEN)
        if len(head) < _HEADER_LEN or not head.startswith(b"FCS"):
            raise DataError(f"{where} is not an FCS file (no 'FCS' header; {file_size} bytes) or it is truncated")
        version = head[3:6].decode("ascii", errors="replace")
        if version not in ("2.0", "3.0", "3.1", "3.2"):
            raise DataError(f"{where}: unsupported FCS version {head[:6].decode('ascii', errors='replace')!r}")
        t0 = header_int(head[10:18], "TEXT start", where)
        t1 = header_int(head[18:26], "TEXT end", where)
        d0 = header_int(head[26:34], "DATA start", where, blank_ok=True) or 0
        d1 = header_int(head[34:42], "DATA end", where, blank_ok=True) or 0
        if t0 < _HEADER_LEN:
            raise DataError(f"{where}: TEXT segment starts at byte {t0}, inside the header (corrupt file)")
        text = parse_text(read_segment(fh, t0, t1, file_size, "TEXT", where), where)
        kw = Keywords(text, where)

        # supplemental TEXT (FCS 3.x), merged without overriding the primary TEXT
        s0, s1 = kw.integer("$BEGINSTEXT", 0), kw.integer("$ENDSTEXT", 0)
        if s0 > 0 and s1 > s0 and (s0, s1) != (t0, t1):
            try:
                stext = parse_text(read_segment(fh, s0, s1, file_size, "supplemental TEXT", where), where)
            except DataError as e:
                warnings.warn(f"{e}; supplemental TEXT ignored", UserWarning, stacklevel=2)
            else:
                for k, v in stext.items():
                    if k.upper() not in kw.up:
                        text[k] = v
                kw = Keywords(text, where)

        mode = kw.get("$MODE", "L").strip().upper()
        if mode != "L":
            raise DataError(f"{where}: $MODE {mode!r} (histogram data) is not supported; only list mode 'L'")
        datatype = kw.req("$DATATYPE").strip().upper()
        if datatype not in ("F", "D", "I"):
            raise DataError(f"{where}: $DATATYPE {datatype!r} is not supported (only F, D and I)")
        n_par = kw.integer("$PAR")
        if n_par <= 0:
            raise DataError(f"{where}: $PAR is {n_par}; the file has no channels")
        if any(re.fullmatch(r"\$P\d+DATATYPE", k) for k in kw.up):
            raise DataError(f"{where}: per-channel $PnDATATYPE (FCS 3.2) is not supported")
        order = byte_order(kw.req("$BYTEORD"), where)

        # DATA offsets: the TEXT keywords (FCS 3.x) unless absent; the HEADER otherwise
        b, e = kw.integer("$BEGINDATA", 0), kw.integer("$ENDDATA", 0)
        if version == "2.0" or (b == 0 and e == 0):
            b, e = d0, d1
        elif (d0 or d1) and (d0, d1) != (b, e):
            warnings.warn(
                f"{where}: DATA offsets differ between HEADER ({d0}..{d1}) and TEXT ({b}..{e}); using TEXT",
                UserWarning,
                stacklevel=2,
            )

        pnn = [kw.get(f"$P{i}N", f"P{i}" if version == "2.0" else None) for i in range(1, n_par + 1)]
        for i, name in enumerate(pnn, 1):
            if name is None or not name.strip():
                raise DataError(f"{where}: required keyword $P{i}N (channel {i} name) is missing")
        pnn = [n.strip() for n in pnn]
        pns = [(kw.get(f"$P{i}S") or "").strip() for i in range(1, n_par + 1)]

        if datatype == "I":
            bits = [kw.integer(f"$P{i}B") for i in range(1, n_par + 1)]
            for i, bw in enumerate(bits, 1):
                if bw not in (8, 16, 32, 64):
                    raise DataError(
                        f"{where}: channel {pnn[i - 1]!r} ($P{i}B) has {bw} bits; only 8, 16, 32 or 64 bits per integer are supported"
                    )
            event_bytes = sum(bits) // 8
        else:
            event_bytes = (4 if datatype == "F" else 8) * n_par
            bits = [event_bytes * 8 // n_par] * n_par

        data_len = e - b + 1 if (e >= b and not (b == 0 and e == 0)) else 0
        n_tot = kw.integer("$TOT", data_len // event_bytes if version == "2.0" else None)
        if n_tot < 0:
            raise DataError(f"{where}: $TOT is negative ({n_tot})")
        need = n_tot * event_bytes
        raw = b""
        if need:
            if b < _HEADER_LEN or e < b:
                raise DataError(f"{where}: DATA segment offsets {b}..{e} are invalid (corrupt file)")
            if e >= file_size:
                raise DataError(
                    f"{where}: DATA segment is declared as bytes {b}..{e} but the file has only {file_size} bytes "
                    f"(truncated file? {n_tot} events x {n_par} channels need {need} bytes)"
                )
            if data_len < need:
                raise DataError(
                    f"{where}: DATA segment has {data_len} bytes but $TOT={n_tot} events x $PAR={n_par} channels "
                    f"need {need} bytes (truncated or corrupt file)"
                )
            fh.seek(b)
            raw = fh.read(need)
            if len(raw) < need:
                raise DataError(f"{where}: file ends after {len(raw)} of {need} DATA bytes (truncated file)")
        if kw.integer("$NEXTDATA", 0) != 0:
            warnings.warn(f"{where} holds several data sets; only the first is read", UserWarning, stacklevel=2)

    X = _decode_data(raw, datatype, order, bits, n_tot, n_par, kw, pnn)

    names = [s if s else n for s, n in zip(pns, pnn)]
    var = pd.DataFrame({"channel": pnn, "marker": pns})
    uns_fcs: dict = {"text": dict(text), "path": path.name}
    for key in _SPILL_KEYS:
        value = kw.get(key)
        if value is not None and value.strip():
            uns_fcs["spillover"] = parse_spillover(value, f"{where}, keyword {key}", pnn)
            break

    obs = pd.DataFrame(index=[str(i) for i in range(n_tot)])
    keep = np.ones(n_par, dtype=bool)
    obs_spec = kw.get(_OBS_KEY)
    if obs_spec:
        keep = _restore_obs(obs_spec, X, pnn, kw, obs, where)
    if not keep.all():
        X = np.ascontiguousarray(X[:, keep])
    var = var.loc[keep].reset_index(drop=True)
    var.index = make_unique([n for n, k in zip(names, keep) if k], what=f"marker names in {path.name}")

    adata = ad.AnnData(X=X, obs=obs, var=var)
    adata.uns["fcs"] = uns_fcs
    rec = kw.get(_RECORD_KEY)
    if rec:
        try:
            adata.uns["scprob_cytometry"] = json.loads(rec)
        except json.JSONDecodeError:
            warnings.warn(f"{where}: keyword {_RECORD_KEY} is not valid JSON; ignored", UserWarning, stacklevel=2)
    return adata


def _decode_data(raw: bytes, datatype: str, order: str, bits: list[int], n_tot: int, n_par: int, kw: Keywords, pnn) -> np.ndarray:
    if datatype in ("F", "D"):
        dt = np.dtype(f"{order}f{4 if datatype == 'F' else 8}")
        return np.frombuffer(raw, dtype=dt, count=n_tot * n_par).reshape(n_tot, n_par).astype(np.float32)
    # integer data: one unsigned field per channel with its own bit width
    if len(set(bits)) == 1:
        dt = np.dtype(f"{order}u{bits[0] // 8}")
        cols = np.frombuffer(raw, dtype=dt, count=n_tot * n_par).reshape(n_tot, n_par)
        ints = [cols[:, i] for i in range(n_par)]
    else:
        dt = np.dtype([(f"c{i}", f"{order}u{bw // 8}") for i, bw in enumerate(bits)])
        rec = np.frombuffer(raw, dtype=dt, count=n_tot)
        ints = [rec[f"c{i}"] for i in range(n_par)]
    X = np.empty((n_tot, n_par), dtype=np.float32)
    for i, (col, bw) in enumerate(zip(ints, bits)):
        rng = kw.number(f"$P{i + 1}R", 0.0)
        if rng > 0:
            # values are masked to the bits needed for the range (next power of two of $PnR)
            mask_bits = max(1, math.ceil(math.log2(rng))) if rng > 1 else 1
            if mask_bits < bw:
                col = col & np.asarray((1 << mask_bits) - 1, dtype=col.dtype)
        vals = col.astype(np.float64)
        pne = kw.get(f"$P{i + 1}E")
        if pne:
            try:
                f1, f2 = (float(x) for x in pne.split(",")[:2])
            except ValueError:
                raise DataError(f"{kw.where}: channel {pnn[i]!r} has an unreadable $P{i + 1}E {pne!r}") from None
            if f1 > 0:
                if rng <= 0:
                    raise DataError(f"{kw.where}: log-amplified channel {pnn[i]!r} needs $P{i + 1}R")
                vals = (f2 if f2 > 0 else 1.0) * 10.0 ** (f1 * vals / rng)
        X[:, i] = vals
    return X


def _restore_obs(spec: str, X: np.ndarray, pnn: list[str], kw: Keywords, obs: pd.DataFrame, where: str) -> np.ndarray:
    """Move the channels listed in ``SCPROB_OBS_COLUMNS`` to ``obs``; return the mask of
    channels that stay markers."""
    keep = np.ones(len(pnn), dtype=bool)
    try:
        columns = json.loads(spec)
        if not isinstance(columns, dict):
            raise ValueError("not an object")
    except ValueError:
        warnings.warn(
            f"{where}: keyword {_OBS_KEY} is not a JSON object; obs channels kept as markers", UserWarning, stacklevel=3
        )
        return keep
    for col, codes_key in columns.items():
        if col not in pnn:
            warnings.warn(f"{where}: obs column {col!r} listed in {_OBS_KEY} has no channel", UserWarning, stacklevel=3)
            continue
        j = pnn.index(col)
        keep[j] = False
        values = np.array(X[:, j])
        if not codes_key:
            obs[col] = values
            continue
        try:
            mapping = {int(k): str(v) for k, v in json.loads(kw.get(codes_key, "{}")).items()}
        except (ValueError, AttributeError):
            raise DataError(
                f"{where}: keyword {codes_key} (codes of obs column {col!r}) is not a JSON object of code: name"
            ) from None
        keys = np.array(sorted(mapping), dtype=np.int64)
        cats = [mapping[k] for k in keys]
        if len(set(cats)) != len(cats):
            raise DataError(f"{where}: keyword {codes_key} maps two codes to the same name")
        codes = np.full(len(values), -1, dtype=np.int64)
        if len(keys):
            ok = np.flatnonzero(np.isfinite(values))
            iv = np.rint(values[ok]).astype(np.int64)
            pos = np.clip(np.searchsorted(keys, iv), 0, len(keys) - 1)
            codes[ok] = np.where(keys[pos] == iv, pos, -1)  # 0 and unknown codes -> NaN
        obs[col] = pd.Categorical.from_codes(codes, categories=pd.Index(cats, dtype=object))
    return keep


# --------------------------------------------------------------------------- writing


def _column_strings(adata, col: str) -> list[str] | None:
    if col not in adata.var.columns:
        return None
    return ["" if pd.isna(v) else str(v) for v in adata.var[col]]


def write_fcs(
    adata: ad.AnnData,
    path: str | os.PathLike,
    layer: str | None = None,
    obs_columns: list[str] | str | None = None,
    endianness: str = "little",
) -> Path:
    """Write ``adata`` (or ``adata.layers[layer]``) as an FCS 3.1 file, datatype F (float32).

    ``$PnN`` comes from ``var["channel"]`` if present, else ``var_names``; ``$PnS`` from
    ``var["marker"]`` if present, else ``var_names`` (an empty marker writes no ``$PnS``).
    ``obs_columns`` are written as extra channels: numeric columns as they are, categorical
    or string columns as codes 1..K (0 = NaN/unassigned) with the code → name map in the
    keyword ``SCPROB_<COLUMN>_CODES`` (JSON); ``read_fcs`` moves them back to ``obs``.
    The spillover matrix in ``uns["fcs"]["spillover"]`` is written as ``$SPILLOVER``, other
    keywords of ``uns["fcs"]["text"]`` (``$CYT``, ``$DATE``...) are kept, and
    ``uns["scprob_cytometry"]`` is written as ``SCPROB_CYTOMETRY``.  ``endianness`` is
    ``"little"`` or ``"big"``.  The file is written to a temporary file in the same folder
    and moved into place, so a failure never leaves a half-written file.  Returns the path.
    """
    path = Path(path)
    if endianness not in ("little", "big"):
        raise DataError(f"endianness must be 'little' or 'big', got {endianness!r}")
    if layer is None:
        X = adata.X
        if X is None:
            raise DataError("adata.X is empty (None); pass `layer=`")
    else:
        if layer not in adata.layers:
            raise DataError(f"layer {layer!r} not found in adata.layers (available: {list(adata.layers.keys())})")
        X = adata.layers[layer]
    if sp.issparse(X):
        X = X.toarray()
    elif not isinstance(X, np.ndarray):
        X = X.to_memory() if hasattr(X, "to_memory") else np.asarray(X)
        X = X.toarray() if sp.issparse(X) else np.asarray(X)
    X = np.asarray(X, dtype=np.float32)

    var_names = [str(v) for v in adata.var_names]
    channels = _column_strings(adata, "channel") or list(var_names)
    markers = _column_strings(adata, "marker") or list(var_names)
    channels = [c if c.strip() else v for c, v in zip(channels, var_names)]

    # observation columns as extra channels
    if isinstance(obs_columns, str):
        obs_columns = [obs_columns]
    obs_columns = list(obs_columns or [])
    extra_cols, obs_map, code_keys = [], {}, {}
    for col in obs_columns:
        if col not in adata.obs.columns:
            raise DataError(f"obs column {col!r} not found in adata.obs (available: {list(adata.obs.columns)})")
        if col in channels:
            raise DataError(f"obs column {col!r} has the same name as a channel; rename it before writing")
        s = adata.obs[col]
        if pd.api.types.is_bool_dtype(s):
            vals, codes_kw = s.astype(np.float32).to_numpy(), None
        elif pd.api.types.is_numeric_dtype(s) and not isinstance(s.dtype, pd.CategoricalDtype):
            vals, codes_kw = s.to_numpy(dtype=np.float32, na_value=np.nan), None
        else:
            cat = s.astype("category") if not isinstance(s.dtype, pd.CategoricalDtype) else s
            vals = (cat.cat.codes.to_numpy() + 1).astype(np.float32)  # -1 (NaN) -> 0
            codes_kw = f"SCPROB_{sanitize_keyword(col)}_CODES"
            base, k = codes_kw, 1
            while codes_kw in code_keys.values():
                k += 1
                codes_kw = f"{base}{k}"
            code_keys[col] = codes_kw
            obs_map[codes_kw] = json.dumps({str(i + 1): str(c) for i, c in enumerate(cat.cat.categories)})
        extra_cols.append(vals)
        channels.append(str(col))
        markers.append(str(col))
    if extra_cols:
        X = np.column_stack([X, *extra_cols]).astype(np.float32)

    n, p = X.shape
    seen: set[str] = set()
    for c in channels:
        if c in seen:
            raise DataError(f"channel name {c!r} ($PnN) appears twice; FCS channel names must be unique")
        if "," in c:
            raise DataError(f"channel name {c!r} ($PnN) contains a comma, which FCS 3.1 forbids")
        seen.add(c)

    # keywords
    fcs_uns = adata.uns.get("fcs", {}) if isinstance(adata.uns.get("fcs", {}), dict) else {}
    old_text = fcs_uns.get("text", {}) or {}
    old_kw = {str(k).upper(): str(v) for k, v in dict(old_text).items()}
    old_range = {}
    for k, v in old_kw.items():
        m = re.fullmatch(r"\$P(\d+)N", k)
        if m and f"$P{m.group(1)}R" in old_kw:
            old_range[v.strip()] = old_kw[f"$P{m.group(1)}R"]

    pairs: list[tuple[str, str]] = [
        ("$BEGINANALYSIS", "0"),
        ("$ENDANALYSIS", "0"),
        ("$BEGINSTEXT", "0"),
        ("$ENDSTEXT", "0"),
        ("$BEGINDATA", "0"),  # filled in below
        ("$ENDDATA", "0"),
        ("$BYTEORD", "1,2,3,4" if endianness == "little" else "4,3,2,1"),
        ("$DATATYPE", "F"),
        ("$MODE", "L"),
        ("$NEXTDATA", "0"),
        ("$PAR", str(p)),
        ("$TOT", str(n)),
    ]
    with np.errstate(all="ignore"):
        col_max = np.nanmax(np.abs(X), axis=0) if n else np.zeros(p)
    for i in range(p):
        j = i + 1
        rng = old_range.get(channels[i])
        if rng is None:
            top = col_max[i]
            rng = str(_DEFAULT_RANGE if not np.isfinite(top) or top <= _DEFAULT_RANGE else int(math.ceil(top)))
        pairs += [(f"$P{j}N", channels[i]), (f"$P{j}B", "32"), (f"$P{j}E", "0,0"), (f"$P{j}R", rng)]
        if markers[i].strip():
            pairs.append((f"$P{j}S", markers[i]))
    spill = fcs_uns.get("spillover")
    if spill is not None:
        spill_ch = [str(c) for c in list(spill["channels"])]
        missing = [c for c in spill_ch if c not in channels]
        if missing:
            warnings.warn(
                f"spillover matrix not written: its channels {missing} are not among the written channels",
                UserWarning,
                stacklevel=2,
            )
        else:
            pairs.append(("$SPILLOVER", spillover_to_text({"channels": spill_ch, "matrix": spill["matrix"]})))
    if obs_columns:
        pairs.append((_OBS_KEY, json.dumps({str(c): code_keys.get(c) for c in obs_columns})))
        pairs += list(obs_map.items())
    record = adata.uns.get("scprob_cytometry")
    if record:
        from .cytometry import _jsonable  # local import: cytometry imports this module

        pairs.append((_RECORD_KEY, json.dumps(_jsonable(record))))
    written = {k for k, _ in pairs}
    structural = re.compile(
        r"\$P\d+[A-Z]+|\$?SPILL(OVER)?|SCPROB_.*|\$(BEGIN|END)(ANALYSIS|STEXT|DATA)|\$(BYTEORD|DATATYPE|MODE|NEXTDATA|PAR|TOT)"
    )
    for k, v in old_text.items():
        ku = str(k).upper()
        if ku in written or structural.fullmatch(ku) or not str(v).strip() or not str(k).strip():
            continue
        pairs.append((str(k), str(v)))

    delim = choose_delimiter([s for kv in pairs for s in kv])
    data_bytes = n * p * 4
    # $BEGINDATA depends on the length of the TEXT that contains it: iterate to a fixed point
    begin = _TEXT_START
    for _ in range(10):
        end = begin + data_bytes - 1
        pairs[4] = ("$BEGINDATA", str(begin if data_bytes else 0))
        pairs[5] = ("$ENDDATA", str(end if data_bytes else 0))
        text = build_text(pairs, delim)
        new_begin = _TEXT_START + len(text)
        if new_begin == begin:
            break
        begin = new_begin
    else:  # pragma: no cover - the lengths converge after a couple of rounds
        raise RuntimeError("could not lay out the FCS TEXT segment")
    text_end = _TEXT_START + len(text) - 1
    if data_bytes == 0:
        hdr_d0 = hdr_d1 = 0
    elif end > _HEADER_LIMIT:
        hdr_d0 = hdr_d1 = 0
    else:
        hdr_d0, hdr_d1 = begin, end
    header = b"FCS3.1    " + b"".join(f"{v:>8d}".encode("ascii") for v in (_TEXT_START, text_end, hdr_d0, hdr_d1, 0, 0))
    header = header.ljust(_TEXT_START, b" ")

    dt = np.dtype("<f4" if endianness == "little" else ">f4")
    with atomic_open(path, "wb") as fh:
        fh.write(header)
        fh.write(text)
        chunk = max(1, 4_000_000 // max(p, 1))
        for s in range(0, n, chunk):
            fh.write(np.ascontiguousarray(X[s : s + chunk], dtype=dt).tobytes())
    return path
