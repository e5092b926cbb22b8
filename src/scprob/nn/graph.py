"""Graph encoder and decoder of GLUE (feature embeddings from a guidance graph).

Encoder: learned vertex representations ``h`` (vertices x d) propagated once over the
signed, degree-normalized graph

    h'_j = sum_{(i -> j)} s_ij w_ij / sqrt(d_out(i) d_in(j)) * h_i ,
    d_out(i) = sum_j w_ij,  d_in(j) = sum_i w_ij ,

then ``q(v | G) = N(W_loc h', softplus(W_std h') + eps)``.
Decoder: an edge ``i -> j`` with sign ``s`` exists with probability
``sigmoid(s <v_i, v_j>)`` (Bernoulli), scored on positive and sampled negative edges.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Bernoulli, Normal

EPS = 1e-7


class GraphEncoder(nn.Module):
    """``q(v | G)`` for ``n_vertices`` vertices and the edge list ``eidx`` (2 x E, source
    row then target row), weights ``ewt`` in (0, 1] and signs ``esgn`` in {-1, +1}."""

    def __init__(self, n_vertices: int, out_features: int, eidx: torch.Tensor, ewt: torch.Tensor, esgn: torch.Tensor):
        super().__init__()
        self.vrepr = nn.Parameter(torch.randn(n_vertices, out_features) * 0.1)
        d_out = torch.zeros(n_vertices).index_add_(0, eidx[0], ewt)
        d_in = torch.zeros(n_vertices).index_add_(0, eidx[1], ewt)
        norm = esgn * ewt / (d_out[eidx[0]] * d_in[eidx[1]]).clamp_min(EPS).sqrt()
        self.register_buffer("eidx", eidx.long())
        self.register_buffer("enorm", norm.float())
        # propagation as one sparse matmul (its backward is the transposed matmul)
        with warnings.catch_warnings():  # torch flags sparse CSR as beta; it is what we use
            warnings.simplefilter("ignore", UserWarning)
            adj = torch.sparse_coo_tensor(torch.stack([eidx[1], eidx[0]]), norm.float(), (n_vertices, n_vertices),
                                          check_invariants=False).coalesce()
            self.register_buffer("adj", adj.to_sparse_csr(), persistent=False)
        self.loc = nn.Linear(out_features, out_features)
        self.std_lin = nn.Linear(out_features, out_features)

    def propagate(self) -> torch.Tensor:
        return self.adj @ self.vrepr

    def forward(self) -> Normal:
        h = self.propagate()
        return Normal(self.loc(h), F.softplus(self.std_lin(h)) + EPS, validate_args=False)


class GraphDecoder(nn.Module):
    """``p(edge i -> j | v) = Bernoulli(sigmoid(s_ij <v_i, v_j>))``."""

    def forward(self, v: torch.Tensor, eidx: torch.Tensor, esgn: torch.Tensor) -> Bernoulli:
        vi, vj = v.index_select(0, eidx[0]), v.index_select(0, eidx[1])
        return Bernoulli(logits=esgn * (vi * vj).sum(dim=1), validate_args=False)
