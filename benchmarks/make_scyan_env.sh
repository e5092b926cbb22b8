#!/usr/bin/env bash
# Create benchmarks/.envs/scyan: a separate environment with the scyan package (the peer of
# scprob.models.Scyan), never a dependency of scprob.  Usage: bash benchmarks/make_scyan_env.sh
# torch goes in first, pinned to the CPU wheel that lies on local disk, so that resolving
# scyan's "torch>=2.2.0" never pulls a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")"
ENV=.envs/scyan
if [ ! -x "$ENV/bin/python" ]; then
  python -m venv "$ENV"
fi
# the CPU wheel on local disk if there is one (pip's find-links dir here), else PyPI's torch==2.13.0
TORCH=$(ls /opt/wheels/torch-2.13.0+cpu-cp311-*.whl 2>/dev/null | head -1 || true)
"$ENV/bin/pip" install -q "${TORCH:-torch==2.13.0}"
# scyan 1.8.0 (Requires-Python >= 3.11; anndata>=0.12, lightning>=2.2, torch>=2.2) installs with its
# own dependencies; torch is re-pinned so that the resolver keeps the wheel installed above.
# Versions verified to work together: scyan 1.8.0, torch 2.13.0+cpu, lightning 2.6.6,
# anndata 0.12.19, numpy 2.4.6, pandas 2.3.3, scipy 1.17.1.
"$ENV/bin/pip" install -q "scyan==1.8.0" "torch==2.13.0" "lightning==2.6.6" "anndata==0.12.19" psutil
"$ENV/bin/python" - <<'PY'
import warnings
warnings.filterwarnings("ignore")
import torch, lightning, anndata, numpy as np, pandas as pd
import scyan
if torch.version.cuda is not None:
    print("WARNING: a CUDA build of torch was installed:", torch.__version__)
print("scyan", scyan.__version__ if hasattr(scyan, "__version__") else "?", "| torch", torch.__version__,
      "| lightning", lightning.__version__, "| anndata", anndata.__version__, "| numpy", np.__version__)
# tiny smoke fit: 2 populations x 2 markers
rng = np.random.default_rng(0)
z = rng.integers(0, 2, 600)
x = np.where(np.c_[z == 0, z == 1], 1.0, -1.0) + 0.2 * rng.standard_normal((600, 2))
adata = anndata.AnnData(x.astype(np.float32), var=pd.DataFrame(index=["m1", "m2"]))
table = pd.DataFrame([[1, -1], [-1, 1]], index=pd.Index(["A", "B"], name="population"), columns=["m1", "m2"])
model = scyan.Scyan(adata, table)
model.fit(max_epochs=2)
model.predict()
acc = (adata.obs["scyan_pop"].astype(str).values == np.array(["A", "B"])[z]).mean()
print("smoke fit ok, accuracy", round(float(acc), 3))
PY
