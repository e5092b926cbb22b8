"""Saved-model files: folders written atomically (:func:`write_dir_atomic`), and a saved
model's ``model.pt`` read safely: a truncated, corrupt or foreign file (another
model class, a newer scprob, not a PyTorch file at all) gets a :class:`DataError` naming
the file and the problem instead of a PyTorch traceback, before any model is built.
A ``model.pt`` written by scvi-tools (``SCVI`` / ``LinearSCVI``) is converted on reading
into the payload scprob writes (see :mod:`scprob.models._scvi_tools_import`)."""

from __future__ import annotations

import os
import pickle
import pickletools
import shutil
import tempfile
import zipfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

from ..data import DataError

MODEL_FILE = "model.pt"
_FIX = "re-save the model or restore the file"


def installed_version() -> str | None:
    try:
        return version("scprob")
    except PackageNotFoundError:
        return None


def _is_newer(saved: str, installed: str) -> bool:
    from packaging.version import InvalidVersion, Version

    try:
        return Version(str(saved)) > Version(str(installed))
    except InvalidVersion:
        return False


def check_header(where: str, found_class, saved_version, expected_class: str) -> None:
    """The model class the file holds must be ``expected_class``, and the scprob that
    wrote it must not be newer than this one."""
    if found_class != expected_class:
        hint = f": load it with scprob.models.{found_class}.load" if isinstance(found_class, str) and found_class else ""
        raise DataError(f"{where} holds a {found_class} model, not {expected_class}{hint}.")
    installed = installed_version()
    if saved_version and installed and _is_newer(saved_version, installed):
        raise DataError(
            f"{where} was saved by scprob {saved_version}, newer than the installed scprob {installed}: "
            "upgrade scprob to load it (pip install -U scprob)."
        )


def _check_archive(path: Path, where: str) -> None:
    """``torch.save`` writes a zip archive: a file cut short has no central directory, a
    damaged one fails a member's CRC.  Checked here, where the cause is still known."""
    size = path.stat().st_size
    if size == 0:
        raise DataError(f"{where} is empty (0 bytes): {_FIX}.")
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head != b"PK\x03\x04":  # scprob saves with torch >= 2.1: always a zip archive
        what = "a plain pickle or PyTorch's legacy format" if head[:1] == b"\x80" else f"it starts with {head!r}"
        raise DataError(f"{where} is not a model file saved by scprob (not a PyTorch zip archive: {what}; "
                        f"{size} bytes): {_FIX}.")
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
            names = z.namelist()
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise DataError(f"{where} is truncated or corrupt ({size} bytes; the archive's directory is unreadable: {e}): "
                        f"{_FIX}.") from None
    if bad is not None:
        raise DataError(f"{where} is corrupt (its part {bad!r} fails its checksum): {_FIX}.")
    if not any(n.endswith("data.pkl") for n in names):
        raise DataError(f"{where} is a zip archive but not a PyTorch file (no data.pkl among {names[:5]}): {_FIX}.")


def peek_header(path: Path) -> tuple[str | None, str | None]:
    """``(model_class, scprob version)`` read from the pickle's opcodes without running
    any of it (for an error message when ``weights_only`` refuses the file); ``None``
    where not found."""
    try:
        with zipfile.ZipFile(path) as z:
            data = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
        strings = [arg for op, arg, _ in pickletools.genops(data) if isinstance(arg, str) and "UNICODE" in op.name]
    except Exception:  # noqa: BLE001 - best effort: only improves a message
        return None, None
    from ._scvi_tools_import import scvi_tools_class

    scvi_cls = scvi_tools_class(strings)
    if scvi_cls is not None:  # written by scvi-tools
        return scvi_cls, None
    cls = strings[strings.index("model_class") + 1] if "model_class" in strings[:-1] else None
    ver = None
    if "versions" in strings:
        rest = strings[strings.index("versions") + 1 :]
        if "scprob" in rest[:-1]:
            ver = rest[rest.index("scprob") + 1]
    return cls, ver


def read_model_file(
    dir_path: str | os.PathLike, expected_class: str, weights_only: bool = False, required: tuple[str, ...] = (),
) -> dict:
    """The payload of ``dir_path/model.pt``, checked: a readable PyTorch archive holding a
    dict written by ``expected_class.save`` of this or an older scprob (or by scvi-tools'
    ``SCVI`` / ``LinearSCVI``, converted), with the ``required`` entries.  FileNotFoundError if there is no file; DataError otherwise."""
    path = Path(dir_path) / MODEL_FILE
    if not path.exists():
        raise FileNotFoundError(f"No saved model at {path}")
    where = f"{MODEL_FILE} in {Path(dir_path)}"
    _check_archive(path, where)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=weights_only)
    except pickle.UnpicklingError as e:
        if weights_only and "Weights only load failed" in str(e):
            cls, ver = peek_header(path)
            if cls is not None:
                check_header(where, cls, ver, expected_class)
            raise DataError(
                f"{where} holds Python objects that a {expected_class} save never writes (so it is not loaded, "
                f"as it could run code): it was not written by {expected_class}.save; {_FIX}."
            ) from None
        raise DataError(f"{where} is corrupt or not a PyTorch file ({type(e).__name__}: {e}): {_FIX}.") from None
    except Exception as e:  # noqa: BLE001 - PyTorch's errors on a damaged file vary (RuntimeError, EOFError, ...)
        reason = str(e).split(". ")[0][:200]
        raise DataError(f"{where} is corrupt or not a PyTorch file ({type(e).__name__}: {reason}): {_FIX}.") from None
    from ._scvi_tools_import import convert_scvi_tools_payload, is_scvi_tools_payload

    if is_scvi_tools_payload(payload):  # saved by scvi-tools: mapped onto scprob's layout
        payload = convert_scvi_tools_payload(payload, where)
    if not isinstance(payload, dict) or "model_class" not in payload:
        what = f"a dict without 'model_class' (keys {list(payload)[:6]})" if isinstance(payload, dict) else type(payload).__name__
        raise DataError(f"{where} is a PyTorch file but not a model saved by scprob (it holds {what}).")
    versions = payload.get("versions")
    check_header(where, payload["model_class"], versions.get("scprob") if isinstance(versions, dict) else None,
                 expected_class)
    missing = [k for k in required if k not in payload]
    if missing:
        raise DataError(f"{where} lacks {missing}: it is incomplete or was edited; {_FIX}.")
    return payload


def load_weights(module: torch.nn.Module, state_dict, dir_path: str | os.PathLike) -> None:
    """``module.load_state_dict`` with a DataError naming the file when the saved weights
    do not fit the model its own saved settings rebuild."""
    try:
        module.load_state_dict(state_dict)
    except (RuntimeError, TypeError, AttributeError) as e:
        detail = " ".join(str(e).split())[:300] or type(e).__name__
        raise DataError(
            f"{MODEL_FILE} in {Path(dir_path)}: the saved weights do not fit the model rebuilt from the file's own "
            f"settings ({detail}): the file is corrupt or was edited; {_FIX}."
        ) from None


def write_dir_atomic(dir_path: str | os.PathLike, write, overwrite: bool = False) -> None:
    """Call ``write(tmp)`` on a temporary folder next to ``dir_path`` and rename it into
    place at the end, so ``dir_path`` is never half-written."""
    target = Path(dir_path)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists; pass overwrite=True to replace it.")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        write(tmp)
        if target.exists():
            trash = target.with_name(f".{target.name}.old")
            shutil.rmtree(trash, ignore_errors=True)
            os.replace(target, trash)
            os.replace(tmp, target)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _versions() -> dict[str, str]:
    out = {}
    for pkg in ("scprob", "torch", "lightning", "anndata"):
        try:
            out[pkg] = version(pkg)
        except Exception:  # noqa: BLE001 - version lookup is informative only
            out[pkg] = "unknown"
    return out
