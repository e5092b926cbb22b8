"""SCVI: the user-facing scVI model (scvi-tools calling convention); LDVAE in :mod:`.ldvae`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd
import torch

from .._settings import settings
from ..data.validate import check_counts_for_likelihood
from ..distributions import get_likelihood
from ..modules import VAE
from ._evaluate import loss_sums
from .base import BaseModel


def _category_code(value, categories: list[str]) -> int | None:
    """Position of ``value`` among the registry's (string) categories: by its text, else
    by number (``1`` matches ``"1"`` or ``"1.0"``)."""
    text = str(value)
    if text in categories:
        return categories.index(text)
    try:
        num = float(value)
    except (TypeError, ValueError):
        return None
    for i, c in enumerate(categories):
        try:
            if float(c) == num:
                return i
        except ValueError:
            continue
    return None


def _alias(value, old, name: str, old_name: str):
    """``value`` or its older scprob keyword ``old`` (not both)."""
    if old is not None and value is not None:
        raise TypeError(f"give {name} or its older name {old_name}, not both")
    return value if value is not None else old


class SCVI(BaseModel):
    """single-cell Variational Inference (Lopez et al. 2018).

    >>> SCVI.setup_anndata(adata, batch_key="batch")
    >>> model = SCVI(adata)
    >>> model.train()
    >>> adata.obsm["X_scvi"] = model.get_latent_representation()

    Extra ``module_kwargs`` are any :class:`scprob.modules.VAE` option (``encode_covariates``,
    ``use_observed_lib_size``, ``batch_representation``, ``use_layer_norm``, ...).
    ``adata=None`` makes a model without data (scvi-tools' convention): the module is
    built when ``model.adata`` is assigned.

    Return types (one rule): per-cell or per-gene tables with names are
    ``pandas.DataFrame`` (normalized expression, correlation matrix, DE), other arrays
    are ``numpy`` arrays (latent, library size, batch representation, likelihood
    parameters), scalars are Python floats, and count samples are ``scipy.sparse`` CSR
    (one sample) or dense ``numpy`` arrays (several); never torch tensors.
    """

    def __init__(
        self,
        adata=None,
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
        self.module = self._build_module(**self.init_params) if adata is not None else None

    def _build_from_registry(self) -> None:
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
        """Codes of ``transform_batch`` batches (scvi-tools' rule: values are batch
        *categories*, numbers included: ``1`` names the category ``1`` (or ``1.0``) of a
        numeric batch column, not the second batch); ``None`` (alone or in a list) keeps
        each cell's observed batch."""
        if transform_batch is None:
            return [None]
        if isinstance(transform_batch, (str, bytes)) or np.ndim(transform_batch) == 0:
            names = [transform_batch]
        else:
            names = list(transform_batch)
        cats = self.registry["batch_categories"]
        codes = []
        for b in names:
            code = None if b is None else _category_code(b, cats)
            if b is not None and code is None:
                raise ValueError(f"transform_batch {b!r} is not a batch of this model; batches: {cats}")
            codes.append(code)
        return codes or [None]

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
        n_samples_overall: int | None = None,
        weights: Literal["uniform", "importance"] | None = None,
        batch_size: int | None = None,
        return_mean: bool = True,
        return_numpy: bool | None = None,
        silent: bool = True,
        importance_weighting_kwargs: dict | None = None,
    ) -> pd.DataFrame | np.ndarray:
        """Denoised expression E[x | z] / library: ``px_scale * library_size`` (or the
        model's mean ``exp(l) * px_scale`` for ``library_size="latent"``), averaged over
        ``transform_batch`` batches (batch-corrected when set) and, with ``return_mean``,
        over ``n_samples`` posterior draws.  Cells x genes DataFrame, or an array of
        shape (n_samples, cells, genes) when samples are kept.

        ``n_samples_overall`` (scvi-tools): ``n_samples_overall // n_cells + 1`` draws per
        cell, of which ``n_samples_overall`` (cell, draw) rows are picked uniformly with
        replacement: an array of shape (n_samples_overall, genes) (rows are draws, not
        cells, hence no DataFrame).

        ``weights="importance"``: draws of the *population* of the selected cells, as
        scvi-tools' DE uses them: a pool of posterior draws is resampled by importance
        weights w_s = sum_a p(u_s | x_a) / sum_a q(u_s | x_a) (the model's aggregate
        posterior over the variational one, see :func:`scprob.models._de.importance_weights`;
        ``importance_weighting_kwargs``: ``max_cells``, ``truncation``, ``n_mc_samples``).
        Returns ``n_samples_overall`` (default ``n_samples * n_cells``) rows, shape
        (draws, genes), scaled by a numeric ``library_size``."""
        self._check_trained()
        adata = self._validate_anndata(adata)
        if weights not in (None, "uniform", "importance"):
            raise ValueError(f"weights must be 'uniform' or 'importance', got {weights!r}")
        if weights == "importance":
            return self._importance_expression(adata, indices, transform_batch, gene_list, library_size, n_samples,
                                               n_samples_overall, batch_size, importance_weighting_kwargs)
        if importance_weighting_kwargs:
            raise ValueError("importance_weighting_kwargs needs weights='importance'")
        if n_samples_overall is not None:
            if n_samples != 1:
                raise ValueError("give n_samples or n_samples_overall, not both")
            n_cells = adata.n_obs if indices is None else len(np.asarray(indices).reshape(-1))
            if n_samples_overall < 1 or n_cells == 0:
                raise ValueError(f"n_samples_overall must be >= 1 over >= 1 cell, got {n_samples_overall}")
            draws = self.get_normalized_expression(
                adata, indices, transform_batch, gene_list, library_size, n_samples_overall // n_cells + 1,
                batch_size=batch_size, return_mean=False, return_numpy=True,
            )
            flat = draws.reshape(-1, draws.shape[-1])
            pick = np.random.default_rng(settings.seed).choice(flat.shape[0], n_samples_overall, replace=True)
            return flat[pick]
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

    def _importance_expression(self, adata, indices, transform_batch, gene_list, library_size, n_samples,
                               n_samples_overall, batch_size, iw_kwargs) -> np.ndarray:
        from ._de import _sample_population

        if library_size == "latent":
            raise ValueError("weights='importance' draws a population, not cells: library_size must be a number")
        self._require_counts(adata, "weights='importance'")
        cells = np.arange(adata.n_obs) if indices is None else np.asarray(indices).reshape(-1)
        if cells.dtype == bool:
            cells = np.flatnonzero(cells)
        n = int(n_samples_overall or n_samples * cells.size)
        if n < 1 or cells.size == 0:
            raise ValueError(f"weights='importance' needs >= 1 cell and >= 1 draw (got {cells.size}, {n})")
        rng = np.random.default_rng(settings.seed)
        codes = self._batch_codes(transform_batch)
        draws, _ = _sample_population(self, adata, cells, codes, -(-n // len(codes)) * len(codes), "importance",
                                      dict(iw_kwargs or {}), batch_size or 256, rng)
        draws = draws[rng.permutation(draws.shape[0])[:n]]  # equal shares of the batches, n rows
        return draws[:, self._gene_mask(gene_list)] * float(library_size)

    # ------------------------------------------------------- downstream API
    @torch.inference_mode()
    def get_likelihood_parameters(
        self, adata=None, indices=None, n_samples: int = 1, give_mean: bool = False, batch_size: int | None = None
    ) -> dict[str, np.ndarray]:
        """Parameters of p(x | z) per cell: ``mean`` (mu), ``dispersions`` (theta) and
        ``dropout`` (ZINB dropout logits); averaged over ``n_samples`` draws if ``give_mean``."""
        self._check_trained(warn=True)
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
        self, adata=None, indices=None, transform_batch: str | Sequence[str] | None = None, n_samples: int = 1,
        gene_list: Sequence[str] | None = None, batch_size: int | None = None, silent: bool = True,
    ):
        """Counts drawn from p(x^ | z), z ~ q(z | x).  One sample: a ``scipy.sparse`` CSR
        matrix (cells x genes); several: a dense array (cells x genes x n_samples).
        ``transform_batch``: decode under these batches instead of each cell's own (the
        same z for all of them); several batches are averaged, as in scvi-tools (the
        result is then no longer integer)."""
        import scipy.sparse as sp

        self._check_trained()
        self._validate_anndata(adata)
        genes = self._gene_mask(gene_list)
        codes = self._batch_codes(transform_batch)
        chunks = []
        for tensors in self._batches(adata, indices, batch_size):
            inf = self.module.inference(**self.module._get_inference_input(tensors), n_samples=n_samples)
            gen_in = self.module._get_generative_input(tensors, inf)
            per_batch = []
            for code in codes:
                draws = self.module.generative(**gen_in, transform_batch=code)["px"].sample()
                if n_samples > 1:
                    draws = draws.permute(1, 2, 0)  # (cells, genes, samples)
                per_batch.append(draws[:, genes])
            draws = (per_batch[0] if len(per_batch) == 1 else torch.stack(per_batch).mean(0)).cpu().numpy()
            chunks.append(sp.csr_matrix(draws) if n_samples == 1 else draws)
        return sp.vstack(chunks, format="csr") if n_samples == 1 else np.concatenate(chunks)

    @torch.inference_mode()
    def get_latent_library_size(
        self, adata=None, indices=None, give_mean: bool = True, batch_size: int | None = None,
    ) -> np.ndarray:
        """Library size l_n per cell, shape (cells, 1): the mean of the log-normal
        posterior q(l | x) (``give_mean``; needs a learned library,
        ``use_observed_lib_size=False``), else ``exp`` of the library the model uses
        (observed counts, or a draw from q(l | x))."""
        self._check_trained()
        out = []
        for tensors in self._batches(adata, indices, batch_size):
            inf = self.module.inference(**self.module._get_inference_input(tensors))
            if give_mean:
                ql = inf["ql"]
                if ql is None:
                    raise RuntimeError(
                        "this model uses the observed library size (no posterior q(l | x)): "
                        "call get_latent_library_size(give_mean=False) for it."
                    )
                lib = torch.distributions.LogNormal(ql.loc, ql.scale).mean
            else:
                lib = inf["library"].exp()
            out.append(lib.reshape(-1, 1).cpu())
        return torch.cat(out).numpy()

    @torch.inference_mode()
    def get_batch_representation(self, adata=None, indices=None, batch_size: int | None = None) -> np.ndarray:
        """Each cell's batch embedding vector, shape (cells, embedding_dim), for a model
        built with ``batch_representation="embedding"`` (scvi-tools' meaning: the learned
        embedding of the cell's batch, not a latent per batch)."""
        from ..data.keys import Keys

        self._check_trained()
        if getattr(self.module, "batch_representation", "one-hot") != "embedding":
            raise ValueError(
                "get_batch_representation needs batch embeddings: build the model with "
                "batch_representation='embedding' (this one uses one-hot batches)."
            )
        out = [self.module.batch_embedding(t[Keys.BATCH].reshape(-1).long()).cpu()
               for t in self._batches(adata, indices, batch_size)]
        return torch.cat(out).numpy()

    @torch.inference_mode()
    def get_feature_correlation_matrix(
        self, adata=None, indices=None, n_samples: int = 10, batch_size: int = 64, rna_size_factor: int = 1000,
        transform_batch: str | Sequence[str] | None = None,
        correlation_type: Literal["spearman", "pearson"] = "spearman", silent: bool = True,
    ) -> pd.DataFrame:
        """Gene x gene correlation of denoised expression sampled from the model
        (scvi-tools' method): per cell, ``n_samples`` draws z ~ q(z|x), and for each a
        Gamma draw with mean ``rna_size_factor * px_scale`` and the model's dispersion
        (the mean itself for likelihoods without one); the correlation (``"spearman"`` or
        ``"pearson"``) over all (cell, draw) rows, averaged over ``transform_batch`` batches."""
        from ._correlation import sampled_expression_correlation

        if correlation_type not in ("spearman", "pearson"):
            raise ValueError(f"correlation_type must be 'spearman' or 'pearson', got {correlation_type!r}")
        self._check_trained()
        adata = self._validate_anndata(adata)
        codes = self._batch_codes(transform_batch)
        mats = [
            sampled_expression_correlation(self, adata, indices, code, n_samples, batch_size, rna_size_factor,
                                           correlation_type)
            for code in codes
        ]
        names = self.registry["var_names"]
        return pd.DataFrame(np.mean(mats, axis=0), index=names, columns=names)

    def _require_counts(self, adata, what: str) -> None:
        if self._registry_of(adata).get("minified"):
            raise ValueError(f"{what} needs the counts, but this AnnData is minified (X was dropped).")

    @torch.inference_mode()
    def get_marginal_ll(
        self, adata=None, indices=None, n_mc_samples: int = 1000, batch_size: int | None = None,
        return_mean: bool = True, n_mc_samples_per_pass: int = 100, dataloader=None,
    ) -> float | np.ndarray:
        r"""Importance-sampled marginal log-likelihood
        :math:`\log p(x_n) \approx \log \frac1K \sum_k p(x_n, z_k) / q(z_k \mid x_n)`,
        :math:`K` = ``n_mc_samples`` (higher is better).  Returns the mean over cells
        (``np.float64``, a Python float with ``ndim`` 0) or, with ``return_mean=False``, one value per cell (``np.ndarray`` of
        shape ``(n_cells,)``).  Memory is bounded: ``n_mc_samples_per_pass`` samples of one
        minibatch at a time."""
        self._check_trained(warn=True)
        self._require_counts(adata, "get_marginal_ll")
        vals = [
            self.module.marginal_ll(t, n_mc_samples=n_mc_samples, n_mc_samples_per_pass=n_mc_samples_per_pass).cpu()
            for t in self._batches(adata, indices, batch_size or 256, dataloader)
        ]
        ll = torch.cat(vals).numpy()
        return np.float64(ll.mean()) if return_mean else ll

    def get_elbo(self, adata=None, indices=None, batch_size: int | None = None,
                 return_mean: bool = True, dataloader=None) -> float | np.ndarray:
        r"""Evidence lower bound :math:`\mathrm{ELBO}_n = \log p(x_n \mid z_n) -
        \mathrm{KL}(q(z \mid x_n) \,\|\, p(z))` (plus the library KL when it is inferred),
        one :math:`z_n \sim q(z \mid x_n)` per cell, as scvi-tools: higher is better, and
        global KL terms are not included.  Returns the mean over cells (``float``) or, with
        ``return_mean=False``, one value per cell (``np.ndarray`` of shape ``(n_cells,)``).
        Note ``history["elbo_*"]`` is the training loss, i.e. the negative of this."""
        self._check_trained(warn=True)
        self._require_counts(adata, "get_elbo")
        rec, kl_local, _ = loss_sums(self, adata, indices, batch_size, dataloader)
        elbo = -(sum(rec.values()) + kl_local)
        return np.float64(elbo.mean()) if return_mean else elbo

    def get_reconstruction_error(self, adata=None, indices=None, batch_size: int | None = None,
                                 return_mean: bool = True, dataloader=None) -> dict[str, float | np.ndarray]:
        r"""Reconstruction loss :math:`-\log p(x_n \mid z_n)`, :math:`z_n \sim q(z \mid x_n)`,
        as scvi-tools 1.4: a positive negative log-likelihood, lower is better, on the
        scale of ``history["reconstruction_loss_*"]``.  Returns
        ``{"reconstruction_loss": mean over cells (float)}`` or, with ``return_mean=False``,
        ``{"reconstruction_loss": np.ndarray (n_cells,)}`` (one key per term for modules
        whose loss has several)."""
        self._check_trained(warn=True)
        self._require_counts(adata, "get_reconstruction_error")
        rec, _, _ = loss_sums(self, adata, indices, batch_size, dataloader)
        return {k: np.float64(v.mean()) for k, v in rec.items()} if return_mean else rec

    def differential_expression(
        self, adata=None, groupby: str | None = None, group1=None, group2=None,
        idx1: Sequence[int] | Sequence[bool] | np.ndarray | str | None = None,
        idx2: Sequence[int] | Sequence[bool] | np.ndarray | str | None = None,
        mode: Literal["vanilla", "change"] = "vanilla", delta: float | None = 0.25, batch_size: int | None = None,
        all_stats: bool = True, batch_correction: bool = False, batchid1: Sequence[str] | None = None,
        batchid2: Sequence[str] | None = None, fdr_target: float = 0.05, silent: bool = False,
        weights: Literal["uniform", "importance"] | None = "uniform", filter_outlier_cells: bool = False,
        importance_weighting_kwargs: dict | None = None, n_samples: int = 5000, n_samples_overall: int | None = None,
        use_permutation: bool = False, m_permutation: int = 10000, pseudocounts: float | None = None,
        threshold_counts: float = 0.01, test_mode: Literal["two", "three"] = "three",
        cred_interval_lvls: Sequence[float] | None = None, seed: int | None = 0,
    ) -> pd.DataFrame:
        r"""Bayesian DE with scvi-tools' arguments, defaults and output (math:
        :mod:`scprob.models._de`).

        Populations: each ``group1`` category of ``adata.obs[groupby]`` (all categories if
        None) vs ``group2`` (the ``"Rest"`` if None); or cells ``idx1`` vs ``idx2`` (boolean
        masks, integer positions or ``adata.obs.query`` strings; ``idx2=None``: the rest).
        ``mode="vanilla"``: :math:`P(\rho_1 > \rho_2)`; ``mode="change"``: posterior LFC
        :math:`\log_2(\rho_1 + c) - \log_2(\rho_2 + c)` tested against ``delta``
        (``test_mode="three"``: :math:`\max(P(\mathrm{LFC} \ge \delta), P(\mathrm{LFC} < -\delta))`;
        ``"two"``: :math:`P(|\mathrm{LFC}| \ge \delta)`), pseudocount :math:`c` =
        ``pseudocounts`` or, if None, estimated from the genes with mean count below
        ``threshold_counts`` in a group.  ``batch_correction``: decode each group with every
        batch of ``batchid1``/``batchid2`` (default: all) instead of its cells' own;
        ``weights="importance"``: resample posterior draws by importance weights
        (``importance_weighting_kwargs``: ``max_cells``, ``truncation``, ``n_mc_samples``,
        ``n_mc_samples_per_pass``); ``filter_outlier_cells``: drop latent-space outliers
        of each group (elliptic envelope).  ``n_samples`` (alias ``n_samples_overall``)
        posterior draws per group; ``seed`` makes the call reproducible (None: global RNGs).

        Returns one row per gene and comparison: vanilla ``proba_m1, proba_m2,
        bayes_factor, scale1, scale2``, sorted by ``bayes_factor`` descending; change
        ``proba_de, proba_not_de, bayes_factor, scale1, scale2, pseudocounts, delta,
        lfc_mean, lfc_median, lfc_std, lfc_min, lfc_max``, sorted by ``proba_de``
        descending, with ``is_de_fdr_<fdr_target>``; then (``all_stats``) ``raw_mean1/2,
        non_zeros_proportion1/2, raw_normalized_mean1/2`` and ``comparison, group1, group2``.
        """
        from ._de import differential_expression

        self._check_trained()
        adata = self._validate_anndata(adata)
        return differential_expression(
            self, adata, groupby=groupby, group1=group1, group2=group2, idx1=idx1, idx2=idx2, mode=mode,
            delta=delta, batch_size=batch_size, all_stats=all_stats, batch_correction=batch_correction,
            batchid1=batchid1, batchid2=batchid2, fdr_target=fdr_target, silent=silent, weights=weights,
            filter_outlier_cells=filter_outlier_cells, importance_weighting_kwargs=importance_weighting_kwargs,
            n_samples=n_samples if n_samples_overall is None else n_samples_overall,
            use_permutation=use_permutation, m_permutation=m_permutation, pseudocounts=pseudocounts,
            threshold_counts=threshold_counts, test_mode=test_mode, cred_interval_lvls=cred_interval_lvls, seed=seed,
        )

    # ----------------------------------------------------------- query mapping
    @classmethod
    def load_query_data(
        cls,
        adata=None,
        reference_model=None,
        inplace_subset_query_vars: bool = False,
        accelerator: str = "auto",
        device: int | str = "auto",
        unfrozen: bool = False,
        freeze_dropout: bool = False,
        freeze_expression: bool = True,
        freeze_decoder_first_layer: bool = True,
        freeze_batchnorm_encoder: bool = True,
        freeze_batchnorm_decoder: bool = False,
        freeze_classifier: bool = True,
        *,
        freeze: bool | None = None,
        min_gene_overlap: float = 0.5,
        query_adata=None,
        reference=None,
    ):
        """scArches surgery (scvi-tools' arguments): a model on the query ``adata``
        initialised from ``reference_model`` (a model or a saved folder), its new batches
        added.  Call ``.train()`` to fit them.

        Genes: by default aligned to the reference by name on a copy (missing genes
        zero-filled, extra dropped; at least ``min_gene_overlap`` shared) and
        ``model.adata`` is that copy; when the query already has the reference's genes in
        its order (e.g. after :meth:`prepare_query_anndata`) the model is built on, and
        registers, the user's own object, as in scvi-tools (so ``SCVI(adata)`` works
        afterwards); ``inplace_subset_query_vars=True`` reorders the user's own object to
        the reference genes (all must be present) and the model reads it.

        Training: ``unfrozen=True`` (or scprob's ``freeze=False``) trains everything.
        Otherwise only the new batches' entries of batch-indexed parameters (the reference
        entries' gradients are zeroed) plus what scvi-tools' flags release:
        ``freeze_expression=False`` the encoders' first layer, ``freeze_decoder_first_layer=False``
        the decoder's first layer, ``freeze_batchnorm_encoder/decoder=False`` that part's
        batch-norm weights and statistics (decoder released by default, as in scvi-tools);
        the library encoder (learned library only) is trained as in scvi-tools.
        ``freeze_dropout=True`` turns dropout off.  ``freeze_classifier`` is accepted for
        scvi-tools compatibility (SCVI has no classifier).  ``query_adata`` / ``reference``
        are scprob's older names of the first two arguments.  The result counts as trained
        (usable before ``.train()``), unlike scvi-tools' ``is_trained=False``.
        See :mod:`scprob.models._query`."""
        from ._query import load_query_data

        adata = _alias(adata, query_adata, "adata", "query_adata")
        reference_model = _alias(reference_model, reference, "reference_model", "reference")
        if adata is None or reference_model is None:
            raise TypeError("load_query_data needs the query adata and reference_model")
        freeze = (not unfrozen) if freeze is None else bool(freeze) and not unfrozen
        options = dict(
            freeze_dropout=freeze_dropout, freeze_expression=freeze_expression,
            freeze_decoder_first_layer=freeze_decoder_first_layer, freeze_batchnorm_encoder=freeze_batchnorm_encoder,
            freeze_batchnorm_decoder=freeze_batchnorm_decoder, freeze_classifier=freeze_classifier,
        )
        return load_query_data(cls, adata, reference_model, freeze, min_gene_overlap, inplace_subset_query_vars,
                               accelerator, device, options)

    @classmethod
    def prepare_query_anndata(
        cls, adata, reference_model, return_reference_var_names: bool = False, inplace: bool = True,
    ):
        """scvi-tools' query preparation: ``adata`` with the reference's genes in its order
        (zeros in X and every layer for missing genes, extra genes dropped; a warning below
        80% shared, an error at 0%).  ``inplace=True`` (scvi-tools' default) changes the
        user's object and returns ``None``; ``inplace=False`` returns a new AnnData;
        ``return_reference_var_names=True`` only returns the reference genes (``pd.Index``).
        ``load_query_data`` aligns by itself, so this step is optional in scprob."""
        from ._query import prepare_query_anndata

        return prepare_query_anndata(cls, adata, reference_model, return_reference_var_names, inplace)

    @torch.inference_mode()
    def differential_abundance(
        self, adata=None, adata_sub=None, sample_key: str | None = None, batch_size: int = 128,
        num_cells_posterior: int | None = None, dof: float | None = None,
    ) -> pd.DataFrame:
        """scvi-tools' differential abundance: for each sample of ``adata.obs[sample_key]``,
        the log density of every cell's latent mean under that sample's aggregated
        posterior (the equal-weight mixture of its cells' q(z|x); Student-t components
        with ``dof`` degrees of freedom, Normal if ``None``; at most
        ``num_cells_posterior`` random cells per sample).  Cells of ``adata_sub``
        (default: ``adata``) x samples; stored, as in scvi-tools, in
        ``adata_sub.obsm["da_log_probs"]`` and returned."""
        self._check_trained()
        adata = self._validate_anndata(adata)
        adata_sub = adata if adata_sub is None else self._validate_anndata(adata_sub)
        if sample_key is None or sample_key not in adata.obs.columns:
            raise KeyError(f"sample_key {sample_key!r} is not a column of adata.obs")
        if sample_key not in adata_sub.obs.columns:
            raise KeyError(f"sample_key {sample_key!r} is not a column of adata_sub.obs")
        from ._abundance import aggregated_posterior_log_density

        loc, var = self.get_latent_representation(adata, return_dist=True, batch_size=batch_size)
        z = self.get_latent_representation(adata_sub, return_dist=True, batch_size=batch_size)[0]
        df = aggregated_posterior_log_density(
            loc, var, z, adata.obs[sample_key].to_numpy(), pd.unique(adata_sub.obs[sample_key]), adata_sub.obs_names,
            batch_size, num_cells_posterior, dof, np.random.default_rng(settings.seed),
        )
        adata_sub.obsm["da_log_probs"] = df
        return df

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
