#!/usr/bin/env bash
# Create benchmarks/.envs/glue: a separate environment with scglue 0.4.1 (PyPI; the peer of
# scprob.models.GLUE), never a dependency of scprob.  Usage: bash benchmarks/make_glue_env.sh
# Then: benchmarks/.envs/glue/bin/python benchmarks/_glue_worker.py --data synth|pbmc ...
#
# What was needed, and why:
# * torch goes in first, pinned to the CPU wheel that lies on local disk (torch==2.13.0 is what
#   takes it), so that resolving scglue's "torch>=1.8" never pulls a multi-GB CUDA build; it is
#   re-pinned in the second pip call so that the resolver keeps it.
# * scglue 0.4.1's declared requirements install as wheels; most are hard imports at
#   `import scglue` (pybedtools in scglue.genomics, pyro-ppl, pytorch-ignite, sparse, dill,
#   pynvml, statsmodels, ...); tensorboardX is used by fit (ignite's TensorBoard logger);
#   muon is only declared, never imported.
#   pybedtools is no problem: 0.12.1 has a manylinux cp311 wheel on PyPI (no build, no bedtools
#   binary needed to import it; scglue only calls bedtools for genomic window graphs, which the
#   benchmarks don't use: their guidance graphs are built by hand).
# * leidenalg + igraph: fit_SCGLUE's balancing step (sc.tl.leiden); both come as wheels.
# * scikit-misc: not a scglue requirement, but sc.pp.highly_variable_genes(flavor="seurat_v3"),
#   which scglue's tutorial (and the pbmc benchmark) uses, imports skmisc.
# * No version had to be pinned *down* for scglue 0.4.1 to import and run fit_SCGLUE on CPU:
#   it already falls back to anndata's BaseCompressedSparseDataset and importlib.metadata.
#   The resolver itself keeps pandas < 3 (anndata 0.12.19 requires pandas<3).  The versions
#   below are pinned because they are the set that was verified end to end (both benchmark
#   datasets), so that later releases cannot change the peer under the benchmark.
# * pynvml 13 makes torch print a FutureWarning ("pynvml package is deprecated") at import:
#   harmless (scglue requires pynvml; no GPU is used: scglue picks the CPU by itself).
set -euo pipefail
cd "$(dirname "$0")"
ENV=.envs/glue
if [ ! -x "$ENV/bin/python" ]; then
  python -m venv "$ENV"
fi
PINS=("scglue==0.4.1" "torch==2.13.0" "numpy==2.4.6" "pandas==2.3.3" "anndata==0.12.19"
      "scanpy==1.11.5" "scipy==1.17.1" "scikit-learn==1.9.1" "networkx==3.6.1"
      "pytorch-ignite==0.5.5" "pyro-ppl==1.9.2" "pybedtools==0.12.1" "leidenalg==0.12.0"
      "igraph==1.0.0" "muon==0.1.9" "numba==0.68.1" "scikit-misc==0.5.3")
# idempotent: skip pip when every pin is already installed
if "$ENV/bin/python" - "${PINS[@]}" <<'PY' 2>/dev/null; then
import sys
from importlib.metadata import version, PackageNotFoundError
for pin in sys.argv[1:]:
    name, want = pin.split("==")
    try:
        have = version(name)
    except PackageNotFoundError:
        sys.exit(1)
    if have.split("+")[0] != want:
        sys.exit(1)
PY
  echo "benchmarks/$ENV: all pins already installed"
else
  # the CPU wheel on local disk if there is one (pip's find-links dir here), else PyPI's torch==2.13.0
  TORCH=$(ls /opt/wheels/torch-2.13.0+cpu-cp311-*.whl 2>/dev/null | head -1 || true)
  # (pip's own exit status still stops the script: pipefail; only the noise from an absent
  # local index directory in pip's config is filtered out)
  pip_q() { "$ENV/bin/pip" install -q "$@" 2>&1 | { grep -v "is ignored: it is neither" || true; }; }
  pip_q "${TORCH:-torch==2.13.0}"
  pip_q "${PINS[@]}"
fi
"$ENV/bin/python" - <<'PY'
import os
os.environ.setdefault("OMP_NUM_THREADS", "1")
import logging
import tempfile
import warnings
warnings.filterwarnings("ignore")
import torch
torch.set_num_threads(1)
import anndata as ad, networkx as nx, numpy as np, pandas as pd, scanpy
import scglue
if torch.version.cuda is not None:
    print("WARNING: a CUDA build of torch was installed:", torch.__version__)
print("scglue", scglue.__version__, "| torch", torch.__version__, "| anndata", ad.__version__,
      "| scanpy", scanpy.__version__, "| numpy", np.__version__, "| pandas", pd.__version__)
# tiny smoke fit (2 epochs per stage): 2 cell types, 20 genes <-> 20 peaks one to one
scglue.log.console_log_level = logging.WARNING
rng = np.random.default_rng(0)
z = rng.integers(0, 2, 300)
mu = np.where((np.arange(20) < 10)[None, :] == (z == 0)[:, None], 8.0, 1.0)
rna = ad.AnnData(rng.poisson(mu).astype(np.float32), var=pd.DataFrame(index=[f"g{i}" for i in range(20)]))
atac = ad.AnnData(rng.poisson(mu[rng.permutation(300)] / 4).astype(np.float32),
                  var=pd.DataFrame(index=[f"p{i}" for i in range(20)]))
rna.obs_names = [f"r{i}" for i in range(300)]
atac.obs_names = [f"a{i}" for i in range(300)]
rna.obsm["X_pca"] = np.log1p(rna.X)
scglue.data.lsi(atac, n_components=10, n_iter=5)
scglue.models.configure_dataset(rna, "NB", use_highly_variable=False, use_rep="X_pca")
scglue.models.configure_dataset(atac, "NB", use_highly_variable=False, use_rep="X_lsi")
g = nx.MultiDiGraph()
for i in range(20):
    g.add_edge(f"g{i}", f"p{i}", weight=1.0, sign=1)
    g.add_edge(f"p{i}", f"g{i}", weight=1.0, sign=1)
    g.add_edge(f"g{i}", f"g{i}", weight=1.0, sign=1)
    g.add_edge(f"p{i}", f"p{i}", weight=1.0, sign=1)
with tempfile.TemporaryDirectory() as tmp:
    glue = scglue.models.fit_SCGLUE({"rna": rna, "atac": atac}, g, skip_balance=True, init_kws={"latent_dim": 8},
                                    fit_kws={"directory": tmp, "max_epochs": 2})
print("smoke fit ok, embedding", glue.encode_data("rna", rna).shape)
# warm numba's on-disk caches (scanpy, pynndescent: cache=True) on the code paths that the
# worker's preprocessing and fit_SCGLUE's balancing step take, so that the first benchmark run
# after this script is not ~20 s slower than the next ones.  (umap's fuzzy_simplicial_set, also
# called by sc.pp.neighbors, is not cacheable: every process compiles it, ~10 s.)
import scipy.sparse as sp
rna.X = sp.csr_matrix(rna.X, dtype=np.float32)  # the datasets are sparse: numba kernels differ
rna.layers["counts"] = rna.X.copy()
scanpy.pp.highly_variable_genes(rna, n_top_genes=10, flavor="seurat_v3")
scanpy.pp.normalize_total(rna)
scanpy.pp.log1p(rna)
scanpy.pp.scale(rna)
scanpy.tl.pca(rna, n_comps=5)
scanpy.pp.neighbors(rna, use_rep="X_pca", n_pcs=5, metric="cosine")
scanpy.tl.leiden(rna)
print("numba caches warmed")
PY
