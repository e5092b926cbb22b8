import json
import logging
import subprocess
import sys

import anndata as ad
import numpy as np
import pytest

from scprob.cli import main
from scprob.cli.main import _parser
from scprob.report import cluster_latent, curve_limits, embed_latent

from .conftest import make_counts


def test_demo_end_to_end(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--max-epochs", "3", "--embedding", "pca", "-q"]) == 0
    for f in ["adata.h5ad", "model/model.pt", "metrics.json", "report.html", "figures/training_curves.png", "figures/embedding.png"]:
        assert (out / f).exists(), f
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"knn_label_transfer", "kmeans_ari", "batch_silhouette"} <= set(metrics)
    a = ad.read_h5ad(out / "adata.h5ad")
    assert a.obsm["X_scvi"].shape == (499, 10)
    html = (out / "report.html").read_text()
    assert "figures/embedding.png" in html and "knn_label_transfer" in html
    assert "how to read it" in html and "near 0 = batches mixed" in html  # reading guide per metric
    assert "leiden" not in a.obs  # labels given: no clusters needed
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


def test_fit_without_labels_colours_by_leiden_clusters(tmp_path):
    a = make_counts(n_cells=90, n_labels=3, seed=3)
    a.write_h5ad(tmp_path / "in.h5ad")
    out = tmp_path / "o"
    rc = main(["fit", "scvi", str(tmp_path / "in.h5ad"), "--batch-key", "batch", "--max-epochs", "2", "--n-latent", "3",
               "--embedding", "pca", "--out", str(out), "-q"])
    assert rc == 0
    res = ad.read_h5ad(out / "adata.h5ad")
    clusters = res.obs["leiden"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_clusters"] == clusters.nunique() >= 1
    assert (out / "clusters.csv").read_text().splitlines()[0] == ",leiden"
    html = (out / "report.html").read_text()
    assert "Leiden on the latent" in html and "PCA of the latent space" in html
    assert "near 0 = batches mixed" in html and "number of Leiden clusters" in html


def test_fit_selects_hvgs_above_5000_genes_unless_all_genes(tmp_path, caplog):
    a = make_counts(n_cells=30, n_genes=5050, seed=1)
    a.write_h5ad(tmp_path / "wide.h5ad")
    args = ["fit", "scvi", str(tmp_path / "wide.h5ad"), "--batch-key", "batch", "--max-epochs", "1", "--n-latent", "2",
            "--embedding", "pca"]
    with caplog.at_level(logging.INFO, logger="scprob"):
        assert main([*args, "--out", str(tmp_path / "hvg")]) == 0
    assert "5050 genes (more than 5,000): training on the 2000 most highly variable" in caplog.text
    assert ad.read_h5ad(tmp_path / "hvg" / "adata.h5ad").n_vars == 2000
    assert "selected by default; --all-genes keeps all" in (tmp_path / "hvg" / "report.html").read_text()
    assert main([*args, "--all-genes", "--out", str(tmp_path / "all"), "-q"]) == 0
    assert ad.read_h5ad(tmp_path / "all" / "adata.h5ad").n_vars == 5050
    with pytest.raises(SystemExit):  # one or the other
        _parser().parse_args([*args, "--all-genes", "--n-top-genes", "10", "--out", "x"])


def test_report_defaults_umap():
    assert _parser().parse_args(["fit", "scvi", "d.h5ad", "--out", "o"]).embedding == "umap"
    assert _parser().parse_args(["demo"]).embedding == "umap"


def test_embed_latent_umap_and_fallbacks(monkeypatch):
    rng = np.random.default_rng(0)
    latent = np.concatenate([rng.normal(0, 1, (40, 4)), rng.normal(8, 1, (40, 4))])
    pytest.importorskip("umap")
    coords, method = embed_latent(latent, "umap", seed=0)
    assert method == "UMAP" and coords.shape == (80, 2) and np.isfinite(coords).all()
    monkeypatch.setitem(sys.modules, "umap", None)  # umap-learn missing: t-SNE, said
    assert embed_latent(latent, "umap", seed=0)[1] == "t-SNE"
    assert embed_latent(latent, "pca")[1] == "PCA"
    with pytest.raises(ValueError, match="embedding must be one of"):
        embed_latent(latent, "mds")


def test_cluster_latent_finds_separated_groups(monkeypatch):
    rng = np.random.default_rng(0)
    truth = np.repeat([0, 1, 2], 40)
    latent = rng.normal(0, 0.5, (120, 3)) + 10 * np.eye(3)[truth]
    pytest.importorskip("leidenalg")
    labels, method = cluster_latent(latent, seed=0)
    assert method == "leiden"
    assert len(set(labels)) == 3 and all(len(set(labels[truth == t])) == 1 for t in range(3))
    monkeypatch.setitem(sys.modules, "leidenalg", None)  # fallback: networkx's Louvain
    labels, method = cluster_latent(latent, seed=0)
    assert method == "louvain" and len(set(labels)) == 3 and all(len(set(labels[truth == t])) == 1 for t in range(3))


def test_training_curve_limits_show_late_epochs():
    elbo = np.array([5000.0, 900, 400, 380, 370, 365, 362, 361, 360, 360])
    lo, hi = curve_limits([elbo, elbo + 5])
    assert hi < 500 and lo < 360 and hi > 405  # the first epoch is clipped, the rest shown
    assert curve_limits([np.array([np.nan])]) is None
    kl = np.array([1.0, 3, 6, 9, 12, 14, 15, 15, 14, 14])  # rising: nothing clipped at the bottom
    assert curve_limits([kl])[0] < 1.0
    lo, hi = curve_limits([np.array([2.0, 2.0])])
    assert lo < 2 < hi
