"""Guidance graphs from genomic coordinates (GLUE-style multi-omics integration).

Reads gene coordinates from a GTF file, parses peak coordinates from names such as
``chr1:100-600``, and links every gene to the features (peaks, ...) of other omics that
overlap its regulatory region or lie within a given distance of it. The result is a
``networkx.MultiDiGraph`` whose edges carry ``weight`` in (0, 1], ``sign`` (+1/-1) and
``type`` ("fwd" gene -> feature, "rev" feature -> gene, "loop" self-loop). All coordinates
are BED-style: 0-based, half-open ``[chromStart, chromEnd)``.
"""

from __future__ import annotations

import gzip
import re
import sys
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .validate import DataError

if TYPE_CHECKING:
    import networkx

__all__ = [
    "as_edge_table",
    "check_graph",
    "dist_power_decay",
    "genomic_coordinates",
    "get_gene_annotation",
    "parse_peak_names",
    "read_gtf",
    "rna_anchored_guidance_graph",
]

COORD_COLS = ["chrom", "chromStart", "chromEnd"]
_STRANDS = {"+", "-", "."}
_ATTR_RE = re.compile(r'\s*([^\s";]+)\s+(?:"([^"]*)"|([^\s;]+))\s*(?:;|$)')
_PEAK_RE = re.compile(r"^(?P<chrom>.+)[:_-](?P<start>\d+)[_-](?P<end>\d+)$")
_LEVELS = ("error", "warn", "ignore")


def _first(names: Iterable, n: int = 5) -> str:
    """The first ``n`` names, quoted, for error messages."""
    names = list(names)
    shown = ", ".join(repr(str(x)) for x in names[:n])
    return shown + (", ..." if len(names) > n else "")


def _parse_attributes(text: str) -> dict[str, str]:
    """``key "value";`` pairs of a GTF 9th column; the first occurrence of a key wins."""
    out: dict[str, str] = {}
    for m in _ATTR_RE.finditer(text):
        out.setdefault(m.group(1), m.group(2) if m.group(2) is not None else m.group(3))
    return out


def read_gtf(
    path: str | Path, feature: str = "gene", attributes: Sequence[str] = ("gene_id", "gene_name", "gene_type")
) -> pd.DataFrame:
    """Read the rows of one feature type from a GTF file (plain or gzip-compressed).

    Returns columns ``chrom, chromStart, chromEnd, strand`` converted from GTF's 1-based
    closed coordinates to 0-based half-open ones (``chromStart = start - 1``,
    ``chromEnd = end``), plus each requested attribute found in at least one kept row
    (rows lacking it hold NaN).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"GTF file {str(path)!r} does not exist.")
    with open(path, "rb") as fh:
        compressed = fh.read(2) == b"\x1f\x8b"
    opener = gzip.open if compressed else open
    rows, line_nos, types_seen = [], [], set()
    with opener(path, "rt", encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip() or line.startswith("#"):
                continue
            fields = line.rstrip("\r\n").split("\t")
            if len(fields) < 9:
                raise DataError(
                    f"GTF {str(path)!r} line {line_no}: expected 9 tab-separated fields, found {len(fields)}: {line[:80]!r}"
                )
            types_seen.add(fields[2])
            if fields[2] == feature:
                rows.append((fields[0], fields[3], fields[4], fields[6], fields[8]))
                line_nos.append(line_no)
    if not rows:
        raise DataError(
            f"GTF {str(path)!r} has no rows of feature type {feature!r} (types found: {_first(sorted(types_seen), 10)})."
        )
    df = pd.DataFrame(rows, columns=["chrom", "start", "end", "strand", "attributes"])
    line_nos = np.asarray(line_nos)
    for col in ("start", "end"):
        num = pd.to_numeric(df[col], errors="coerce")
        bad = num.isna().to_numpy() | (num.fillna(1).to_numpy() % 1 != 0)
        if bad.any():
            i = np.flatnonzero(bad)[0]
            raise DataError(f"GTF {str(path)!r} line {line_nos[i]}: {col} coordinate {df[col].iat[i]!r} is not an integer.")
        df[col] = num.astype(np.int64)
    bad = ~df["strand"].isin(_STRANDS).to_numpy()
    if bad.any():
        i = np.flatnonzero(bad)[0]
        raise DataError(f"GTF {str(path)!r} line {line_nos[i]}: strand {df['strand'].iat[i]!r} is not '+', '-' or '.'.")
    bad = ((df["start"] < 1) | (df["end"] < df["start"])).to_numpy()
    if bad.any():
        i = np.flatnonzero(bad)[0]
        raise DataError(
            f"GTF {str(path)!r} line {line_nos[i]}: need 1 <= start <= end, got start {df['start'].iat[i]}, end {df['end'].iat[i]}."
        )
    out = pd.DataFrame(
        {"chrom": df["chrom"], "chromStart": df["start"] - 1, "chromEnd": df["end"], "strand": df["strand"]}
    )
    parsed = pd.DataFrame([_parse_attributes(a) for a in df["attributes"]], index=df.index)
    for key in attributes:
        if key in parsed.columns:
            out[key] = parsed[key]
    return out


def parse_peak_names(names: Iterable[str]) -> pd.DataFrame:
    """Parse ``chrom:start-end``, ``chrom-start-end`` or ``chrom_start_end`` peak names into a
    ``chrom, chromStart, chromEnd`` table indexed by the names (coordinates taken as given)."""
    names = pd.Index([str(x) for x in names])
    parts = names.to_series().str.extract(_PEAK_RE)
    bad = parts["chrom"].isna().to_numpy()
    if bad.any():
        raise DataError(
            f"{int(bad.sum())} of {len(names)} feature name(s) are not peak coordinates like 'chr1:100-600', "
            f"'chr1-100-600' or 'chr1_100_600': {_first(names[bad])}"
        )
    out = pd.DataFrame(
        {"chrom": parts["chrom"].to_numpy(), "chromStart": parts["start"].astype(np.int64).to_numpy(),
         "chromEnd": parts["end"].astype(np.int64).to_numpy()},
        index=names,
    )
    bad = (out["chromEnd"] <= out["chromStart"]).to_numpy()
    if bad.any():
        raise DataError(f"{int(bad.sum())} peak name(s) have end <= start: {_first(names[bad])}")
    return out


def get_gene_annotation(
    adata, gtf: str | Path | None = None, gtf_by: str = "gene_name", var_table: pd.DataFrame | None = None
) -> None:
    """Write ``chrom, chromStart, chromEnd, strand`` into ``adata.var`` for each gene.

    Coordinates come from a GTF file (genes matched on attribute ``gtf_by``; for duplicated
    names the first row wins) or from ``var_table`` (those four columns, indexed by gene
    name). Genes not found get missing values and one warning.
    """
    if (gtf is None) == (var_table is None):
        raise DataError("pass exactly one of `gtf` (a GTF file) or `var_table` (a DataFrame indexed by gene name).")
    if gtf is not None:
        table = read_gtf(gtf, feature="gene", attributes=(gtf_by,))
        if gtf_by not in table.columns:
            raise DataError(f"GTF {str(gtf)!r} gene rows have no attribute {gtf_by!r}; choose another `gtf_by`.")
        table = table.dropna(subset=[gtf_by]).set_index(gtf_by)
    else:
        missing = [c for c in [*COORD_COLS, "strand"] if c not in var_table.columns]
        if missing:
            raise DataError(f"var_table lacks column(s) {missing}; it needs chrom, chromStart, chromEnd, strand.")
        table = var_table
        _check_coords(table.dropna(subset=COORD_COLS), "var_table")
    table = table[~table.index.duplicated(keep="first")][[*COORD_COLS, "strand"]]
    found = adata.var_names.isin(table.index)
    if not found.all():
        warnings.warn(
            f"{int((~found).sum())} of {adata.n_vars} gene(s) have no coordinates in the annotation: "
            f"{_first(adata.var_names[~found])}",
            stacklevel=2,
        )
    matched = table.reindex(adata.var_names)
    adata.var["chrom"] = matched["chrom"].to_numpy(dtype=object)
    adata.var["chromStart"] = pd.array(matched["chromStart"].to_numpy(dtype=float), dtype="Int64")
    adata.var["chromEnd"] = pd.array(matched["chromEnd"].to_numpy(dtype=float), dtype="Int64")
    adata.var["strand"] = matched["strand"].to_numpy(dtype=object)


def _check_coords(df: pd.DataFrame, where: str) -> None:
    """Numeric, non-negative starts, end > start and valid strands in a coordinate table."""
    for col in ("chromStart", "chromEnd"):
        bad = pd.to_numeric(df[col], errors="coerce").isna().to_numpy()
        if bad.any():
            raise DataError(f"{where} column {col!r} is not numeric for {int(bad.sum())} feature(s): {_first(df.index[bad])}")
    start, end = df["chromStart"].to_numpy(dtype=float), df["chromEnd"].to_numpy(dtype=float)
    bad = (start < 0) | (end <= start) | (start % 1 != 0) | (end % 1 != 0)
    if bad.any():
        raise DataError(
            f"{where} has {int(bad.sum())} feature(s) with non-integer coordinates, chromStart < 0 or chromEnd <= chromStart: "
            f"{_first(df.index[bad])}"
        )
    if "strand" in df.columns:
        bad = ~df["strand"].isin(_STRANDS).to_numpy()
        if bad.any():
            raise DataError(f"{where} has {int(bad.sum())} feature(s) whose strand is not '+', '-' or '.': {_first(df.index[bad])}")


def genomic_coordinates(adata, kind: str = "auto") -> pd.DataFrame:
    """The ``chrom, chromStart, chromEnd[, strand]`` table of an AnnData's features, indexed by var_names.

    ``kind="var"`` reads the ``adata.var`` columns, ``"names"`` parses var_names as peaks,
    ``"auto"`` uses the columns when present and parses names otherwise. Features with a
    missing coordinate are dropped.
    """
    if kind not in ("auto", "var", "names"):
        raise DataError(f"kind must be 'auto', 'var' or 'names', got {kind!r}.")
    present = [c for c in COORD_COLS if c in adata.var.columns]
    if kind == "names" or (kind == "auto" and not present):
        return parse_peak_names(adata.var_names)
    if len(present) < 3:
        raise DataError(
            f"adata.var lacks column(s) {[c for c in COORD_COLS if c not in present]}; run get_gene_annotation() "
            "for genes, or pass kind='names' to parse peak names like 'chr1:100-600'."
        )
    cols = COORD_COLS + (["strand"] if "strand" in adata.var.columns else [])
    df = adata.var[cols].dropna(subset=COORD_COLS).copy()
    _check_coords(df, "adata.var")
    df["chrom"] = df["chrom"].astype(str).to_numpy(dtype=object)
    df["chromStart"] = df["chromStart"].to_numpy(dtype=float).astype(np.int64)
    df["chromEnd"] = df["chromEnd"].to_numpy(dtype=float).astype(np.int64)
    return df


def dist_power_decay(d):
    """Edge weight ``((d + 1000) / 1000) ** -0.75`` for a feature ``d`` bp from a gene's region (1 at d = 0)."""
    return ((np.asarray(d, dtype=float) + 1000.0) / 1000.0) ** -0.75


def _gene_regions(genes: pd.DataFrame, gene_region: str, promoter_len: int) -> pd.DataFrame:
    """Regulatory region of each gene as ``chrom, start, end``; strand '.' counts as '+'."""
    start, end = genes["chromStart"].to_numpy(), genes["chromEnd"].to_numpy()
    minus = (genes["strand"] == "-").to_numpy()
    tss = np.where(minus, end, start)
    if gene_region == "gene_body":
        lo, hi = start, end
    elif gene_region == "promoter":
        lo, hi = np.where(minus, tss, tss - promoter_len), np.where(minus, tss + promoter_len, tss)
    else:
        lo, hi = np.where(minus, start, start - promoter_len), np.where(minus, end + promoter_len, end)
    return pd.DataFrame({"chrom": genes["chrom"].to_numpy(dtype=str), "start": np.maximum(lo, 0), "end": hi})


def _links(regions: pd.DataFrame, feats: pd.DataFrame, extend_range: int, extend_fn: Callable):
    """(region row, feature row, weight) of every feature overlapping or within ``extend_range`` of a region."""
    peaks = pd.DataFrame(
        {"chrom": feats["chrom"].to_numpy(dtype=str), "start": feats["chromStart"].to_numpy(), "end": feats["chromEnd"].to_numpy()}
    )
    if regions.empty or peaks.empty:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0)
    import bioframe  # ~1 s to import: only when a graph is built, not with `import scprob`

    # half-open overlap excludes book-ended intervals, so pad one more base to keep distance == extend_range
    query = bioframe.expand(regions, pad=extend_range + 1) if extend_range > 0 else regions
    hits = bioframe.overlap(query, peaks, how="inner", return_index=True, return_input=False)
    gi, pi = hits["index"].to_numpy(dtype=np.int64), hits["index_"].to_numpy(dtype=np.int64)
    gs, ge = regions["start"].to_numpy()[gi], regions["end"].to_numpy()[gi]
    ps, pe = peaks["start"].to_numpy()[pi], peaks["end"].to_numpy()[pi]
    dist = np.maximum.reduce([ps - ge, gs - pe, np.zeros_like(gs)])
    keep = dist <= extend_range
    gi, pi, dist, overlapping = gi[keep], pi[keep], dist[keep], ((ps < ge) & (gs < pe))[keep]
    weight = np.ones(len(gi))
    if (~overlapping).any():
        w = np.asarray(extend_fn(dist[~overlapping]), dtype=float)
        if w.shape != dist[~overlapping].shape or not ((w > 0) & (w <= 1)).all():
            raise DataError("extend_fn must map a numpy array of distances to weights in (0, 1] of the same shape.")
        weight[~overlapping] = w
    return gi, pi, weight


def rna_anchored_guidance_graph(
    rna,
    *others,
    gene_region: str = "combined",
    promoter_len: int = 2000,
    extend_range: int = 0,
    extend_fn: Callable = dist_power_decay,
    signs: Sequence[int] | None = None,
    propagate_highly_variable: bool = True,
) -> networkx.MultiDiGraph:
    """Guidance graph linking each gene of ``rna`` to the features of ``others`` near its region.

    A gene's region is its body (``"gene_body"``), the ``promoter_len`` bp upstream of its
    TSS (``"promoter"``), or both (``"combined"``). Overlapping features get weight 1; with
    ``extend_range > 0``, features up to that many bp away get ``extend_fn(distance)``. Every
    link is added in both directions with sign ``signs[i]`` for the i-th other AnnData, and
    every vertex gets a self-loop. With ``propagate_highly_variable``, ``other.var
    ["highly_variable"]`` is set to whether a feature is linked to a highly variable gene.
    """
    if gene_region not in ("gene_body", "promoter", "combined"):
        raise DataError(f"gene_region must be 'gene_body', 'promoter' or 'combined', got {gene_region!r}.")
    if promoter_len < 0 or extend_range < 0:
        raise DataError(f"promoter_len and extend_range must be >= 0, got {promoter_len} and {extend_range}.")
    signs = [1] * len(others) if signs is None else list(signs)
    if len(signs) != len(others) or any(s not in (-1, 1) for s in signs):
        raise DataError(f"signs must hold one +1/-1 per other AnnData ({len(others)}), got {signs}.")
    seen: set[str] = set()
    for i, ad in enumerate([rna, *others]):
        names = ad.var_names
        what = "rna" if i == 0 else f"others[{i - 1}]"
        if names.has_duplicates:
            raise DataError(f"{what} has duplicated var_names: {_first(names[names.duplicated()].unique())}")
        clash = [x for x in names if x in seen]
        if clash:
            raise DataError(f"{what} shares {len(clash)} var_name(s) with an earlier AnnData: {_first(clash)}; vertex names must be unique.")
        seen.update(names)
    genes = genomic_coordinates(rna, kind="var")
    if gene_region != "gene_body" and "strand" not in genes.columns:
        raise DataError(f"rna.var has no 'strand' column, needed for gene_region={gene_region!r}; run get_gene_annotation().")
    regions = _gene_regions(genes, gene_region, int(promoter_len))
    hvg = None
    if propagate_highly_variable and "highly_variable" in rna.var.columns:
        col = rna.var["highly_variable"]
        if col.isna().any():
            raise DataError(f"rna.var['highly_variable'] has missing values at gene(s) {_first(rna.var_names[col.isna().to_numpy()])}")
        hvg = col.reindex(genes.index).to_numpy(dtype=bool)

    import networkx as nx  # ~11 MB and 0.1 s: imported when a graph is built, not with scprob

    graph = nx.MultiDiGraph()
    for ad in (rna, *others):
        graph.add_nodes_from(ad.var_names)
        graph.add_edges_from((v, v, {"weight": 1.0, "sign": 1, "type": "loop"}) for v in ad.var_names)
    gene_names = genes.index.to_numpy()
    for other, sign in zip(others, signs):
        feats = genomic_coordinates(other, kind="auto")
        gi, pi, weight = _links(regions, feats, int(extend_range), extend_fn)
        src, tgt, w, sign = gene_names[gi].tolist(), feats.index.to_numpy()[pi].tolist(), weight.tolist(), int(sign)
        graph.add_edges_from((g, p, {"weight": x, "sign": sign, "type": "fwd"}) for g, p, x in zip(src, tgt, w))
        graph.add_edges_from((p, g, {"weight": x, "sign": sign, "type": "rev"}) for g, p, x in zip(src, tgt, w))
        if hvg is not None:
            linked = feats.index.to_numpy()[pi[hvg[gi]]]
            other.var["highly_variable"] = other.var_names.isin(linked)
    return graph


def _is_nx_graph(obj) -> bool:
    """Whether ``obj`` is a networkx graph, without importing networkx (no object can be
    one while networkx is not imported)."""
    nx = sys.modules.get("networkx")
    return nx is not None and isinstance(obj, nx.Graph)


def _raw_edge_table(graph) -> pd.DataFrame:
    """Edges as ``source, target, weight, sign`` with defaults filled, before any value checks."""
    if isinstance(graph, pd.DataFrame):
        missing = [c for c in ("source", "target") if c not in graph.columns]
        if missing:
            raise DataError(f"edge table lacks column(s) {missing} (columns: {list(graph.columns)}).")
        df = graph[["source", "target"]].copy()
        df["weight"] = graph["weight"] if "weight" in graph.columns else 1.0
        df["sign"] = graph["sign"] if "sign" in graph.columns else 1
        return df
    if not _is_nx_graph(graph):
        raise DataError(f"graph must be a networkx graph or a DataFrame with source/target columns, got {type(graph).__name__}.")
    edges = [(u, v, d.get("weight", 1.0), d.get("sign", 1)) for u, v, d in graph.edges(data=True)]
    if not graph.is_directed():
        edges += [(v, u, w, s) for u, v, w, s in edges if u != v]
    return pd.DataFrame(edges, columns=["source", "target", "weight", "sign"]).astype({"source": object, "target": object})


def _attribute_problems(df: pd.DataFrame) -> list[str]:
    """Messages for missing values, weights outside (0, 1] and signs other than +1/-1."""
    def rows(mask) -> str:
        idx = np.flatnonzero(mask)
        return f"{idx.size} edge(s), first: " + ", ".join(f"{df['source'].iat[i]!s}->{df['target'].iat[i]!s}" for i in idx[:5])

    problems = []
    weight = pd.to_numeric(df["weight"], errors="coerce")
    sign = pd.to_numeric(df["sign"], errors="coerce")
    nan = (df["source"].isna() | df["target"].isna() | weight.isna() | sign.isna()).to_numpy()
    if nan.any():
        problems.append(f"missing (NaN) or non-numeric source/target/weight/sign in {rows(nan)}")
    bad = (~nan) & ~((weight > 0) & (weight <= 1)).to_numpy()
    if bad.any():
        problems.append(f"weight outside (0, 1] in {rows(bad)}")
    bad = (~nan) & ~sign.isin([-1, 1]).to_numpy()
    if bad.any():
        problems.append(f"sign not in {{-1, +1}} in {rows(bad)}")
    return problems


def as_edge_table(graph) -> pd.DataFrame:
    """``source, target, weight, sign`` table of a networkx graph or edge DataFrame (weight defaults
    to 1.0, sign to 1; undirected edges are listed in both directions), with values validated."""
    df = _raw_edge_table(graph)
    problems = _attribute_problems(df)
    if problems:
        raise DataError("invalid guidance graph edges: " + "; ".join(problems))
    return pd.DataFrame(
        {"source": df["source"].astype(str).to_numpy(dtype=object), "target": df["target"].astype(str).to_numpy(dtype=object),
         "weight": pd.to_numeric(df["weight"]).to_numpy(dtype=np.float64),
         "sign": pd.to_numeric(df["sign"]).to_numpy(dtype=np.float64).astype(np.int64)}
    )


def _report(level: str, message: str) -> None:
    if level == "error":
        raise DataError(message)
    if level == "warn":
        warnings.warn(message, stacklevel=3)


def check_graph(graph, adatas_or_features: Iterable, cov: str = "error", attr: str = "error", loop: str = "warn", sym: str = "warn") -> None:
    """Check a guidance graph (networkx graph or edge table) against the features it must cover.

    Checks, each at level "error" (raise DataError), "warn" or "ignore": ``cov`` every feature
    (AnnData var_names, only highly variable ones when ``var["highly_variable"]`` exists, or a
    list of names) is a vertex; ``attr`` weights in (0, 1] and signs +1/-1; ``loop`` every
    vertex has a self-loop; ``sym`` every edge has its reverse with the same weight and sign.
    """
    for name, level in (("cov", cov), ("attr", attr), ("loop", loop), ("sym", sym)):
        if level not in _LEVELS:
            raise DataError(f"{name} must be one of {_LEVELS}, got {level!r}.")
    df = _raw_edge_table(graph)
    vertices = set(graph.nodes) if _is_nx_graph(graph) else set(df["source"]) | set(df["target"])
    if cov != "ignore":
        lines = []
        for i, item in enumerate(adatas_or_features):
            if hasattr(item, "var_names"):
                hv = item.var.get("highly_variable")
                feats = item.var_names[hv.astype("boolean").fillna(False).to_numpy(dtype=bool)] if hv is not None else item.var_names
            elif isinstance(item, str) or not isinstance(item, Iterable):
                raise DataError(f"adatas_or_features[{i}] must be an AnnData or a list of feature names, got {type(item).__name__}.")
            else:
                feats = list(item)
            missing = [f for f in feats if f not in vertices]
            if missing:
                lines.append(f"{len(missing)} of {len(feats)} feature(s) of adatas_or_features[{i}] are missing from the graph: {_first(missing)}")
        if lines:
            _report(cov, "; ".join(lines))
    if attr != "ignore":
        problems = _attribute_problems(df)
        if problems:
            _report(attr, "invalid guidance graph edges: " + "; ".join(problems))
    if loop != "ignore":
        looped = set(df.loc[df["source"] == df["target"], "source"])
        missing = [v for v in vertices if v not in looped]
        if missing:
            _report(loop, f"{len(missing)} vertex(es) have no self-loop: {_first(sorted(map(str, missing)))}")
    if sym != "ignore":
        keys = ["source", "target", "weight", "sign"]
        rev = df.rename(columns={"source": "target", "target": "source"})[keys].drop_duplicates()
        merged = df[keys].merge(rev, on=keys, how="left", indicator=True)
        bad = (merged["_merge"] == "left_only").to_numpy()
        if bad.any():
            shown = ", ".join(f"{merged['source'].iat[i]!s}->{merged['target'].iat[i]!s}" for i in np.flatnonzero(bad)[:5])
            _report(sym, f"{int(bad.sum())} edge(s) lack a reverse edge with the same weight and sign, first: {shown}")
