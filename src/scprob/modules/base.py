"""The module API.

A module is the math of one model.  It maps a dict of tensors (keys in
:class:`scprob.data.Keys`) to a :class:`LossOutput` in three steps::

    inference_inputs  = _get_inference_input(tensors)
    inference_outputs = inference(**inference_inputs)            # q(z | x): posterior
    generative_inputs = _get_generative_input(tensors, inference_outputs)
    generative_outputs = generative(**generative_inputs)        # p(x | z): likelihood
    loss_output = loss(tensors, inference_outputs, generative_outputs, **loss_kwargs)

:meth:`BaseModule.forward` runs that chain; a training plan only calls ``forward`` and
reads ``LossOutput.loss``.  Modules never see AnnData.

For Pyro, :class:`PyroBaseModule` asks instead for ``model``/``guide`` and a static
``_get_fn_args_from_batch``; the SVI plan computes the ELBO from them.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field

import torch
from torch import nn

Tensor = torch.Tensor


def _sum_terms(value: Tensor | dict[str, Tensor] | float | None) -> Tensor | float:
    if value is None:
        return 0.0
    if isinstance(value, dict):
        return sum(value.values()) if value else 0.0
    return value


@dataclass
class LossOutput:
    """What a module's ``loss`` returns.

    loss
        Scalar minimized by the optimizer (already averaged over the minibatch).
    reconstruction_loss
        Per-cell negative log-likelihood ``-log p(x | z)``, shape (n_cells,), or a dict of
        such tensors (one per modality / term).
    kl_local
        Per-cell KL terms ``KL(q(z|x) || p(z))`` (tensor or dict of tensors).
    kl_global
        KL of global parameters (scalar, or dict of scalars).
    extra_metrics
        Scalars or per-cell tensors logged per epoch under their names.
    """

    loss: Tensor
    reconstruction_loss: Tensor | dict[str, Tensor] | None = None
    kl_local: Tensor | dict[str, Tensor] | None = None
    kl_global: Tensor | dict[str, Tensor] | float | None = None
    extra_metrics: dict[str, Tensor] = field(default_factory=dict)
    n_obs_minibatch: int | None = None

    def __post_init__(self):
        if self.n_obs_minibatch is None:
            rec = _sum_terms(self.reconstruction_loss)
            self.n_obs_minibatch = int(rec.shape[0]) if isinstance(rec, Tensor) and rec.ndim > 0 else 1

    @property
    def reconstruction_loss_sum(self) -> Tensor:
        return torch.as_tensor(_sum_terms(self.reconstruction_loss)).sum()

    @property
    def kl_local_sum(self) -> Tensor:
        return torch.as_tensor(_sum_terms(self.kl_local)).sum()

    @property
    def kl_global_sum(self) -> Tensor:
        return torch.as_tensor(_sum_terms(self.kl_global)).sum()


class BaseModule(nn.Module, abc.ABC):
    """Base class of PyTorch modules: subclasses implement the five abstract methods;
    posterior predictive ``sample`` is optional."""

    @abc.abstractmethod
    def _get_inference_input(self, tensors: dict[str, Tensor], **kwargs) -> dict:
        """Select the minibatch tensors that ``inference`` reads."""

    @abc.abstractmethod
    def inference(self, *args, **kwargs) -> dict:
        """q(latent | data): return the posterior(s) and samples."""

    @abc.abstractmethod
    def _get_generative_input(self, tensors: dict[str, Tensor], inference_outputs: dict, **kwargs) -> dict:
        """Select what ``generative`` reads from the minibatch and the inference outputs."""

    @abc.abstractmethod
    def generative(self, *args, **kwargs) -> dict:
        """p(data | latent): return the likelihood (and priors)."""

    @abc.abstractmethod
    def loss(self, tensors: dict[str, Tensor], inference_outputs: dict, generative_outputs: dict, **kwargs) -> LossOutput:
        """The objective (e.g. negative ELBO) as a :class:`LossOutput`."""

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def forward(
        self,
        tensors: dict[str, Tensor],
        get_inference_input_kwargs: dict | None = None,
        get_generative_input_kwargs: dict | None = None,
        inference_kwargs: dict | None = None,
        generative_kwargs: dict | None = None,
        loss_kwargs: dict | None = None,
        compute_loss: bool = True,
    ):
        """Run inference -> generative -> loss; returns ``(inference_outputs,
        generative_outputs[, loss_output])``."""
        inf_in = self._get_inference_input(tensors, **(get_inference_input_kwargs or {}))
        inf_out = self.inference(**inf_in, **(inference_kwargs or {}))
        gen_in = self._get_generative_input(tensors, inf_out, **(get_generative_input_kwargs or {}))
        gen_out = self.generative(**gen_in, **(generative_kwargs or {}))
        if not compute_loss:
            return inf_out, gen_out
        return inf_out, gen_out, self.loss(tensors, inf_out, gen_out, **(loss_kwargs or {}))


class PyroBaseModule(nn.Module, abc.ABC):
    """Base class of Pyro modules: implement ``model``, ``guide`` (same signature) and
    ``_get_fn_args_from_batch(tensors) -> (args, kwargs)``.  Trained by
    :class:`scprob.train.PyroTrainingPlan` with ``pyro.infer.Trace_ELBO``."""

    @staticmethod
    @abc.abstractmethod
    def _get_fn_args_from_batch(tensors: dict[str, Tensor]) -> tuple[tuple, dict]:
        """Positional and keyword arguments of ``model``/``guide`` for one minibatch."""

    @abc.abstractmethod
    def model(self, *args, **kwargs):
        """The generative model, in Pyro primitives."""

    @abc.abstractmethod
    def guide(self, *args, **kwargs):
        """The variational distribution, in Pyro primitives."""
