"""Input side of ``scprob annotate``: read FCS / h5ad / CSV, match the knowledge table's
markers, guess the technology (mass vs flow cytometry) and preprocess."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from scprob.data import DataError

log = logging.getLogger("scprob")

COFACTORS = {"mass": 5.0, "flow": 150.0}
_MASS_CYT = re.compile(r"cytof|helios|hyperion|mass cyto|fluidigm|standard ?biotools|\bdvs\b", re.I)
_MASS_CHANNEL = re.compile(r"^\(?[A-Z][a-z]?\d{2,3}\)?D[id]$|^\d{2,3}[A-Z][a-z]?(Di)?$|^[A-Z][a-z]?\d{2,3}$")
_FLOW_CHANNEL = re.compile(r"^(FSC|SSC)|-[AHW]$")


@dataclass
class Prepared:
    """What preprocessing did (shown in the report and the log)."""

    technology: str = "unknown"
    reason: str = ""
    steps: list[str] = field(default_factory=list)
    changed: bool = False  # whether X was changed


def read_input(path: str | Path):
    """``(adata, kind)`` with kind ``"fcs"``, ``"h5ad"`` or ``"csv"``, read by extension
    (:func:`scprob.data.read_input`: a DataError names a missing, truncated or foreign file)."""
    from scprob.data.io import input_kind
    from scprob.data.io import read_input as read_file

    kinds = ("fcs", "h5ad", "csv")
    return read_file(path, kinds=kinds), input_kind(path, kinds)


def match_markers(adata, markers: list[str]) -> None:
    """Make every table marker a ``var_name``: exact names first, then a unique match
    ignoring case, spaces, ``-`` and ``_`` among var_names and ``var["channel"]`` (renamed
    in place, logged).  DataError names the markers that stay missing."""
    names = [str(v) for v in adata.var_names]
    missing = [m for m in markers if m not in names]
    if not missing:
        return
    channels = [str(c) for c in adata.var["channel"]] if "channel" in adata.var.columns else names
    renamed = {}
    for m in missing:
        hits = {i for i, (n, c) in enumerate(zip(names, channels)) if _key(m) in (_key(n), _key(c))}
        if len(hits) == 1 and names[(i := hits.pop())] not in markers:
            renamed[names[i]] = m
            names[i] = m
    still = [m for m in markers if m not in names]
    if still:
        raise DataError(
            f"marker(s) {still} of the knowledge table are not in the data; "
            f"data markers/channels: {[str(v) for v in adata.var_names][:40]}"
        )
    adata.var_names = names
    log.info("matched table markers to data names: %s", ", ".join(f"{a!r}->{b!r}" for a, b in renamed.items()))


def _key(name) -> str:
    return re.sub(r"[\s_\-]", "", str(name)).lower()


def guess_technology(adata, markers: list[str]) -> tuple[str, str]:
    """``("mass" | "flow", reason)``: from the FCS ``$CYT`` keyword, a spillover matrix,
    channel names (``Yb176Di`` vs ``FSC-A``), then the markers' value range."""
    fcs = adata.uns.get("fcs", {})
    text = {str(k).upper(): str(v) for k, v in (fcs.get("text", {}) if hasattr(fcs, "get") else {}).items()}
    cyt = text.get("$CYT", "").strip()
    if cyt:
        return ("mass" if _MASS_CYT.search(cyt) else "flow"), f"FCS $CYT = {cyt!r}"
    if hasattr(fcs, "get") and fcs.get("spillover") is not None:
        return "flow", "the FCS file has a spillover matrix"
    chans = [str(c) for c in (adata.var["channel"] if "channel" in adata.var.columns else adata.var_names)]
    n_mass = sum(bool(_MASS_CHANNEL.match(c)) for c in chans)
    n_flow = sum(bool(_FLOW_CHANNEL.search(c)) for c in chans)
    if n_mass != n_flow and max(n_mass, n_flow) >= 2:
        kind = "mass" if n_mass > n_flow else "flow"
        return kind, f"{max(n_mass, n_flow)} channel names look like {'metal isotopes' if kind == 'mass' else 'flow channels'}"
    X = _sample(adata, markers)
    q = float(np.percentile(X, 99.9)) if X.size else 0.0
    low = float(X.min()) if X.size else 0.0
    if q > 2e4 or low < -50:
        return "flow", f"value range (99.9th percentile {q:.0f}, minimum {low:.0f}) typical of fluorescence"
    return "mass", f"value range (99.9th percentile {q:.0f}, minimum {low:.0f}) typical of ion counts"


def _sample(adata, markers: list[str], n: int = 50_000) -> np.ndarray:
    from scprob.models.scyan import marker_matrix

    sub = adata
    if adata.n_obs > n:
        rows = np.sort(np.random.default_rng(0).choice(adata.n_obs, n, replace=False))
        sub = adata[rows]
    return marker_matrix(sub, markers)


def preprocess(
    adata,
    markers: list[str],
    transform: str | float = "auto",
    scale: bool = True,
    compensate: bool = True,
) -> Prepared:
    """Compensate (FCS spillover), transform (``"auto"``: asinh with the technology's
    cofactor; a number: asinh with that cofactor; ``"logicle"``; ``"none"``) and scale the
    table's markers in place.  Steps already in the data's record are not redone."""
    from scprob.data import cytometry as cy

    rec = adata.uns.get(cy.RECORD_KEY) or {}
    prep = Prepared()
    if transform == "auto" and not rec.get("transform"):
        prep.technology, prep.reason = guess_technology(adata, markers)
        log.info("data look like %s cytometry (%s)", prep.technology, prep.reason)
    fcs = adata.uns.get("fcs", {})
    if compensate and not rec.get("compensated") and hasattr(fcs, "get") and fcs.get("spillover") is not None:
        if rec.get("transform") or rec.get("scale"):
            log.warning("the file has a spillover matrix but its data are already transformed: not compensating")
        else:
            cy.compensate(adata)
            prep.changed = True
            prep.steps.append(f"compensated ({len(fcs['spillover']['channels'])} channels, the file's spillover)")
    if rec.get("transform"):
        prep.steps.append(f"already transformed ({rec['transform'].get('kind')}): not transformed again")
    elif transform == "none":
        prep.steps.append("no transform (data given as transformed)")
    elif transform == "logicle":
        cy.logicle_transform(adata, markers=markers)
        prep.changed = True
        prep.steps.append("logicle transform")
    else:
        cofactor = COFACTORS[prep.technology] if transform == "auto" else float(transform)
        _warn_if_transformed(adata, markers)
        cy.asinh_transform(adata, cofactor=cofactor, markers=markers)
        prep.changed = True
        why = f"{prep.technology} cytometry" if transform == "auto" else "--cofactor"
        prep.steps.append(f"asinh(x / {cofactor:g}) ({why})")
    if rec.get("scale"):
        prep.steps.append("already scaled: not scaled again")
    elif scale:
        cy.scale(adata, markers=markers)
        prep.changed = True
        prep.steps.append("standardized (mean 0, sd 1, clipped at ±10)")
    else:
        prep.steps.append("not scaled (data given as scaled)")
    for s in prep.steps:
        log.info("preprocessing: %s", s)
    return prep


def _warn_if_transformed(adata, markers: list[str]) -> None:
    X = _sample(adata, markers)
    if X.size and float(np.abs(X).max()) < 30 and float(X.min()) < 0:
        log.warning(
            "the markers look already transformed (all |values| < 30, some negative); "
            "pass --no-transform if they are"
        )
