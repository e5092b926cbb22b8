"""Guidance graph from genomic coordinates: GTF/peak parsing, gene-peak linking, graph checks."""

import gzip

import anndata
import networkx as nx
import numpy as np
import pandas as pd
import pytest

from scprob.data.guidance import (
    as_edge_table,
    check_graph,
    dist_power_decay,
    genomic_coordinates,
    get_gene_annotation,
    parse_peak_names,
    read_gtf,
    rna_anchored_guidance_graph,
)
from scprob.data.validate import DataError

# GP: + strand, BED [10000, 20000), promoter [8000, 10000). GM: - strand, BED [50000, 60000),
# TSS 60000, promoter [60000, 62000). GF: + strand on chr2, BED [100000, 101000).
GTF = "\n".join(
    [
        "#!genome-build test",
        'chr1\ttest\tgene\t10001\t20000\t.\t+\t.\tgene_id "G1"; gene_name "GP"; gene_type "protein_coding";',
        'chr1\ttest\ttranscript\t10001\t15000\t.\t+\t.\tgene_id "G1"; transcript_id "T1"; gene_name "GP";',
        'chr1\ttest\tgene\t50001\t60000\t.\t-\t.\tgene_id "G2"; gene_name "GM"; gene_type "lncRNA";',
        'chr2\ttest\tgene\t100001\t101000\t.\t+\t.\tgene_id "G3"; gene_name "GF";',
        'chr2\ttest\tgene\t200001\t201000\t.\t+\t.\tgene_id "G4"; gene_name "GF";',
    ]
) + "\n"

PEAKS = {
    "chr1:15000-15500": "body_plus",
    "chr1-8500-8800": "promoter_plus",
    "chr1_21500_21800": "downstream_plus",  # 1500 bp past the + gene's end
    "chr1:55000-55500": "body_minus",
    "chr1:61000-61300": "promoter_minus",  # upstream of the - gene = higher coordinates
    "chr1:48200-48500": "downstream_minus",  # 1500 bp below the - gene's start
    "chr2:104000-104500": "far",  # 3000 bp past GF's end
    "chr3:100-600": "alone",
}
P = {v: k for k, v in PEAKS.items()}


def _adata(names):
    return anndata.AnnData(X=np.zeros((2, len(names))), var=pd.DataFrame(index=list(names)))


@pytest.fixture
def gtf(tmp_path):
    path = tmp_path / "genes.gtf"
    path.write_text(GTF)
    return path


@pytest.fixture
def rna(gtf):
    ad = _adata(["GP", "GM", "GF", "NOPE"])
    with pytest.warns(UserWarning, match=r"1 of 4 gene\(s\).*'NOPE'"):
        get_gene_annotation(ad, gtf=gtf)
    return ad


def _links(graph, gene):
    return {v: d for _, v, d in graph.out_edges(gene, data=True) if v != gene}


def test_read_gtf_coordinates_and_gz(gtf, tmp_path):
    df = read_gtf(gtf)
    assert list(df.columns) == ["chrom", "chromStart", "chromEnd", "strand", "gene_id", "gene_name", "gene_type"]
    assert df["chromStart"].tolist() == [10000, 50000, 100000, 200000]
    assert df["chromEnd"].tolist() == [20000, 60000, 101000, 201000]
    assert df["strand"].tolist() == ["+", "-", "+", "+"]
    assert df["gene_type"].isna().tolist() == [False, False, True, True]
    assert read_gtf(gtf, feature="transcript", attributes=("transcript_id", "absent")).columns[-1] == "transcript_id"
    gz = tmp_path / "genes.gtf.gz"
    with gzip.open(gz, "wt") as fh:
        fh.write(GTF)
    pd.testing.assert_frame_equal(read_gtf(gz), df)


@pytest.mark.parametrize(
    "line, match",
    [
        ("chr1\ttest\tgene\t1\t10\t.\t+\t.", r"line 3: expected 9 tab-separated fields, found 8"),
        ('chr1\ttest\tgene\tx1\t10\t.\t+\t.\tgene_name "A";', r"line 3: start coordinate 'x1' is not an integer"),
        ('chr1\ttest\tgene\t1\t10\t.\t?\t.\tgene_name "A";', r"line 3: strand '\?'"),
    ],
)
def test_read_gtf_malformed_line(tmp_path, line, match):
    path = tmp_path / "bad.gtf"
    path.write_text("\n".join(GTF.splitlines()[:2] + [line]) + "\n")
    with pytest.raises(DataError, match=match):
        read_gtf(path)


def test_parse_peak_names():
    df = parse_peak_names(["chr1:100-600", "chrX-5-9", "GL000194.1_10_20", "1:7-8", "chrUn_KI270302v1_3_4"])
    assert df["chrom"].tolist() == ["chr1", "chrX", "GL000194.1", "1", "chrUn_KI270302v1"]
    assert df["chromStart"].tolist() == [100, 5, 10, 7, 3]
    assert df["chromEnd"].tolist() == [600, 9, 20, 8, 4]
    assert df.index[0] == "chr1:100-600"
    with pytest.raises(DataError, match=r"2 of 3 .*'GeneA', 'chr1:5'"):
        parse_peak_names(["GeneA", "chr1:5", "chr1:1-2"])
    with pytest.raises(DataError, match=r"end <= start: 'chr1:9-9'"):
        parse_peak_names(["chr1:9-9"])


def test_gene_annotation_and_coordinates(rna):
    assert rna.var.loc["GF", "chromStart"] == 100000  # first of the duplicated names wins
    assert rna.var.loc["GM", "strand"] == "-"
    assert pd.isna(rna.var.loc["NOPE", "chrom"])
    coords = genomic_coordinates(rna)
    assert coords.index.tolist() == ["GP", "GM", "GF"]
    assert coords["chromEnd"].dtype == np.int64
    table = pd.DataFrame({"chrom": ["chr9"], "chromStart": [5], "chromEnd": [50], "strand": ["-"]}, index=["GP"])
    ad = _adata(["GP"])
    get_gene_annotation(ad, var_table=table)
    assert ad.var.loc["GP", "chromEnd"] == 50
    with pytest.raises(DataError, match="exactly one"):
        get_gene_annotation(ad)
    with pytest.raises(DataError, match="adata.var lacks"):
        genomic_coordinates(_adata(["GP"]), kind="var")


def test_graph_overlaps_both_strands(rna):
    atac = _adata(PEAKS)
    graph = rna_anchored_guidance_graph(rna, atac)
    assert isinstance(graph, nx.MultiDiGraph)
    assert set(_links(graph, "GP")) == {P["body_plus"], P["promoter_plus"]}
    assert set(_links(graph, "GM")) == {P["body_minus"], P["promoter_minus"]}
    assert _links(graph, "GF") == {} and _links(graph, "NOPE") == {}
    for gene, peak in [("GP", P["body_plus"]), ("GM", P["promoter_minus"])]:
        fwd, rev = graph.get_edge_data(gene, peak)[0], graph.get_edge_data(peak, gene)[0]
        assert fwd == {"weight": 1.0, "sign": 1, "type": "fwd"}
        assert rev == {"weight": 1.0, "sign": 1, "type": "rev"}
    for v in [*rna.var_names, *atac.var_names]:
        assert graph.get_edge_data(v, v) == {0: {"weight": 1.0, "sign": 1, "type": "loop"}}
    check_graph(graph, [rna, atac])

    body = rna_anchored_guidance_graph(rna, atac, gene_region="gene_body")
    assert set(_links(body, "GP")) == {P["body_plus"]} and set(_links(body, "GM")) == {P["body_minus"]}
    prom = rna_anchored_guidance_graph(rna, atac, gene_region="promoter")
    assert set(_links(prom, "GP")) == {P["promoter_plus"]} and set(_links(prom, "GM")) == {P["promoter_minus"]}


def test_graph_extend_range_and_signs(rna):
    atac = _adata(PEAKS)
    graph = rna_anchored_guidance_graph(rna, atac, extend_range=10_000, signs=[-1])
    gp, gm, gf = _links(graph, "GP"), _links(graph, "GM"), _links(graph, "GF")
    assert gp[P["downstream_plus"]]["weight"] == pytest.approx(float(dist_power_decay(21500 - 20000)))
    assert gm[P["downstream_minus"]]["weight"] == pytest.approx(((1500 + 1000) / 1000) ** -0.75)
    assert gf == {P["far"]: {"weight": pytest.approx((4000 / 1000) ** -0.75), "sign": -1, "type": "fwd"}}
    assert gp[P["body_plus"]]["weight"] == 1.0
    assert all(d["sign"] == -1 for d in [*gp.values(), *gm.values()])
    assert graph.get_edge_data(P["far"], "GF")[0]["sign"] == -1
    assert graph.get_edge_data("GF", "GF")[0]["sign"] == 1
    assert dist_power_decay(0) == 1.0
    with pytest.raises(DataError, match="signs"):
        rna_anchored_guidance_graph(rna, atac, signs=[2])


def test_propagate_highly_variable(rna):
    rna.var["highly_variable"] = [True, False, False, False]
    atac = _adata(PEAKS)
    rna_anchored_guidance_graph(rna, atac)
    hv = atac.var["highly_variable"]
    assert hv.dtype == bool
    assert set(hv.index[hv]) == {P["body_plus"], P["promoter_plus"]}
    check_graph(rna_anchored_guidance_graph(rna, atac), [rna, atac])


def test_as_edge_table_formats():
    g = nx.Graph()
    g.add_edge("a", "b", weight=0.5)
    g.add_edge("a", "a")
    table = as_edge_table(g)
    assert sorted(zip(table["source"], table["target"])) == [("a", "a"), ("a", "b"), ("b", "a")]
    assert table["weight"].dtype == np.float64 and table["sign"].dtype == np.int64
    assert table.set_index(["source", "target"]).loc[("b", "a"), "weight"] == 0.5
    only = as_edge_table(pd.DataFrame({"source": ["x"], "target": ["y"]}))
    assert only.iloc[0].tolist() == ["x", "y", 1.0, 1]


@pytest.mark.parametrize(
    "weight, sign, match",
    [(0.0, 1, r"weight outside \(0, 1\] in 1 edge\(s\), first: b->a"), (1.5, 1, "weight outside"),
     (0.5, 2, r"sign not in \{-1, \+1\} in 1 edge\(s\), first: b->a"), (np.nan, 1, "missing")],
)
def test_edge_attribute_errors(weight, sign, match):
    df = pd.DataFrame({"source": ["a", "b"], "target": ["b", "a"], "weight": [1.0, weight], "sign": [1, sign]})
    with pytest.raises(DataError, match=match):
        as_edge_table(df)
    with pytest.raises(DataError, match=match):
        check_graph(df, [["a", "b"]], loop="ignore", sym="ignore")


def test_check_graph_levels():
    g = nx.MultiDiGraph()
    g.add_edges_from([("a", "a"), ("b", "b"), ("a", "b"), ("b", "a")])
    check_graph(g, [["a", "b"]])
    with pytest.raises(DataError, match=r"2 of 3 feature\(s\) of adatas_or_features\[0\] .*'c', 'd'"):
        check_graph(g, [_adata(["a", "c", "d"])])
    ad = _adata(["a", "c"])
    ad.var["highly_variable"] = [True, False]
    check_graph(g, [ad])  # only highly variable features must be covered
    g.add_edge("a", "c")
    with pytest.warns(UserWarning, match="no self-loop: 'c'"):
        check_graph(g, [["a"]], sym="ignore")
    g.add_edge("c", "c")
    with pytest.warns(UserWarning, match=r"1 edge\(s\) lack a reverse.*a->c"):
        check_graph(g, [["a"]])
    with pytest.raises(DataError, match="lack a reverse"):
        check_graph(g, [["a"]], sym="error")
    check_graph(g, [["a"]], sym="ignore")
    g.add_edge("c", "a", weight=0.5)  # reverse exists but with another weight
    with pytest.raises(DataError, match="a->c"):
        check_graph(as_edge_table(g), [["a"]], sym="error")
