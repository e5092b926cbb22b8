"""Long runs survive faults (issue 10, items 1-2): the NaN guard, checkpoints written
atomically, resume equal to an uninterrupted run, and the CLI killed with SIGKILL and
resumed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from scprob.cli.main import main
from scprob.data import DataError
from scprob.models import SCVI
from scprob.train import NonFiniteLossError

from .conftest import make_counts

FIT = dict(batch_size=32, enable_progress_bar=False)


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread_module):
    """Tiny layers: one thread (see conftest.one_thread_module)."""


def model(adata=None):
    adata = make_counts(n_cells=160, n_genes=30) if adata is None else adata
    SCVI.setup_anndata(adata, batch_key="batch")
    return SCVI(adata, n_latent=4)


def test_nan_guard_names_epoch_and_terms_and_keeps_finite_weights():
    m = model()
    with pytest.raises(NonFiniteLossError, match=r"epoch \d+, step \d+.*not finite.*(reconstruction_loss|kl).*lower learning rate"):
        m.train(max_epochs=5, plan_kwargs=dict(lr=1e6), **FIT)
    assert all(torch.isfinite(p).all() for p in m.module.parameters())
    assert not m.is_trained_
    with pytest.raises(RuntimeError, match="not trained"):  # no silent NaN downstream
        m.get_latent_representation()


def test_nan_guard_keeps_history_of_completed_epochs():
    m = model()
    m.train(max_epochs=2, **FIT)
    with pytest.raises(NonFiniteLossError):
        m.train(max_epochs=3, plan_kwargs=dict(lr=1e6), **FIT)
    assert all(torch.isfinite(p).all() for p in m.module.parameters())
    assert m.is_trained_  # trained before: it stays usable, with finite results
    assert np.isfinite(m.get_latent_representation()).all()
    for frame in m.history.values():  # only completed epochs were recorded
        assert np.isfinite(frame.to_numpy(dtype=float)).all()


def test_resume_equals_uninterrupted_run(tmp_path):
    full = model()
    full.train(max_epochs=6, **FIT)
    first = model()
    first.train(max_epochs=3, checkpoint_dir=tmp_path / "ck", **FIT)  # "interrupted" after epoch 3
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["last.ckpt"]  # no temporary files left
    resumed = model()
    resumed.train(max_epochs=6, resume_from=tmp_path / "ck", **FIT)
    for key in ("elbo_train", "elbo_validation"):
        np.testing.assert_allclose(resumed.history[key].to_numpy(), full.history[key].to_numpy(), rtol=1e-6)
    assert list(resumed.history["elbo_train"].index) == list(range(6))
    np.testing.assert_allclose(resumed.get_latent_representation(), full.get_latent_representation(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(resumed.train_indices_, full.train_indices_)


def test_checkpoint_every_n_epochs(tmp_path):
    m = model()
    m.train(max_epochs=4, checkpoint_dir=tmp_path / "ck", checkpoint_every_n_epochs=2, **FIT)
    ck = torch.load(tmp_path / "ck" / "last.ckpt", weights_only=True)
    assert ck["epoch"] == 3  # written after epochs 2 and 4 (0-based 1 and 3)
    assert ck["scprob"]["model_class"] == "SCVI" and len(ck["scprob"]["history"]["elbo_train"]) == 4


def test_resume_refuses_other_data_and_damaged_checkpoints(tmp_path):
    m = model()
    m.train(max_epochs=1, checkpoint_dir=tmp_path / "ck", **FIT)
    other = make_counts(n_cells=160, n_genes=30)
    other.var_names = [f"other{i}" for i in range(30)]
    with pytest.raises(DataError, match="other data: gene names"):
        model(other).train(max_epochs=2, resume_from=tmp_path / "ck", **FIT)
    fewer = make_counts(n_cells=150, n_genes=30)
    with pytest.raises(DataError, match=r"n_obs \(160 there, 150 here\)"):
        model(fewer).train(max_epochs=2, resume_from=tmp_path / "ck", **FIT)
    data = (tmp_path / "ck" / "last.ckpt").read_bytes()
    (tmp_path / "ck" / "last.ckpt").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="truncated or corrupt"):
        model().train(max_epochs=2, resume_from=tmp_path / "ck", **FIT)
    with pytest.raises(DataError, match="no checkpoint"):
        model().train(max_epochs=2, resume_from=tmp_path / "nothing", **FIT)


def test_cli_killed_after_checkpoint_then_resumed(tmp_path):
    adata = make_counts(n_cells=300, n_genes=40)
    data = tmp_path / "in.h5ad"
    adata.write_h5ad(data)
    out = tmp_path / "run"
    args = ["fit", "scvi", str(data), "--batch-key", "batch", "--max-epochs", "400", "--threads", "1",
            "--checkpoint-every", "1", "--out", str(out), "-q"]
    proc = subprocess.Popen([sys.executable, "-m", "scprob.cli.main", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    ckpt = out / "checkpoints" / "last.ckpt"
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)  # let it get into later epochs and, likely, into a write
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert ckpt.exists(), "no checkpoint was written before the kill"
    left = {p.name for p in out.iterdir()}
    assert left == {"checkpoints"}  # no half-written outputs
    done = torch.load(ckpt, weights_only=True)["epoch"]
    assert done < 399
    assert main([*args, "--resume"]) == 0
    assert {"model", "metrics.json", "adata.h5ad", "checkpoints"} <= {p.name for p in out.iterdir()}
    hist = SCVI.load(out / "model", adata).history["elbo_train"]
    assert list(hist.index) == list(range(400))
    assert json.loads((out / "metrics.json").read_text())["elbo_train_final"] == pytest.approx(float(hist.iloc[-1, 0]))


def test_cli_resume_without_checkpoint_is_a_clear_error(tmp_path, capsys):
    adata = make_counts(n_cells=60, n_genes=20)
    adata.write_h5ad(tmp_path / "in.h5ad")
    rc = main(["fit", "scvi", str(tmp_path / "in.h5ad"), "--out", str(tmp_path / "run"), "--resume", "-q"])
    assert rc == 2 and "no checkpoint" in capsys.readouterr().err
