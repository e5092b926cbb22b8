r"""Bayesian differential expression from a trained scVI-family model (Lopez et al. 2018;
Boyeau et al. 2019), with scvi-tools' ``differential_expression`` semantics.

**Posterior samples.**  For each population :math:`P` (cells ``idx``) draw ``n_samples``
samples of the normalized expression :math:`\rho = f(z, s)` from the population's
aggregate posterior: a cell :math:`n` of :math:`P` uniformly at random, then
:math:`z \sim q(z \mid x_n)` and :math:`\rho = f(z, s)` with :math:`s` the cell's observed
batch (``batch_correction=False``) or, with ``batch_correction=True``, each batch of
``batchid`` in turn (``n_samples / |batchid|`` draws per batch).  ``weights="importance"``
resamples these draws by importance weights (see :func:`importance_weights`) so they
follow the model's true aggregate posterior rather than the variational one.
Draws of group 1 and group 2 are paired (within batch when both groups are conditioned
on the same batches); ``use_permutation`` draws ``m_permutation`` random pairs instead.

**vanilla** (Lopez et al. 2018): per gene :math:`p_1 = P(\rho^1 > \rho^2)` (``proba_m1``),
:math:`p_2 = 1 - p_1` and ``bayes_factor`` :math:`= \log(p_1+\epsilon) - \log(p_2+\epsilon)`,
:math:`\epsilon = 10^{-8}`; rows sorted by ``bayes_factor`` (signed) descending.

**change** (Boyeau et al. 2019): per gene
:math:`\mathrm{LFC} = \log_2(\rho^1 + c) - \log_2(\rho^2 + c)` with pseudocount
:math:`c` (``pseudocounts``), and

* ``test_mode="three"`` (default): :math:`p_{DE} = \max\{P(\mathrm{LFC} \ge \delta),
  P(\mathrm{LFC} < -\delta)\}` (up and down regulation are separate alternatives);
* ``test_mode="two"``: :math:`p_{DE} = P(|\mathrm{LFC}| \ge \delta)`, boundary as above;

``bayes_factor`` :math:`= \log(p_{DE}+\epsilon) - \log(1-p_{DE}+\epsilon)`; rows sorted by
``proba_de`` descending.  ``pseudocounts=None`` estimates :math:`c` from the data
(:func:`estimate_pseudocounts`): the 0.9-quantile, over genes whose mean raw count in a
group is below ``threshold_counts``, of the largest posterior scale drawn for that gene in
that group (the larger of the two groups' values, at least :math:`10^{-5}`); it shrinks the
LFC of genes that are not expressed towards 0.  ``delta=None`` estimates :math:`\delta`
from a 3-component Gaussian mixture on the per-gene LFC means (:func:`estimate_delta`).
The reported ``lfc_mean/median/std/min/max`` summarize the LFC computed with
:math:`10^{-3} c` (as scvi-tools does), so they are close to the pseudocount-free LFC.

``is_de_fdr_<t>`` (change mode) marks the largest set of genes, taken by decreasing
:math:`p_{DE}`, whose posterior expected false discovery proportion
:math:`\frac1k\sum_{i\le k}(1-p_{(i)})` is at most ``fdr_target``.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from ..data.keys import Keys
from ..data.validate import get_matrix

logger = logging.getLogger("scprob")

_EPS = 1e-8


# ------------------------------------------------------------------ pure statistics
def fdr_de_prediction(p_de: np.ndarray, fdr_target: float) -> np.ndarray:
    """Boolean DE calls: the longest prefix (genes by decreasing ``p_de``) whose mean
    ``1 - p_de`` (posterior expected FDR) is at most ``fdr_target``."""
    p_de = np.asarray(p_de, dtype=float)
    order = np.argsort(-p_de, kind="stable")
    expected_fdr = np.cumsum(1.0 - p_de[order]) / np.arange(1, p_de.size + 1)
    is_de = np.zeros(p_de.size, dtype=bool)
    is_de[order[: int((expected_fdr <= fdr_target).sum())]] = True
    return is_de


def estimate_pseudocounts(scales1: np.ndarray, scales2: np.ndarray, zero1: np.ndarray, zero2: np.ndarray,
                          quantile: float = 0.9, floor: float = 1e-5) -> float:
    r"""Pseudocount :math:`c` shrinking the LFC of non-expressed genes to 0.

    For group :math:`g`, :math:`c_g` is the ``quantile`` over the genes flagged in ``zero_g``
    (no or almost no observed counts in :math:`g`) of :math:`\max_s \rho^g_{s,\mathrm{gene}}`,
    the largest posterior scale drawn for the gene (``floor`` when no gene is flagged);
    :math:`c = \max(c_1, c_2, \text{floor})`.  A scale below :math:`c` is then an artefact of
    the decoder, not expression, and no longer drives the fold change.
    """
    def one(scales: np.ndarray, zero: np.ndarray) -> float:
        zero = np.asarray(zero, dtype=bool)
        if zero.shape != (scales.shape[1],):
            raise ValueError(f"zero mask has shape {zero.shape}, expected ({scales.shape[1]},)")
        return float(np.quantile(scales.max(0)[zero], quantile)) if zero.any() else floor

    return max(one(scales1, zero1), one(scales2, zero2), floor)


def estimate_delta(lfc_means: np.ndarray, coef: float = 0.6, min_thres: float = 0.1, seed: int = 0) -> float:
    r""":math:`\delta = \max(\text{min\_thres}, \text{coef}\cdot\frac{|m_{low}| + |m_{high}|}{2})`
    with :math:`m_{low}, m_{high}` the lowest and highest means of a 3-component Gaussian
    mixture fitted to the per-gene LFC means (down, null and up genes)."""
    from sklearn.mixture import GaussianMixture

    lfc_means = np.asarray(lfc_means, dtype=float)
    if lfc_means.ndim != 1:
        raise ValueError(f"lfc_means must be 1-d (one value per gene), got shape {lfc_means.shape}")
    gmm = GaussianMixture(n_components=3, random_state=seed).fit(lfc_means[:, None])
    means = np.sort(gmm.means_.ravel())
    return float(max(min_thres, coef * np.abs(means[[0, -1]]).mean()))


def credible_interval(samples: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Highest-posterior-density interval per column: the narrowest window holding a
    ``level`` fraction of the sorted samples."""
    if not 0 <= level < 1:
        raise ValueError(f"credible interval level must be in [0, 1), got {level}")
    s = np.sort(samples, 0)
    n = s.shape[0]
    k = int(np.floor(level * n))
    width = s[k:] - s[: n - k]
    lo = np.argmin(width, 0)
    cols = np.arange(s.shape[1])
    return s[lo, cols], s[lo + k, cols]


def bayes_factors(scales1: np.ndarray, scales2: np.ndarray, mode: Literal["vanilla", "change"] = "change",
                  delta: float | None = 0.25, pseudocounts: float | None = 0.0,
                  test_mode: Literal["two", "three"] = "three",
                  cred_interval_lvls: Sequence[float] | None = None) -> dict[str, np.ndarray | float]:
    """DE statistics from paired posterior scale samples ``scales1[i]``, ``scales2[i]``
    (samples x genes); see the module docstring for the math.  ``pseudocounts`` must be a
    number here (the data-driven estimate needs raw counts: :func:`estimate_pseudocounts`)."""
    if scales1.shape != scales2.shape:
        raise ValueError(f"paired samples must have equal shapes, got {scales1.shape} and {scales2.shape}")
    if mode == "vanilla":
        p1 = (scales1 > scales2).mean(0)
        return dict(proba_m1=p1, proba_m2=1.0 - p1, bayes_factor=np.log(p1 + _EPS) - np.log(1.0 - p1 + _EPS),
                    scale1=scales1.mean(0), scale2=scales2.mean(0))
    if mode != "change":
        raise ValueError(f"mode must be 'vanilla' or 'change', got {mode!r}")
    if test_mode not in ("two", "three"):
        raise ValueError(f"test_mode must be 'two' or 'three', got {test_mode!r}")
    if pseudocounts is None or pseudocounts < 0:
        raise ValueError(f"pseudocounts must be a number >= 0 here, got {pseudocounts!r}")

    def lfc(c: float) -> np.ndarray:
        return np.log2(scales1 + c) - np.log2(scales2 + c)

    change = lfc(pseudocounts)
    delta_ = estimate_delta(change.mean(0)) if delta is None else float(delta)
    p_up = (change >= delta_).mean(0)
    p_down = (change < -delta_).mean(0)
    p_de = p_up + p_down if test_mode == "two" else np.maximum(p_up, p_down)
    summary = lfc(1e-3 * pseudocounts)
    res: dict[str, np.ndarray | float] = dict(
        proba_de=p_de, proba_not_de=1.0 - p_de,
        bayes_factor=np.log(p_de + _EPS) - np.log(1.0 - p_de + _EPS),
        scale1=scales1.mean(0), scale2=scales2.mean(0), pseudocounts=float(pseudocounts), delta=delta_,
        lfc_mean=summary.mean(0), lfc_median=np.median(summary, 0), lfc_std=summary.std(0),
        lfc_min=summary.min(0), lfc_max=summary.max(0),
    )
    for level in cred_interval_lvls or []:
        lo, hi = credible_interval(summary, level)
        tag = str(level)[:5]
        res[f"lfc_confidence_interval_{tag}_min"], res[f"lfc_confidence_interval_{tag}_max"] = lo, hi
    return res


# ------------------------------------------------------------- posterior sampling
@torch.inference_mode()
def _draws(model, adata, rows: np.ndarray, code: int | None, batch_size: int,
           keep_params: bool = False) -> dict[str, torch.Tensor]:
    """One posterior draw per entry of ``rows`` (cell positions, repeats allowed):
    ``scale`` (draws x genes) decoded with batch ``code`` (None: the cell's own); with
    ``keep_params`` also the untransformed latent ``u`` and the decoder's ``log_scale``,
    ``theta``, ``dropout`` (for importance weights)."""
    store = model._store(adata)
    module = model.module
    module.eval()
    out: dict[str, list[torch.Tensor]] = {"scale": []}
    if keep_params:
        out |= {"u": [], "log_scale": [], "theta": [], "dropout": []}
    for start in range(0, rows.size, batch_size):
        tensors = store[torch.as_tensor(rows[start : start + batch_size])]
        inf = module.inference(**module._get_inference_input(tensors))
        if keep_params:
            # z = z_transform(u), u ~ q(z|x): keep u for the density terms
            u = inf["qz"].sample()
            inf = dict(inf, z=module.z_encoder.z_transform(u))
        gen = module.generative(**module._get_generative_input(tensors, inf), transform_batch=code)
        out["scale"].append(gen["px_scale"].cpu())
        if keep_params:
            n = u.shape[0]
            out["u"].append(u.cpu())
            out["log_scale"].append(gen["px_scale"].log().cpu())
            out["theta"].append(gen["px_r"].exp().expand(n, -1).cpu())
            d = gen["px_dropout"]
            out["dropout"].append(d.expand(n, -1).cpu() if d is not None else torch.zeros(n, 1))
    return {k: torch.cat(v) for k, v in out.items()}


@torch.inference_mode()
def importance_weights(model, adata, cells: np.ndarray, draws: dict[str, torch.Tensor], max_cells: int = 1024,
                       truncation: bool = False, n_mc_samples: int = 500, n_mc_samples_per_pass: int = 250,
                       rng: np.random.Generator | None = None, chunk: int = 64) -> np.ndarray:
    r"""Self-normalized importance weights of posterior draws :math:`u_s` of one population.

    With anchor cells :math:`a` (at most ``max_cells`` of the population, ``cells``),

    .. math::
        w_s \propto \frac{\sum_a p(u_s)\, p(x_a \mid u_s) / \hat p(x_a)}{\sum_a q(u_s \mid x_a)}
        = \frac{\sum_a p(u_s \mid x_a)}{\sum_a q(u_s \mid x_a)},

    the ratio of the model's aggregate posterior of the population to the variational one
    the draws come from; :math:`\hat p(x_a)` is the importance-sampled marginal likelihood
    (``n_mc_samples``), :math:`p(x_a \mid u_s)` uses the draw's decoder output with the
    anchor's observed library size.  ``truncation`` caps each weight at
    :math:`\bar w \sqrt{S}` (truncated importance sampling, Ionides 2008).
    """
    rng = rng or np.random.default_rng(0)
    module = model.module
    store = model._store(adata)
    anchors = rng.choice(cells, max_cells, replace=False) if cells.size > max_cells else cells
    t = store[torch.as_tensor(anchors)]
    x = t[Keys.X].float()
    log_px = module.marginal_ll(t, n_mc_samples=n_mc_samples, n_mc_samples_per_pass=n_mc_samples_per_pass).cpu()
    qz = module.inference(**module._get_inference_input(t))["qz"]
    loc, scale = qz.loc.cpu(), qz.scale.cpu()
    x, log_lib = x.cpu(), torch.log(x.sum(-1, keepdim=True).clamp_min(1.0)).cpu()
    builder = module.likelihood["builder"]
    prior = torch.distributions.Normal(0.0, 1.0)
    log_w = []
    for s in range(0, draws["u"].shape[0], chunk):
        u = draws["u"][s : s + chunk]  # (c, L)
        log_q = torch.distributions.Normal(loc[None], scale[None]).log_prob(u[:, None]).sum(-1)  # (c, A)
        px = builder(log_mu=log_lib[None] + draws["log_scale"][s : s + chunk, None],
                     theta=draws["theta"][s : s + chunk, None], zi_logits=draws["dropout"][s : s + chunk, None],
                     scale=draws["log_scale"][s : s + chunk, None].exp())
        log_pxz = px.log_prob(x[None]).sum(-1)  # (c, A)
        log_pz = prior.log_prob(u).sum(-1, keepdim=True)
        log_w.append(torch.logsumexp(log_pz + log_pxz - log_px[None], 1) - torch.logsumexp(log_q, 1))
    lw = torch.cat(log_w).double()
    if truncation:
        cap = torch.logsumexp(lw, 0) - np.log(lw.numel()) + 0.5 * np.log(lw.numel())
        lw = torch.minimum(lw, cap)
    p = torch.softmax(lw, 0).numpy()
    return p / p.sum()


def _sample_population(model, adata, cells: np.ndarray, codes: list[int | None], n_samples: int,
                       weights: str, iw_kwargs: dict, batch_size: int,
                       rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n_samples`` scale draws of a population, split evenly over ``codes``; returns the
    draws and the batch code (-1: observed batch) of each."""
    per_code = n_samples // len(codes)
    if per_code == 0:
        warnings.warn(f"n_samples={n_samples} is below the number of batches ({len(codes)}); using 2 draws per batch",
                      UserWarning, stacklevel=4)
        per_code = 2
    scales, batch = [], []
    for code in codes:
        if weights == "uniform":
            rows = rng.choice(cells, per_code)
            s = _draws(model, adata, rows, code, batch_size)["scale"].numpy()
        else:
            # a pool of draws from the variational aggregate posterior, resampled by weight
            pool = np.repeat(cells, per_code // cells.size + 1) if cells.size <= per_code else \
                rng.choice(cells, per_code, replace=False)
            d = _draws(model, adata, pool, code, batch_size, keep_params=True)
            p = importance_weights(model, adata, cells, d, rng=rng, **iw_kwargs)
            s = d["scale"].numpy()[rng.choice(pool.size, per_code, p=p)]
        scales.append(s)
        batch.append(np.full(per_code, -1 if code is None else code))
    return np.concatenate(scales), np.concatenate(batch)


def _pairs(s1, b1, s2, b2, batch_correction: bool, use_permutation: bool, m_permutation: int,
           rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Pair draws of the two groups: within batch when both are conditioned on the same
    batches, else across; ``use_permutation``: ``m_permutation`` random pairs."""
    def pair(a, b, m):
        if use_permutation:
            return a[rng.integers(0, len(a), m)], b[rng.integers(0, len(b), m)]
        n = min(len(a), len(b))
        return a[:n], b[:n]

    set1, set2 = set(np.unique(b1)), set(np.unique(b2))
    if batch_correction and set1 == set2:
        out = [pair(s1[b1 == b], s2[b2 == b], max(m_permutation // len(set1), 1)) for b in sorted(set1)]
        return np.concatenate([o[0] for o in out]), np.concatenate([o[1] for o in out])
    if batch_correction and set1 & set2:
        warnings.warn("batchid1 and batchid2 differ but overlap: draws are paired across batches, so the "
                      "batch correction is not trustworthy; pass equal or disjoint batch lists.",
                      UserWarning, stacklevel=4)
    return pair(s1, s2, m_permutation)


# ----------------------------------------------------------------- raw statistics
def _counts(model, adata, cells: np.ndarray):
    reg = model._registry_of(adata)
    if reg.get("minified"):
        return None
    return sp.csr_matrix(get_matrix(adata, reg["setup_args"]["layer"])[np.sort(cells)])


def _raw_stats(model, adata, idx1: np.ndarray, idx2: np.ndarray) -> dict[str, np.ndarray]:
    """Per-gene raw-count summaries of each group: mean count, fraction of cells with a
    non-zero count, and mean count after scaling each cell to 10^4 total counts (NaN when
    the AnnData is minified)."""
    n_genes = len(model._registry_of(adata)["var_names"])
    res = {}
    for k, idx in (("1", idx1), ("2", idx2)):
        X = _counts(model, adata, idx)
        if X is None:
            nan = np.full(n_genes, np.nan)
            res |= {f"raw_mean{k}": nan, f"non_zeros_proportion{k}": nan, f"raw_normalized_mean{k}": nan}
            continue
        lib = np.asarray(X.sum(1)).ravel()
        norm = sp.diags(1e4 / np.where(lib > 0, lib, np.inf)) @ X
        res |= {
            f"raw_mean{k}": np.asarray(X.mean(0)).ravel(),
            f"non_zeros_proportion{k}": np.asarray((X != 0).mean(0)).ravel(),
            f"raw_normalized_mean{k}": np.asarray(norm.mean(0)).ravel(),
        }
    return {k: res[k] for k in ("raw_mean1", "raw_mean2", "non_zeros_proportion1", "non_zeros_proportion2",
                                "raw_normalized_mean1", "raw_normalized_mean2")}


def _filter_outliers(model, adata, cells: np.ndarray) -> np.ndarray:
    """Cells of a group that an elliptic envelope (robust Gaussian fit) on their latent
    means keeps as inliers; all of them if the covariance cannot be estimated."""
    from sklearn.covariance import EllipticEnvelope

    z = model.get_latent_representation(adata, indices=cells)
    try:
        keep = EllipticEnvelope(random_state=0).fit_predict(z) == 1
    except ValueError:
        warnings.warn("filter_outlier_cells: could not estimate the latent covariance; using all cells",
                      UserWarning, stacklevel=4)
        return cells
    return cells[keep]


# ---------------------------------------------------------------- group selection
def _as_indices(sel, adata, name: str) -> np.ndarray:
    """Boolean mask (n_obs), integer positions, or an ``adata.obs.query`` string -> positions."""
    if isinstance(sel, str):
        try:
            mask = adata.obs.index.isin(adata.obs.query(sel).index)
        except Exception as err:  # pandas raises many types for a bad query
            raise ValueError(f"{name}={sel!r} is not a valid adata.obs query: {err}") from err
        return np.flatnonzero(mask)
    arr = np.asarray(sel).ravel()
    if arr.dtype == bool:
        if arr.size != adata.n_obs:
            raise ValueError(f"{name} is a boolean mask of length {arr.size}, but adata has {adata.n_obs} cells")
        return np.flatnonzero(arr)
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must be a boolean mask, integer positions or a query string, got dtype {arr.dtype}")
    if arr.size and (arr.min() < -adata.n_obs or arr.max() >= adata.n_obs):
        raise ValueError(f"{name} has positions outside [0, {adata.n_obs})")
    return np.unique(np.arange(adata.n_obs)[arr])


def _batch_codes(model, batchid, name: str) -> list[int]:
    cats = [str(c) for c in model.registry["batch_categories"]]
    if batchid is None:
        return list(range(len(cats)))
    ids = [batchid] if isinstance(batchid, (str, int, np.integer)) else list(batchid)
    bad = [b for b in ids if str(b) not in cats]
    if bad:
        raise ValueError(f"{name} {bad} are not batches of this model; batches: {cats}")
    return sorted({cats.index(str(b)) for b in ids})


def _comparisons(adata, groupby, group1, group2, idx1, idx2):
    """(cells1, cells2, name1, name2) for each comparison, scvi-tools' rules: ``idx1``
    (``idx2`` or the rest) overrides groups; each ``group1`` entry vs ``group2`` or the rest;
    ``group1=None``: every category vs the rest."""
    if idx1 is not None:
        c1 = _as_indices(idx1, adata, "idx1")
        if idx2 is None:
            return [(c1, np.setdiff1d(np.arange(adata.n_obs), c1), "idx1", "Rest")]
        return [(c1, _as_indices(idx2, adata, "idx2"), "idx1", "idx2")]
    if idx2 is not None:
        raise ValueError("idx2 needs idx1")
    if groupby is None:
        raise ValueError("pass groupby (an adata.obs column) or idx1/idx2 (cell masks or positions)")
    if groupby not in adata.obs.columns:
        raise ValueError(f"groupby {groupby!r} is not a column of adata.obs")
    col = adata.obs[groupby]
    labels = col.astype(str).to_numpy()
    cats = list(col.astype("category").cat.categories)
    known = {str(c) for c in cats}

    def check(g):
        names = [g] if isinstance(g, str) or not isinstance(g, Sequence) else list(g)
        bad = [x for x in names if str(x) not in known]
        if bad:
            raise ValueError(f"group(s) {bad} not found in adata.obs[{groupby!r}] (groups: {[str(c) for c in cats][:20]})")
        return names

    if group1 is None:
        if len(cats) < 2:
            raise ValueError(f"adata.obs[{groupby!r}] has a single group: nothing to compare")
        group1 = cats
    g1s = check(group1)
    if group2 is None:
        cells2, name2 = None, "Rest"
    else:
        g2 = check(group2)
        cells2 = np.flatnonzero(np.isin(labels, [str(x) for x in g2]))
        name2 = ",".join(map(str, g2)) if isinstance(group2, (list, tuple)) else group2
    out = []
    for g in g1s:
        c1 = np.flatnonzero(labels == str(g))
        out.append((c1, np.flatnonzero(labels != str(g)) if cells2 is None else cells2, g, name2))
    return out


# ------------------------------------------------------------------------- entry
def differential_expression(
    model, adata, groupby: str | None = None, group1=None, group2=None, idx1=None, idx2=None,
    mode: Literal["vanilla", "change"] = "vanilla", delta: float | None = 0.25, batch_size: int | None = None,
    all_stats: bool = True, batch_correction: bool = False, batchid1=None, batchid2=None,
    fdr_target: float = 0.05, silent: bool = False, weights: Literal["uniform", "importance"] | None = "uniform",
    filter_outlier_cells: bool = False, importance_weighting_kwargs: dict | None = None, n_samples: int = 5000,
    use_permutation: bool = False, m_permutation: int = 10000, pseudocounts: float | None = None,
    threshold_counts: float = 0.01, test_mode: Literal["two", "three"] = "three",
    cred_interval_lvls: Sequence[float] | None = None, seed: int | None = 0,
) -> pd.DataFrame:
    """See :meth:`scprob.models.SCVI.differential_expression` and the module docstring."""
    if mode not in ("vanilla", "change"):
        raise ValueError(f"mode must be 'vanilla' or 'change', got {mode!r}")
    if test_mode not in ("two", "three"):
        raise ValueError(f"test_mode must be 'two' or 'three', got {test_mode!r}")
    weights = weights or "uniform"
    if weights not in ("uniform", "importance"):
        raise ValueError(f"weights must be 'uniform' or 'importance', got {weights!r}")
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    if pseudocounts is not None and pseudocounts < 0:
        raise ValueError(f"pseudocounts must be >= 0 or None (estimated), got {pseudocounts}")
    reg = model._registry_of(adata)
    if not batch_correction and (batchid1 is not None or batchid2 is not None):
        raise ValueError("batchid1/batchid2 choose the batches to decode with: they need batch_correction=True")
    if weights == "importance" and reg.get("minified"):
        raise ValueError("weights='importance' needs the counts, but this AnnData is minified (X was dropped)")
    codes1: list[int | None] = _batch_codes(model, batchid1, "batchid1") if batch_correction else [None]
    codes2: list[int | None] = _batch_codes(model, batchid2, "batchid2") if batch_correction else [None]
    iw_kwargs = dict(importance_weighting_kwargs or {})
    bs = batch_size or 1024
    rng = np.random.default_rng(seed)
    comparisons = _comparisons(adata, groupby, group1, group2, idx1, idx2)
    devices = [model.device] if model.device.type == "cuda" else []
    frames = []
    with torch.random.fork_rng(devices=devices):
        if seed is not None:
            torch.manual_seed(seed)
        for cells1, cells2, name1, name2 in comparisons:
            if cells1.size == 0 or cells2.size == 0:
                raise ValueError(f"empty group in comparison {name1} vs {name2} "
                                 f"({cells1.size} and {cells2.size} cells)")
            if not silent:
                logger.info("DE %s vs %s (%d vs %d cells, mode=%s)", name1, name2, cells1.size, cells2.size, mode)
            f1 = _filter_outliers(model, adata, cells1) if filter_outlier_cells else cells1
            f2 = _filter_outliers(model, adata, cells2) if filter_outlier_cells else cells2
            s1, b1 = _sample_population(model, adata, f1, codes1, n_samples, weights, iw_kwargs, bs, rng)
            s2, b2 = _sample_population(model, adata, f2, codes2, n_samples, weights, iw_kwargs, bs, rng)
            mean1, mean2 = s1.mean(0), s2.mean(0)
            p1, p2 = _pairs(s1, b1, s2, b2, batch_correction, use_permutation, m_permutation, rng)
            pc = pseudocounts
            if mode == "change" and pc is None:
                X1, X2 = _counts(model, adata, f1), _counts(model, adata, f2)
                if X1 is None:
                    logger.warning("pseudocounts cannot be estimated on a minified AnnData (no counts): using 1e-5")
                    pc = 1e-5
                else:
                    zero1 = np.asarray(X1.mean(0)).ravel() < threshold_counts
                    zero2 = np.asarray(X2.mean(0)).ravel() < threshold_counts
                    pc = estimate_pseudocounts(p1, p2, zero1, zero2)
            res = bayes_factors(p1, p2, mode, delta, pc, test_mode, cred_interval_lvls)
            res["scale1"], res["scale2"] = mean1, mean2
            if all_stats:
                res |= _raw_stats(model, adata, cells1, cells2)
            df = pd.DataFrame(res, index=pd.Index(reg["var_names"], name=None))
            key = "proba_de" if mode == "change" else "bayes_factor"
            df = df.iloc[np.argsort(-df[key].to_numpy(), kind="stable")]
            if mode == "change":
                df[f"is_de_fdr_{fdr_target}"] = fdr_de_prediction(df["proba_de"].to_numpy(), fdr_target)
            df["comparison"] = f"{name1} vs {name2}"
            df["group1"], df["group2"] = name1, name2
            frames.append(df)
    return pd.concat(frames)
