"""``scprob annotate`` and ``scprob demo scyan`` end to end (tiny data, 2 epochs, 1 thread)."""

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from scprob.cli import main
from scprob.data import load_aml
from scprob.data.cytometry import read_csv
from scprob.data.fcs import read_fcs, write_fcs

FAST = ["--max-epochs", "2", "--threads", "1", "-q"]
TABLE = pd.DataFrame(
    {"CD3": [1, 1, -1], "CD4": [1, -1, -1], "CD8": [-1, 1, np.nan], "CD19": [-1, -1, 1]},
    index=pd.Index(["CD4 T", "CD8 T", "B"], name="population"),
)


def simulate(n=240, cofactor=5.0, seed=0) -> ad.AnnData:
    """Raw-looking positive intensities: asinh(x / cofactor) = 2 u + 2 with u near the
    table's +-1 targets, plus an extra channel that is not in the table."""
    rng = np.random.default_rng(seed)
    pop = rng.integers(0, len(TABLE), n)
    rho = TABLE.to_numpy(dtype=float)[pop]
    u = np.where(np.isnan(rho), rng.uniform(-1, 1, rho.shape), rho) + rng.normal(0, 0.25, rho.shape)
    X = np.concatenate([cofactor * np.sinh(2 * u + 2), rng.uniform(0, 1000, (n, 1))], axis=1).astype(np.float32)
    a = ad.AnnData(X, var=pd.DataFrame(index=[*TABLE.columns, "Time"]))
    a.obs_names = [str(i) for i in range(n)]
    a.obs["truth"] = pd.Categorical(TABLE.index[pop])
    a.obs["batch"] = pd.Categorical(rng.choice(["s1", "s2"], n))
    return a


@pytest.fixture
def table_csv(tmp_path):
    TABLE.to_csv(tmp_path / "table.csv")
    return str(tmp_path / "table.csv")


def _common_outputs(out, n, n_markers=len(TABLE.columns), populations=tuple(TABLE.index)):
    for f in ["annotated.h5ad", "populations.csv", "metrics.json", "model/model.pt", "report.html",
              "figures/marker_heatmap.png", "figures/population_sizes.png", "figures/embedding.png",
              "figures/training_curve.png"]:
        assert (out / f).exists(), f
    a = ad.read_h5ad(out / "annotated.h5ad")
    assert "scyan_pop" in a.obs and a.obsm["X_scyan"].shape == (n, n_markers)
    pops = pd.read_csv(out / "populations.csv", index_col=0)
    assert list(pops.index) == [*populations, "unassigned"] and pops["count"].sum() == n
    html = (out / "report.html").read_text()
    assert "figures/marker_heatmap.png" in html and "unassigned" in html
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]  # no temp folder left
    return a, pops


def test_annotate_h5ad_batches_and_labels(tmp_path, table_csv):
    a = simulate()
    a.write_h5ad(tmp_path / "in.h5ad")
    out = tmp_path / "o"
    rc = main(["annotate", str(tmp_path / "in.h5ad"), "--table", table_csv, "--batch-key", "batch",
               "--labels-key", "truth", "--out", str(out), *FAST])
    assert rc == 0
    b, pops = _common_outputs(out, a.n_obs)
    assert {"count_s1", "percent_s1", "count_s2", "percent_s2"} <= set(pops.columns)
    assert pops["count_s1"].sum() + pops["count_s2"].sum() == a.n_obs
    np.testing.assert_array_equal(b.layers["raw"], a.X)  # the input's values are kept
    rec = b.uns["scprob_cytometry"]
    assert rec["transform"]["kind"] == "asinh" and rec["transform"]["cofactor"] == 5.0  # mass cytometry range
    assert abs(float(np.mean(b[:, "CD3"].X))) < 1e-3  # scaled
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"accuracy", "macro_f1", "fraction_assigned"} <= set(metrics)
    assert (out / "figures/confusion.png").exists()


def test_annotate_fcs(tmp_path, table_csv):
    a = simulate(cofactor=150.0, seed=1)
    a.var["channel"] = ["FL1-A", "FL2-A", "FL3-A", "FL4-A", "Time"]
    a.var["marker"] = [*TABLE.columns, ""]
    a.uns["fcs"] = {"text": {"$CYT": "LSRFortessa"}}
    path = write_fcs(a, tmp_path / "in.fcs")
    out = tmp_path / "o"
    assert main(["annotate", str(path), "--table", table_csv, "--out", str(out), *FAST]) == 0
    _common_outputs(out, a.n_obs)
    b = read_fcs(out / "annotated.fcs")
    assert "scyan_pop" in b.obs and b.n_obs == a.n_obs
    np.testing.assert_array_equal(b.X, a.X)  # original values, prediction as an extra channel
    assert set(b.obs["scyan_pop"].dropna().astype(str)) <= set(TABLE.index)
    h = ad.read_h5ad(out / "annotated.h5ad")
    assert h.uns["scprob_cytometry"]["transform"]["cofactor"] == 150.0  # flow cytometer ($CYT)


def test_annotate_csv_overwrite(tmp_path, table_csv):
    a = simulate(seed=2)
    df = pd.DataFrame(a.X, columns=a.var_names)
    df["batch"] = a.obs["batch"].to_numpy()
    df.to_csv(tmp_path / "in.csv", index=False)
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    args = ["annotate", str(tmp_path / "in.csv"), "--table", table_csv, "--cofactor", "5", "--out", str(out), *FAST]
    assert main(args) == 2  # non-empty output folder
    assert (out / "keep.txt").exists()
    assert main([*args, "--overwrite"]) == 0
    assert not (out / "keep.txt").exists()
    _common_outputs(out, a.n_obs)
    b = read_csv(out / "annotated.csv")
    np.testing.assert_allclose(b.X, a.X, rtol=1e-6)
    assert {"scyan_pop", "batch"} <= set(b.obs.columns)


def test_annotate_missing_marker_fails_cleanly(tmp_path, capsys):
    a = simulate(n=60)
    a.write_h5ad(tmp_path / "in.h5ad")
    TABLE.assign(CD56=[1, -1, -1]).to_csv(tmp_path / "bad_table.csv")
    out = tmp_path / "o"
    rc = main(["annotate", str(tmp_path / "in.h5ad"), "--table", str(tmp_path / "bad_table.csv"), "--out", str(out), *FAST])
    assert rc == 2
    err = capsys.readouterr().err
    assert "scprob: error:" in err and "CD56" in err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["bad_table.csv", "in.h5ad"]
    rc = main(["annotate", str(tmp_path / "in.h5ad"), "--table", str(tmp_path / "nope.csv"), "--out", str(out), *FAST])
    assert rc == 2 and not out.exists()


def test_demo_scyan(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "scyan", "--out", str(out), *FAST]) == 0
    table = load_aml()[1]
    _common_outputs(out, 280, n_markers=table.shape[1], populations=table.index)
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 <= metrics["accuracy"] <= 1 and 0 <= metrics["macro_f1"] <= 1
    assert "accuracy" in (out / "report.html").read_text()
    assert (out / "figures/confusion.png").exists()
