"""Writes the scvi-tools fixtures of tests/test_scvi_tools_load.py (run in the peer
environment, never at test time):

    bash benchmarks/make_peer_env.sh
    benchmarks/.envs/scvi/bin/python tests/data/make_scvi_tools_fixtures.py

For each fixture, scvi-tools 1.4.2 trains a tiny model on ``fixture_adata()`` (40 cells x
12 genes, drawn with numpy's default_rng(0); the test rebuilds the same data) for 3
epochs and saves it into ``tests/data/scvi_tools_<name>/`` (``model.pt``, plus
``adata.h5ad`` where saved), and ``expected.npz`` holds scvi-tools' own outputs:
``latent`` (get_latent_representation), ``qzv`` (variance of q(z|x)), ``scale``
(normalized expression decoded at the posterior mean of z) and, for LinearSCVI,
``loadings``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))

from tests.data.scvi_tools_fixture_data import FIXTURES, fixture_adata  # noqa: E402


def main() -> None:
    import scvi
    import torch

    torch.set_num_threads(1)
    for name, (cls_name, setup, kwargs, save_adata) in FIXTURES.items():
        scvi.settings.seed = 0
        adata = fixture_adata()
        cls = getattr(scvi.model, cls_name)
        cls.setup_anndata(adata, **setup)
        model = cls(adata, **kwargs)
        model.train(max_epochs=3, batch_size=16, enable_progress_bar=False)
        out = HERE / f"scvi_tools_{name}"
        model.save(out, overwrite=True, save_anndata=save_adata)
        module = model.module
        module.eval()
        with torch.inference_mode():
            tensors = next(iter(model._make_data_loader(adata=adata, batch_size=adata.n_obs, shuffle=False)))
            inf = module.inference(**module._get_inference_input(tensors))
            gen_in = module._get_generative_input(tensors, inf)
            gen_in["z"] = module.z_encoder.z_transformation(inf["qz"].loc)
            px = module.generative(**gen_in)["px"]
        arrays = dict(latent=model.get_latent_representation(), qzv=(inf["qz"].scale ** 2).numpy(), scale=px.scale.numpy())
        if cls_name == "LinearSCVI":
            arrays["loadings"] = model.get_loadings().to_numpy()
        np.savez(out / "expected.npz", **{k: v.astype(np.float32) for k, v in arrays.items()})
        print(name, {k: v.shape for k, v in arrays.items()})


if __name__ == "__main__":
    main()
