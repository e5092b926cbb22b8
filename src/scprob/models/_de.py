r"""Bayesian differential expression from a trained scVI-family model (Lopez et al. 2018;
Boyeau et al. 2019).

For groups A and B, draw ``n_samples`` cells from each (with replacement) and, for each,
one posterior sample of the normalized expression :math:`\rho = f(z)`,
:math:`z \sim q(z \mid x)` (averaged over batches when ``batch_correction``).  Pair the
draws at random and, per gene,

* ``vanilla``: :math:`p_1 = P(\rho^A > \rho^B)`, Bayes factor :math:`\log p_1 - \log(1-p_1)`;
* ``change``: :math:`\mathrm{LFC} = \log_2(\rho^A + \epsilon) - \log_2(\rho^B + \epsilon)`,
  :math:`p_{DE} = P(|\mathrm{LFC}| \ge \delta)`, Bayes factor :math:`\log p_{DE} - \log(1-p_{DE})`.

``is_de_fdr_<t>`` marks the largest set of genes, taken by decreasing :math:`p_{DE}`,
whose posterior expected false discovery proportion :math:`\frac1k\sum_{i\le k}(1-p_i)`
is at most ``fdr_target``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from ..data.validate import get_matrix


def fdr_de_prediction(p_de: np.ndarray, fdr_target: float) -> np.ndarray:
    order = np.argsort(-p_de, kind="stable")
    expected_fdr = np.cumsum(1.0 - p_de[order]) / np.arange(1, p_de.size + 1)
    ok = np.flatnonzero(expected_fdr <= fdr_target)
    is_de = np.zeros(p_de.size, dtype=bool)
    if ok.size:
        is_de[order[: ok[-1] + 1]] = True
    return is_de


@torch.inference_mode()
def _scale_samples(model, adata, cells: np.ndarray, codes: list[int | None], batch_size: int = 1024) -> np.ndarray:
    store = model._store(adata)
    module = model.module
    module.eval()
    out = []
    for start in range(0, cells.size, batch_size):
        tensors = store[torch.as_tensor(cells[start : start + batch_size])]
        inf = module.inference(**module._get_inference_input(tensors))
        gen_in = module._get_generative_input(tensors, inf)
        acc = sum(module.generative(**gen_in, transform_batch=c)["px_scale"] for c in codes) / len(codes)
        out.append(acc.cpu().numpy())
    return np.concatenate(out)


def _raw_stats(model, adata, idx: np.ndarray) -> dict[str, np.ndarray]:
    reg = model._registry_of(adata)
    n_genes = len(reg["var_names"])
    if reg.get("minified"):
        nan = np.full(n_genes, np.nan)
        return dict(raw_mean=nan, non_zeros_proportion=nan, raw_normalized_mean=nan)
    X = get_matrix(adata, reg["setup_args"]["layer"])[np.sort(idx)]
    X = sp.csr_matrix(X)
    lib = np.asarray(X.sum(1)).ravel()
    norm = sp.diags(1e4 / np.maximum(lib, 1e-12)) @ X
    return dict(
        raw_mean=np.asarray(X.mean(0)).ravel(),
        non_zeros_proportion=np.asarray((X > 0).mean(0)).ravel(),
        raw_normalized_mean=np.asarray(norm.mean(0)).ravel(),
    )


def _one_comparison(model, adata, idx1, idx2, name1, name2, mode, delta, batch_correction, fdr_target,
                    n_samples, pseudocount, rng) -> pd.DataFrame:
    reg = model._registry_of(adata)
    if batch_correction:
        b = model._store(adata).tensors["batch"].cpu().numpy().ravel()
        codes = sorted(set(b[idx1]) | set(b[idx2]))
    else:
        codes = [None]
    s1 = _scale_samples(model, adata, rng.choice(idx1, n_samples), codes)
    s2 = _scale_samples(model, adata, rng.choice(idx2, n_samples), codes)
    s2 = s2[rng.permutation(n_samples)]
    eps = pseudocount if pseudocount is not None else 0.01 / s1.shape[1]
    lfc = np.log2(s1 + eps) - np.log2(s2 + eps)
    tiny = 1e-8
    if mode == "vanilla":
        p1 = (s1 > s2).mean(0)
        p_de = np.maximum(p1, 1 - p1)
        res = dict(proba_m1=p1, proba_m2=1 - p1, bayes_factor=np.log(p1 + tiny) - np.log(1 - p1 + tiny))
    else:
        p_de = (np.abs(lfc) >= delta).mean(0)
        res = dict(proba_de=p_de, proba_not_de=1 - p_de, bayes_factor=np.log(p_de + tiny) - np.log(1 - p_de + tiny))
    res |= dict(
        scale1=s1.mean(0), scale2=s2.mean(0),
        lfc_mean=lfc.mean(0), lfc_median=np.median(lfc, 0), lfc_std=lfc.std(0), lfc_min=lfc.min(0), lfc_max=lfc.max(0),
    )
    r1, r2 = _raw_stats(model, adata, idx1), _raw_stats(model, adata, idx2)
    for k in r1:
        res[f"{k}1"], res[f"{k}2"] = r1[k], r2[k]
    res[f"is_de_fdr_{fdr_target}"] = fdr_de_prediction(p_de, fdr_target)
    df = pd.DataFrame(res, index=pd.Index(reg["var_names"], name="gene"))
    df["comparison"] = f"{name1} vs {name2}"
    df["group1"], df["group2"] = name1, name2
    return df.sort_values("bayes_factor", ascending=False, key=lambda s: s.abs() if mode == "vanilla" else s)


def differential_expression(model, adata, groupby: str, group1=None, group2=None, mode: str = "vanilla",
                            delta: float = 0.25, batch_correction: bool = False, fdr_target: float = 0.05,
                            n_samples: int = 5000, pseudocount: float | None = None, seed: int = 0) -> pd.DataFrame:
    if mode not in ("vanilla", "change"):
        raise ValueError(f"mode must be 'vanilla' or 'change', got {mode!r}")
    if groupby not in adata.obs.columns:
        raise ValueError(f"groupby {groupby!r} is not a column of adata.obs")
    labels = adata.obs[groupby].astype(str).to_numpy()
    groups = list(pd.unique(labels))
    rng = np.random.default_rng(seed)

    def cells(g):
        names = [g] if isinstance(g, str) else [str(x) for x in g]
        unknown = [x for x in names if x not in groups]
        if unknown:
            raise ValueError(f"group(s) {unknown} not found in adata.obs[{groupby!r}] (groups: {groups[:20]})")
        return np.flatnonzero(np.isin(labels, names)), ",".join(names)

    if group1 is None:
        if group2 is not None:
            raise ValueError("group2 needs group1")
        pairs = [(g, None) for g in groups]
    else:
        pairs = [(group1, group2)]
    frames = []
    for g1, g2 in pairs:
        idx1, n1 = cells(g1)
        if g2 is None:
            idx2, n2 = np.flatnonzero(~np.isin(labels, [n1] if isinstance(g1, str) else list(g1))), "rest"
        else:
            idx2, n2 = cells(g2)
        if idx1.size == 0 or idx2.size == 0:
            raise ValueError(f"empty group in comparison {n1} vs {n2}")
        frames.append(_one_comparison(model, adata, idx1, idx2, n1, n2, mode, delta, batch_correction,
                                      fdr_target, n_samples, pseudocount, rng))
    return pd.concat(frames)
