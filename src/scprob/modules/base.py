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
from collections.abc import Iterator
from contextlib import contextmanager
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


def _signature_mismatch(model, guide) -> str | None:
    """Why ``model`` and ``guide`` cannot be called with the same arguments (``None`` if
    they can).  A callable taking ``(*args, **kwargs)`` (an automatic guide) accepts any."""
    import inspect

    def params(fn):
        sig = inspect.signature(fn)
        kinds = {p.kind for p in sig.parameters.values()}
        if {inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD} <= kinds:
            return None
        return [p for p in sig.parameters.values() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]

    pm, pg = params(model), params(guide)
    if pm is None or pg is None:
        return None
    names_m, names_g = [p.name for p in pm], [p.name for p in pg]
    if names_m == names_g and [p.kind for p in pm] == [p.kind for p in pg]:
        return None
    only_m = [n for n in names_m if n not in names_g]
    only_g = [n for n in names_g if n not in names_m]
    diff = []
    if only_m:
        diff.append(f"only the model takes {only_m}")
    if only_g:
        diff.append(f"only the guide takes {only_g}")
    if not diff:
        i = next(i for i, (a, b) in enumerate(zip(pm, pg)) if (a.name, a.kind) != (b.name, b.kind))
        if pm[i].name != pg[i].name:
            diff.append(f"argument {i + 1} is {pm[i].name!r} in the model but {pg[i].name!r} in the guide")
        else:
            diff.append(f"{pm[i].name!r} is {pm[i].kind.description} in the model but {pg[i].kind.description} in the guide")
    return f"model{inspect.signature(model)} vs guide{inspect.signature(guide)}: " + "; ".join(diff)


class _PyroModuleMeta(abc.ABCMeta):
    """Checks the model/guide signatures once a module's ``__init__`` has finished (the
    guide may be an attribute built there, e.g. an automatic guide)."""

    def __call__(cls, *args, **kwargs):
        obj = super().__call__(*args, **kwargs)
        obj._check_signatures()
        return obj


class PyroBaseModule(nn.Module, abc.ABC, metaclass=_PyroModuleMeta):
    """Base class of Pyro modules: implement ``model``, ``guide`` (same signature) and
    ``_get_fn_args_from_batch(tensors) -> (args, kwargs)``.  Trained by
    :class:`scprob.train.PyroTrainingPlan` (``Trace_ELBO`` unless another ELBO is chosen).

    **Parameters belong to the module.**  Neural-network weights are ordinary
    ``nn.Module`` parameters, optimized by the plan's torch optimizer (no ``pyro.module``
    call is needed).  Everything Pyro keeps in its *global* param store -- ``pyro.param``
    sites, automatic guides (``AutoNormal``, ``AutoDelta``, which are ``PyroModule`` objects
    synchronised with that store) -- lives in this module's own store state, which
    :meth:`param_scope` swaps in around every training step and every inference call.
    Two modules therefore never read or overwrite each other's parameters, and the
    user's global store is left as it was.

    **ELBO scale.**  A module whose ``cells`` plate is ``pyro.plate("cells", n_obs,
    subsample=idx)`` sets ``n_obs``: its ELBO is then the full-data ELBO, with local terms
    scaled by ``n_obs / batch``, and the plan divides by ``n_obs`` to report and minimize
    the per-cell value.  With ``n_obs = None`` the plate is the minibatch and the plan
    divides by the minibatch size.

    **KL warm-up.**  When ``model`` and ``guide`` take a ``kl_weight`` argument the plan
    passes the warm-up weight (1 in validation); the module scales its local latent
    sites by it (``pyro.poutine.scale``), which scales ``log p(z) - log q(z)``.

    The model/guide signatures are compared when the module is built: a mismatch (the
    seed tutorial's ``guide(x, log_library)`` next to ``model(x, library)``) raises a
    ``TypeError`` naming the difference.  Modules with automatic guides create the
    guides' parameters in ``__init__`` (see :meth:`_init_guide`), so that the optimizer
    sees them and ``load_state_dict`` finds them.
    """

    n_obs: int | None = None

    def __init__(self):
        super().__init__()
        self._pyro_param_state: dict = {"params": {}, "constraints": {}}

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

    def _check_signatures(self) -> None:
        why = _signature_mismatch(self.model, self.guide)
        if why is not None:
            raise TypeError(f"{type(self).__name__}: model and guide must take the same arguments; {why}")

    @property
    def uses_kl_weight(self) -> bool:
        """Whether ``model`` (and hence ``guide``) takes the KL warm-up weight."""
        import inspect

        return "kl_weight" in inspect.signature(self.model).parameters

    @contextmanager
    def param_scope(self) -> Iterator[dict]:
        """Inside the block Pyro's global param store holds this module's parameters and
        nothing else; on exit the module keeps what was created or changed and the store
        is restored.  Re-entrant."""
        import pyro

        store = pyro.get_param_store()
        outer = store.get_state()
        store.clear()
        store.set_state(self._pyro_param_state)
        try:
            yield self._pyro_param_state
        finally:
            self._pyro_param_state.update(store.get_state())
            store.clear()
            store.set_state(outer)

    @torch.no_grad()
    def _init_guide(self, *args, **kwargs) -> None:
        """Run the guide once on example arguments (module in eval mode, no gradients):
        automatic guides create their parameters here instead of at the first step."""
        was_training = self.training
        self.eval()
        try:
            with self.param_scope():
                self.guide(*args, **kwargs)
        finally:
            self.train(was_training)
