import json
import subprocess
import sys

import anndata as ad
import numpy as np

from scprob.cli import main

from .conftest import make_counts


def test_demo_end_to_end(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--max-epochs", "3", "-q"]) == 0
    for f in ["adata.h5ad", "model/model.pt", "metrics.json", "report.html", "figures/training_curves.png", "figures/embedding.png"]:
        assert (out / f).exists(), f
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"knn_label_transfer", "kmeans_ari", "batch_silhouette"} <= set(metrics)
    a = ad.read_h5ad(out / "adata.h5ad")
    assert a.obsm["X_scvi"].shape == (499, 10)
    html = (out / "report.html").read_text()
    assert "figures/embedding.png" in html and "knn_label_transfer" in html
    # refuses to overwrite without --overwrite
    assert main(["demo", "--out", str(out), "--max-epochs", "1", "-q"]) == 2


def test_fit_ldvae_without_labels(tmp_path):
    a = make_counts()
    a.write_h5ad(tmp_path / "in.h5ad")
    out = tmp_path / "o"
    rc = main(["fit", "ldvae", str(tmp_path / "in.h5ad"), "--batch-key", "batch", "--max-epochs", "2",
               "--n-latent", "3", "--n-top-genes", "25", "--out", str(out), "-q"])
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert "knn_label_transfer" not in metrics and "batch_silhouette" in metrics
    assert (out / "loadings.csv").exists()
    assert ad.read_h5ad(out / "adata.h5ad").n_vars == 25


def test_fit_bad_input_fails_cleanly(tmp_path, capsys):
    a = make_counts(sparse=False)
    a.X[2, 3] = np.nan
    a.write_h5ad(tmp_path / "bad.h5ad")
    out = tmp_path / "o"
    rc = main(["fit", "scvi", str(tmp_path / "bad.h5ad"), "--batch-key", "batch", "--out", str(out), "-q"])
    assert rc == 2
    assert "cell 'cell2', gene 'gene3'" in capsys.readouterr().err
    assert not out.exists() and list(tmp_path.iterdir()) == [tmp_path / "bad.h5ad"]
    rc = main(["fit", "scvi", str(tmp_path / "bad.h5ad"), "--batch-key", "missing", "--out", str(out), "-q"])
    assert rc == 2
    rc = main(["fit", "scvi", str(tmp_path / "nofile.h5ad"), "--out", str(out), "-q"])
    assert rc == 2 and "does not exist" in capsys.readouterr().err


def test_console_script_help():
    r = subprocess.run([sys.executable, "-m", "scprob.cli.main", "fit", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--batch-key" in r.stdout
