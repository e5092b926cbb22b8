r"""scVI in Pyro: the seed tutorial's simple scVI (NB likelihood, observed library,
amortized Normal guide), grown to scVI's architecture so that it can be compared with
:class:`~scprob.modules.VAE` layer for layer.  Paper names: ``z``, ``library`` (l),
``px_scale`` (rho), ``px_r`` (log theta).

Generative model (``model``), for cell n in batch s_n and gene g:

.. math::

    z_n &\sim \mathcal N(0, I_d) \\
    \rho_n &= \mathrm{softmax}(f_\text{dec}(z_n, s_n)) \in \Delta^{G-1} \\
    \theta_g &= e^{r_g}\ \text{(a point parameter)}\quad\text{or}\quad
        \log\theta_g \sim \mathcal N(\mu_\theta, \sigma_\theta^2)\ \text{(a global latent)} \\
    x_{ng} &\sim \mathrm{NB}(\text{mean } l_n \rho_{ng},\ \text{inverse dispersion } \theta_g),
        \qquad l_n = \textstyle\sum_g x_{ng}\ \text{(observed)}

Variational family (``guide``):

.. math::

    q(z_n \mid x_n) = \mathcal N\big(m(\log(1 + x_n)),\ \mathrm{diag}\, v(\log(1 + x_n))\big)
    \quad\text{(amortized: one encoder for all cells)}

and, when ``theta`` is a latent, an automatic guide over it: ``AutoNormal`` (mean-field
Normal on :math:`\log\theta_g`) or ``AutoDelta`` (a point mass: MAP).  The ELBO

.. math::

    \mathrm{ELBO} = \frac{N}{|B|} \sum_{n \in B} \Big(\mathbb E_q \log p(x_n \mid z_n, \theta)
        - \beta\, \mathrm{KL}(q(z_n \mid x_n) \,\|\, p(z_n))\Big)
        + \mathbb E_q \log \frac{p(\theta)}{q(\theta)}

is that of all N cells: the ``cells`` plate has size ``n_obs`` and the minibatch B is
its subsample, so Pyro scales the local terms by :math:`N/|B|`; the global term enters
once.  :math:`\beta` is the KL warm-up weight (``poutine.scale`` on the ``z`` site in
both model and guide).  ``Trace_ELBO`` estimates the expectations with one sample.

Encoder and decoder are scprob's :class:`~scprob.nn.Encoder` and
:class:`~scprob.nn.DecoderSCVI` with :class:`~scprob.modules.VAE`'s defaults
(``n_hidden``/``n_layers`` fully connected layers with batch norm, dropout in the
encoder, batch one-hot injected into every decoder layer), so ``PyroVAE`` and
``VAE(gene_likelihood="nb")`` share every layer and differ only in how the ELBO is
computed.
"""

from __future__ import annotations

import contextlib
from typing import Literal

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions import constraints
from pyro.infer.autoguide import AutoDelta, AutoNormal, init_to_median
from torch import nn

from ..data.keys import Keys
from ..distributions import NegativeBinomial, log_nb_logits
from ..distributions._count import nb_log_prob_rowsum
from ..nn import DecoderSCVI, Encoder
from .base import PyroBaseModule

_GLOBAL_GUIDES = {"AutoNormal": AutoNormal, "AutoDelta": AutoDelta}


class NegativeBinomialRows(dist.TorchDistribution):
    r"""Negative binomial over the genes of each cell as one event: batch shape
    (cells,), event shape (genes,); ``log_prob`` returns :math:`\sum_g \log
    \mathrm{NB}(x_{ng} \mid \mu_{ng}, \theta_g)` per cell.

    The same density as ``dist.NegativeBinomial(total_count=theta, logits=log mu - log
    theta).to_event(1)``, computed sparse-aware (lgamma only on the non-zero counts; see
    :func:`scprob.distributions._count.nb_log_prob_rowsum`) as in the PyTorch VAE.
    """

    arg_constraints: dict = {}
    support = constraints.independent(constraints.nonnegative_integer, 1)

    def __init__(self, log_mu: torch.Tensor, theta: torch.Tensor):
        if log_mu.ndim < 1:
            raise ValueError("log_mu needs a genes dimension")
        self.log_mu, self.theta = log_mu, theta
        self.log_theta = torch.log(theta)
        shape = torch.broadcast_shapes(log_mu.shape, theta.shape)
        super().__init__(batch_shape=shape[:-1], event_shape=shape[-1:], validate_args=False)

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        if batch_shape == self.batch_shape:
            return self
        return NegativeBinomialRows(self.log_mu.expand(batch_shape + self.event_shape), self.theta)

    @property
    def mean(self) -> torch.Tensor:
        return self.log_mu.exp().expand(self.batch_shape + self.event_shape)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if value.ndim == 2 and self.log_mu.ndim == 2 and value.shape == self.log_mu.shape:
            return nb_log_prob_rowsum(value, self.log_mu, self.log_theta)
        return log_nb_logits(value, self.log_mu, self.log_theta).sum(-1)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        return NegativeBinomial(log_mu=self.log_mu, theta=self.theta).sample(torch.Size(sample_shape))


class PyroVAE(PyroBaseModule):
    """scVI with a Pyro model and guide (module docstring has the math).

    Parameters
    ----------
    n_input
        Genes.
    n_batch
        Batches (one-hot into every decoder layer); 0 or 1 = no batch effect modelled.
    n_obs
        Cells of the data set: the ``cells`` plate's size, so that the ELBO is the
        full-data ELBO.  ``None``: the ELBO of the minibatch.
    n_hidden, n_latent, n_layers, dropout_rate
        Width and depth of encoder and decoder, latent dimension, encoder dropout.
    log_variational
        Encode ``log1p(x)`` (the tutorial's choice) instead of ``x``.
    global_guide
        ``None``: the dispersion theta is a point parameter (like scVI).  ``"AutoNormal"``
        or ``"AutoDelta"``: theta is a latent with prior ``LogNormal(*dispersion_prior)``
        per gene and that automatic guide fits its posterior, next to the amortized guide
        of z.
    dispersion_prior
        (mean, sd) of log theta_g under the prior (used with ``global_guide``).
    """

    def __init__(
        self,
        n_input: int,
        n_batch: int = 0,
        n_obs: int | None = None,
        n_hidden: int = 128,
        n_latent: int = 10,
        n_layers: int = 1,
        dropout_rate: float = 0.1,
        log_variational: bool = True,
        global_guide: Literal["AutoNormal", "AutoDelta"] | None = None,
        dispersion_prior: tuple[float, float] = (0.0, 3.0),
    ):
        super().__init__()
        if global_guide is not None and global_guide not in _GLOBAL_GUIDES:
            raise ValueError(f"global_guide must be None or one of {list(_GLOBAL_GUIDES)}, got {global_guide!r}")
        if n_obs is not None and n_obs < 1:
            raise ValueError(f"n_obs must be a positive number of cells, got {n_obs}")
        if len(dispersion_prior) != 2 or not dispersion_prior[1] > 0:
            raise ValueError(f"dispersion_prior must be (mean, sd > 0) of log theta, got {dispersion_prior!r}")
        self.n_input, self.n_batch, self.n_latent = n_input, n_batch, n_latent
        self.n_obs = n_obs
        self.log_variational = log_variational
        self.z_encoder = Encoder(n_input, n_latent, n_layers=n_layers, n_hidden=n_hidden, dropout_rate=dropout_rate)
        self.decoder = DecoderSCVI(n_latent, n_input, [n_batch], n_layers=n_layers, n_hidden=n_hidden,
                                   need_r=False, need_dropout=False)
        self.register_buffer("_zero", torch.zeros(()))
        self.register_buffer("_one", torch.ones(()))
        self.register_buffer("_prior_loc", torch.tensor(float(dispersion_prior[0])))
        self.register_buffer("_prior_scale", torch.tensor(float(dispersion_prior[1])))
        if global_guide is None:
            self.px_r = nn.Parameter(torch.randn(n_input))
            self.global_guide = None
        else:
            self.global_guide = _GLOBAL_GUIDES[global_guide](
                poutine.block(self.model, expose=["theta"]), init_loc_fn=init_to_median
            )
            x = torch.ones(2, n_input)
            self._init_guide(x, x.sum(1, keepdim=True), torch.zeros(2, 1, dtype=torch.long), torch.arange(2))

    # --------------------------------------------------------------- batches
    @staticmethod
    def _get_fn_args_from_batch(tensors: dict[str, torch.Tensor]) -> tuple[tuple, dict]:
        x = tensors[Keys.X]
        return (x, x.sum(1, keepdim=True), tensors[Keys.BATCH], tensors[Keys.INDICES]), {}

    # ---------------------------------------------------------- model, guide
    @staticmethod
    def _local_scale(kl_weight: float):
        """Scale of the z site's log-densities: beta (warm-up), masked out at 0."""
        if kl_weight == 1.0:
            return contextlib.nullcontext()
        if kl_weight == 0.0:
            return poutine.mask(mask=False)
        return poutine.scale(scale=kl_weight)

    def _cells(self, cell_index: torch.Tensor):
        if self.n_obs is None:
            return pyro.plate("cells", cell_index.shape[0])
        return pyro.plate("cells", self.n_obs, subsample=cell_index)

    def _theta(self) -> torch.Tensor:
        if self.global_guide is None:
            return self.px_r.exp()
        prior = dist.LogNormal(self._prior_loc, self._prior_scale).expand([self.n_input]).to_event(1)
        return pyro.sample("theta", prior)

    def model(self, x: torch.Tensor, library: torch.Tensor, batch_index: torch.Tensor, cell_index: torch.Tensor,
              kl_weight: float = 1.0) -> None:
        """p(theta) p(z) p(x | z, s, l, theta); ``library`` is the observed total count (cells x 1)."""
        theta = self._theta()
        with self._cells(cell_index):
            with self._local_scale(kl_weight):
                z = pyro.sample("z", dist.Normal(self._zero, self._one).expand([x.shape[0], self.n_latent]).to_event(1))
            log_rho, _, _ = self.decoder(z, batch_index)
            pyro.sample("x", NegativeBinomialRows(torch.log(library) + log_rho, theta), obs=x)

    def guide(self, x: torch.Tensor, library: torch.Tensor, batch_index: torch.Tensor, cell_index: torch.Tensor,
              kl_weight: float = 1.0) -> None:
        """q(theta) (automatic, if theta is latent) q(z | x) (amortized)."""
        if self.global_guide is not None:
            self.global_guide(x, library, batch_index, cell_index, kl_weight)
        with self._cells(cell_index):
            qz, _ = self.z_encoder(torch.log1p(x) if self.log_variational else x)
            with self._local_scale(kl_weight):
                pyro.sample("z", dist.Normal(qz.loc, qz.scale).to_event(1))

    # ------------------------------------------- amortized inference, decoding
    def _get_inference_input(self, tensors: dict[str, torch.Tensor], **_) -> dict:
        return dict(x=tensors[Keys.X], batch_index=tensors[Keys.BATCH])

    def inference(self, x: torch.Tensor, batch_index: torch.Tensor | None = None, n_samples: int = 1) -> dict:
        """q(z | x) as a torch Normal, ``n_samples`` draws of z (leading dim when > 1) and
        the log observed library."""
        qz, z = self.z_encoder(torch.log1p(x) if self.log_variational else x)
        library = torch.log(x.sum(1, keepdim=True))
        if n_samples > 1:
            z = qz.rsample((n_samples,))
            library = library.expand(n_samples, *library.shape)
        return dict(qz=qz, z=z, library=library)

    def _get_generative_input(self, tensors: dict[str, torch.Tensor], inference_outputs: dict, **_) -> dict:
        return dict(z=inference_outputs["z"], library=inference_outputs["library"], batch_index=tensors[Keys.BATCH])

    def generative(self, z: torch.Tensor, library: torch.Tensor, batch_index: torch.Tensor,
                   transform_batch: int | None = None) -> dict:
        """rho (``px_scale``) and the NB of x given z, decoded in batch ``transform_batch``
        when set; ``library`` is log l.  The NB uses theta's point value or, for a latent
        theta, the guide's posterior median."""
        lead = z.shape[:-1]
        if z.ndim == 3:  # Monte-Carlo draws: one decoder pass over (draws x cells)
            batch_index = batch_index.repeat(z.shape[0], 1)
            z = z.reshape(-1, z.shape[-1])
        if transform_batch is not None:
            batch_index = torch.full_like(batch_index, int(transform_batch))
        log_rho, _, _ = self.decoder(z, batch_index)
        log_rho = log_rho.reshape(*lead, log_rho.shape[-1])
        px = NegativeBinomial(log_mu=library + log_rho, theta=self.dispersion(), scale=log_rho.exp())
        return dict(px=px, px_scale=px.scale, library=library)

    def dispersion(self) -> torch.Tensor:
        """theta per gene: the point parameter, or the posterior median under the global guide."""
        if self.global_guide is None:
            return self.px_r.exp()
        with self.param_scope():
            return self.global_guide.median()["theta"]
