"""Real data shipped inside the package."""

from __future__ import annotations

from importlib.resources import files


def load_mixology():
    """Mixology 3 cell lines: 499 cells x 2,000 HVGs, raw counts in ``X`` (CSR), ``obs.protocol`` (CEL-seq2 / Drop-seq) and ``obs.cell_line``.

    Source: LuyiTian/sc_mixology (MIT), cell line from demuxlet genotypes.  Built by
    ``scripts/make_shipped_data.py`` (Seurat-v3 HVGs across protocols).
    """
    import anndata as ad

    path = files("scprob.data") / "_files" / "mixology_3cl_hvg2000.h5ad"
    with path.open("rb") as fh:
        return ad.read_h5ad(fh)
