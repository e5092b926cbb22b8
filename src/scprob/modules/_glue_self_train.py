"""GLUE's self-training of link targets and matching inputs (``self_train`` in the module
docstring of :mod:`scprob.modules.glue`): before training, for each one-to-one linked pair
of modalities, rounds of an entropic transport plan between the two modalities' cells and
ridge regressions along it replace the raw link targets by fitted ones."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..data.keys import Keys
from ..nn.pairing import centred_unit_norm_rows, ridge_gcv, sinkhorn, standardize_within, unit_norm_rows

if TYPE_CHECKING:
    from ..data.loader import TensorStore
    from .glue import GLUEModule


def _within_batch_unit_rows(a: torch.Tensor, tensors: dict) -> torch.Tensor:
    """``a`` (rows: the cells of ``tensors``) in float64, standardized per column within each
    batch, rows centred and of unit norm (the self-training's evidence)."""
    return centred_unit_norm_rows(standardize_within(a.double(), tensors[Keys.BATCH]))


@torch.no_grad()
def self_train_tables(module: GLUEModule, data: dict[str, TensorStore], pairs: list[tuple[str, str]], rounds: int,
                      rel_eps: float, max_cells: int, seed: int) -> tuple[dict[tuple[str, str], torch.Tensor], set]:
    """:meth:`GLUEModule.self_train_link_targets`'s tables, and the pairs it self-trained."""
    from .glue import LINK_CACHE_ELEMENTS, XREP, link_target_key, match_input_key

    trained: set[tuple[str, str]] = set()
    if rounds < 1:
        return {}, trained
    gen = torch.Generator().manual_seed(seed)
    out: dict[tuple[str, str], torch.Tensor] = {}
    for k, m in dict.fromkeys(tuple(sorted(p, key=module.keys.index)) for p in pairs):
        if k not in data or m not in data or not (module._link_table_fits(k, m, int(data[k].n_obs))
                                                  and module._link_table_fits(m, k, int(data[m].n_obs))):
            continue
        tk, tm = (data[j][torch.arange(int(data[j].n_obs))] for j in (k, m))
        # natural scale: the ridge then shrinks the minor components
        r = module.encoders[k].inputs(tk[Keys.X], tk.get(XREP))[0].double()
        if (len(tk[Keys.X]) + len(tm[Keys.X])) * r.shape[1] > LINK_CACHE_ELEMENTS:  # input tables too large
            continue
        q = module.encoders[m].inputs(tm[Keys.X], tm.get(XREP))[0].double()
        lk, lm = module.encoders[k].compute_l(tk[Keys.X]), module.encoders[m].compute_l(tm[Keys.X])
        a = _within_batch_unit_rows(module.link_activity(k, m, tk[Keys.X], lk), tk)  # k's evidence
        y_km = _within_batch_unit_rows(module.own_linked(k, m, tm[Keys.X], lm), tm)  # m's linked features
        y_mk = _within_batch_unit_rows(module.own_linked(m, k, tk[Keys.X], lk), tk)  # k's linked features
        ik = torch.randperm(len(r), generator=gen)[:max_cells].to(r.device)
        im = torch.randperm(len(q), generator=gen)[:max_cells].to(q.device)
        rs, qs, ys_km, ys_mk = r[ik], q[im], y_km[im], y_mk[ik]
        r_mean = rs.mean(0)
        rs_unit = unit_norm_rows(rs - r_mean)
        cost0 = 1.0 - a[ik] @ ys_km.t()
        cost = cost0
        for _ in range(rounds):
            plan = sinkhorn(cost, rel_eps * float(cost.std()), 200)
            fwd, back = plan / plan.sum(1, keepdim=True), (plan / plan.sum(0)).t()
            fit_km = ridge_gcv(rs, fwd @ ys_km)  # k's input -> m's linked features
            fit_in = ridge_gcv(qs, back @ rs)  # m's input -> k's input
            cost = (cost0 + 1.0 - centred_unit_norm_rows(rs @ fit_km[0] + fit_km[1]) @ ys_km.t()
                    + 1.0 - rs_unit @ unit_norm_rows(qs @ fit_in[0] + fit_in[1] - r_mean).t())
        fit_mk = ridge_gcv(qs, back @ ys_mk)  # m's input -> k's linked features: m's link target only
        out[(k, link_target_key(m))] = centred_unit_norm_rows(r @ fit_km[0] + fit_km[1]).float()
        out[(m, link_target_key(k))] = centred_unit_norm_rows(q @ fit_mk[0] + fit_mk[1]).float()
        out[(k, match_input_key(m))] = unit_norm_rows(r - r_mean).float()
        out[(m, match_input_key(k))] = unit_norm_rows(q @ fit_in[0] + fit_in[1] - r_mean).float()
        trained.add((k, m))
    return out, trained
