"""Edge minibatches of a guidance graph with weighted negative sampling.

Positive edges are drawn with probability proportional to their weight.  Each positive
``i -> j`` gets ``neg_samples`` negatives ``i -> j'`` with the same source and sign,
``j'`` drawn with probability proportional to the vertex degree (sum of edge weights),
as in word2vec-style sampling.  A candidate that is a real edge is redrawn, at most
``max_tries`` times; what is still a real edge after that is dropped, so sampling never
returns a positive edge as a negative and terminates even on a complete graph (which has
no negatives at all).
"""

from __future__ import annotations

import torch


class EdgeSampler:
    def __init__(self, eidx: torch.Tensor, ewt: torch.Tensor, esgn: torch.Tensor, n_vertices: int,
                 neg_samples: int = 1, max_tries: int = 10):
        self.eidx, self.ewt, self.esgn = eidx.long(), ewt.float(), esgn.float()
        self.n_vertices, self.neg_samples, self.max_tries = int(n_vertices), int(neg_samples), int(max_tries)
        self.keys = torch.unique(self.eidx[0] * self.n_vertices + self.eidx[1])  # sorted
        deg = torch.zeros(self.n_vertices).index_add_(0, self.eidx[0], self.ewt).index_add_(0, self.eidx[1], self.ewt)
        self.vprob = deg / deg.sum()
        self.eprob = self.ewt / self.ewt.sum()

    def is_edge(self, src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        key = src * self.n_vertices + tgt
        pos = torch.searchsorted(self.keys, key).clamp(max=self.keys.numel() - 1)
        return self.keys[pos] == key

    def sample(self, n_edges: int, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """``n_edges`` positives and their negatives: ``eidx`` (2 x m), ``esgn`` (m,),
        ``target`` (m,; 1 positive, 0 negative)."""
        pick = torch.multinomial(self.eprob, n_edges, replacement=True, generator=generator)
        src, tgt, sgn = self.eidx[0, pick], self.eidx[1, pick], self.esgn[pick]
        nsrc, nsgn = src.repeat(self.neg_samples), sgn.repeat(self.neg_samples)
        ntgt = torch.multinomial(self.vprob, nsrc.numel(), replacement=True, generator=generator)
        for _ in range(self.max_tries):
            bad = self.is_edge(nsrc, ntgt)
            if not bad.any():
                break
            ntgt[bad] = torch.multinomial(self.vprob, int(bad.sum()), replacement=True, generator=generator)
        keep = ~self.is_edge(nsrc, ntgt)
        nsrc, ntgt, nsgn = nsrc[keep], ntgt[keep], nsgn[keep]
        return dict(
            eidx=torch.stack([torch.cat([src, nsrc]), torch.cat([tgt, ntgt])]),
            esgn=torch.cat([sgn, nsgn]),
            target=torch.cat([torch.ones_like(sgn), torch.zeros_like(nsgn)]),
        )
