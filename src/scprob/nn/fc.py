"""Fully connected blocks with covariate injection.

A layer computes ``h' = act(norm(W [h, onehot(c_1), ..., onehot(c_K)] + b))``.
The one-hot part of the product is ``W_k[:, c_k]``, so it is implemented as an
``nn.Embedding`` lookup added to ``W h`` — the same function as concatenating one-hot
vectors, without building them.  Covariates enter the first layer always, and every
later layer when ``inject_covariates`` is set (scVI's ``deeply_inject_covariates``).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn


class Dropout(nn.Dropout):
    """``nn.Dropout`` whose CPU mask comes from 16-bit random integers: each unit is kept
    when its draw is at least ``q = round(p * 2^16)`` (of ``2^16`` values) and scaled by
    ``2^16 / (2^16 - q)``, i.e. dropout with ``p`` rounded to a multiple of ``2^-16`` and an
    exactly unbiased scale.  One 64-bit draw serves four units: for a 256 x 256 mask 100 us
    instead of 255 for uniforms and 575 for PyTorch's serial Bernoulli sampler.  With numba
    the float32 mask is made from the draws in one pass (:mod:`scprob.nn._mask_numba`, the
    same values).  Other devices keep ``F.dropout``'s fused kernel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = round(self.p * 65536)
        if not self.training or q == 0 or x.device.type != "cpu" or self.inplace or q >= 65536:
            return super().forward(x)
        n = x.numel()
        # full 64-bit range: random_() alone leaves the top bit 0, which would bias one lane
        bits = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(2**63), 2**63 - 1).view(torch.int16)
        scale = 65536.0 / (65536 - q)
        kernel = _mask_kernel() if x.dtype == torch.float32 else None
        if kernel is None:
            return x * (bits[:n].view(x.shape) >= q - 32768).to(x.dtype).mul_(scale)
        mask = torch.empty(x.shape, dtype=x.dtype)
        kernel(bits.numpy(), np.int16(q - 32768), scale, mask.view(-1).numpy())  # same values, one pass
        return x * mask


@functools.cache
def _mask_kernel():
    """numba's mask kernel (:mod:`scprob.nn._mask_numba`), or None without numba."""
    try:
        from ._mask_numba import keep_mask
    except ImportError:
        return None
    return keep_mask


class CovariateLinear(nn.Module):
    """``W [x, onehot(c_1..c_K)] + b`` with embeddings standing in for the one-hot columns."""

    def __init__(self, n_in: int, n_out: int, n_cats: Sequence[int] = (), bias: bool = True):
        super().__init__()
        self.linear = nn.Linear(n_in, n_out, bias=bias)
        self.cat_weights = nn.ModuleList(nn.Embedding(n, n_out) for n in n_cats)
        # Same init as the columns of one nn.Linear over the concatenated input.
        bound = 1.0 / (n_in + sum(n_cats)) ** 0.5
        for emb in self.cat_weights:
            nn.init.uniform_(emb.weight, -bound, bound)
        if n_cats:
            nn.init.uniform_(self.linear.weight, -bound, bound)
            if bias:
                nn.init.uniform_(self.linear.bias, -bound, bound)

    def forward(self, x: torch.Tensor, cats: Sequence[torch.Tensor] = ()) -> torch.Tensor:
        out = self.linear(x)
        for emb, c in zip(self.cat_weights, cats):
            out = out + emb(c.reshape(-1))
        return out


class FCLayers(nn.Module):
    """Stack of ``CovariateLinear -> [BatchNorm] -> [LayerNorm] -> act -> Dropout``.

    Parameters
    ----------
    n_in, n_out, n_hidden, n_layers
        Shapes: ``n_layers`` layers, the last one mapping to ``n_out``.
    n_cats
        Number of categories of each categorical covariate (0 = absent).
    inject_covariates
        Feed covariates into every layer, not only the first.
    """

    def __init__(
        self,
        n_in: int,
        n_out: int,
        n_cats: Sequence[int] = (),
        n_layers: int = 1,
        n_hidden: int = 128,
        dropout_rate: float = 0.1,
        use_batch_norm: bool = True,
        use_layer_norm: bool = False,
        use_activation: bool = True,
        bias: bool = True,
        inject_covariates: bool = True,
        activation_fn: Callable[[], nn.Module] = nn.ReLU,
    ):
        super().__init__()
        # a single category still gets its (bias-like) row, so query batches can be added later
        self.n_cats = [n if n >= 1 else 0 for n in n_cats]
        dims = [n_in] + [n_hidden] * (n_layers - 1) + [n_out]
        self.layers = nn.ModuleList()
        self.post = nn.ModuleList()
        self.inject = []
        for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
            inject = i == 0 or inject_covariates
            self.inject.append(inject)
            cats = [n for n in self.n_cats if n > 0] if inject else []
            self.layers.append(CovariateLinear(d_in, d_out, cats, bias=bias))
            post: list[nn.Module] = []
            if use_batch_norm:
                post.append(nn.BatchNorm1d(d_out, momentum=0.01, eps=1e-3))
            if use_layer_norm:
                post.append(nn.LayerNorm(d_out, elementwise_affine=False))
            if use_activation:
                post.append(activation_fn())
            if dropout_rate > 0:
                post.append(Dropout(p=dropout_rate))
            self.post.append(nn.Sequential(*post))

    def forward(self, x: torch.Tensor, *cat_list: torch.Tensor) -> torch.Tensor:
        cats = [c for c, n in zip(cat_list, self.n_cats) if n > 0]
        for layer, post, inject in zip(self.layers, self.post, self.inject):
            x = post(layer(x, cats if inject else ()))
        return x


class Encoder(nn.Module):
    """q(z | x, c) = N(mu(h), var_activation(v(h)) + var_eps) with h = FCLayers(x, c).

    Returns the Normal and a reparameterized sample pushed through ``z_transform``
    (identity for ``normal``, softmax for the logistic normal).
    """

    def __init__(
        self,
        n_in: int,
        n_out: int,
        n_cats: Sequence[int] = (),
        n_layers: int = 1,
        n_hidden: int = 128,
        dropout_rate: float = 0.1,
        z_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        var_activation: Callable[[torch.Tensor], torch.Tensor] | None = None,
        var_eps: float = 1e-4,
        **fc_kwargs,
    ):
        super().__init__()
        self.encoder = FCLayers(n_in, n_hidden, n_cats, n_layers, n_hidden, dropout_rate, **fc_kwargs)
        self.mean_encoder = nn.Linear(n_hidden, n_out)
        self.var_encoder = nn.Linear(n_hidden, n_out)
        self.z_transform = z_transform or (lambda z: z)
        self.var_activation = var_activation or torch.exp
        self.var_eps = var_eps

    def forward(self, x: torch.Tensor, *cat_list: torch.Tensor):
        q = self.encoder(x, *cat_list)
        q_m = self.mean_encoder(q)
        q_v = self.var_activation(self.var_encoder(q)) + self.var_eps
        dist = torch.distributions.Normal(q_m, q_v.sqrt(), validate_args=False)
        return dist, self.z_transform(dist.rsample())


_SAME_VALUES_MAX_IN = 256  # BLAS sums inner sizes up to this in one block: bias added last either way


def _head(layer: nn.Linear, h: torch.Tensor) -> torch.Tensor:
    """``layer(h)`` for a decoder head (cells x genes), on CPU in the faster of two
    formulations with the same values (:func:`_bias_after_product`).  Wider inputs than
    :data:`_SAME_VALUES_MAX_IN` keep ``F.linear``: there the two may round differently, and
    a choice made by timing would make results depend on the machine's load."""
    if h.dim() != 2 or layer.bias is None or h.device.type != "cpu" or h.shape[1] > _SAME_VALUES_MAX_IN:
        return layer(h)
    if _bias_after_product(h.shape[0], h.shape[1], layer.weight.shape[0], h.dtype, torch.get_num_threads()):
        return torch.mm(h, layer.weight.t()).add_(layer.bias)
    return torch.addmm(layer.bias, h, layer.weight.t())


@functools.cache
def _bias_after_product(rows: int, n_in: int, n_out: int, dtype: torch.dtype, threads: int) -> bool:
    """Whether ``h W^T`` followed by the bias added in place beats ``addmm(b, h, W^T)`` at
    these sizes on this CPU, timed once per shape (a few milliseconds).  ``addmm`` (what
    ``F.linear`` runs) first copies the broadcast bias into the output; the plain product
    saves that copy, but BLAS libraries run a product that overwrites its output (beta = 0)
    through other kernels than one that accumulates into it, and which is faster depends on
    the CPU (Intel: the product, by the copy; AMD Zen 4: ``addmm``, by ~15%) and on the
    number of threads.  For inner sizes up to 256 (the hidden width) both give the same
    values, so the choice changes the speed only."""
    gen = torch.Generator().manual_seed(0)
    h, w, b = (torch.randn(*shape, generator=gen, dtype=dtype) for shape in ((rows, n_in), (n_out, n_in), (n_out,)))
    variants = (lambda: torch.mm(h, w.t()).add_(b), lambda: torch.addmm(b, h, w.t()))
    best = [float("inf"), float("inf")]
    for rep in range(12):  # alternating, so that drift hits both; the first rounds warm up
        for i, f in enumerate(variants):
            t = time.perf_counter()
            f()
            if rep >= 2:
                best[i] = min(best[i], time.perf_counter() - t)
    return best[0] < best[1]


def _log_scale(raw: torch.Tensor, activation: str) -> torch.Tensor:
    """log rho: log_softmax (rows on the simplex) or log softplus (size-factor models)."""
    if activation == "softmax":
        return torch.log_softmax(raw, dim=-1)
    return torch.log(nn.functional.softplus(raw) + 1e-12)


class DecoderSCVI(nn.Module):
    """Decoder of scVI: h = FCLayers(z, c); returns

    * ``log_scale`` = log_softmax(W_s h) — log normalized expression (``softplus`` instead
      of softmax when the library is an external size factor),
    * ``r`` = W_r h — per-cell log dispersion (used with ``dispersion="gene-cell"``),
    * ``dropout`` = W_d h — zero-inflation logits.
    """

    def __init__(
        self,
        n_in: int,
        n_out: int,
        n_cats: Sequence[int] = (),
        n_layers: int = 1,
        n_hidden: int = 128,
        scale_activation: str = "softmax",
        need_r: bool = False,
        need_dropout: bool = True,
        **fc_kwargs,
    ):
        super().__init__()
        self.px_decoder = FCLayers(n_in, n_hidden, n_cats, n_layers, n_hidden, dropout_rate=0.0, **fc_kwargs)
        self.px_scale_decoder = nn.Linear(n_hidden, n_out)
        # heads are only built when used (unused parameters break DDP and cost time)
        self.px_r_decoder = nn.Linear(n_hidden, n_out) if need_r else None
        self.px_dropout_decoder = nn.Linear(n_hidden, n_out) if need_dropout else None
        self.scale_activation = scale_activation

    def forward(self, z: torch.Tensor, *cat_list: torch.Tensor):
        h = self.px_decoder(z, *cat_list)
        log_scale = _log_scale(_head(self.px_scale_decoder, h), self.scale_activation)
        r = _head(self.px_r_decoder, h) if self.px_r_decoder is not None else None
        dropout = _head(self.px_dropout_decoder, h) if self.px_dropout_decoder is not None else None
        return log_scale, r, dropout


class LinearDecoderSCVI(nn.Module):
    """Linear decoder of LDVAE: log_scale = log_softmax(W z + W_c c [+ b]), optionally
    batch-normalized; the dropout logits get their own linear map.  ``W`` are the loadings."""

    def __init__(
        self,
        n_in: int,
        n_out: int,
        n_cats: Sequence[int] = (),
        use_batch_norm: bool = False,
        use_layer_norm: bool = False,
        bias: bool = False,
        scale_activation: str = "softmax",
        need_dropout: bool = True,
        **_,
    ):
        super().__init__()
        kw = dict(
            n_layers=1, dropout_rate=0.0, use_batch_norm=use_batch_norm, use_layer_norm=use_layer_norm,
            use_activation=False, bias=bias,
        )
        self.factor_regressor = FCLayers(n_in, n_out, n_cats, **kw)
        self.px_dropout_decoder = FCLayers(n_in, n_out, n_cats, **kw) if need_dropout else None
        self.scale_activation = scale_activation

    def forward(self, z: torch.Tensor, *cat_list: torch.Tensor):
        log_scale = _log_scale(self.factor_regressor(z, *cat_list), self.scale_activation)
        dropout = self.px_dropout_decoder(z, *cat_list) if self.px_dropout_decoder is not None else None
        return log_scale, None, dropout

    def loadings(self) -> torch.Tensor:
        """Genes x latent weights, with the batch-norm affine map folded in when present."""
        layer = self.factor_regressor.layers[0].linear
        w = layer.weight.detach()
        post = self.factor_regressor.post[0]
        bn = next((m for m in post if isinstance(m, nn.BatchNorm1d)), None)
        if bn is not None:
            w = w * (bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)).unsqueeze(1)
        return w
