r"""Differential abundance (scvi-tools' ``differential_abundance``): how dense each sample's
aggregated posterior is at every cell.

For sample :math:`s` with cells :math:`C_s` (at most ``num_cells_posterior`` of them, drawn
at random), the aggregated posterior is the equal-weight mixture of their posteriors
:math:`q(z \mid x_c) = \prod_k \mathcal N(z_k; m_{ck}, v_{ck})` (Student-t components with
``dof`` degrees of freedom when ``dof`` is given), and a cell with latent mean :math:`z`
gets

.. math:: \log \bar q_s(z) = \operatorname{logsumexp}_{c \in C_s} \log q(z \mid x_c) - \log |C_s|.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch


def aggregated_posterior_log_density(
    loc: np.ndarray, var: np.ndarray, z: np.ndarray, labels: np.ndarray, samples, index: pd.Index, batch_size: int,
    num_cells_posterior: int | None, dof: float | None, rng: np.random.Generator,
) -> pd.DataFrame:
    """Cells (rows of ``z``, named by ``index``) x ``samples``: :math:`\\log \\bar q_s(z)`.
    ``loc`` / ``var`` are the posterior means / variances of the cells whose sample is
    ``labels``; every sample must have cells there (checked before any work)."""
    members = {name: np.flatnonzero(labels == name) for name in samples}
    empty = [name for name, idx in members.items() if idx.size == 0]
    if empty:
        raise ValueError(f"samples {empty} of adata_sub have no cells in adata")
    loc, scale, z = torch.as_tensor(loc), torch.as_tensor(var).sqrt(), torch.as_tensor(z)
    cols = []
    for name in samples:
        idx = members[name]
        if num_cells_posterior is not None and num_cells_posterior < idx.size:
            idx = rng.choice(idx, num_cells_posterior, replace=False)
        comp = (torch.distributions.Normal(loc[idx], scale[idx]) if dof is None
                else torch.distributions.StudentT(dof, loc[idx], scale[idx]))
        out = []
        for start in range(0, z.shape[0], batch_size):
            lp = comp.log_prob(z[start:start + batch_size, None, :]).sum(-1)  # (cells, components)
            out.append(torch.logsumexp(lp, dim=1) - np.log(idx.size))
        cols.append(torch.cat(out).numpy())
    return pd.DataFrame(np.stack(cols, axis=1), index=index, columns=samples)
