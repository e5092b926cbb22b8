"""Reading input files: one place that turns a missing, truncated or foreign file into a
:class:`~scprob.data.DataError` naming the file and the problem, before any work starts.

Every ``scprob`` command reads its data through :func:`read_input`.  Writers go through
:func:`atomic_open`, so an output file is never half written.
"""

from __future__ import annotations

import contextlib
import os
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

from .validate import DataError

KINDS = ("h5ad", "h5mu", "fcs", "csv")
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def input_kind(path: str | os.PathLike, kinds: tuple[str, ...] = KINDS) -> str:
    """The file's kind from its extension (``"h5ad"``, ``"h5mu"``, ``"fcs"``, ``"csv"``);
    a DataError for an extension not in ``kinds``."""
    path = Path(path)
    kind = path.suffix.lower().lstrip(".")
    if kind not in kinds:
        expected = ", ".join(f".{k}" for k in kinds)
        raise DataError(f"input {str(path)!r}: unknown extension {path.suffix!r}; expected {expected}")
    return kind


def read_input(path: str | os.PathLike, kinds: tuple[str, ...] = KINDS, backed: str | None = None):
    """Read an ``.h5ad`` (AnnData), ``.h5mu`` (MuData), ``.fcs`` or ``.csv`` (AnnData of
    events x channels) file, chosen by extension among ``kinds``.

    Raises :class:`DataError` naming the file when it does not exist, is empty, is
    truncated, is not the format its extension says, or cannot be read.  ``backed="r"``
    opens an ``.h5ad`` without loading ``X`` (see :mod:`scprob.data.backed`).
    """
    path = Path(path)
    kind = input_kind(path, kinds)
    if not path.exists():
        raise DataError(f"input file {path} does not exist")
    if not path.is_file():
        raise DataError(f"input {path} is not a file")
    if kind in ("h5ad", "h5mu"):
        return _read_hdf5(path, kind, backed)
    try:
        if kind == "fcs":
            from .fcs import read_fcs

            return read_fcs(path)
        from .cytometry import read_csv

        return read_csv(path)
    except DataError:
        raise  # the readers' own messages already name the file
    except Exception as e:  # noqa: BLE001 - anything else: the file is not what it claims to be
        raise DataError(f"cannot read {path} as {kind.upper()}: {type(e).__name__}: {e}") from None


def _read_hdf5(path: Path, kind: str, backed: str | None):
    what = "AnnData" if kind == "h5ad" else "MuData"
    size = path.stat().st_size
    if size == 0:
        raise DataError(f"cannot read {path}: the file is empty (0 bytes); write it again or restore it")
    with open(path, "rb") as fh:
        head = fh.read(len(_HDF5_SIGNATURE))
    if head != _HDF5_SIGNATURE:
        import h5py

        if not h5py.is_hdf5(path):  # (HDF5 also allows the signature at 512, 1024, ... bytes)
            raise DataError(f"cannot read {path}: not an HDF5 file (no HDF5 signature; {size} bytes), so not an "
                            f".{kind} file: another format, or damaged")
    if kind == "h5ad":
        import anndata as ad

        reader = (lambda p: ad.read_h5ad(p, backed=backed)) if backed else ad.read_h5ad
    else:
        try:
            import mudata
        except ImportError as e:
            raise DataError(f"reading {path.name} needs the mudata package: pip install mudata ({e})") from None
        reader = mudata.read_h5mu
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # anndata/mudata deprecations, not the user's concern
            return reader(path)
    except OSError as e:
        msg = str(e)
        if "truncated file" in msg:
            raise DataError(f"cannot read {path}: the file is truncated ({size} bytes; {_hdf5_reason(msg)}): it was "
                            "not written completely or was cut short while copying; write it again or restore it") from None
        raise DataError(f"cannot read {path}: the file is truncated or not an HDF5 file ({_hdf5_reason(msg)})") from None
    except Exception as e:  # noqa: BLE001 - HDF5 opened, but its content is not what the reader expects
        raise DataError(f"cannot read {path} as {what}: an HDF5 file, but {type(e).__name__}: {e}; "
                        f"is it an .{kind} file written by {'anndata' if kind == 'h5ad' else 'mudata'}?") from None


def _hdf5_reason(msg: str) -> str:
    """The useful part of an h5py error: ``Unable to ... (truncated file: eof = 1, ...)`` -> the parentheses."""
    start, end = msg.find("("), msg.rfind(")")
    return msg[start + 1 : end] if 0 <= start < end else msg


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", **kwargs) -> Iterator:
    """Open a temporary file next to ``path`` for writing; on success it replaces ``path``
    (``os.replace``), on any error it is removed, so ``path`` is never half written."""
    path = Path(path)
    if not path.parent.exists():
        raise FileNotFoundError(f"cannot write {str(path)!r}: folder {str(path.parent)!r} does not exist")
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    # os.open with 0o666 lets the umask decide the final permissions, like open() would
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, mode, **kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def make_unique(names: list[str], what: str = "names") -> list[str]:
    """Append ``-1``, ``-2``... to repeated names (never colliding with an existing name);
    warn naming the repeated ones."""
    names = [str(n) for n in names]
    seen = set(names)
    counts: dict[str, int] = {}
    out, dup = [], []
    first = set()
    for n in names:
        if n not in first:
            first.add(n)
            out.append(n)
            continue
        dup.append(n)
        k = counts.get(n, 0)
        while True:
            k += 1
            cand = f"{n}-{k}"
            if cand not in seen:
                break
        counts[n] = k
        seen.add(cand)
        out.append(cand)
    if dup:
        warnings.warn(
            f"repeated {what} {sorted(set(dup))} made unique by appending '-1', '-2', ...",
            UserWarning,
            stacklevel=3,
        )
    return out
