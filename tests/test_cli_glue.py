"""``scprob integrate`` end to end on a tiny paired RNA + ATAC set (3 epochs per stage, 1 thread)."""

import json
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from scprob.cli import main
from scprob.models import GLUE

FAST = ["--max-epochs", "3", "--threads", "1", "-q"]
N_CELLS, N_GENES, N_PEAKS, N_TYPES = 120, 40, 80, 3


def peak_name(i: int) -> str:
    """Peak ``i`` lies in the body of gene ``i % N_GENES`` (see :func:`write_gtf`)."""
    g, c = i % N_GENES, i // N_GENES
    return f"chr1:{g * 10_000 + 1200 + c * 600}-{g * 10_000 + 1700 + c * 600}"


def simulate(seed=0):
    """Paired cells (same obs names): NB gene counts with a programme per cell type, and
    peaks each linked to one gene, with counts driven by that gene's expression."""
    rng = np.random.default_rng(seed)
    types = rng.integers(0, N_TYPES, N_CELLS)
    prog = rng.gamma(1.0, 1.0, (N_TYPES, N_GENES))
    mu = 0.5 * prog[types] * rng.lognormal(1.5, 0.3, (N_CELLS, 1))
    rna_x = rng.poisson(rng.gamma(5.0, mu / 5.0)).astype(np.float32)
    link = np.arange(N_PEAKS) % N_GENES
    atac_x = rng.poisson(0.3 * mu[:, link] * rng.lognormal(0, 0.3, (N_CELLS, 1))).astype(np.float32)
    rna_x[rna_x.sum(1) == 0, 0] = 1
    atac_x[atac_x.sum(1) == 0, 0] = 1
    obs = pd.DataFrame({"cell_type": pd.Categorical([f"t{t}" for t in types])}, index=[f"cell{i}" for i in range(N_CELLS)])
    genes, peaks = [f"g{i}" for i in range(N_GENES)], [peak_name(i) for i in range(N_PEAKS)]
    rna = ad.AnnData(rna_x, obs=obs.copy(), var=pd.DataFrame(index=genes))
    atac = ad.AnnData(atac_x, obs=obs.copy(), var=pd.DataFrame(index=peaks))
    fwd = pd.DataFrame({"source": [genes[g] for g in link], "target": peaks})
    edges = pd.concat([fwd, fwd.rename(columns={"source": "target", "target": "source"})], ignore_index=True)
    return rna, atac, edges


def write_gtf(path):
    """Gene ``g<j>`` spans chr1:[j*10000 + 1000, j*10000 + 3000] (1-based), + strand; plus
    an exon row (ignored) and a gene the data lack."""
    lines = ["#!genome-build test"]
    for j in range(N_GENES + 1):
        start = j * 10_000 + 1000
        lines.append(f'chr1\ttest\tgene\t{start}\t{start + 2000}\t.\t+\t.\tgene_id "G{j}"; gene_name "g{j}";')
    lines.append('chr1\ttest\texon\t1000\t1500\t.\t+\t.\tgene_id "G0"; gene_name "g0";')
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def files(tmp_path):
    rna, atac, edges = simulate()
    rna.obs["batch"] = pd.Categorical(np.where(np.arange(N_CELLS) % 2, "b1", "b2"))
    rna.write_h5ad(tmp_path / "rna.h5ad")
    atac.write_h5ad(tmp_path / "atac.h5ad")
    edges.to_csv(tmp_path / "edges.csv", index=False)
    return tmp_path


def _check_outputs(out, keys=("rna", "atac"), labels=True, paired=True):
    for f in [*(f"{k}.h5ad" for k in keys), "feature_embeddings.csv", "model/model.pt", "metrics.json", "report.html",
              "figures/training_curves.png", "figures/embedding.png"]:
        assert (out / f).exists(), f
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]  # no temp folder left
    adatas = {k: ad.read_h5ad(out / f"{k}.h5ad") for k in keys}
    model = GLUE.load(out / "model", adatas)
    latent_dim = model.init_params["latent_dim"]
    for k, a in adatas.items():
        assert a.obsm["X_glue"].shape == (a.n_obs, latent_dim)
        np.testing.assert_allclose(model.encode_data(k, a.copy()), a.obsm["X_glue"], rtol=1e-4, atol=1e-5)
    fe = pd.read_csv(out / "feature_embeddings.csv", index_col=0)
    assert fe.shape == (sum(a.n_vars for a in adatas.values()), latent_dim)
    assert set(fe.index) == {f for a in adatas.values() for f in a.var_names}
    m = json.loads((out / "metrics.json").read_text())
    pair = f"{keys[0]}/{keys[1]}"
    if paired:
        assert 0 <= m["foscttm"][pair] <= 1 and m["n_paired"][pair] == N_CELLS
    else:
        assert m["foscttm"] == {} and m["n_paired"] == {}
    if labels:
        assert 0 <= m["label_transfer"][f"{keys[0]}->{keys[1]}"] <= 1
    else:
        assert m["label_transfer"] == {}
    assert list(m["epochs"]) == ["pretrain", "fine-tune"] and all(1 <= n <= 3 for n in m["epochs"].values())
    assert m["fit_seconds"] > 0 and m["n_cells"] == {k: N_CELLS for k in keys}
    html = (out / "report.html").read_text()
    assert all(k in html for k in keys) and ("FOSCTTM" in html) == paired
    assert "figures/embedding.png" in html and "figures/training_curves.png" in html
    return adatas, m


def test_integrate_h5ad(files, capsys):
    out = files / "o"
    rc = main(["integrate", str(files / "rna.h5ad"), str(files / "atac.h5ad"), "--prob-models", "NB,NB",
               "--graph", str(files / "edges.csv"), "--labels-key", "cell_type", "--batch-key", "batch",
               "--out", str(out), *FAST])
    assert rc == 0
    adatas, m = _check_outputs(out)
    assert json.loads(capsys.readouterr().out) == m  # the metrics are printed too
    reg = json.loads(adatas["rna"].uns["_scprob_glue"])
    assert reg["use_batch"] == "batch" and reg["use_cell_type"] is None  # labels: evaluation only
    assert json.loads(adatas["atac"].uns["_scprob_glue"])["use_batch"] is None  # atac has no 'batch' column
    assert "label transfer" in (out / "report.html").read_text()


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_integrate_h5mu_and_overwrite(tmp_path, caplog):
    mudata = pytest.importorskip("mudata")
    rna, atac, edges = simulate(seed=1)
    atac.layers["counts"] = atac.X.copy()
    atac.X = atac.X / 2  # not counts: the NB model must read the layer
    mudata.MuData({"rna": rna, "atac": atac}).write(tmp_path / "paired.h5mu")
    edges.to_csv(tmp_path / "edges.csv", index=False)
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    args = ["integrate", str(tmp_path / "paired.h5mu"), "--prob-models", "NB,Poisson", "--graph", str(tmp_path / "edges.csv"),
            "--layer", "counts", "--out", str(out), "--max-epochs", "3", "--threads", "1"]
    assert main(args) == 2 and (out / "keep.txt").exists()  # non-empty output folder
    with caplog.at_level("INFO", logger="scprob"):
        assert main([*args, "--overwrite"]) == 0
    assert not (out / "keep.txt").exists()
    adatas, _ = _check_outputs(out, labels=False)
    assert [json.loads(adatas[k].uns["_scprob_glue"])["prob_model"] for k in ("rna", "atac")] == ["NB", "Poisson"]
    assert json.loads(adatas["atac"].uns["_scprob_glue"])["use_layer"] == "counts"
    messages = [r.getMessage() for r in caplog.records]
    assert any(s.startswith("GLUE pretrain:") for s in messages) and any(s.startswith("GLUE fine-tune:") for s in messages)


def test_integrate_gtf_unpaired(tmp_path):
    rna, atac, _ = simulate(seed=2)
    atac.obs_names = [f"atac_{i}" for i in range(N_CELLS)]  # no shared obs names: no FOSCTTM
    rna.write_h5ad(tmp_path / "rna.h5ad")
    atac.write_h5ad(tmp_path / "atac.h5ad")
    gtf = write_gtf(tmp_path / "genes.gtf")
    out = tmp_path / "o"
    rc = main(["integrate", str(tmp_path / "rna.h5ad"), str(tmp_path / "atac.h5ad"), "--prob-models", "NB,NB",
               "--gtf", str(gtf), "--labels-key", "cell_type", "--out", str(out), *FAST])
    assert rc == 0
    adatas, _ = _check_outputs(out, paired=False)
    assert adatas["rna"].var["chrom"].eq("chr1").all()  # coordinates from the GTF
    model = GLUE.load(out / "model", adatas)
    links = model.edges[model.edges["source"] != model.edges["target"]]
    assert len(links) == 2 * N_PEAKS  # each peak linked to its gene, both directions
    assert set(zip(links["source"], links["target"])) >= {("g0", peak_name(0)), (peak_name(N_GENES + 5), "g5")}
    assert "genes.gtf" in (out / "report.html").read_text()


def _fails(args, capsys, *expected):
    out = args[args.index("--out") + 1]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "scprob: error:" in err and all(e in err for e in expected), err
    assert not Path(out).exists()
    return err


def test_integrate_bad_input_fails_cleanly(files, capsys):
    rna, atac, graph = (str(files / f) for f in ("rna.h5ad", "atac.h5ad", "edges.csv"))
    out = str(files / "o")
    base = ["integrate", rna, atac, "--graph", graph, "--out", out, *FAST]
    err = _fails([*base, "--prob-models", "NB,NotAModel"], capsys, "NotAModel", "registered")
    assert all(name in err for name in ("NB", "ZINB", "Poisson", "Bernoulli"))
    _fails([*base, "--prob-models", "NB"], capsys, "1 name", "2 modalities")
    _fails([*base, "--prob-models", "NB,NB,NB"], capsys, "3 name", "2 modalities")
    _fails([*base, "--prob-models", "NB,NB", "--labels-key", "nope"], capsys, "--labels-key", "nope")
    _fails([*base, "--prob-models", "NB,NB", "--layer", "counts"], capsys, "--layer", "counts")
    # the graph misses the edges of 10 peaks
    edges = pd.read_csv(graph)
    gone = set(ad.read_h5ad(atac).var_names[-10:])
    edges[~edges["source"].isin(gone) & ~edges["target"].isin(gone)].to_csv(files / "partial.csv", index=False)
    _fails(["integrate", rna, atac, "--prob-models", "NB,NB", "--graph", str(files / "partial.csv"), "--out", out, *FAST],
           capsys, "10 of", "'atac'")
    pd.DataFrame({"from": ["g0"], "to": ["g1"]}).to_csv(files / "nocols.csv", index=False)
    _fails(["integrate", rna, atac, "--prob-models", "NB,NB", "--graph", str(files / "nocols.csv"), "--out", out, *FAST],
           capsys, "source", "target")
    # inputs: a missing file, one file only, colliding stems
    _fails(["integrate", rna, str(files / "nope.h5ad"), "--prob-models", "NB,NB", "--graph", graph, "--out", out], capsys,
           "does not exist")
    _fails(["integrate", rna, "--prob-models", "NB", "--graph", graph, "--out", out], capsys, "two or more")
    (files / "other").mkdir()
    ad.read_h5ad(atac).write_h5ad(files / "other" / "rna.h5ad")
    _fails(["integrate", rna, str(files / "other" / "rna.h5ad"), "--prob-models", "NB,NB", "--graph", graph, "--out", out],
           capsys, "['rna']", "rename")
    (files / "junk.h5ad").write_text("not hdf5")
    _fails(["integrate", rna, str(files / "junk.h5ad"), "--prob-models", "NB,NB", "--graph", graph, "--out", out],
           capsys, "cannot read", "junk.h5ad")
    # exactly one of --graph / --gtf (argparse: exit code 2 and a usage message)
    for extra in (["--graph", graph, "--gtf", str(write_gtf(files / "genes.gtf"))], []):
        with pytest.raises(SystemExit) as e:
            main(["integrate", rna, atac, "--prob-models", "NB,NB", *extra, "--out", out])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert ("not allowed with" in err) if extra else ("one of the arguments --graph --gtf is required" in err)
        assert not (files / "o").exists()
    assert not [p for p in files.iterdir() if p.name.startswith(".o.")]
