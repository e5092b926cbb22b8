r"""GLUE: unpaired multi-omics integration through a guidance graph.

Names as in the GLUE paper (Cao & Gao, 2022): modalities ``k`` with data ``x_k`` (cells x
features ``V_k``), cell embeddings ``u``, feature embeddings ``v`` (one per vertex of the
guidance graph ``G``, whose vertices include every feature of every modality).

Generative story
----------------
* ``p(u) = N(0, I)`` for every cell, ``p(v) = N(0, I)`` for every vertex.
* Graph: each edge ``i -> j`` with sign ``s_ij`` is observed with probability
  ``sigmoid(s_ij <v_i, v_j>)`` (:class:`~scprob.nn.graph.GraphDecoder`).
* ``p(h_k) = N(0, I)``: each modality's private latent (``private_dim`` dimensions, may be
  0), with loadings ``r_k`` (features of ``k`` x ``private_dim``, prior ``N(0, I)`` per
  feature, point estimates).
* Data: ``x_k | u, h_k, v ~ p_k(x | u, h_k, v_{V_k}, b, l)``, the modality's prob model
  (NB, ZINB, Normal, ZIN, ZILN, Bernoulli, Beta, NB mixture, ...:
  :mod:`scprob.nn.prob_models`), whose parameters come from ``u v^T + h_k r_k^T`` with
  batch-specific scale and bias rows.  Only ``u`` is shared (the embedding, aligned by the
  discriminator, linked through the graph); ``h_k`` holds what only modality ``k`` shows,
  which in a shared space alone the adversary would make the other modalities mirror on an
  axis of their own, unpaired.

Inference
---------
* ``q(u, h_k | x_k)``: the modality's data encoder (one MLP per modality).
* ``q(v | G)``: the graph encoder (learned vertex representations propagated over the
  signed, degree-normalized graph; :class:`~scprob.nn.graph.GraphEncoder`).

Objective
---------
Per modality, the negative ELBO per data entry (so that modalities with 500 or 50,000
features weigh alike)::

    x_elbo_k = - mean_{cells, features} log p_k(x | u, h_k, v)
               + lam_kl * mean_cells KL(q(u, h_k|x) || p(u, h_k)) / |V_k|
               + lam_kl * mean_features |r_k,f|^2 / 2 / |V_k|

and for the graph, per edge, with positives ``E+`` (drawn by weight) and negatives
``E-`` (same source, degree-weighted targets that are not edges)::

    g_elbo = (mean_{E+} -log sigmoid(s <v_i,v_j>) + mean_{E-} -log sigmoid(-s <v_i,v_j>)) / 2
             + lam_kl * mean_vertices KL(q(v|G) || p(v)) / |V|

(``v`` is global: its KL is spread over the vertices, each of which is scored through
many cells and edges, so that it regularizes without washing the embeddings out),

    vae_loss = lam_data * sum_k w_k x_elbo_k + lam_graph * K * g_elbo
               + lam_link * link_loss + lam_match * match_loss + lam_sup * sup_loss

where ``w_k`` are modality weights (normalized to sum 1), ``K`` the number of modalities
and ``sup_loss`` the cross-entropy of a linear cell-type classifier on ``u`` over the
labelled cells (optional supervision).

``link_loss`` (not in the GLUE paper) uses the graph's edges *between* modalities
directly.  For modalities ``k != m`` with links ``A_km`` (``m``'s linked features x
``k``'s features, entries ``s_ij w_ij``), a minibatch of ``k``'s cells has

    activity   a = normalize_k(x_k) A_km^T           (what k's data say about m's features)
    prediction p = u_k v_m^T                         (m's decoder at k's embeddings, on m's
                                                     linked features)

Both are standardized per feature (``a`` with its mean and standard deviation over all
of ``k``'s cells, fixed by :meth:`GLUEModule.fit_link_targets` before training, which
also caches each cell's standardized rows where they fit in :data:`LINK_CACHE_ELEMENTS`;
``p`` over the minibatch) and each cell's rows are compared::

    link_loss = mean_{(k, m) linked} mean_cells (1 - corr(a_cell, p_cell))

``p`` is the linear predictor every decoder builds its parameters from (``log_mu``,
``loc``, logits: ``softplus(scale_j) <u, v_j> + bias_j``): the per-feature scale and bias
cancel in the standardization, and the per-cell normalizer of count models (log library
size, log-softmax) is one number per cell, not a pattern across features; so ``p`` does not
depend on the family, and the term never forms the decoder's cells x features output
(:func:`scprob.nn.pairing.linear_row_corr_loss`).  Only ``k``'s encoder learns from it (``v`` is held
fixed): it places each cell where the other modality's decoder predicts what the cell's
own linked features show, which adversarial alignment alone does not (on small data, a
discriminator matches the two distributions but not the pairing within them).

``match_loss`` (not in the GLUE paper either) pulls cells of two linked modalities that
look alike through the graph towards each other.  For a minibatch of ``k``'s cells ``i``
and ``m``'s cells ``j`` (rows standardized as above, ``dist = 1 - corr``)::

    C_ij = dist(a_i, y_j)                     (k's data mapped onto m's linked features vs
                                               m's own linked features ``y``)
         + dist(p_i, y_j) + dist(y'_i, p'_j)  (each decoder at the other modality's cells
                                               vs that modality's own linked features)
    P    = argmin_P <P, C> - eps H(P)          (entropic optimal transport, uniform
                                               marginals, eps = 0.02 sd(C), log-domain
                                               Sinkhorn)
    match_loss = sum_ij P_ij ||u_i - u_j||^2

``P`` is a constant (no gradient); both encoders learn from the distances.  The raw term
is the classic "correlate each antibody with its gene" pairing, the decoder terms let
the rest of each modality's features sharpen it as training goes.

``self_train`` (:meth:`GLUEModule.self_train_link_targets`, run once before training on the
pairs the matching covers) replaces the decoder terms by linear predictions, each from
*all* of one modality's features, fitted on pseudo-pairs.  The raw evidence ``a`` and the
linked features ``y`` (``m``'s towards ``k``) and ``y'`` (``k``'s towards ``m``) are
standardized per feature within each batch of their modality (rows then centred, unit
norm); ``r`` and ``q`` are ``k``'s and ``m``'s encoder inputs (PCA / LSI scores or
normalized features, natural scale; ``r0`` = ``r`` centred).  On up to
:data:`SELF_TRAIN_CELLS` cells of each modality, starting from ``C = C0 = 1 - a y^T``, each
of ``rounds`` rounds computes::

    P    = entropic OT plan on C (eps = 0.1 sd(C))
    t    = ridge prediction of the plan's barycentres rownorm(P) y   from r  (m's linked
                                                                             features)
    s    = ridge prediction of                    colnorm(P)^T r0  from q  (k's input)
    C    = C0 + 1 - unit_rows(t) y^T + 1 - unit(r0) unit(s)^T

(ridge with the penalty chosen by generalized cross-validation; ``unit`` scales rows to
unit norm without centring them: pseudo-pairs from the linked evidence teach linear maps
between the modalities, whose predictions give better pseudo-pairs).  The last plan also
gives ``t'``, the ridge prediction of ``colnorm(P)^T y'`` (``k``'s linked features) from
``q``: ``m``'s link-term target only, not a cost term (as a cost it ranks partners worse
than the others and adds noise).  Every cell's ``t`` (``t'``) then replaces its link-term
target, and the matching cost becomes the same three terms on the minibatch,
``C_ij = dist(a_i, y_j) + dist(t_i, y_j) + 1 - unit(r0_i) unit(s_j)``.  On PBMC CITE-seq
(400 cells, 14 antibodies) the pairing that the links alone give (FOSCTTM of the cost
0.133) reaches 0.088, the embedding 0.092-0.097.

A discriminator ``D(u, b)`` predicts each cell's
modality from its embedding (and its batch); with per-cell balancing weights ``c``::

    dsc_loss = sum_cells c * CE(D(u, b), k) / n_cells

The discriminator minimizes ``lam_align * dsc_loss``; the encoders and decoders minimize
``vae_loss - lam_align * dsc_loss`` (adversarial alignment; two optimizers, see
:class:`~scprob.train.AdversarialTrainingPlan`).
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Normal, kl_divergence

from ..data.keys import Keys
from ..nn.fc import Dropout
from ..nn.graph import GraphDecoder, GraphEncoder
from ..nn.pairing import (
    corr_dist,
    linear_row_corr_loss,
    sinkhorn,
    standardized_unit_rows,
    unit_rows,
)
from ..nn.prob_models import get_prob_model
from .base import BaseModule, LossOutput

if TYPE_CHECKING:
    from ..data.loader import TensorStore

GRAPH = "_graph"  # key of the edge minibatch in a multi-modality batch
XREP = "xrep"  # a modality's precomputed representation (use_rep)
DSC_WEIGHT = "dsc_weight"  # per-cell balancing weight of the discriminator loss
LINK_CACHE_ELEMENTS = 1 << 26  # largest cells x linked features link-target table kept per modality pair
SELF_TRAIN_CELLS = 4096  # cells per modality in a self-training plan (a random subsample above)


def link_target_key(m: str) -> str:
    """Store key of a modality's cached link targets towards modality ``m``."""
    return f"link_t_{m}"


def match_input_key(m: str) -> str:
    """Store key of a modality's input table in the matching cost towards modality ``m``
    (:meth:`GLUEModule.self_train_link_targets`)."""
    return f"match_in_{m}"


class Discriminator(nn.Module):
    """MLP predicting the modality of a cell embedding, given the one-hot batch."""

    def __init__(self, in_features: int, n_modalities: int, n_batches: int = 0, h_depth: int = 2, h_dim: int = 256,
                 dropout: float = 0.2):
        super().__init__()
        self.n_batches = n_batches
        layers: list[nn.Module] = []
        d = in_features + n_batches
        for _ in range(h_depth):
            layers += [nn.Linear(d, h_dim), nn.LeakyReLU(0.2), Dropout(dropout)]
            d = h_dim
        layers.append(nn.Linear(d, n_modalities))
        self.net = nn.Sequential(*layers)

    def forward(self, u: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
        if self.n_batches:
            u = torch.cat([u, F.one_hot(b, self.n_batches).to(u.dtype)], dim=1)
        return self.net(u)


class GLUEModule(BaseModule):
    """The GLUE module.

    Parameters
    ----------
    modalities
        Per modality key: ``prob_model`` (registered name), ``n_features``,
        ``vertices`` (the graph vertex index of each feature, in order), ``n_batches``,
        ``rep_dim`` (width of ``use_rep``, or ``None`` to read the data).
    n_vertices, eidx, ewt, esgn
        The guidance graph (edge list 2 x E, weights, signs).
    n_labels
        Cell-type categories shared by the modalities (0: no supervision).
    batch_categories
        Size of the union of batch categories across modalities (discriminator input);
        each modality's batch codes index into its own decoder rows.
    """

    def __init__(self, modalities: dict[str, dict], n_vertices: int, eidx: torch.Tensor, ewt: torch.Tensor,
                 esgn: torch.Tensor, latent_dim: int = 50, h_depth: int = 2, h_dim: int = 256, dropout: float = 0.2,
                 n_labels: int = 0, n_dsc_batches: int = 0, private_dim: int = 0):
        super().__init__()
        self.keys = list(modalities)
        self.latent_dim = latent_dim
        self.private_dim = int(private_dim)
        self.private = nn.ParameterDict()
        self.n_edges = int(eidx.shape[1])
        self.n_vertices = int(n_vertices)
        self.encoders = nn.ModuleDict()
        self.decoders = nn.ModuleDict()
        self.n_features: dict[str, int] = {}
        self._vslice: dict[str, slice | None] = {}
        for k, m in modalities.items():
            spec = get_prob_model(m["prob_model"])
            in_features = m["rep_dim"] or m["n_features"]
            self.encoders[k] = spec["encoder"](in_features, latent_dim + self.private_dim, h_depth=h_depth, h_dim=h_dim, dropout=dropout)
            if self.private_dim:
                self.private[k] = nn.Parameter(0.1 * torch.randn(int(m["n_features"]), self.private_dim))
            self.decoders[k] = spec["decoder"](m["n_features"], n_batches=max(1, m["n_batches"]))
            self.register_buffer(f"vidx_{k}", torch.as_tensor(m["vertices"], dtype=torch.long))
            vs = list(m["vertices"])
            # a contiguous block of vertices is sliced (no gather, no scatter in backward)
            self._vslice[k] = slice(vs[0], vs[0] + len(vs)) if vs == list(range(vs[0], vs[0] + len(vs))) else None
            self.n_features[k] = int(m["n_features"])
        self._build_links(modalities, self.n_vertices, eidx, ewt, esgn)
        self._link_stats: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] = {}  # fit_link_targets
        self._self_trained: set[tuple[str, str]] = set()  # self_train_link_targets
        self.g2v = GraphEncoder(n_vertices, latent_dim, eidx, ewt, esgn)
        self.v2g = GraphDecoder()
        self.discriminator = Discriminator(latent_dim, len(self.keys), n_dsc_batches, h_depth, h_dim, dropout)
        self.classifier = nn.Linear(latent_dim, n_labels) if n_labels > 1 else None

    def _build_links(self, modalities: dict[str, dict], n_vertices: int, eidx: torch.Tensor, ewt: torch.Tensor,
                     esgn: torch.Tensor) -> None:
        """Cross-modality link matrices ``A_km`` (linked features of ``m`` x features of
        ``k``, entries ``s_ij w_ij``) from the graph's edges between two modalities'
        features (a feature both modalities share links to itself by its self-loop)."""
        self.links: list[tuple[str, str]] = []
        pos = {}
        for k, m in modalities.items():  # vertex -> position among k's features (-1: not k's)
            p = torch.full((n_vertices,), -1, dtype=torch.long)
            p[torch.as_tensor(m["vertices"], dtype=torch.long)] = torch.arange(len(m["vertices"]))
            pos[k] = p
        val = (ewt * esgn).float()
        for k in modalities:
            for m in modalities:
                if k == m:
                    continue
                col, row = pos[k][eidx[0]], pos[m][eidx[1]]
                keep = (col >= 0) & (row >= 0)
                if not bool(keep.any()):
                    continue
                linked, rows = torch.unique(row[keep], return_inverse=True)
                a = torch.sparse_coo_tensor(torch.stack([rows, col[keep]]), val[keep], (len(linked), len(modalities[k]["vertices"])),
                                            check_invariants=False).coalesce()
                with warnings.catch_warnings():  # torch flags sparse CSR as beta
                    warnings.simplefilter("ignore", UserWarning)
                    self.register_buffer(f"link_{k}_{m}", a.to_sparse_csr(), persistent=False)
                self.register_buffer(f"linkidx_{k}_{m}", linked, persistent=False)
                self.links.append((k, m))

    def link_activity(self, k: str, m: str, x: torch.Tensor, l: torch.Tensor | None) -> torch.Tensor:
        """``k``'s data mapped onto ``m``'s linked features: ``normalize_k(x) A_km^T`` (cells x
        linked features of ``m``); ``l`` is the library size inference computes."""
        return (getattr(self, f"link_{k}_{m}") @ self.encoders[k].normalize(x, l).t()).t()

    def own_linked(self, k: str, m: str, x: torch.Tensor, l: torch.Tensor | None) -> torch.Tensor:
        """``m``'s own data on its features linked from ``k``: ``normalize_m(x)`` at those
        features (cells of ``m`` x linked features); ``l`` as in :meth:`link_activity`."""
        return self.encoders[m].normalize(x, l).index_select(1, getattr(self, f"linkidx_{k}_{m}"))

    def _link_table_fits(self, k: str, m: str, n_cells: int) -> bool:
        """Whether ``n_cells`` of ``k``'s cells' link targets towards ``m`` fit in
        :data:`LINK_CACHE_ELEMENTS` (then training keeps them as a table)."""
        return n_cells * int(getattr(self, f"linkidx_{k}_{m}").numel()) <= LINK_CACHE_ELEMENTS

    def link_targets(self, k: str, m: str, x: torch.Tensor, l: torch.Tensor | None) -> torch.Tensor:
        """The link term's targets: :meth:`link_activity` standardized per feature with the
        statistics :meth:`fit_link_targets` fixed (over the minibatch before that), rows
        centred and scaled to unit norm."""
        return self._standardize_activity(k, m, self.link_activity(k, m, x, l))

    def _standardize_activity(self, k: str, m: str, act: torch.Tensor) -> torch.Tensor:
        stats = self._link_stats.get((k, m))
        return unit_rows(act) if stats is None else standardized_unit_rows(act, *(t.to(act.device) for t in stats))

    @torch.no_grad()
    def fit_link_targets(self, data: dict[str, TensorStore], chunk: int = 4096) -> dict[tuple[str, str], torch.Tensor | None]:
        """Per linked pair ``(k, m)``, fix the mean and standard deviation of
        :meth:`link_activity` over all cells of ``k`` (``data[k]`` a store: ``data[k][idx]``
        gives the tensors of cells ``idx``, ``data[k].n_obs`` their number) and return
        every cell's :meth:`link_targets` where the table has at most
        :data:`LINK_CACHE_ELEMENTS` entries (else ``None``: they are computed per
        minibatch, to the same values).  The targets depend on the data alone, so
        a training run computes them once instead of in every step."""
        self._link_stats, self._self_trained = {}, set()
        out: dict[tuple[str, str], torch.Tensor | None] = {}
        for k, m in self.links:
            if k not in data:
                continue
            store, n = data[k], int(data[k].n_obs)
            idx = torch.arange(n)
            acts, s1, s2 = [], 0.0, 0.0
            keep = self._link_table_fits(k, m, n)
            for start in range(0, n, chunk):
                x = store[idx[start:start + chunk]][Keys.X]
                act = self.link_activity(k, m, x, self.encoders[k].compute_l(x)).double()
                s1, s2 = s1 + act.sum(0), s2 + act.square().sum(0)
                if keep:
                    acts.append(act)
            mean = s1 / n
            var = (s2 / n - mean.square()).clamp_min(0.0)
            stats = (mean.float(), (var + 1e-8).sqrt().float())
            self._link_stats[(k, m)] = stats
            out[(k, m)] = standardized_unit_rows(torch.cat(acts).float(), *stats) if keep else None
        return out

    @torch.no_grad()
    def self_train_link_targets(self, data: dict[str, TensorStore], pairs: list[tuple[str, str]], rounds: int = 8,
                                rel_eps: float = 0.1, max_cells: int = SELF_TRAIN_CELLS,
                                seed: int = 0) -> dict[tuple[str, str], torch.Tensor]:
        """Self-training (``self_train`` in the module docstring) of each pair ``(k, m)`` in
        ``pairs`` whose link targets training keeps as tables in both directions
        (:meth:`fit_link_targets`) and whose input tables (cells of both x ``k``'s encoder
        input) fit in :data:`LINK_CACHE_ELEMENTS` too (else the matching keeps the decoder
        terms).  Returns the new tables as ``{(modality, store key):
        table}`` (one unit row per cell of the modality): the link targets of both
        directions (:func:`link_target_key`) and the input tables of the matching cost
        (:func:`match_input_key`: ``k``'s centred input, ``m``'s prediction of it)."""
        from ._glue_self_train import self_train_tables

        out, self._self_trained = self_train_tables(self, data, pairs, rounds, rel_eps, max_cells, seed)
        return out

    def _cross(self, tensors, inference_outputs, v: torch.Tensor,
               with_own: bool = True) -> dict[tuple[str, str], dict[str, torch.Tensor]]:
        """Per linked pair ``(k, m)`` with ``k`` in the minibatch: ``target`` = the link term's
        targets (:meth:`link_targets`, from the store's cache under
        :func:`link_target_key` when there is one), ``u`` = ``k``'s embeddings and ``w`` =
        ``m``'s linked feature embeddings (latent x linked features, held fixed so that only
        ``k``'s encoder learns): the prediction is ``u @ w`` (module docstring).  With
        ``with_own`` also ``act`` = :meth:`link_activity` and ``own`` = ``m``'s own linked
        features (``None`` when ``m``'s cells are absent), for the matching term."""
        out = {}
        for k, m in self.links:
            if k not in inference_outputs["u"] or k not in tensors or tensors[k][Keys.X].shape[0] < 3:
                continue
            idx = getattr(self, f"linkidx_{k}_{m}")
            x, lib = tensors[k][Keys.X], inference_outputs["l"][k]
            with torch.no_grad():  # the library size is the one inference computed
                target = tensors[k].get(link_target_key(m))
                act = self.link_activity(k, m, x, lib) if with_own or target is None else None
                c = dict(target=self._standardize_activity(k, m, act) if target is None else target)
                if with_own:
                    c["act"] = act
                    c["own"], c["input"] = None, tensors[k].get(match_input_key(m))
                    if m in inference_outputs["u"] and tensors[m][Keys.X].shape[0] >= 3:
                        c["own"] = self.own_linked(k, m, tensors[m][Keys.X], inference_outputs["l"][m])
            c["u"] = inference_outputs["u"][k]
            c["w"] = self.feature_embeddings(v, m).detach().index_select(0, idx).t()
            out[(k, m)] = c
        return out

    @staticmethod
    def link_loss(cross: dict) -> torch.Tensor | None:
        """Linked-feature consistency (``link_loss`` in the module docstring) from
        :meth:`_cross`; ``None`` when no minibatch has cross-modality links."""
        terms = [linear_row_corr_loss(c["u"], c["w"], c["target"]) for c in cross.values()]
        return torch.stack(terms).mean() if terms else None

    def one_to_one_pairs(self, max_ratio: float = 1.5) -> list[tuple[str, str]]:
        """Linked modality pairs ``(k, m)`` (``k`` first in :attr:`keys`) whose graph links map
        features nearly one to one: at most ``max_ratio`` links per linked feature on the
        side with fewer linked features (an antibody and the gene(s) encoding it, the same
        gene in two assays), where each link pairs two measurements of one molecule; not
        peaks summed onto genes (several peaks per gene, each a weak proxy)."""
        out = []
        for k, m in self.links:
            if self.keys.index(k) > self.keys.index(m):
                continue
            a = getattr(self, f"link_{k}_{m}")  # linked features of m x features of k
            n_links = int(a.values().numel())
            n_k = int(torch.unique(a.col_indices()).numel())
            if n_links and n_links <= max_ratio * min(a.shape[0], n_k):
                out.append((k, m))
        return out

    def match_loss(self, inference_outputs, cross: dict, rel_eps: float = 0.02, n_iter: int = 50,
                   pairs: list[tuple[str, str]] | None = None) -> torch.Tensor | None:
        """Cross-modality matching (``match_loss`` in the module docstring) from :meth:`_cross`,
        over ``pairs`` (default: every linked pair)."""
        terms = []
        for (k, m), c in cross.items():
            if self.keys.index(k) > self.keys.index(m) or c.get("own") is None or (pairs is not None and (k, m) not in pairs):
                continue
            back = cross.get((m, k))
            if back is not None and back.get("own") is None:
                back = None
            with torch.no_grad():  # the plan is a constant
                # own linked features of k's cells against m's; then the self-trained
                # predictions (k's of m's linked features, m's of k's input) or else each
                # decoder's prediction at the other modality's cells
                cost = corr_dist(c["act"], c["own"])
                if (k, m) in self._self_trained:
                    cost = cost + corr_dist(c["target"], c["own"])
                    if back is not None:
                        cost = cost + 1.0 - c["input"] @ back["input"].t()
                else:
                    cost = cost + corr_dist(c["u"] @ c["w"], c["own"])
                    if back is not None:
                        cost = cost + corr_dist(back["own"], back["u"] @ back["w"])
                plan = sinkhorn(cost, rel_eps * cost.std(), n_iter)
            uk, um = inference_outputs["u"][k], inference_outputs["u"][m]
            d2 = uk.square().sum(1, keepdim=True) + um.square().sum(1) - 2.0 * uk @ um.t()
            terms.append((plan * d2).sum())
        return torch.stack(terms).mean() if terms else None

    def vertices(self, key: str) -> torch.Tensor:
        return getattr(self, f"vidx_{key}")

    def feature_embeddings(self, v: torch.Tensor, key: str) -> torch.Tensor:
        sl = self._vslice[key]
        return v[sl] if sl is not None else v.index_select(0, self.vertices(key))

    def vae_parameters(self):
        return [p for n, p in self.named_parameters() if not n.startswith("discriminator.")]

    # ---------------------------------------------------------------- module API
    def _get_inference_input(self, tensors, **kwargs):
        return dict(x={k: tensors[k][Keys.X] for k in self.keys if k in tensors},
                    xrep={k: tensors[k].get(XREP) for k in self.keys if k in tensors})

    def inference(self, x: dict, xrep: dict, n_samples: int = 1) -> dict:
        qu, lib, u, up = {}, {}, {}, {}
        d = self.latent_dim
        for k, xk in x.items():
            qu[k], lib[k] = self.encoders[k](xk, xrep.get(k))
            full = qu[k].rsample()
            u[k], up[k] = (full[:, :d], full[:, d:]) if self.private_dim else (full, None)
        return dict(qu=qu, u=u, up=up, l=lib)

    def _get_generative_input(self, tensors, inference_outputs, **kwargs):
        return dict(u=inference_outputs["u"], l=inference_outputs["l"],
                    b={k: tensors[k][Keys.BATCH].reshape(-1) for k in inference_outputs["u"]},
                    graph=tensors.get(GRAPH), up=inference_outputs.get("up"))

    def generative(self, u: dict, l: dict, b: dict, graph: dict | None = None, up: dict | None = None) -> dict:
        qv = self.g2v()
        v = qv.rsample()
        px = {}
        for k in u:
            vk = self.feature_embeddings(v, k)
            if self.private_dim:
                px[k] = self.decoders[k](torch.cat([u[k], up[k]], 1), torch.cat([vk, self.private[k]], 1), b[k], l[k])
            else:
                px[k] = self.decoders[k](u[k], vk, b[k], l[k])
        pg = self.v2g(v, graph["eidx"], graph["esgn"]) if graph is not None else None
        return dict(qv=qv, v=v, px=px, pg=pg)

    def loss(self, tensors, inference_outputs, generative_outputs, lam_data: float = 1.0, lam_kl: float = 1.0,
             lam_graph: float = 0.02, lam_sup: float = 0.02, lam_link: float = 0.0, lam_match: float = 0.0,
             match_pairs: list[tuple[str, str]] | None = None, modality_weight: dict | None = None) -> LossOutput:
        qu, px = inference_outputs["qu"], generative_outputs["px"]
        prior = Normal(0.0, 1.0)
        weights = {k: float((modality_weight or {}).get(k, 1.0)) for k in qu}
        total_w = sum(weights.values())
        rec, kl, x_elbo, metrics = {}, {}, 0.0, {}
        for k in qu:
            x = tensors[k][Keys.X]
            dist = px[k]
            # sparse-aware row sums where the family has them (lgamma only on non-zeros)
            nll = -(dist.log_prob_rowsum(x) if hasattr(dist, "log_prob_rowsum") else dist.log_prob(x).sum(1))
            klu = kl_divergence(qu[k], prior).sum(1)
            rec[k], kl[k] = nll, klu
            elbo_k = nll.mean() / self.n_features[k] + lam_kl * klu.mean() / self.n_features[k]
            if self.private_dim:  # N(0, I) prior of the private loadings, per feature like v's
                elbo_k = elbo_k + lam_kl * 0.5 * self.private[k].square().sum(1).mean() / self.n_features[k]
            x_elbo = x_elbo + weights[k] / total_w * elbo_k
            metrics[f"x_{k}_nll"] = nll.detach().sum() / self.n_features[k]
            metrics[f"x_{k}_kl"] = klu.detach().sum() / self.n_features[k]
        n_cells = sum(int(q.loc.shape[0]) for q in qu.values())
        loss = lam_data * x_elbo
        pg = generative_outputs["pg"]
        if pg is not None:
            target = tensors[GRAPH]["target"]
            bce = -pg.log_prob(target)
            # mean over positives + mean over negatives (when any), by masks: no boolean
            # indexing, whose output size the host would have to wait for on a GPU
            pos = (target > 0.5).to(bce.dtype)
            neg = 1.0 - pos
            n_neg = neg.sum()
            g_nll = ((bce * pos).sum() / pos.sum().clamp_min(1.0) + (bce * neg).sum() / n_neg.clamp_min(1.0)) \
                / (1.0 + (n_neg > 0).to(bce.dtype))
            g_kl = kl_divergence(generative_outputs["qv"], prior).sum(1).mean() / self.n_vertices
            g_elbo = g_nll + lam_kl * g_kl
            loss = loss + lam_graph * len(qu) * g_elbo
            metrics["g_nll"] = g_nll.detach() * n_cells  # plan divides epoch sums by cells
        if (lam_link > 0 or lam_match > 0) and self.links:
            cross = self._cross(tensors, inference_outputs, generative_outputs["v"], with_own=lam_match > 0)
            ll = self.link_loss(cross) if lam_link > 0 else None
            if ll is not None:
                loss = loss + lam_link * ll
                metrics["link_loss"] = ll.detach() * n_cells
            ml = self.match_loss(inference_outputs, cross, pairs=match_pairs) if lam_match > 0 else None
            if ml is not None:
                loss = loss + lam_match * ml
                metrics["match_loss"] = ml.detach() * n_cells
        if self.classifier is not None and lam_sup > 0:
            sup = self._supervision(tensors, inference_outputs)
            if sup is not None:
                loss = loss + lam_sup * sup
                metrics["sup_loss"] = sup.detach() * n_cells
        return LossOutput(loss=loss, reconstruction_loss=rec, kl_local=kl, extra_metrics=metrics, n_obs_minibatch=n_cells)

    def _supervision(self, tensors, inference_outputs) -> torch.Tensor | None:
        logits, labels = [], []
        for k, uk in inference_outputs["u"].items():
            lab = tensors[k].get(Keys.LABELS)
            if lab is None:
                continue
            lab = lab.reshape(-1)
            keep = lab >= 0
            logits.append(self.classifier(uk[keep]))
            labels.append(lab[keep])
        if not labels or sum(int(t.numel()) for t in labels) == 0:
            return None
        return F.cross_entropy(torch.cat(logits), torch.cat(labels))

    def discriminator_loss(self, tensors, inference_outputs, detach: bool = False, noise: float = 0.0) -> torch.Tensor:
        """Balancing-weighted cross-entropy of the modality discriminator on samples of
        ``q(u | x)``; ``noise`` > 0 adds Gaussian noise of that many per-dimension standard
        deviations to its input (a blurred view while the embeddings burn in)."""
        us, bs, ks, ws = [], [], [], []
        for k, uk in inference_outputs["u"].items():
            i = self.keys.index(k)
            us.append(uk.detach() if detach else uk)
            bs.append(tensors[k]["dsc_batch"].reshape(-1))
            ks.append(torch.full((uk.shape[0],), i, dtype=torch.long, device=uk.device))
            ws.append(tensors[k][DSC_WEIGHT].reshape(-1))
        u = torch.cat(us)
        if noise > 0:
            u = u + noise * u.detach().std(dim=0) * torch.randn_like(u)
        ce = F.cross_entropy(self.discriminator(u, torch.cat(bs)), torch.cat(ks), reduction="none")
        w = torch.cat(ws)
        return (ce * w).sum() / w.numel()
