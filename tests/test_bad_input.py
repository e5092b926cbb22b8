"""Every bad input gets a clear error naming the key, cell or gene, before training."""

import numpy as np
import pandas as pd
import pytest

from scprob.data import DataError, drop_empty_cells
from scprob.models import SCVI

from .conftest import make_counts


def test_missing_keys(adata):
    with pytest.raises(DataError, match="batch_key 'nope' is not a column"):
        SCVI.setup_anndata(adata, batch_key="nope")
    with pytest.raises(DataError, match="layer 'counts' not found"):
        SCVI.setup_anndata(adata, layer="counts")
    with pytest.raises(DataError, match="continuous covariate 'age'"):
        SCVI.setup_anndata(adata, continuous_covariate_keys=["age"])


@pytest.mark.parametrize("value,what", [(np.nan, "non-finite"), (np.inf, "non-finite"), (-2.0, "negative")])
@pytest.mark.parametrize("sparse", [True, False])
def test_bad_values_name_cell_and_gene(value, what, sparse):
    a = make_counts(sparse=False)
    a.X[5, 7] = value
    if sparse:
        import scipy.sparse as sp

        a.X = sp.csr_matrix(a.X)
    with pytest.raises(DataError, match=f"{what}.*cell 'cell5', gene 'gene7'"):
        SCVI.setup_anndata(a)


def test_non_integer_under_count_likelihood():
    a = make_counts(sparse=False)
    a.X[3, 2] = 2.5
    SCVI.setup_anndata(a)
    with pytest.raises(DataError, match=r"non-integer.*cell 'cell3', gene 'gene2' \(value 2.5\)"):
        SCVI(a)  # zinb: refused before training
    SCVI(a, gene_likelihood="normal")  # a continuous likelihood accepts it


def test_zero_count_cells_error_or_drop(adata, caplog):
    adata.X = adata.X.toarray()
    adata.X[[4, 9]] = 0
    with pytest.raises(DataError, match="2 cell\\(s\\) have zero total counts.*'cell4'"):
        SCVI.setup_anndata(adata)
    with caplog.at_level("WARNING", logger="scprob"):
        kept = drop_empty_cells(adata)
    assert kept.n_obs == adata.n_obs - 2 and "Dropped 2 cell(s)" in caplog.text
    SCVI.setup_anndata(kept)


def test_nan_in_batch_or_label_column(adata):
    adata.obs["batch"] = adata.obs["batch"].astype(object)
    adata.obs.loc["cell11", "batch"] = np.nan
    with pytest.raises(DataError, match=r"batch_key adata.obs\['batch'\] has 1 missing.*'cell11'"):
        SCVI.setup_anndata(adata, batch_key="batch")
    adata.obs["cell_type"] = pd.Categorical(adata.obs["cell_type"]).remove_categories(["t0"])
    with pytest.raises(DataError, match="labels_key"):
        SCVI.setup_anndata(adata, labels_key="cell_type")


def test_not_set_up_and_bad_options(adata):
    with pytest.raises(DataError, match="setup_anndata"):
        SCVI(adata)
    SCVI.setup_anndata(adata)
    with pytest.raises(ValueError, match="dispersion must be one of"):
        SCVI(adata, dispersion="per-gene")
    with pytest.raises(ValueError, match="Unknown likelihood"):
        SCVI(adata, gene_likelihood="student-t")
    # a registered family whose parameters scVI's decoder cannot make (GLUE's Gaussian)
    with pytest.raises(ValueError, match="scVI takes"):
        SCVI(adata, gene_likelihood="gaussian")


def test_nonpositive_size_factor(adata):
    adata.obs.loc["cell2", "sf"] = 0.0
    with pytest.raises(DataError, match="size factors.*'cell2'"):
        SCVI.setup_anndata(adata, size_factor_key="sf")
