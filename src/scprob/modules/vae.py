r"""The scVI variational autoencoder (Lopez et al. 2018) and its linear-decoded variant
LDVAE (Svensson et al. 2020).  Paper names are kept: ``qz``, ``ql``, ``px``, ``library``,
``px_scale`` (rho), ``px_r`` (log theta), ``px_dropout`` (pi logits).

Generative model, for cell n with batch s_n, covariates c_n and gene g:

.. math::

    z_n &\sim \mathcal N(0, I)
        \quad(\texttt{ln}:\ z_n = \mathrm{softmax}(\tilde z_n),\ \tilde z_n \sim \mathcal N(0, I)) \\
    \ell_n &= \log \textstyle\sum_g x_{ng}\ \text{(observed)},\quad \log \text{size factor},\quad
        \text{or}\ \ell_n \sim \mathcal N(\mu_{s_n}, \sigma^2_{s_n})\ \text{(learned)} \\
    \rho_n &= f_\text{dec}(z_n, s_n, c_n) \in \Delta^{G-1}
        \quad(\text{MLP, or linear } \mathrm{softmax}(W z_n + W_s s_n) \text{ for LDVAE}) \\
    \mu_{ng} &= e^{\ell_n} \rho_{ng},\qquad
    \theta_g \text{ per gene / gene-batch / gene-label / gene-cell} \\
    x_{ng} &\sim \mathrm{ZINB}(\mu_{ng}, \theta_g, \pi_{ng}) \;|\; \mathrm{NB} \;|\;
        \mathrm{Poisson}(\mu_{ng}) \;|\; \mathcal N(\mu_{ng}, \theta_g)

Inference: :math:`q(z_n \mid x_n, s_n) = \mathcal N(m(x_n), \mathrm{diag}\,v(x_n))` on
``log1p(x)`` (``log_variational``), and :math:`q(\ell_n \mid x_n)` likewise when the
library is learned.  Loss (negative ELBO, averaged over the minibatch):

.. math::

    -\mathbb E_q[\log p(x_n \mid z_n, \ell_n)]
    + \beta\, \mathrm{KL}(q(z_n \mid x_n) \,\|\, p(z_n))
    + \mathrm{KL}(q(\ell_n \mid x_n) \,\|\, p(\ell_n))

with :math:`\beta` the KL warm-up weight.  Marginal likelihood by importance sampling:
:math:`\log p(x) \approx \log \frac1K \sum_k p(x, z_k, \ell_k) / q(z_k, \ell_k \mid x)`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Normal, kl_divergence

from ..data.keys import Keys
from ..distributions import NegativeBinomial, Poisson, get_likelihood, kl_std_normal_rows, latent_transform
from ..nn import DecoderSCVI, Encoder, LinearDecoderSCVI
from .base import BaseModule, LossOutput

_NORM = ("encoder", "decoder", "none", "both")
_DISPERSION = ("gene", "gene-batch", "gene-label", "gene-cell")


def _check(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")


class VAE(BaseModule):
    """Variational autoencoder with every scVI option; ``decoder_type="linear"`` gives LDVAE.

    Options are those of scvi-tools' ``VAE``: ``n_batch``, ``n_labels``, ``n_hidden``,
    ``n_latent``, ``n_layers``, ``n_continuous_cov``, ``n_cats_per_cov``, ``dropout_rate``,
    ``dispersion``, ``log_variational``, ``gene_likelihood`` (any name in the likelihood
    registry), ``latent_distribution``, ``encode_covariates``, ``deeply_inject_covariates``,
    ``batch_representation`` (``one-hot``/``embedding``), ``use_batch_norm``,
    ``use_layer_norm``, ``use_size_factor_key``, ``use_observed_lib_size``,
    ``library_log_means``/``library_log_vars`` (per-batch prior of the learned library),
    ``var_activation``.  ``linear_decoder_bias`` is LDVAE's ``bias``.
    """

    def __init__(
        self,
        n_input: int,
        n_batch: int = 0,
        n_labels: int = 0,
        n_hidden: int = 128,
        n_latent: int = 10,
        n_layers: int = 1,
        n_continuous_cov: int = 0,
        n_cats_per_cov: list[int] | None = None,
        dropout_rate: float = 0.1,
        dispersion: Literal["gene", "gene-batch", "gene-label", "gene-cell"] = "gene",
        log_variational: bool = True,
        gene_likelihood: str = "zinb",
        latent_distribution: Literal["normal", "ln"] = "normal",
        encode_covariates: bool = False,
        deeply_inject_covariates: bool = True,
        batch_representation: Literal["one-hot", "embedding"] = "one-hot",
        use_batch_norm: Literal["encoder", "decoder", "none", "both"] = "both",
        use_layer_norm: Literal["encoder", "decoder", "none", "both"] = "none",
        use_size_factor_key: bool = False,
        use_observed_lib_size: bool = True,
        library_log_means: np.ndarray | None = None,
        library_log_vars: np.ndarray | None = None,
        var_activation: Callable[[torch.Tensor], torch.Tensor] | None = None,
        normalize_encoder_input: bool = False,
        decoder_type: Literal["nonlinear", "linear"] = "nonlinear",
        linear_decoder_bias: bool = False,
        batch_embedding_kwargs: dict | None = None,
        extra_encoder_kwargs: dict | None = None,
        extra_decoder_kwargs: dict | None = None,
    ):
        super().__init__()
        _check("dispersion", dispersion, _DISPERSION)
        _check("latent_distribution", latent_distribution, ("normal", "ln"))
        _check("batch_representation", batch_representation, ("one-hot", "embedding"))
        _check("use_batch_norm", use_batch_norm, _NORM)
        _check("use_layer_norm", use_layer_norm, _NORM)
        _check("decoder_type", decoder_type, ("nonlinear", "linear"))
        self.likelihood = get_likelihood(gene_likelihood)
        if not set(self.likelihood["params"]) <= {"log_mu", "theta", "zi_logits"}:
            from ..distributions import available_likelihoods

            fits = [n for n in available_likelihoods() if set(get_likelihood(n)["params"]) <= {"log_mu", "theta", "zi_logits"}]
            raise ValueError(
                f"gene_likelihood={gene_likelihood!r} needs decoder outputs {get_likelihood(gene_likelihood)['params']} "
                f"that scVI's decoder does not make; scVI takes {fits}"
            )
        if dispersion == "gene-batch" and n_batch < 1:
            raise ValueError("dispersion='gene-batch' needs n_batch >= 1")
        if dispersion == "gene-label" and n_labels < 1:
            raise ValueError("dispersion='gene-label' needs n_labels >= 1 (set labels_key in setup_anndata)")
        self.n_input, self.n_batch, self.n_labels, self.n_latent = n_input, n_batch, n_labels, n_latent
        self.dispersion = dispersion
        self.gene_likelihood = gene_likelihood
        self.latent_distribution = latent_distribution
        self.log_variational = log_variational
        self.normalize_encoder_input = normalize_encoder_input
        self.encode_covariates = encode_covariates
        self.batch_representation = batch_representation
        self.use_size_factor_key = use_size_factor_key
        self.use_observed_lib_size = use_size_factor_key or use_observed_lib_size
        self.decoder_type = decoder_type
        self.n_continuous_cov = n_continuous_cov
        n_cats_per_cov = list(n_cats_per_cov or [])

        if not self.use_observed_lib_size:
            if library_log_means is None or library_log_vars is None:
                raise ValueError("A learned library (use_observed_lib_size=False) needs library_log_means and library_log_vars.")
            self.register_buffer("library_log_means", torch.as_tensor(np.asarray(library_log_means), dtype=torch.float32).reshape(1, -1))
            self.register_buffer("library_log_vars", torch.as_tensor(np.asarray(library_log_vars), dtype=torch.float32).reshape(1, -1))

        n_disp = {"gene": None, "gene-batch": n_batch, "gene-label": n_labels, "gene-cell": None}[dispersion]
        if dispersion != "gene-cell" and self.likelihood["needs_dispersion"]:
            self.px_r = nn.Parameter(torch.randn(n_input) if n_disp is None else torch.randn(n_input, n_disp))

        batch_dim = 0
        if batch_representation == "embedding":
            kw = dict(embedding_dim=10) | (batch_embedding_kwargs or {})
            self.batch_embedding = nn.Embedding(max(n_batch, 1), kw.pop("embedding_dim"), **kw)
            batch_dim = self.batch_embedding.embedding_dim
            batch_cats: list[int] = []
        else:
            batch_cats = [n_batch]

        enc_bn = use_batch_norm in ("encoder", "both")
        dec_bn = use_batch_norm in ("decoder", "both")
        enc_ln = use_layer_norm in ("encoder", "both")
        dec_ln = use_layer_norm in ("decoder", "both")
        n_in_enc = n_input + (n_continuous_cov + batch_dim) * encode_covariates
        enc_cats = (batch_cats + n_cats_per_cov) if encode_covariates else []
        enc_kw = dict(
            n_cats=enc_cats, n_layers=n_layers, n_hidden=n_hidden, dropout_rate=dropout_rate,
            inject_covariates=deeply_inject_covariates, use_batch_norm=enc_bn, use_layer_norm=enc_ln,
            var_activation=var_activation,
        ) | (extra_encoder_kwargs or {})
        self.z_encoder = Encoder(n_in_enc, n_latent, z_transform=latent_transform(latent_distribution), **enc_kw)
        if not self.use_observed_lib_size:
            self.l_encoder = Encoder(n_in_enc, 1, **(enc_kw | {"n_layers": 1}))

        n_in_dec = n_latent + n_continuous_cov + batch_dim
        scale_activation = "softplus" if use_size_factor_key else "softmax"
        if decoder_type == "linear":
            self.decoder = LinearDecoderSCVI(
                n_in_dec, n_input, batch_cats + n_cats_per_cov, use_batch_norm=dec_bn, use_layer_norm=dec_ln,
                bias=linear_decoder_bias, scale_activation=scale_activation,
                need_dropout=self.likelihood["needs_dropout"],
            )
        else:
            dec_kw = dict(
                n_layers=n_layers, n_hidden=n_hidden, inject_covariates=deeply_inject_covariates,
                use_batch_norm=dec_bn, use_layer_norm=dec_ln, scale_activation=scale_activation,
                need_r=dispersion == "gene-cell" and self.likelihood["needs_dispersion"], need_dropout=self.likelihood["needs_dropout"],
            ) | (extra_decoder_kwargs or {})
            self.decoder = DecoderSCVI(n_in_dec, n_input, batch_cats + n_cats_per_cov, **dec_kw)

    # ----------------------------------------------------------------- helpers
    def _cov_inputs(self, batch_index, cont_covs, cat_covs) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(continuous inputs to concatenate, categorical index tensors) for a layer stack."""
        cont, cats = [], []
        if cont_covs is not None and self.n_continuous_cov:
            cont.append(cont_covs)
        if self.batch_representation == "embedding":
            cont.append(self.batch_embedding(batch_index.reshape(-1)))
        else:
            cats.append(batch_index)
        if cat_covs is not None:
            cats.extend(torch.split(cat_covs, 1, dim=1))
        return cont, cats

    def _local_library_params(self, batch_index: torch.Tensor):
        onehot = F.one_hot(batch_index.reshape(-1), self.library_log_means.shape[1]).float()
        return onehot @ self.library_log_means.T, onehot @ self.library_log_vars.T

    # ---------------------------------------------------------------- inference
    def _get_inference_input(self, tensors: dict[str, torch.Tensor], **_) -> dict:
        if Keys.X not in tensors and Keys.QZM in tensors:  # minified data: cached posterior
            return dict(qzm=tensors[Keys.QZM], qzv=tensors[Keys.QZV], observed_lib_size=tensors[Keys.OBSERVED_LIB_SIZE])
        inputs = dict(
            x=tensors[Keys.X], batch_index=tensors[Keys.BATCH],
            cont_covs=tensors.get(Keys.CONT_COVS), cat_covs=tensors.get(Keys.CAT_COVS),
        )
        if Keys.X_LOG1P in tensors:  # written by the loader's gather (CPU): no dense pass here
            inputs.update(x_log1p=tensors[Keys.X_LOG1P], x_total=tensors[Keys.X_TOTAL])
        return inputs

    @property
    def wants_log1p_x(self) -> bool:
        """Whether the encoder reads ``log1p(x)`` as is (the loader then provides it)."""
        return self.log_variational and not self.normalize_encoder_input

    def inference(self, x=None, batch_index=None, cont_covs=None, cat_covs=None, n_samples: int = 1,
                  qzm=None, qzv=None, observed_lib_size=None, x_log1p=None, x_total=None) -> dict:
        """q(z | x) (and q(l | x)); draws ``n_samples`` samples (leading dim when > 1).
        ``x_log1p`` / ``x_total``: ``log1p(x)`` and ``x.sum(1, keepdim=True)`` when the
        loader has them."""
        if x is None:
            return self._cached_inference(qzm, qzv, observed_lib_size, n_samples)
        total = x.sum(1, keepdim=True) if x_total is None else x_total
        if x_log1p is not None and self.wants_log1p_x:
            x_ = x_log1p
        else:
            x_ = x * (1e4 / total) if self.normalize_encoder_input else x
            x_ = torch.log1p(x_) if self.log_variational else x_
        library = torch.log(total) if self.use_observed_lib_size else None
        ql = None
        if self.encode_covariates:
            cont, cats = self._cov_inputs(batch_index, cont_covs, cat_covs)
            enc_in = torch.cat([x_, *cont], dim=-1) if cont else x_
        else:
            enc_in, cats = x_, []
        qz, z = self.z_encoder(enc_in, *cats)
        if not self.use_observed_lib_size:
            ql, library = self.l_encoder(enc_in, *cats)
        if n_samples > 1:
            z = self.z_encoder.z_transform(qz.rsample((n_samples,)))
            library = ql.rsample((n_samples,)) if ql is not None else library.expand(n_samples, *library.shape)
        return dict(z=z, qz=qz, ql=ql, library=library)

    def _cached_inference(self, qzm, qzv, observed_lib_size, n_samples: int = 1) -> dict:
        """Inference from a stored posterior (minified mode): no encoder pass."""
        qz = Normal(qzm, qzv.sqrt(), validate_args=False)
        untran = qz.sample() if n_samples == 1 else qz.sample((n_samples,))
        z = self.z_encoder.z_transform(untran)
        library = torch.log(observed_lib_size)
        if n_samples > 1:
            library = library.expand(n_samples, *library.shape)
        return dict(z=z, qz=qz, ql=None, library=library)

    # --------------------------------------------------------------- generative
    def _get_generative_input(self, tensors: dict[str, torch.Tensor], inference_outputs: dict, **_) -> dict:
        return dict(
            z=inference_outputs["z"], library=inference_outputs["library"], batch_index=tensors[Keys.BATCH],
            y=tensors.get(Keys.LABELS), cont_covs=tensors.get(Keys.CONT_COVS),
            cat_covs=tensors.get(Keys.CAT_COVS), size_factor=tensors.get(Keys.SIZE_FACTOR),
        )

    def generative(self, z, library, batch_index, cont_covs=None, cat_covs=None, size_factor=None,
                   y=None, transform_batch: int | torch.Tensor | None = None) -> dict:
        """p(x | z, l, s, c) and the priors p(z), p(l)."""
        lead = z.shape[:-1]
        if z.ndim == 3:  # Monte-Carlo samples: flatten (S, B) for the BatchNorm decoder
            s = z.shape[0]
            rep = lambda t: None if t is None else t.repeat(s, *([1] * (t.ndim - 1)))  # noqa: E731
            z, library = z.reshape(-1, z.shape[-1]), library.reshape(-1, library.shape[-1])
            batch_index, cont_covs, cat_covs, size_factor, y = map(rep, (batch_index, cont_covs, cat_covs, size_factor, y))
        if transform_batch is not None:
            batch_index = torch.full_like(batch_index, int(transform_batch))
        if self.use_size_factor_key:
            library = torch.log(size_factor)
        cont, cats = self._cov_inputs(batch_index, cont_covs, cat_covs)
        dec_in = torch.cat([z, *cont], dim=-1) if cont else z
        spec = self.likelihood
        log_scale, r, dropout = self.decoder(dec_in, *cats)
        if not spec["needs_dispersion"]:
            px_r = torch.zeros_like(log_scale)
        elif self.dispersion == "gene":
            px_r = self.px_r
        elif self.dispersion == "gene-batch":
            px_r = F.linear(F.one_hot(batch_index.reshape(-1), self.n_batch).float(), self.px_r)
        elif self.dispersion == "gene-label":
            y = torch.zeros_like(batch_index) if y is None else y  # no labels_key: one label
            px_r = F.linear(F.one_hot(y.reshape(-1), self.n_labels).float(), self.px_r)
        else:
            px_r = r
        unflat = lambda t: t if t is None or t.ndim < 2 else t.reshape(*lead, t.shape[-1])  # noqa: E731
        log_scale, px_r, dropout = unflat(log_scale), unflat(px_r), unflat(dropout)
        library = library.reshape(*lead, 1)
        px_scale = log_scale.exp()
        # px_r is log theta: the builders take it as is (the fused likelihood wants log theta)
        px = spec["builder"](log_mu=library + log_scale, log_theta=px_r, zi_logits=dropout, scale=px_scale)
        pl = None
        if not self.use_observed_lib_size:
            means, vars_ = self._local_library_params(batch_index.reshape(-1, 1)[: lead[-1]])
            pl = Normal(means, vars_.sqrt(), validate_args=False)
        pz = Normal(z.new_zeros(*lead, self.n_latent), z.new_ones(*lead, self.n_latent), validate_args=False)
        return dict(px=px, pl=pl, pz=pz, px_scale=px_scale, px_r=px_r, px_dropout=dropout, library=library)

    # --------------------------------------------------------------------- loss
    def loss(self, tensors, inference_outputs, generative_outputs, kl_weight: float = 1.0) -> LossOutput:
        x = tensors[Keys.X]
        px = generative_outputs["px"]
        # the loader's non-zero coordinates of x when it has them (GPU gather), else computed
        if Keys.X_NZ_ROWS in tensors and isinstance(px, (NegativeBinomial, Poisson)):
            rec = -px.log_prob_rowsum(x, nz=(tensors[Keys.X_NZ_ROWS], tensors[Keys.X_NZ_COLS]))
        else:
            rec = -(px.log_prob_rowsum(x) if hasattr(px, "log_prob_rowsum") else px.log_prob(x).sum(-1))
        kl_z = kl_std_normal_rows(inference_outputs["qz"])  # p(z) = N(0, I)
        if inference_outputs["ql"] is not None:
            kl_l = kl_divergence(inference_outputs["ql"], generative_outputs["pl"]).sum(-1)
            loss = torch.mean(rec + kl_weight * kl_z + kl_l)
        else:
            kl_l = torch.zeros_like(kl_z)
            loss = torch.mean(rec + kl_weight * kl_z)
        return LossOutput(loss=loss, reconstruction_loss=rec, kl_local=dict(kl_divergence_z=kl_z, kl_divergence_l=kl_l))

    # ------------------------------------------------------------------ extras
    @torch.no_grad()
    def sample(self, tensors: dict[str, torch.Tensor], n_samples: int = 1, max_poisson_rate: float = 1e8) -> torch.Tensor:
        """Posterior predictive draws x^ ~ p(x^ | z), z ~ q(z | x): (cells, genes[, n_samples])."""
        _, gen = self.forward(tensors, inference_kwargs=dict(n_samples=n_samples), compute_loss=False)
        draws = gen["px"].sample()
        if n_samples > 1:
            draws = draws.permute(1, 2, 0)
        return draws.cpu()

    @torch.no_grad()
    def marginal_ll(self, tensors: dict[str, torch.Tensor], n_mc_samples: int = 1000, n_mc_samples_per_pass: int = 100,
                    return_mean: bool = False) -> torch.Tensor:
        """Importance-sampled log p(x) per cell, ``n_mc_samples_per_pass`` samples at a time."""
        x = tensors[Keys.X]
        inf_in = self._get_inference_input(tensors)
        chunks = []
        done = 0
        while done < n_mc_samples:
            k = min(n_mc_samples_per_pass, n_mc_samples - done)
            inf = self.inference(**inf_in, n_samples=1)
            qz, ql = inf["qz"], inf["ql"]
            untran = qz.sample((k,))
            lib = ql.sample((k,)) if ql is not None else inf["library"].expand(k, *inf["library"].shape)
            gen_in = self._get_generative_input(tensors, dict(z=self.z_encoder.z_transform(untran), library=lib))
            gen = self.generative(**gen_in)
            log_w = gen["px"].log_prob(x).sum(-1)
            log_w = log_w + Normal(0.0, 1.0).log_prob(untran).sum(-1) - qz.log_prob(untran).sum(-1)
            if ql is not None:
                log_w = log_w + gen["pl"].log_prob(lib).sum(-1) - ql.log_prob(lib).sum(-1)
            chunks.append(log_w)
            done += k
        log_w = torch.cat(chunks, 0)
        ll = torch.logsumexp(log_w, 0) - np.log(n_mc_samples)
        return ll.mean() if return_mean else ll

    def get_loadings(self) -> np.ndarray:
        """Genes x latent weights of the linear decoder (LDVAE only)."""
        if self.decoder_type != "linear":
            raise ValueError("get_loadings needs the linear decoder (decoder_type='linear', i.e. LDVAE).")
        return self.decoder.loadings()[:, : self.n_latent].cpu().numpy()
