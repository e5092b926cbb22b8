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


def load_aml():
    """AML CyTOF sample with its Scyan knowledge table: ``(adata, table)``.

    ``adata``: 280 bone-marrow cells (20 manually gated per population, labels in
    ``obs.cell_type``, never needed by the model) x 32 mass-cytometry markers, already
    asinh(x/5)-transformed and standardized.  ``table``: 14 populations x 14 markers,
    entries -1 / 1 / NaN (``scprob.models.Scyan`` input).  Source: Levine et al. 2015,
    as distributed with Scyan (Blampey et al. 2023); built by ``scripts/make_shipped_aml.py``.
    """
    import anndata as ad
    import pandas as pd

    folder = files("scprob.data") / "_files"
    with (folder / "aml_short.h5ad").open("rb") as fh:
        adata = ad.read_h5ad(fh)
    with (folder / "aml_table.csv").open("r") as fh:
        table = pd.read_csv(fh, index_col=0)
    return adata, table
