"""GLUE's data encoders and decoders, and the prob-model registry.

A *prob model* names how one modality is read and generated: a :class:`DataEncoder`
subclass (``q(u | x)``) and a :class:`DataDecoder` subclass (``p(x | u, v)``).  Register
new ones with :func:`register_prob_model`; configure a modality with its name.

Encoders are an MLP over ``normalize(x, l)`` with ``l = compute_l(x)`` (the library
size, or ``None``); subclasses define those two methods.  With a precomputed
representation (``use_rep``) the MLP reads that instead, and ``l`` still comes from x.

Decoders take cell embeddings ``u`` (cells x d), the modality's feature embeddings
``v`` (features x d), batch indices ``b`` and the library ``l``, and return the
likelihood.  :class:`LikelihoodDataDecoder` serves every family of the likelihood
registry (``scprob.distributions``): it makes each parameter the family names with

    log_mu      = log_softmax(softplus(a_b) * u v^T + c_b) + log l     (per batch b)
    loc         = softplus(a_b) * u v^T + c_b
    mix_logits  = softplus(a'_b) * u v^T + c'_b
    theta = exp(log_theta_b),  std = softplus(s_b) + eps,  zi_logits = z_b,
    log_phi = log_phi_b,       log_mu_bg = log_softmax(g_b) + log l

with ``a, c, ...`` learned rows per batch (batch-specific decoder parameters), so a
family registered once in the likelihood registry is a GLUE decoder by naming it.
"""

from __future__ import annotations

import abc

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Distribution, Normal

from ..distributions import get_likelihood
from .fc import Dropout

EPS = 1e-7


class DataEncoder(nn.Module, abc.ABC):
    """MLP data encoder: ``x -> N(loc, std)`` over ``normalize(x, compute_l(x))``.

    ``h_depth`` hidden layers of ``h_dim`` units (Linear, LeakyReLU(0.2), BatchNorm,
    Dropout), then linear heads for ``loc`` and ``std = softplus(.) + eps``.
    """

    TOTAL_COUNT = 1e4

    def __init__(self, in_features: int, out_features: int, h_depth: int = 2, h_dim: int = 256, dropout: float = 0.2):
        super().__init__()
        layers: list[nn.Module] = []
        d = in_features
        for _ in range(h_depth):
            layers += [nn.Linear(d, h_dim), nn.LeakyReLU(0.2), nn.BatchNorm1d(h_dim), Dropout(dropout)]
            d = h_dim
        self.net = nn.Sequential(*layers)
        # per-feature centring and scaling of the MLP input, fitted once on the data
        # (see standardize_inputs); identity until then
        self.register_buffer("in_mean", torch.zeros(in_features))
        self.register_buffer("in_std", torch.ones(in_features))
        self.loc = nn.Linear(d, out_features)
        self.std_lin = nn.Linear(d, out_features)

    @abc.abstractmethod
    def compute_l(self, x: torch.Tensor) -> torch.Tensor | None:
        """Library size of each cell (cells x 1), or ``None`` where the family has none."""

    @abc.abstractmethod
    def normalize(self, x: torch.Tensor, l: torch.Tensor | None) -> torch.Tensor:
        """What the MLP reads."""

    def inputs(self, x: torch.Tensor, xrep: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The MLP's input (before standardization) and the library size."""
        l = self.compute_l(x)
        return (xrep if xrep is not None else self.normalize(x, l)), l

    @torch.no_grad()
    def standardize_inputs(self, h: torch.Tensor) -> None:
        """Fit the input standardization to a sample of inputs ``h`` (cells x inputs), so
        that no feature dominates the first layer by its scale alone."""
        self.in_mean.copy_(h.mean(0))
        self.in_std.copy_(h.std(0).clamp_min(1e-3))

    def forward(self, x: torch.Tensor, xrep: torch.Tensor | None = None) -> tuple[Normal, torch.Tensor | None]:
        h, l = self.inputs(x, xrep)
        h = self.net((h - self.in_mean) / self.in_std)
        return Normal(self.loc(h), F.softplus(self.std_lin(h)) + EPS, validate_args=False), l


class NBDataEncoder(DataEncoder):
    """Counts: l = total count; input log1p(x * 1e4 / l)."""

    def compute_l(self, x):
        return x.sum(dim=1, keepdim=True)

    def normalize(self, x, l):
        return (x * (self.TOTAL_COUNT / l.clamp_min(1.0))).log1p()


class VanillaDataEncoder(DataEncoder):
    """Continuous data (already normalized, fractions): no library, input as is."""

    def compute_l(self, x):
        return None

    def normalize(self, x, l):
        return x


class LogDataEncoder(VanillaDataEncoder):
    """Non-negative continuous data on a multiplicative scale: input log1p(x)."""

    def normalize(self, x, l):
        return x.log1p()


class BinaryDataEncoder(DataEncoder):
    """Binarized data (accessibility): input 1[x > 0]; l = number of non-zero features."""

    def compute_l(self, x):
        return (x > 0).sum(dim=1, keepdim=True).to(x.dtype)

    def normalize(self, x, l):
        return (x > 0).to(x.dtype)


class DataDecoder(nn.Module, abc.ABC):
    """Base data decoder: ``forward(u, v, b, l)`` returns the likelihood of the modality's
    data (cells x features).  ``n_batches`` rows of batch-specific parameters."""

    def __init__(self, out_features: int, n_batches: int = 1):
        super().__init__()
        self.out_features, self.n_batches = out_features, n_batches

    @abc.abstractmethod
    def forward(self, u: torch.Tensor, v: torch.Tensor, b: torch.Tensor, l: torch.Tensor | None) -> Distribution:
        """The likelihood p(x | u, v) of a minibatch."""


def batch_rows(param: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``param[b]`` for batch-specific rows, written so the backward is a broadcast sum
    (one batch) or a small matmul (several) rather than a scatter over cells x features."""
    if param.shape[0] == 1:
        return param
    return F.one_hot(b, param.shape[0]).to(param.dtype) @ param


_EMBEDDING_DRIVEN = ("log_mu", "loc", "mix_logits")
_PER_FEATURE = {"theta": "log_theta", "std": "std_lin", "zi_logits": "zi_logits", "log_phi": "log_phi", "log_mu_bg": "bg_logits"}


class LikelihoodDataDecoder(DataDecoder):
    """Decoder for any family of the likelihood registry (class attribute ``likelihood``);
    parameters as in the module docstring."""

    likelihood: str = ""

    def __init__(self, out_features: int, n_batches: int = 1):
        super().__init__(out_features, n_batches)
        spec = get_likelihood(self.likelihood)
        self.params = spec["params"]
        self.builder = spec["builder"]
        unknown = [p for p in self.params if p not in _EMBEDDING_DRIVEN and p not in _PER_FEATURE]
        if unknown:
            raise ValueError(f"likelihood {self.likelihood!r} needs {unknown}, which a GLUE decoder cannot make")

        def rows(value: float = 0.0):
            return nn.Parameter(torch.full((n_batches, out_features), value))

        self.scale_lin = nn.ParameterDict({p: rows() for p in self.params if p in _EMBEDDING_DRIVEN})
        self.bias = nn.ParameterDict({p: rows() for p in self.params if p in _EMBEDDING_DRIVEN})
        self.per_feature = nn.ParameterDict({_PER_FEATURE[p]: rows() for p in self.params if p in _PER_FEATURE})

    def forward(self, u, v, b, l):
        uv = u @ v.t()
        log_l = None if l is None else l.clamp_min(1.0).log()
        out = {}
        for p in self.params:
            if p in _EMBEDDING_DRIVEN:
                eta = F.softplus(batch_rows(self.scale_lin[p], b)) * uv + batch_rows(self.bias[p], b)
                out[p] = F.log_softmax(eta, dim=1) + log_l if p == "log_mu" else eta
            else:
                w = batch_rows(self.per_feature[_PER_FEATURE[p]], b)
                if p == "theta":
                    out[p] = w.exp()
                elif p == "std":
                    out[p] = F.softplus(w) + EPS
                elif p == "log_mu_bg":
                    out[p] = F.log_softmax(w, dim=1) + log_l
                else:
                    out[p] = w
        if "log_mu" in out or "log_mu_bg" in out:
            if l is None:
                raise ValueError(f"{type(self).__name__} models counts and needs a library size from its encoder")
        return self.builder(**out)


def _decoder(name: str, likelihood: str) -> type[LikelihoodDataDecoder]:
    return type(name, (LikelihoodDataDecoder,), {"likelihood": likelihood, "__doc__": f"Decoder for the {likelihood!r} likelihood."})


NBDataDecoder = _decoder("NBDataDecoder", "nb")
ZINBDataDecoder = _decoder("ZINBDataDecoder", "zinb")
PoissonDataDecoder = _decoder("PoissonDataDecoder", "poisson")
NormalDataDecoder = _decoder("NormalDataDecoder", "gaussian")
ZINDataDecoder = _decoder("ZINDataDecoder", "zin")
ZILNDataDecoder = _decoder("ZILNDataDecoder", "ziln")
BernoulliDataDecoder = _decoder("BernoulliDataDecoder", "bernoulli")
BetaDataDecoder = _decoder("BetaDataDecoder", "beta")
NBMixtureDataDecoder = _decoder("NBMixtureDataDecoder", "nb_mixture")


# ----------------------------------------------------------------------- registry
_PROB_MODELS: dict[str, dict] = {}


def register_prob_model(name: str, encoder_cls: type[DataEncoder], decoder_cls: type[DataDecoder]) -> None:
    """Make ``name`` usable as ``prob_model`` in ``GLUE.configure_dataset``.

    The decoder's data checks come from its likelihood (``decoder_cls.likelihood``) or
    from the class attributes ``is_count`` / ``value_range`` of a custom decoder.
    """
    if not (isinstance(encoder_cls, type) and issubclass(encoder_cls, DataEncoder)):
        raise TypeError(f"encoder_cls must subclass scprob.nn.DataEncoder, got {encoder_cls!r}")
    if not (isinstance(decoder_cls, type) and issubclass(decoder_cls, DataDecoder)):
        raise TypeError(f"decoder_cls must subclass scprob.nn.DataDecoder, got {decoder_cls!r}")
    lik = get_likelihood(decoder_cls.likelihood) if getattr(decoder_cls, "likelihood", "") else {}
    _PROB_MODELS[name] = dict(
        encoder=encoder_cls, decoder=decoder_cls,
        is_count=bool(getattr(decoder_cls, "is_count", lik.get("is_count", False))),
        value_range=getattr(decoder_cls, "value_range", lik.get("value_range")),
    )


def get_prob_model(name: str) -> dict:
    if name not in _PROB_MODELS:
        raise ValueError(f"Unknown prob_model {name!r}; registered: {available_prob_models()}")
    return _PROB_MODELS[name]


def available_prob_models() -> list[str]:
    return sorted(_PROB_MODELS)


for _name, _enc, _dec in [
    ("NB", NBDataEncoder, NBDataDecoder),
    ("ZINB", NBDataEncoder, ZINBDataDecoder),
    ("Poisson", NBDataEncoder, PoissonDataDecoder),
    ("Normal", VanillaDataEncoder, NormalDataDecoder),
    ("ZIN", VanillaDataEncoder, ZINDataDecoder),
    ("ZILN", LogDataEncoder, ZILNDataDecoder),
    ("Bernoulli", BinaryDataEncoder, BernoulliDataDecoder),
    ("Beta", VanillaDataEncoder, BetaDataDecoder),
    ("NBMixture", NBDataEncoder, NBMixtureDataDecoder),
]:
    register_prob_model(_name, _enc, _dec)
