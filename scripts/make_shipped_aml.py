"""Build the compact AML copy shipped in ``scprob/data/_files`` (for ``scprob.data.load_aml``).

Usage: python scripts/make_shipped_aml.py ../shared/data/aml_short.h5ad ../shared/data/aml_table.csv
"""

import shutil
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

src = sys.argv[1] if len(sys.argv) > 1 else "../shared/data/aml_short.h5ad"
table = sys.argv[2] if len(sys.argv) > 2 else "../shared/data/aml_table.csv"
adata = ad.read_h5ad(src)
small = ad.AnnData(
    np.asarray(adata.X, dtype=np.float32),
    obs=pd.DataFrame({"cell_type": adata.obs["cell_type"].astype("category"),
                      "subject": adata.obs["subject"].astype("category")}, index=adata.obs_names.astype(str)),
    var=pd.DataFrame(index=adata.var_names.astype(str)),
)
small.uns = {
    "source": "AML benchmark of Levine et al. 2015 (Cell 162:184, Cytobank / FlowRepository FR-FCM-ZZPH), healthy "
              "bone-marrow CyTOF, 20 manually gated cells per population as distributed with Scyan (Blampey et al. "
              "2023); asinh(x/5)-transformed and standardized (clipped at 10)",
}
out = Path(__file__).resolve().parents[1] / "src/scprob/data/_files"
small.write_h5ad(out / "aml_short.h5ad", compression="gzip")
shutil.copy(table, out / "aml_table.csv")
print(small, (out / "aml_short.h5ad").stat().st_size)
