"""The HEADER and TEXT segments of FCS files: keyword parsing and lookup, spillover
matrices, byte order, and building a TEXT segment for :func:`~scprob.data.fcs.write_fcs`.

A TEXT segment is ``<d>key<d>value<d>key<d>value...<d>`` with ``<d>`` its first byte; a
doubled delimiter inside a key or value stands for one delimiter character (FCS 3.1).
Keywords are case-insensitive.  Every problem is a :class:`~scprob.data.validate.DataError`
whose message starts with ``where`` (the file, and the keyword where there is one).
"""

from __future__ import annotations

import math
import re
import warnings

import numpy as np

from .validate import DataError

__all__ = [
    "Keywords", "build_text", "byte_order", "choose_delimiter", "header_int", "parse_spillover", "parse_text",
    "read_segment", "sanitize_keyword", "spillover_to_text",
]


def sanitize_keyword(name: str) -> str:
    """A column name as a keyword part: upper case, characters other than A-Z / 0-9 as ``_``."""
    return re.sub(r"[^A-Z0-9]", "_", str(name).upper())


def spillover_to_text(spill: dict) -> str:
    """``{"channels": [...], "matrix": [[...]]}`` → ``"n,ch1,...,chn,v11,v12,..."``."""
    chans = [str(c) for c in spill["channels"]]
    mat = np.asarray(spill["matrix"], dtype=np.float64)
    vals = ",".join(repr(float(v)) for v in mat.ravel())
    return f"{len(chans)}," + ",".join(chans) + "," + vals


def parse_spillover(value: str, where: str, channel_names: list[str] | None = None) -> dict:
    """Parse a ``$SPILLOVER`` value; ``where`` names the file/keyword in errors.  Channels
    given as 1-based numbers (some old files) are mapped to ``channel_names``."""
    parts = [p.strip() for p in str(value).replace("\n", "").split(",")]
    try:
        n = int(float(parts[0]))
    except (ValueError, IndexError):
        raise DataError(f"{where}: cannot read the number of channels from {value[:60]!r}") from None
    if n <= 0 or len(parts) != 1 + n + n * n:
        raise DataError(f"{where}: expected {n} channel names and {n}x{n} values, got {len(parts) - 1} fields")
    chans = parts[1 : n + 1]
    try:
        mat = np.array([float(v) for v in parts[n + 1 :]], dtype=np.float64).reshape(n, n)
    except ValueError as e:
        raise DataError(f"{where}: non-numeric spillover value ({e})") from None
    if channel_names is not None and not set(chans) <= set(channel_names):
        if all(c.isdigit() and 1 <= int(c) <= len(channel_names) for c in chans):
            chans = [channel_names[int(c) - 1] for c in chans]
    return {"channels": chans, "matrix": mat.tolist()}


def parse_text(raw: bytes, where: str) -> dict[str, str]:
    """Parse a TEXT segment: keys and values separated by the delimiter (its first byte);
    a doubled delimiter inside a key or value stands for one delimiter character."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    if len(text) < 2:
        raise DataError(f"{where}: TEXT segment is empty")
    delim = text[0]
    if delim.isalnum() or delim == "$":
        raise DataError(f"{where}: TEXT segment starts with {delim!r}, not a delimiter (corrupt or not an FCS file)")
    # trailing padding after the final delimiter (spaces, NULs, newlines) is common
    end = len(text)
    while end > 1 and text[end - 1] != delim and text[end - 1] in " \x00\r\n\t":
        end -= 1
    tokens: list[str] = []
    buf: list[str] = []
    i = 1
    while i < end:
        j = text.find(delim, i)
        if j < 0 or j >= end:
            buf.append(text[i:end])
            tokens.append("".join(buf))
            buf = []
            break
        buf.append(text[i:j])
        if j + 1 < end and text[j + 1] == delim:  # escaped delimiter
            buf.append(delim)
            i = j + 2
            continue
        tokens.append("".join(buf))
        buf = []
        i = j + 1
    if buf:
        tokens.append("".join(buf))
    if len(tokens) % 2 or any(delim + "$" in t for t in tokens):
        # some writers leave values empty ("/$P3S//$P4N/..."), against the standard; read
        # with escaping, that swallows the next keyword (odd field count, or a field holding
        # "/$KEYWORD").  Then take the plain split if it gives pairs with non-empty keywords.
        plain = text[1:end].split(delim)
        if plain and plain[-1] == "" and text[end - 1] == delim:
            plain = plain[:-1]
        if len(plain) % 2 == 0 and all(k.strip() for k in plain[::2]):
            warnings.warn(
                f"{where}: TEXT segment has empty keyword values; read without delimiter escaping", UserWarning, stacklevel=3
            )
            tokens = plain
    if len(tokens) % 2:
        raise DataError(
            f"{where}: TEXT segment cannot be parsed (odd number of keyword/value fields: {len(tokens)}; "
            f"delimiter {delim!r}) - the file is corrupt or truncated"
        )
    out: dict[str, str] = {}
    for k, v in zip(tokens[::2], tokens[1::2]):
        k = k.strip()
        if k:
            out[k] = v
    return out


class Keywords:
    """Case-insensitive keyword lookup (FCS keywords are case-insensitive)."""

    def __init__(self, text: dict[str, str], where: str):
        self.up = {k.upper(): v for k, v in text.items()}
        self.where = where

    def get(self, key: str, default=None):
        return self.up.get(key.upper(), default)

    def __contains__(self, key: str) -> bool:
        return key.upper() in self.up

    def req(self, key: str) -> str:
        v = self.get(key)
        if v is None or str(v).strip() == "":
            raise DataError(f"{self.where}: required keyword {key} is missing from the TEXT segment")
        return v

    def integer(self, key: str, default=None) -> int:
        v = self.get(key) if default is not None else self.req(key)
        if v is None or str(v).strip() == "":
            return default
        try:
            return int(str(v).strip())
        except ValueError:
            try:
                f = float(str(v).strip())
            except ValueError:
                f = math.nan
            if not math.isfinite(f) or f != int(f):
                raise DataError(f"{self.where}: keyword {key} should be an integer, got {v!r}") from None
            return int(f)

    def number(self, key: str, default: float) -> float:
        v = self.get(key)
        if v is None or str(v).strip() == "":
            return default
        try:
            return float(str(v).strip())
        except ValueError:
            raise DataError(f"{self.where}: keyword {key} should be a number, got {v!r}") from None


def header_int(field: bytes, name: str, where: str, blank_ok: bool = False) -> int | None:
    """An 8-character HEADER offset (``None`` when blank and ``blank_ok``)."""
    s = field.decode("ascii", errors="replace").strip()
    if not s:
        if blank_ok:
            return None
        raise DataError(f"{where}: HEADER field {name} is blank")
    try:
        return int(s)
    except ValueError:
        raise DataError(f"{where}: HEADER field {name} is not a number ({s!r}); the file is corrupt") from None


def byte_order(value: str, where: str) -> str:
    """``$BYTEORD`` as a numpy byte-order character (``"<"`` or ``">"``)."""
    v = value.replace(" ", "")
    if v in ("1,2,3,4", "1,2", "1", "1,2,3,4,5,6,7,8"):
        return "<"
    if v in ("4,3,2,1", "2,1", "8,7,6,5,4,3,2,1"):
        return ">"
    raise DataError(f"{where}: unsupported $BYTEORD {value!r} (only little-endian 1,2,3,4 and big-endian 4,3,2,1)")


def read_segment(fh, start: int, stop: int, file_size: int, what: str, where: str) -> bytes:
    """Bytes ``start..stop`` (inclusive, as FCS offsets are) of the open file, after checking
    they lie inside it."""
    if start < 0 or stop < start:
        raise DataError(f"{where}: {what} segment has invalid byte offsets {start}..{stop}")
    if stop >= file_size:
        raise DataError(
            f"{where}: {what} segment is declared as bytes {start}..{stop} but the file has only "
            f"{file_size} bytes (truncated file?)"
        )
    fh.seek(start)
    return fh.read(stop - start + 1)


def choose_delimiter(strings: list[str]) -> str:
    """A delimiter that none of ``strings`` contains, so that nothing needs escaping."""
    for d in ("/", "|", "\x0c", "\x1e", "\x1f", "!", "~"):
        if not any(d in s for s in strings):
            return d
    return "/"  # fall back to doubling (FCS 3.1 escaping)


def build_text(pairs: list[tuple[str, str]], delim: str) -> bytes:
    """A TEXT segment of ``pairs``, delimiters inside keys or values doubled."""
    esc = delim * 2
    body = "".join(f"{k.replace(delim, esc)}{delim}{v.replace(delim, esc)}{delim}" for k, v in pairs)
    return (delim + body).encode("utf-8")
