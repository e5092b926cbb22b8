"""Models trained and saved by scvi-tools 1.4.2, loaded by scprob: same latent, same
normalized expression, same likelihood.

    bash benchmarks/make_peer_env.sh          # once: benchmarks/.envs/scvi
    python benchmarks/scvi_tools_load.py [--data ../shared/data/mixology_3cl.h5ad] [--epochs 5]

For each option combination this script runs itself in the peer environment
(``--peer``): scvi-tools trains SCVI / LinearSCVI on the data (batch_key ``protocol``),
saves the model (with or without ``save_anndata``) and writes its own outputs.  Then, in
this environment, ``scprob.models.SCVI.load(dir, adata)`` (or ``LDVAE.load``; ``adata``
omitted where the AnnData was saved) loads the folder and the same quantities are
computed.  Printed per combination: the max abs difference of

* ``latent``: ``get_latent_representation()`` (q(z|x) means; for ``ln`` the mean of
  q(z|x) before the softmax, as both take Monte-Carlo averages after it),
* ``latent_var``: the variance of q(z|x),
* ``normalized``: ``px_scale`` (normalized expression, library 1) decoded at the
  posterior mean z, under each cell's own batch and under the first batch
  (``transform_batch``); decoded at the mean because ``get_normalized_expression``
  draws z at random in both libraries,
* ``loglik``: log p(x | z, l) per cell at the posterior means (checks the dispersion and
  dropout heads), relative, median and max over cells.  The max can be far from 0 on a
  few cells where a gene's rate underflows: scvi-tools computes ``log(mu + 1e-8)``,
  scprob ``log mu`` from the log-softmax (and, with a size factor, ``log(softplus + 1e-12)``),
* ``normalized_rel``: relative difference of ``px_scale`` where it is above 1e-6,
* ``loadings`` (LinearSCVI): ``get_loadings()``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
PEER_PY = HERE / ".envs" / "scvi" / "bin" / "python"

# name -> (model class, setup_anndata kwargs, model kwargs, save_anndata)
COMBOS: dict[str, tuple[str, dict, dict, bool]] = {
    "default_zinb_saved_adata": ("SCVI", {}, {}, True),
    "nb_genebatch_2layers_learnedlib_covs": (
        "SCVI", dict(categorical_covariate_keys=["donor"], continuous_covariate_keys=["log_total"]),
        dict(gene_likelihood="nb", dispersion="gene-batch", n_layers=2, n_hidden=64, n_latent=8,
             use_observed_lib_size=False, encode_covariates=True, deeply_inject_covariates=False), False),
    "zinb_genecell_ln_layernorm_deep": (
        "SCVI", dict(categorical_covariate_keys=["donor"]),
        dict(dispersion="gene-cell", latent_distribution="ln", use_batch_norm="none", use_layer_norm="both",
             n_layers=2, encode_covariates=True, deeply_inject_covariates=True), False),
    "nb_genelabel_embedding": (
        "SCVI", dict(labels_key="cell_line"),
        dict(gene_likelihood="nb", dispersion="gene-label", batch_representation="embedding", encode_covariates=True,
             use_batch_norm="encoder"), True),
    "poisson_sizefactor": ("SCVI", dict(size_factor_key="size_factor"), dict(gene_likelihood="poisson"), False),
    "normal_decoderbn": ("SCVI", {}, dict(gene_likelihood="normal", use_batch_norm="decoder", n_latent=5), False),
    "linearscvi_nb": ("LinearSCVI", {}, dict(n_latent=6), False),
    "linearscvi_zinb_nobn_observedlib": (
        "LinearSCVI", {}, dict(gene_likelihood="zinb", use_batch_norm=False, use_observed_lib_size=True), False),
}


def add_columns(adata) -> None:
    """Covariates for the option combinations: a fake donor (3 levels), log total counts,
    a size factor."""
    rng = np.random.default_rng(0)
    total = np.asarray(adata.X.sum(1)).ravel()
    adata.obs["donor"] = np.array(["d0", "d1", "d2"])[rng.integers(0, 3, adata.n_obs)]
    adata.obs["log_total"] = np.log(total) - np.log(total).mean()
    adata.obs["size_factor"] = total / total.mean()


# ----------------------------------------------------------------------------- peer side
def _peer(data: str, combo: str, out: str, epochs: int) -> None:
    """Runs in the scvi-tools environment: train, save, write scvi-tools' outputs."""
    import anndata as ad
    import scvi
    import torch

    torch.set_num_threads(1)
    scvi.settings.seed = 0
    cls_name, setup, kwargs, save_adata = COMBOS[combo]
    adata = ad.read_h5ad(data)
    add_columns(adata)
    cls = getattr(scvi.model, cls_name)
    cls.setup_anndata(adata, batch_key="protocol", **setup)
    model = cls(adata, **kwargs)
    model.train(max_epochs=epochs, batch_size=128, enable_progress_bar=False)
    model.save(Path(out) / "model", overwrite=True, save_anndata=save_adata)
    module = model.module
    module.eval()
    res: dict[str, list] = {k: [] for k in ("qzm", "qzv", "scale", "scale_b0", "loglik")}
    with torch.inference_mode():
        for tensors in model._make_data_loader(adata=adata, batch_size=256, shuffle=False):
            inf = module.inference(**module._get_inference_input(tensors))
            qz, ql = inf["qz"], inf["ql"]
            gen_in = module._get_generative_input(tensors, inf)
            gen_in["z"] = module.z_encoder.z_transformation(qz.loc)
            gen_in["library"] = ql.loc if ql is not None else torch.log(tensors["X"].sum(1, keepdim=True))
            px = module.generative(**gen_in)["px"]
            px0 = module.generative(**gen_in, transform_batch=0)["px"]
            res["qzm"].append(qz.loc)
            res["qzv"].append(qz.scale**2)
            # scvi-tools' Normal keeps the normalized expression as normal_mu (.scale is its sd)
            res["scale"].append(px.normal_mu if cls_name != "LinearSCVI" and module.gene_likelihood == "normal" else px.scale)
            res["scale_b0"].append(px0.normal_mu if cls_name != "LinearSCVI" and module.gene_likelihood == "normal" else px0.scale)
            res["loglik"].append(px.log_prob(tensors["X"]).sum(-1))
    arrays = {k: torch.cat(v).numpy() for k, v in res.items()}
    arrays["latent"] = model.get_latent_representation()
    if cls_name == "LinearSCVI":
        arrays["loadings"] = model.get_loadings().to_numpy()
    np.savez(Path(out) / "peer.npz", **arrays)


# ----------------------------------------------------------------------------- scprob side
def _scprob_outputs(model, adata) -> dict[str, np.ndarray]:
    import torch

    module = model.module
    res: dict[str, list] = {k: [] for k in ("qzm", "qzv", "scale", "scale_b0", "loglik")}
    with torch.inference_mode():
        for tensors in model._loader(adata, batch_size=256):
            inf_in = module._get_inference_input(tensors)
            inf = module.inference(**inf_in)
            qz, ql = inf["qz"], inf["ql"]
            gen_in = module._get_generative_input(tensors, inf)
            gen_in["z"] = module.z_encoder.z_transform(qz.loc)
            gen_in["library"] = ql.loc if ql is not None else torch.log(inf_in["x"].sum(1, keepdim=True))
            gen = module.generative(**gen_in)
            gen0 = module.generative(**gen_in, transform_batch=0)
            res["qzm"].append(qz.loc)
            res["qzv"].append(qz.scale**2)
            res["scale"].append(gen["px_scale"])
            res["scale_b0"].append(gen0["px_scale"])
            res["loglik"].append(gen["px"].log_prob(inf_in["x"]).sum(-1))
    out = {k: torch.cat(v).numpy() for k, v in res.items()}
    out["latent"] = model.get_latent_representation()
    if type(model).__name__ == "LDVAE":
        out["loadings"] = model.get_loadings().to_numpy()
    return out


def run(data: str, epochs: int, combos: list[str]) -> list[dict]:
    import anndata as ad
    import torch

    import scprob
    from scprob.models import LDVAE, SCVI

    torch.set_num_threads(1)
    scprob.settings.num_threads = 1
    rows = []
    for combo in combos:
        cls_name, _, kwargs, save_adata = COMBOS[combo]
        with tempfile.TemporaryDirectory() as tmp:
            env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
            r = subprocess.run([str(PEER_PY), __file__, "--peer", combo, "--data", data, "--out", tmp,
                                "--epochs", str(epochs)], capture_output=True, text=True, env=env)
            if r.returncode:
                raise RuntimeError(f"peer run {combo} failed:\n{r.stderr[-3000:]}")
            peer = dict(np.load(Path(tmp) / "peer.npz"))
            cls = LDVAE if cls_name == "LinearSCVI" else SCVI
            if save_adata:
                model = cls.load(Path(tmp) / "model")  # the AnnData scvi-tools saved
                adata = model.adata
            else:
                adata = ad.read_h5ad(data)
                add_columns(adata)
                model = cls.load(Path(tmp) / "model", adata)
            ours = _scprob_outputs(model, adata)
        row = dict(combo=combo, model=cls_name, save_anndata=save_adata, options=kwargs)
        ln = kwargs.get("latent_distribution") == "ln"
        row["latent"] = float(np.abs((ours["qzm"] if ln else ours["latent"]) - (peer["qzm"] if ln else peer["latent"])).max())
        row["latent_var"] = float(np.abs(ours["qzv"] - peer["qzv"]).max())
        row["normalized"] = float(max(np.abs(ours["scale"] - peer["scale"]).max(),
                                      np.abs(ours["scale_b0"] - peer["scale_b0"]).max()))
        big = peer["scale"] > 1e-6  # relative error where expression is not vanishing
        row["normalized_rel"] = float(np.abs(ours["scale"][big] / peer["scale"][big] - 1).max())
        rel = np.abs(ours["loglik"] - peer["loglik"]) / np.abs(peer["loglik"])
        row["loglik_rel_median"] = float(np.median(rel))
        row["loglik_rel_max"] = float(rel.max())
        if "loadings" in peer:
            row["loadings"] = float(np.abs(ours["loadings"] - peer["loadings"]).max())
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data" / "mixology_3cl.h5ad"))
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--combos", default=",".join(COMBOS), help="comma-separated subset of: " + ", ".join(COMBOS))
    p.add_argument("--peer", default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.peer:
        _peer(args.data, args.peer, args.out, args.epochs)
        return
    if not PEER_PY.exists():
        sys.exit("no peer environment: run  bash benchmarks/make_peer_env.sh  first")
    rows = run(args.data, args.epochs, args.combos.split(","))
    worst = max(r["latent"] for r in rows)
    print(f"max |latent difference| over {len(rows)} combinations: {worst:.2e}")


if __name__ == "__main__":
    main()
