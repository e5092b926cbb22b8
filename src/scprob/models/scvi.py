"""SCVI and LDVAE: the user-facing scVI family (scvi-tools calling convention)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd
import torch

from ..data.validate import check_counts_for_likelihood
from ..distributions import get_likelihood
from ..modules import VAE
from .base import BaseModel


class SCVI(BaseModel):
    """single-cell Variational Inference (Lopez et al. 2018).

    >>> SCVI.setup_anndata(adata, batch_key="batch")
    >>> model = SCVI(adata)
    >>> model.train()
    >>> adata.obsm["X_scvi"] = model.get_latent_representation()

    Extra ``module_kwargs`` are any :class:`scprob.modules.VAE` option (``encode_covariates``,
    ``use_observed_lib_size``, ``batch_representation``, ``use_layer_norm``, ...).
    """

    def __init__(
        self,
        adata,
        n_hidden: int = 128,
        n_latent: int = 10,
        n_layers: int = 1,
        dropout_rate: float = 0.1,
        dispersion: Literal["gene", "gene-batch", "gene-label", "gene-cell"] = "gene",
        gene_likelihood: str = "zinb",
        latent_distribution: Literal["normal", "ln"] = "normal",
        **module_kwargs,
    ):
        super().__init__(adata)
        self.init_params = dict(
            n_hidden=n_hidden, n_latent=n_latent, n_layers=n_layers, dropout_rate=dropout_rate,
            dispersion=dispersion, gene_likelihood=gene_likelihood, latent_distribution=latent_distribution,
            **module_kwargs,
        )
        self.module = self._build_module(**self.init_params)

    def _build_module(self, gene_likelihood: str, **kwargs) -> VAE:
        reg = self.registry
        check_counts_for_likelihood(reg, gene_likelihood, get_likelihood(gene_likelihood)["is_count"])
        args = reg["setup_args"]
        return VAE(
            n_input=reg["n_vars"],
            n_batch=len(reg["batch_categories"]),
            n_labels=len(reg["label_categories"]),
            n_continuous_cov=reg["n_continuous_cov"],
            n_cats_per_cov=[len(reg["categorical_covariate_categories"][k]) for k in args["categorical_covariate_keys"]],
            use_size_factor_key=args["size_factor_key"] is not None,
            library_log_means=np.asarray(reg["library_log_means"]),
            library_log_vars=np.asarray(reg["library_log_vars"]),
            gene_likelihood=gene_likelihood,
            **kwargs,
        )

    # ------------------------------------------------------------ expression
    def _batch_codes(self, transform_batch) -> list[int | None]:
        if transform_batch is None:
            return [None]
        names = [transform_batch] if isinstance(transform_batch, (str, int)) else list(transform_batch)
        cats = self.registry["batch_categories"]
        codes = []
        for b in names:
            if str(b) not in cats:
                raise ValueError(f"transform_batch {b!r} is not a batch of this model; batches: {cats}")
            codes.append(cats.index(str(b)))
        return codes

    def _gene_mask(self, gene_list: Sequence[str] | None) -> np.ndarray | slice:
        if gene_list is None:
            return slice(None)
        names = self.registry["var_names"]
        pos = {g: i for i, g in enumerate(names)}
        missing = [g for g in gene_list if g not in pos]
        if missing:
            raise ValueError(f"genes not in the model: {missing[:10]}")
        return np.array([pos[g] for g in gene_list])

    @torch.inference_mode()
    def get_normalized_expression(
        self,
        adata=None,
        indices=None,
        transform_batch: str | Sequence[str] | None = None,
        gene_list: Sequence[str] | None = None,
        library_size: float | Literal["latent"] = 1.0,
        n_samples: int = 1,
        batch_size: int | None = None,
        return_mean: bool = True,
        return_numpy: bool | None = None,
    ) -> pd.DataFrame | np.ndarray:
        """Denoised expression E[x | z] / library: ``px_scale * library_size`` (or the
        model's mean ``exp(l) * px_scale`` for ``library_size="latent"``), averaged over
        ``transform_batch`` batches (batch-corrected when set) and, with ``return_mean``,
        over ``n_samples`` posterior draws.  Cells x genes DataFrame, or an array of
        shape (n_samples, cells, genes) when samples are kept."""
        self._check_trained()
        adata = self._validate_anndata(adata)
        genes = self._gene_mask(gene_list)
        codes = self._batch_codes(transform_batch)
        chunks = []
        for tensors in self._batches(adata, indices, batch_size):
            # one posterior draw per cell, decoded under each requested batch
            inf = self.module.inference(**self.module._get_inference_input(tensors), n_samples=n_samples)
            gen_in = self.module._get_generative_input(tensors, inf)
            per_batch = []
            for code in codes:
                gen = self.module.generative(**gen_in, transform_batch=code)
                scale = gen["px_scale"] * (gen["library"].exp() if library_size == "latent" else float(library_size))
                per_batch.append(scale[..., genes])
            val = torch.stack(per_batch).mean(0)
            if n_samples > 1 and return_mean:
                val = val.mean(0)
            chunks.append(val.cpu())
        out = torch.cat(chunks, dim=-2).numpy()
        if out.ndim == 3 or return_numpy:
            return out
        idx = adata.obs_names if indices is None else adata.obs_names[np.asarray(indices)]
        cols = np.asarray(self.registry["var_names"])[genes]
        return pd.DataFrame(out, index=idx, columns=cols)


    # ------------------------------------------------------- downstream API
    @torch.inference_mode()
    def get_likelihood_parameters(
        self, adata=None, indices=None, n_samples: int = 1, give_mean: bool = False, batch_size: int | None = None
    ) -> dict[str, np.ndarray]:
        """Parameters of p(x | z) per cell: ``mean`` (mu), ``dispersions`` (theta) and
        ``dropout`` (ZINB dropout logits); averaged over ``n_samples`` draws if ``give_mean``."""
        self._check_trained()
        out: dict[str, list] = {"mean": [], "dispersions": [], "dropout": []}
        for tensors in self._batches(adata, indices, batch_size):
            _, gen = self.module(tensors, inference_kwargs=dict(n_samples=n_samples), compute_loss=False)
            px = gen["px"]
            vals = {
                "mean": px.mean if not hasattr(px, "mu") else px.mu,
                "dispersions": getattr(px, "theta", None),
                "dropout": gen["px_dropout"],
            }
            for k, v in vals.items():
                if v is None:
                    continue
                v = v.expand_as(vals["mean"])
                if n_samples > 1 and give_mean:
                    v = v.mean(0)
                out[k].append(v.cpu())
        axis = -2
        return {k: torch.cat(v, dim=axis).numpy() for k, v in out.items() if v}

    @torch.inference_mode()
    def posterior_predictive_sample(
        self, adata=None, indices=None, n_samples: int = 1, gene_list: Sequence[str] | None = None,
        batch_size: int | None = None,
    ):
        """Counts drawn from p(x^ | z), z ~ q(z | x).  One sample: a ``scipy.sparse``
        CSR matrix (cells x genes); several: a dense array (cells x genes x n_samples)."""
        import scipy.sparse as sp

        self._check_trained()
        genes = self._gene_mask(gene_list)
        chunks = []
        for tensors in self._batches(adata, indices, batch_size):
            draws = self.module.sample(tensors, n_samples=n_samples)[:, genes]
            chunks.append(sp.csr_matrix(draws.numpy()) if n_samples == 1 else draws.numpy())
        return sp.vstack(chunks, format="csr") if n_samples == 1 else np.concatenate(chunks)

    def _require_counts(self, adata, what: str) -> None:
        if self._registry_of(adata).get("minified"):
            raise ValueError(f"{what} needs the counts, but this AnnData is minified (X was dropped).")

    @torch.inference_mode()
    def get_marginal_ll(
        self, adata=None, indices=None, n_mc_samples: int = 1000, batch_size: int | None = None,
        return_mean: bool = True, n_mc_samples_per_pass: int = 100,
    ) -> float | np.ndarray:
        """Importance-sampled log p(x) per cell (mean over cells if ``return_mean``).
        Memory is bounded: ``n_mc_samples_per_pass`` samples of one minibatch at a time."""
        self._check_trained()
        self._require_counts(adata, "get_marginal_ll")
        vals = [
            self.module.marginal_ll(t, n_mc_samples=n_mc_samples, n_mc_samples_per_pass=n_mc_samples_per_pass).cpu()
            for t in self._batches(adata, indices, batch_size or 256)
        ]
        ll = torch.cat(vals).numpy()
        return float(ll.mean()) if return_mean else ll

    @torch.inference_mode()
    def _loss_sums(self, adata, indices, batch_size) -> tuple[float, float, int]:
        rec = kl = 0.0
        n = 0
        for t in self._batches(adata, indices, batch_size):
            _, _, lo = self.module(t, loss_kwargs=dict(kl_weight=1.0))
            rec += float(lo.reconstruction_loss_sum)
            kl += float(lo.kl_local_sum) + float(lo.kl_global_sum)
            n += lo.n_obs_minibatch
        return rec, kl, n

    def get_elbo(self, adata=None, indices=None, batch_size: int | None = None) -> float:
        """Evidence lower bound per cell, E_q[log p(x|z)] - KL (higher is better)."""
        self._check_trained()
        self._require_counts(adata, "get_elbo")
        rec, kl, n = self._loss_sums(adata, indices, batch_size)
        return -(rec + kl) / n

    def get_reconstruction_error(self, adata=None, indices=None, batch_size: int | None = None) -> dict[str, float]:
        """``{"reconstruction_loss": E_q[log p(x|z)]}`` per cell (scvi-tools sign: higher is better)."""
        self._check_trained()
        self._require_counts(adata, "get_reconstruction_error")
        rec, _, n = self._loss_sums(adata, indices, batch_size)
        return {"reconstruction_loss": -rec / n}

    def differential_expression(
        self, adata=None, groupby: str | None = None, group1: str | Sequence[str] | None = None,
        group2: str | Sequence[str] | None = None, mode: Literal["vanilla", "change"] = "vanilla",
        delta: float = 0.25, batch_correction: bool = False, fdr_target: float = 0.05, n_samples: int = 5000,
        pseudocount: float | None = None, seed: int = 0,
    ) -> pd.DataFrame:
        """Bayesian DE between ``group1`` and ``group2`` of ``adata.obs[groupby]``
        (``group2=None``: one-vs-rest; ``group1=None``: every group vs the rest).  See
        :mod:`scprob.models._de` for the math.  Returns one row per gene (and comparison)
        with Bayes factors, probabilities, LFC mean/median/std, ``is_de_fdr_<t>`` and raw
        per-group means."""
        from ._de import differential_expression

        self._check_trained()
        if groupby is None:
            raise ValueError("groupby is required (an adata.obs column)")
        adata = self._validate_anndata(adata)
        return differential_expression(self, adata, groupby, group1, group2, mode, delta, batch_correction,
                                       fdr_target, n_samples, pseudocount, seed)

    # ----------------------------------------------------------- query mapping
    @classmethod
    def load_query_data(cls, query_adata, reference, freeze: bool = True, min_gene_overlap: float = 0.5):
        """scArches surgery: a model on ``query_adata`` (genes aligned to the reference by
        name, new batches added) initialised from ``reference`` (a model or a saved
        folder).  Call ``.train()`` to fit the new batches; ``model.adata`` is the aligned
        copy of the query.  See :mod:`scprob.models._query`."""
        from ._query import load_query_data

        return load_query_data(cls, query_adata, reference, freeze, min_gene_overlap)

    # ------------------------------------------------------------ minified
    def minify_adata(
        self,
        minified_data_type: str = "latent_posterior_parameters",
        use_latent_qzm_key: str = "X_latent_qzm",
        use_latent_qzv_key: str = "X_latent_qzv",
        inplace: bool = False,
    ) -> None:
        """Replace the model's counts by the cached posterior: ``obsm[use_latent_qzm_key]``,
        ``obsm[use_latent_qzv_key]`` (mean / variance of q(z|x); taken from there if the
        user stored them, as in scvi-tools, else computed) and ``obs["observed_lib_size"]``.
        Latent, normalized expression, DE and sampling then run from the cache.

        ``model.adata`` becomes a new AnnData with an empty X and no layers; the user's
        AnnData keeps its counts.  ``inplace=True`` instead empties the counts of the
        AnnData object the model was built on (saves memory; the counts are gone)."""
        from ._minify import minify

        self._check_trained()
        minify(self, minified_data_type, use_latent_qzm_key, use_latent_qzv_key, inplace)

    @property
    def minified_data_type(self) -> str | None:
        """``"latent_posterior_parameters"`` once minified, else ``None`` (scvi-tools)."""
        return self.registry.get("minified_type", "latent_posterior_parameters") if self.registry.get("minified") else None


class LDVAE(SCVI):
    """Linearly decoded VAE (Svensson et al. 2020): scVI with a linear decoder whose
    weights (``get_loadings``) tie each latent factor to genes.  It is the VAE module
    built with ``decoder_type="linear"``."""

    def __init__(
        self,
        adata,
        n_hidden: int = 128,
        n_latent: int = 10,
        n_layers_encoder: int = 1,
        dropout_rate: float = 0.1,
        dispersion: Literal["gene", "gene-batch", "gene-label", "gene-cell"] = "gene",
        gene_likelihood: str = "nb",
        use_batch_norm: bool = True,
        bias: bool = False,
        latent_distribution: Literal["normal", "ln"] = "normal",
        use_observed_lib_size: bool = False,
        **module_kwargs,
    ):
        BaseModel.__init__(self, adata)
        self.init_params = dict(
            n_hidden=n_hidden, n_latent=n_latent, n_layers_encoder=n_layers_encoder, dropout_rate=dropout_rate,
            dispersion=dispersion, gene_likelihood=gene_likelihood, use_batch_norm=use_batch_norm, bias=bias,
            latent_distribution=latent_distribution, use_observed_lib_size=use_observed_lib_size, **module_kwargs,
        )
        module_kwargs = dict(module_kwargs)
        module_kwargs.setdefault("use_layer_norm", "none")
        self.module = self._build_module(
            n_hidden=n_hidden, n_latent=n_latent, n_layers=n_layers_encoder, dropout_rate=dropout_rate,
            dispersion=dispersion, gene_likelihood=gene_likelihood, latent_distribution=latent_distribution,
            use_batch_norm="both" if use_batch_norm else "encoder", use_observed_lib_size=use_observed_lib_size,
            decoder_type="linear", linear_decoder_bias=bias, **module_kwargs,
        )

    def get_loadings(self) -> pd.DataFrame:
        """Genes x latent loadings of the linear decoder (batch-norm folded in)."""
        w = self.module.get_loadings()
        return pd.DataFrame(w, index=self.registry["var_names"], columns=[f"Z_{i}" for i in range(w.shape[1])])
