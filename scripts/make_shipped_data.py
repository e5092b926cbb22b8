"""Build the compact copy of the mixology data shipped in ``scprob/data/_files``.

Usage: python scripts/make_shipped_data.py ../shared/data/mixology_3cl.h5ad
"""

import sys
from pathlib import Path

import anndata as ad
import numpy as np
import scipy.sparse as sp

from scprob.data.hvg import highly_variable_genes

src = sys.argv[1] if len(sys.argv) > 1 else "../shared/data/mixology_3cl.h5ad"
adata = ad.read_h5ad(src)
mask = highly_variable_genes(adata, n_top_genes=2000, batch_key="protocol")
small = adata[:, mask].copy()
small.X = sp.csr_matrix(small.X.astype(np.float32))
small.obs = small.obs[["cell_line", "protocol"]].astype("category")
small.uns = {"source": str(adata.uns.get("source", "")) + "; 2,000 Seurat-v3 HVGs across protocols"}
out = Path(__file__).resolve().parents[1] / "src/scprob/data/_files/mixology_3cl_hvg2000.h5ad"
small.write_h5ad(out, compression="gzip")
print(small, out.stat().st_size)
