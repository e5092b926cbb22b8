"""Issue 10, items 3 and 4: corrupt or foreign files get scprob's own error naming the file
and the problem (src/scprob/models/_files.py, src/scprob/data/io.py), and training output
is quiet and honest (src/scprob/train/trainer.py ``run_training``; the data warnings in
src/scprob/data/validate.py and registry.py).

Models are tiny and saved untrained where weights do not matter; the trainings run 1-2 epochs.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch

import scprob
from scprob.cli.main import main
from scprob.data import DataError, read_input
from scprob.models import GLUE, LDVAE, SCVI
from scprob.models._files import installed_version
from scprob.models.scyan import Scyan

from .conftest import make_counts
from .test_glue import SMALL as GLUE_SMALL
from .test_glue import configured, fresh

NOISE = ("litlogger", "litmodels", "GPU available", "TPU available", "LeafSpec", "Tip:", "Trainer.fit` stopped",
         "does not have many workers", "Sparse invariant")


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread_module):
    """Tiny layers: one thread (see conftest.one_thread_module)."""


def _scvi_adata(n_cells=60, seed=0):
    a = make_counts(n_cells=n_cells, n_genes=20, seed=seed)
    SCVI.setup_anndata(a, batch_key="batch")
    return a


def _glue_inputs():
    rna, atac, edges = configured(n_cells=40, n_genes=12, n_peaks=18)
    return rna, atac, edges


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """One saved folder per model class (untrained: the files are what is tested), plus a
    trained SCVI (its history holds DataFrames, so GLUE's weights-only reader refuses it)."""
    root = tmp_path_factory.mktemp("models")
    a = _scvi_adata()
    SCVI(a, n_hidden=8, n_latent=2).save(root / "scvi", save_anndata=True)
    trained = SCVI(a, n_hidden=8, n_latent=2)
    trained.train(max_epochs=1, enable_progress_bar=False)
    trained.save(root / "scvi_trained")
    b = _scvi_adata()
    LDVAE.setup_anndata(b, batch_key="batch")
    LDVAE(b, n_hidden=8, n_latent=2).save(root / "ldvae")
    aml, table = scprob.data.load_aml()
    Scyan(aml, table, hidden_size=8, n_hidden_layers=1, n_layers=2).save(root / "scyan")
    rna, atac, edges = _glue_inputs()
    GLUE({"rna": rna, "atac": atac}, edges, **GLUE_SMALL).save(root / "glue")
    return root, dict(scvi=a, ldvae=b, scyan=aml, glue={"rna": rna, "atac": atac})


def _load(kind: str, folder: Path, inputs: dict):
    if kind == "glue":
        return GLUE.load(folder, {k: fresh(v) for k, v in inputs["glue"].items()})
    cls = {"scvi": SCVI, "ldvae": LDVAE, "scyan": Scyan}[kind]
    data = inputs[kind].copy()
    return cls.load(folder, data)


def _damaged(saved, kind: str, tmp_path: Path, data: bytes | None = None, edit=None) -> Path:
    """A copy of the saved ``kind`` folder whose model.pt is replaced by ``data`` (or ``edit(raw)``)."""
    root, _ = saved
    folder = tmp_path / f"{kind}_bad"
    shutil.copytree(root / kind, folder)
    raw = (folder / "model.pt").read_bytes()
    (folder / "model.pt").write_bytes(edit(raw) if edit else data)
    return folder


# ------------------------------------------------------------------ corrupt weights

KINDS = ["scvi", "ldvae", "scyan", "glue"]


@pytest.mark.parametrize("kind", KINDS)
def test_saved_folders_load(saved, kind):
    root, inputs = saved
    assert type(_load(kind, root / kind, inputs)).__name__ == {"scvi": "SCVI", "ldvae": "LDVAE", "scyan": "Scyan",
                                                              "glue": "GLUE"}[kind]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("cut", ["half", "tail", "head"])
def test_truncated_model_file(saved, kind, cut, tmp_path):
    # before: RuntimeError "PytorchStreamReader failed reading zip archive ... internal miniz error" or OSError
    edit = {"half": lambda r: r[: len(r) // 2], "tail": lambda r: r[:-20], "head": lambda r: r[:10]}[cut]
    folder = _damaged(saved, kind, tmp_path, edit=edit)
    with pytest.raises(DataError, match=r"model\.pt in .*_bad is truncated or corrupt .*re-save the model or restore"):
        _load(kind, folder, saved[1])


@pytest.mark.parametrize("kind", ["scvi", "glue"])
def test_corrupt_empty_and_foreign_model_files(saved, kind, tmp_path):
    inputs = saved[1]

    def flip(raw: bytes) -> bytes:  # one byte changed in the pickled payload: its CRC no longer matches
        b = bytearray(raw)
        b[raw.index(b"\x80\x02", raw.index(b"data.pkl")) + 8] ^= 0xFF  # inside the pickle, past its protocol header
        return bytes(b)

    with pytest.raises(DataError, match=r"model\.pt in .*_bad is corrupt \(its part '.*data\.pkl' fails its checksum"):
        _load(kind, _damaged(saved, kind, tmp_path / "flip", edit=flip), inputs)
    with pytest.raises(DataError, match=r"model\.pt in .*_bad is empty \(0 bytes\)"):
        _load(kind, _damaged(saved, kind, tmp_path / "empty", b""), inputs)
    with pytest.raises(DataError, match=r"model\.pt in .*_bad is not a model file saved by scprob \(not a PyTorch"):
        _load(kind, _damaged(saved, kind, tmp_path / "text", b"weights: 1 2 3\n" * 20), inputs)
    import pickle

    with pytest.raises(DataError, match=r"model\.pt in .*_bad is not a model file saved by scprob .*a plain pickle"):
        _load(kind, _damaged(saved, kind, tmp_path / "pickle", pickle.dumps({"model_class": "SCVI"})), inputs)


def _rewrite(folder: Path, change) -> None:
    payload = torch.load(folder / "model.pt", map_location="cpu", weights_only=False)
    change(payload)  # in place
    torch.save(payload, folder / "model.pt")


@pytest.mark.parametrize("kind", ["scvi", "glue"])
def test_torch_files_that_are_not_scprob_models(saved, kind, tmp_path):
    root, inputs = saved
    folder = tmp_path / "f"
    shutil.copytree(root / kind, folder)
    torch.save({"weight": torch.zeros(3)}, folder / "model.pt")
    with pytest.raises(DataError, match=r"model\.pt in .*f is a PyTorch file but not a model saved by scprob .*'weight'"):
        _load(kind, folder, inputs)
    torch.save(torch.zeros(3), folder / "model.pt")
    with pytest.raises(DataError, match=r"not a model saved by scprob \(it holds Tensor\)"):
        _load(kind, folder, inputs)


@pytest.mark.parametrize("kind", ["scvi", "glue"])
def test_payload_missing_entries_or_wrong_weights(saved, kind, tmp_path):
    root, inputs = saved
    folder = tmp_path / "m"
    shutil.copytree(root / kind, folder)
    _rewrite(folder, lambda p: p.pop("state_dict"))
    with pytest.raises(DataError, match=r"model\.pt in .*m lacks \['state_dict'\]"):
        _load(kind, folder, inputs)
    shutil.rmtree(folder)
    shutil.copytree(root / kind, folder)

    def shrink(p):  # one weight tensor of the wrong shape
        k = next(k for k, v in p["state_dict"].items() if v.ndim == 2)
        p["state_dict"][k] = p["state_dict"][k][:1]

    _rewrite(folder, shrink)
    with pytest.raises(DataError, match=r"model\.pt in .*m: the saved weights do not fit .*size mismatch"):
        _load(kind, folder, inputs)


# ------------------------------------------------------------------ foreign folders

@pytest.mark.parametrize(("written", "loader"), [
    ("scvi", "ldvae"), ("scvi", "scyan"), ("scvi", "glue"), ("ldvae", "scvi"), ("scyan", "scvi"), ("glue", "scvi"),
    ("glue", "scyan"), ("scyan", "glue"),
])
def test_folder_of_another_model_class(saved, written, loader):
    root, inputs = saved
    names = {"scvi": "SCVI", "ldvae": "LDVAE", "scyan": "Scyan", "glue": "GLUE"}
    with pytest.raises(DataError, match=rf"model\.pt in .*{written} holds a {names[written]} model, not {names[loader]}: "
                                        rf"load it with scprob\.models\.{names[written]}\.load"):
        _load(loader, root / written, inputs)


def test_trained_scvi_folder_loaded_as_glue_names_its_class(saved):
    # GLUE reads weights-only: a trained SCVI's pickled DataFrames are refused, and the
    # class is read from the pickle's opcodes (nothing executed) to say what the file is
    root, inputs = saved
    with pytest.raises(DataError, match=r"scvi_trained holds a SCVI model, not GLUE"):
        _load("glue", root / "scvi_trained", inputs)
    with pytest.raises(DataError, match=r"scvi_trained holds a SCVI model, not LDVAE"):
        LDVAE.load_query_data(make_counts(n_cells=30, n_genes=20), root / "scvi_trained")


@pytest.mark.parametrize("kind", KINDS)
def test_folder_written_by_a_newer_scprob(saved, kind, tmp_path):
    root, inputs = saved
    folder = tmp_path / "newer"
    shutil.copytree(root / kind, folder)
    _rewrite(folder, lambda p: p["versions"].update(scprob="99.1.0"))
    installed = installed_version()
    assert installed is not None
    with pytest.raises(DataError, match=rf"model\.pt in .*newer was saved by scprob 99\.1\.0, newer than the installed "
                                        rf"scprob {installed.replace('.', '[.]')}: upgrade scprob"):
        _load(kind, folder, inputs)
    # the same or an older scprob loads
    _rewrite(folder, lambda p: p["versions"].update(scprob="0.0.1"))
    _load(kind, folder, inputs)


def test_newer_trained_model_refused_by_weights_only_reader_names_the_version(saved, tmp_path):
    # a trained SCVI from a newer scprob, opened with GLUE.load: the class is the first problem named
    root, inputs = saved
    folder = tmp_path / "newer_scvi"
    shutil.copytree(root / "scvi_trained", folder)
    _rewrite(folder, lambda p: p["versions"].update(scprob="99.0"))
    with pytest.raises(DataError, match="holds a SCVI model, not GLUE"):
        _load("glue", folder, inputs)
    with pytest.raises(DataError, match="saved by scprob 99.0, newer than the installed"):
        SCVI.load(folder, inputs["scvi"].copy())


# ------------------------------------------------------------------ input files

def _h5ad(tmp_path: Path, name: str = "data.h5ad", n_cells: int = 60) -> Path:
    a = make_counts(n_cells=n_cells, n_genes=20)
    path = tmp_path / name
    a.write_h5ad(path)
    return path


def _truncate(path: Path, keep: float = 0.5) -> Path:
    raw = path.read_bytes()
    out = path.with_name(f"trunc_{path.name}")
    out.write_bytes(raw[: int(len(raw) * keep)])
    return out


def test_read_input_names_the_file_and_the_problem(tmp_path):
    good = _h5ad(tmp_path)
    assert read_input(good).shape == (60, 20)
    assert read_input(good, backed="r").isbacked
    with pytest.raises(DataError, match=r"cannot read .*trunc_data\.h5ad: the file is truncated \(\d+ bytes; truncated file"):
        read_input(_truncate(good))
    with pytest.raises(DataError, match=r"trunc_data\.h5ad: the file is truncated"):
        read_input(_truncate(good, 0.01))  # the HDF5 superblock only
    (tmp_path / "empty.h5ad").write_bytes(b"")
    with pytest.raises(DataError, match=r"empty\.h5ad: the file is empty \(0 bytes\)"):
        read_input(tmp_path / "empty.h5ad")
    (tmp_path / "text.h5ad").write_text("cell,gene\n1,2\n")
    with pytest.raises(DataError, match=r"text\.h5ad: not an HDF5 file"):
        read_input(tmp_path / "text.h5ad")
    import h5py

    with h5py.File(tmp_path / "plain.h5ad", "w") as f:
        f["values"] = np.arange(3)
    with pytest.raises(DataError, match=r"cannot read .*plain\.h5ad as AnnData: an HDF5 file, but"):
        read_input(tmp_path / "plain.h5ad")
    with pytest.raises(DataError, match=r"input file .*nope\.h5ad does not exist"):
        read_input(tmp_path / "nope.h5ad")
    with pytest.raises(DataError, match=r"unknown extension '\.loom'; expected \.h5ad"):
        read_input(tmp_path / "x.loom", kinds=("h5ad",))
    (tmp_path / "d.h5ad").mkdir()
    with pytest.raises(DataError, match=r"d\.h5ad is not a file"):
        read_input(tmp_path / "d.h5ad")


def test_read_input_other_formats(tmp_path):
    from scprob.data.fcs import write_fcs

    a = make_counts(n_cells=30, n_genes=5, sparse=False)
    fcs = write_fcs(a, tmp_path / "x.fcs")
    assert read_input(fcs).shape == (30, 5)
    with pytest.raises(DataError, match=r"trunc_x\.fcs.*truncated"):
        read_input(_truncate(Path(fcs), 0.8))
    (tmp_path / "e.csv").write_text("")
    with pytest.raises(DataError, match=r"e\.csv.*is empty"):
        read_input(tmp_path / "e.csv")
    pytest.importorskip("mudata")
    import mudata

    good = tmp_path / "m.h5mu"
    mudata.MuData({"rna": make_counts(n_cells=20, n_genes=5), "atac": make_counts(n_cells=20, n_genes=6)}).write(good)
    assert set(read_input(good).mod) == {"rna", "atac"}
    with pytest.raises(DataError, match=r"trunc_m\.h5mu: the file is truncated"):
        read_input(_truncate(good))


def test_model_load_with_a_truncated_saved_anndata(saved, tmp_path):
    root, _ = saved
    folder = tmp_path / "scvi"
    shutil.copytree(root / "scvi", folder)
    raw = (folder / "adata.h5ad").read_bytes()
    (folder / "adata.h5ad").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match=r"scvi/adata\.h5ad: the file is truncated"):
        SCVI.load(folder)


def _cli_fails(argv, capsys, *needles):
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("scprob: error: ") and "Traceback" not in err
    for n in needles:
        assert n in err, (n, err)
    return err


def test_cli_commands_name_a_truncated_input(tmp_path, capsys):
    trunc = str(_truncate(_h5ad(tmp_path)))
    out = tmp_path / "out"
    _cli_fails(["fit", "scvi", trunc, "--out", str(out), "-q"], capsys, "trunc_data.h5ad", "the file is truncated")
    (tmp_path / "table.csv").write_text(",CD3\nT,1\n")
    _cli_fails(["annotate", trunc, "--table", str(tmp_path / "table.csv"), "--out", str(out), "-q"], capsys,
               "trunc_data.h5ad", "the file is truncated")
    (tmp_path / "edges.csv").write_text("source,target\ngene0,gene1\n")
    other = str(_h5ad(tmp_path, "atac.h5ad"))
    _cli_fails(["integrate", other, trunc, "--prob-models", "NB,NB", "--graph", str(tmp_path / "edges.csv"),
                "--out", str(out), "-q"], capsys, "trunc_data.h5ad", "the file is truncated")
    assert not out.exists()


def test_cli_truncated_input_in_a_subprocess(tmp_path):
    trunc = _truncate(_h5ad(tmp_path))
    r = subprocess.run([sys.executable, "-m", "scprob.cli", "fit", "scvi", str(trunc), "--out", str(tmp_path / "o")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    assert "scprob: error: cannot read" in r.stderr and "trunc_data.h5ad" in r.stderr and "truncated" in r.stderr
    assert "Traceback" not in r.stderr


# ------------------------------------------------------------------ quiet, honest output

def test_cli_fit_output_is_quiet(tmp_path):
    # a fresh process: Lightning's loggers as Lightning sets them; the CLI no longer raises their levels itself
    good = _h5ad(tmp_path)
    r = subprocess.run([sys.executable, "-m", "scprob.cli", "fit", "scvi", str(good), "--batch-key", "batch",
                        "--max-epochs", "2", "--threads", "1", "--out", str(tmp_path / "o")],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    for noise in (*NOISE, "Warning"):
        assert noise not in r.stdout + r.stderr, noise
    assert "scprob: [2/5] training SCVI" in r.stderr and "scprob: done" in r.stderr


def _log_like(n_cells=60, seed=0):
    """Integer data that are log1p'd counts, rounded: a count likelihood accepts them, with a warning."""
    a = make_counts(n_cells=n_cells, n_genes=20, seed=seed)
    a.X = sp.csr_matrix(np.round(np.log1p(a.X.toarray())).astype(np.float32))
    return a


def test_training_output_is_quiet_and_the_data_warning_is_said_once(capfd, caplog):
    for name in ("lightning.pytorch", "lightning.fabric"):  # Lightning's own default (the CLI raises it)
        caplog.set_level(logging.INFO, logger=name)
    lightning_levels = {n: logging.getLogger(n).level for n in ("lightning.pytorch", "lightning.fabric",
                                                                "lightning.pytorch.utilities.rank_zero")}
    filters = list(warnings.filters)
    a = _log_like()
    caplog.set_level(logging.INFO)
    SCVI.setup_anndata(a, batch_key="batch")
    model = SCVI(a, n_hidden=8, n_latent=2)
    model.train(max_epochs=2)  # progress bar on: only the bar shows
    assert len(model.history["elbo_train"]) == 2
    out, err = capfd.readouterr()
    logs = caplog.text
    for noise in NOISE:
        assert noise not in out + err + logs, noise
    said = [r for r in caplog.records if "look log-transformed" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.WARNING and said[0].name == "scprob"
    assert "largest value is" in said[0].getMessage() and "gene_likelihood='zinb'" in said[0].getMessage()
    assert "Training" in err  # scprob's own epoch bar is still there
    # levels and warning filters are restored after training
    assert {n: logging.getLogger(n).level for n in lightning_levels} == lightning_levels
    assert warnings.filters == filters


def test_quiet_lightning_is_scoped(caplog):
    from scprob.train.trainer import quiet_lightning

    caplog.set_level(logging.INFO, logger="lightning.pytorch")
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    noise = "The 'train_dataloader' does not have many workers which may be a bottleneck."
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with quiet_lightning():
            assert not rank_zero.isEnabledFor(logging.INFO)
            warnings.warn(noise, UserWarning, stacklevel=1)
            warnings.warn("an unrelated warning", UserWarning, stacklevel=1)
        warnings.warn(noise, UserWarning, stacklevel=1)
    assert rank_zero.isEnabledFor(logging.INFO)
    assert [str(w.message) for w in caught] == ["an unrelated warning", noise]
    # a Lightning logger the user turned to DEBUG is left alone
    caplog.set_level(logging.DEBUG, logger="lightning.pytorch")
    with quiet_lightning():
        assert rank_zero.isEnabledFor(logging.INFO)


def test_raw_counts_give_no_data_warning(caplog):
    caplog.set_level(logging.INFO)
    a = make_counts(n_cells=60, n_genes=20)
    SCVI.setup_anndata(a, batch_key="batch")
    SCVI(a, n_hidden=8, n_latent=2)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_normalized_data_warn_or_error(caplog):
    a = make_counts(n_cells=60, n_genes=20)
    x = a.X.toarray()
    norm = x / x.sum(1, keepdims=True) * 1e4
    a.X = sp.csr_matrix(np.round(norm).astype(np.float32))  # rounded: integers, totals ~1e4
    SCVI.setup_anndata(a)
    with caplog.at_level(logging.WARNING, logger="scprob"):
        SCVI(a, n_hidden=8, n_latent=2)
    assert sum("look already normalized" in r.getMessage() for r in caplog.records) == 1
    a.X = sp.csr_matrix(norm.astype(np.float32))  # not rounded: an error that says why
    SCVI.setup_anndata(a)
    with pytest.raises(DataError, match="non-integer values.*every cell's total is 10000.*already normalized"):
        SCVI(a)
    a.X = sp.csr_matrix(np.log1p(norm).astype(np.float32))
    SCVI.setup_anndata(a)
    with pytest.raises(DataError, match="non-integer values.*look log-transformed"):
        SCVI(a)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="scprob"):
        SCVI(a, gene_likelihood="normal")  # log data under a Gaussian: nothing to say
    assert not caplog.records


def test_few_cells_in_a_batch_warn_once(caplog):
    a = make_counts(n_cells=60, n_genes=20)
    a.obs["batch"] = a.obs["batch"].cat.add_categories(["tiny"])
    a.obs.loc[a.obs_names[:3], "batch"] = "tiny"
    with caplog.at_level(logging.WARNING, logger="scprob"):
        SCVI.setup_anndata(a, batch_key="batch")
        SCVI(a, n_hidden=8, n_latent=2)
    said = [r.getMessage() for r in caplog.records if "fewer than 10 cells" in r.getMessage()]
    assert len(said) == 1 and "'tiny' (3)" in said[0] and "'b0'" not in said[0]


def test_unused_gpu_is_said_once_by_scprob(monkeypatch, caplog, capfd):
    from scprob.train import trainer

    monkeypatch.setattr(trainer, "_said", set())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    a = _scvi_adata()
    with caplog.at_level(logging.WARNING, logger="scprob"):
        for _ in range(2):
            SCVI(a, n_hidden=8, n_latent=2).train(max_epochs=1, accelerator="cpu", enable_progress_bar=False)
    said = [r for r in caplog.records if "GPU is available but training runs on the CPU" in r.getMessage()]
    assert len(said) == 1 and "accelerator='gpu'" in said[0].getMessage()
    out, err = capfd.readouterr()
    assert "GPU available" not in out + err


def test_glue_training_is_quiet(capfd, caplog):
    caplog.set_level(logging.INFO)
    rna, atac, edges = _glue_inputs()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        glue = GLUE({"rna": rna, "atac": atac}, edges, **GLUE_SMALL)
        glue.train(max_epochs=1, batch_size=64, seed=0, enable_progress_bar=False)
    out, err = capfd.readouterr()
    shown = out + err + caplog.text + "".join(str(w.message) for w in caught)
    for noise in NOISE:
        assert noise not in shown, noise
