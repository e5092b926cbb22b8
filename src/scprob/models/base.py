"""What every model shares: registration, data stores, training, latent extraction,
save/load.  A model holds a module, a registry and (while training) a plan."""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .._settings import settings
from ..data import BatchLoader, DataError, TensorStore, get_registry, setup_anndata, split_indices, transfer_setup
from ..data.backed import BackedStore, ChunkedLoader
from ..data.registry import UNS_KEY
from ..train import TrainingPlan, history_frames, run_training
from ..train.checkpoint import EpochCheckpoint, data_fingerprint, keeps_global_rng, read_checkpoint
from ..train.plan import NonFiniteLossError
from ..train.trainer import HistoryLogger
from ._describe import _describe_registry, _describe_setup_args, _summary_stats
from ._files import _versions, write_dir_atomic

_FILE = "model.pt"


def default_max_epochs(n_cells: int) -> int:
    """scvi-tools' rule: ~400 epochs for 20k cells or fewer, fewer for larger data."""
    return int(max(1, min(round((20_000 / max(n_cells, 1)) * 400), 400)))


def _append_history(old: dict[str, pd.DataFrame], new: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """scvi-tools' rule for a further ``train()``: the new run's epochs follow the old
    ones (re-indexed from the last recorded epoch + 1), metric by metric."""
    if not old:
        return new
    last = max((int(df.index.max()) for df in old.values() if len(df)), default=-1)
    out = dict(old)
    for key, df in new.items():
        df = df.copy()
        df.index = df.index + last + 1
        df.index.name = "epoch"
        out[key] = pd.concat([old[key], df]) if key in old else df
    return out


def _prefixed(dir_path: str | os.PathLike, prefix: str | None, name: str) -> Path:
    return Path(dir_path) / f"{prefix or ''}{name}"


def _index_property(name: str, doc: str) -> property:
    """A split's cell positions, stored as ``<name>_`` (int64 array or ``None``)."""
    attr = name + "_"

    def get(self) -> np.ndarray | None:
        return getattr(self, attr)

    def set_(self, value) -> None:
        setattr(self, attr, None if value is None else np.asarray(value, dtype=np.int64))

    return property(get, set_, doc=doc)


class BaseModel:
    """Base of user-facing models.  Subclasses build ``self.module`` in ``__init__`` and
    record the constructor arguments in ``self.init_params`` (used by ``load``).

    ``adata=None`` builds an empty model (scvi-tools' convention) in subclasses that define
    ``_build_from_registry`` (which builds ``self.module`` from a registry): assign
    ``model.adata`` later or use ``Model.load``."""

    _plan_cls = TrainingPlan

    def __init__(self, adata):
        if adata is None and not hasattr(self, "_build_from_registry"):  # the hook that completes it later
            raise TypeError(f"{type(self).__name__} needs its AnnData at construction: {type(self).__name__}(adata, ...)")
        self._adata = adata
        self.registry = get_registry(adata) if adata is not None else None
        self.init_params: dict = {}
        self.history_: dict = {}
        self.is_trained_ = False
        self.train_indices_: np.ndarray | None = None
        self.validation_indices_: np.ndarray | None = None
        self.test_indices_: np.ndarray | None = None
        self._plan_defaults: dict = {}
        self._train_loader_kwargs: dict = {}  # e.g. n_samples_per_epoch
        self._stores: dict[int, tuple[object, TensorStore]] = {}
        self._device = torch.device("cpu")
        torch.manual_seed(settings.seed)  # module init is reproducible

    # ------------------------------------------------------------------ setup
    @classmethod
    def setup_anndata(
        cls,
        adata,
        layer: str | None = None,
        batch_key: str | None = None,
        labels_key: str | None = None,
        size_factor_key: str | None = None,
        categorical_covariate_keys: list[str] | None = None,
        continuous_covariate_keys: list[str] | None = None,
    ) -> None:
        """Validate ``adata`` and register the fields the model reads (see
        :func:`scprob.data.setup_anndata`)."""
        setup_anndata(
            adata, layer=layer, batch_key=batch_key, labels_key=labels_key, size_factor_key=size_factor_key,
            categorical_covariate_keys=categorical_covariate_keys, continuous_covariate_keys=continuous_covariate_keys,
            model_name=cls.__name__,
        )

    # ------------------------------------------------------------- the data
    @property
    def adata(self):
        """The AnnData the model reads (``None`` for a model built with ``adata=None``).
        Assigning another AnnData validates it against the model's registry (same genes
        in the same order; its batches, labels and covariate categories among the model's)
        and registers it, as scvi-tools does; a model built without AnnData is completed
        from the assigned one's registry (its ``setup_anndata`` must have been called)."""
        return self._adata

    @adata.setter
    def adata(self, adata) -> None:
        if adata is None:
            raise ValueError("model.adata cannot be set to None")
        if self.registry is None:
            self._adata = adata
            self.registry = get_registry(adata)
            self._build_from_registry()
        else:
            self.registry = self._register_other(adata)
            self._adata = adata
        self._stores.clear()

    def _register_other(self, adata) -> dict:
        """Register ``adata`` with this model's registry (categories and genes checked)
        and return the registry it now carries."""
        return transfer_setup(adata, self.registry)

    def _require_adata(self) -> None:
        if self._adata is None:
            raise ValueError(
                f"this {type(self).__name__} has no AnnData: assign model.adata = adata (set up with "
                f"{type(self).__name__}.setup_anndata) or use {type(self).__name__}.load(dir_path, adata)."
            )

    @property
    def history(self):
        """Per-metric DataFrames indexed by epoch; a further ``train()`` appends its epochs."""
        return self.history_

    train_indices = _index_property("train_indices", "Cells (positions in ``adata``) of the last training split; saved with the model.")
    validation_indices = _index_property("validation_indices", "Cells of the last validation split; saved with the model.")
    test_indices = _index_property("test_indices", "Cells in neither split (``train_size + validation_size < 1``); saved with the model.")

    def view_anndata_setup(self, adata=None, hide_state_registries: bool = False) -> None:
        """Print how the model reads ``adata`` (default: its own): setup arguments, sizes
        and the category orders (scvi-tools' ``view_anndata_setup``; ``hide_state_registries``
        hides the category lists)."""
        self._require_adata()
        if adata is not None and adata is not self.adata and UNS_KEY not in adata.uns:
            raise ValueError("this AnnData is not set up for the model: call "
                             f"{type(self).__name__}.setup_anndata(adata, ...) or pass it to a method first")
        reg = self._registry_of(adata)
        print(_describe_registry(reg, type(self).__name__, hide_state_registries))

    @staticmethod
    def view_setup_args(dir_path: str | os.PathLike, prefix: str | None = None) -> None:
        """Print the ``setup_anndata`` arguments of a model saved in ``dir_path``."""
        payload = _read_saved(dir_path, prefix, None)
        print(_describe_setup_args(payload["registry"], payload["model_class"]))

    @property
    def is_trained(self) -> bool:
        return self.is_trained_

    @property
    def device(self) -> torch.device:
        return self._device

    def to_device(self, device: str | torch.device) -> None:
        self._device = torch.device(device)
        self.module.to(self._device)
        self._stores.clear()

    def _validate_anndata(self, adata=None):
        """Return an AnnData ready to be read with this model's registry."""
        if adata is None or adata is self.adata:
            self._require_adata()
            return self.adata
        reg = get_registry(adata) if UNS_KEY in adata.uns else {}
        if any(reg.get(k) != self.registry[k] for k in ("var_names", "batch_categories")):
            transfer_setup(adata, self.registry)
        return adata

    @property
    def summary_stats(self) -> dict[str, int]:
        """Counts from the registered data, as scvi-tools' ``summary_stats``: ``n_cells``,
        ``n_vars``, ``n_batch``, ``n_labels``, ``n_extra_categorical_covs``, ``n_extra_continuous_covs``."""
        return _summary_stats(self.registry)

    def _registry_of(self, adata=None) -> dict:
        return get_registry(self._validate_anndata(adata))

    def _store(self, adata=None) -> TensorStore:
        adata = self._validate_anndata(adata)
        key = id(adata)
        if key not in self._stores:
            # keep the training data's store and the latest other one; each entry holds
            # its AnnData, so an id cannot be recycled while it is cached
            self._stores = {k: v for k, v in self._stores.items() if k == id(self.adata)}
            self._stores[key] = (adata, self._make_store(adata))
        return self._stores[key][1]

    def _make_store(self, adata) -> TensorStore:
        reg = get_registry(adata)
        cls = BackedStore if getattr(adata, "isbacked", False) and not reg.get("minified") else TensorStore
        wants_log1p = bool(getattr(getattr(self, "module", None), "wants_log1p_x", False))
        return cls(adata, reg, device=self._device, x_log1p=wants_log1p)

    @staticmethod
    def _loader_cls(store: TensorStore):
        return ChunkedLoader if isinstance(store, BackedStore) else BatchLoader

    def _loader(self, adata=None, indices=None, batch_size: int | None = None, shuffle: bool = False):
        store = self._store(adata)  # validates adata against the model
        return self._loader_cls(store)(store, indices, batch_size=batch_size or 1024, shuffle=shuffle)

    # --------------------------------------------------------------- training
    @keeps_global_rng
    def train(
        self,
        max_epochs: int | None = None,
        accelerator: str = "auto",
        devices: int | str = "auto",
        train_size: float | None = None,
        validation_size: float | None = None,
        batch_size: int = 128,
        early_stopping: bool = False,
        seed: int | None = None,
        plan_kwargs: dict | None = None,
        datasplitter_kwargs: dict | None = None,
        enable_progress_bar: bool = True,
        checkpoint_dir: str | os.PathLike | None = None,
        checkpoint_every_n_epochs: int = 1,
        resume_from: str | os.PathLike | None = None,
        **trainer_kwargs,
    ) -> None:
        """Train with Lightning.

        ``checkpoint_dir``: write ``checkpoint_dir/last.ckpt`` every
        ``checkpoint_every_n_epochs`` epochs (atomically; see :mod:`scprob.train.checkpoint`).
        ``resume_from``: continue the run whose checkpoint is in that folder (same data,
        same arguments; its seed, split and epoch budget are taken from the checkpoint) and
        keep checkpointing there; the result equals an uninterrupted run.  A non-finite
        loss or gradient stops training with :class:`~scprob.train.plan.NonFiniteLossError`
        naming the epoch and the terms; the model keeps its last finite weights.

        ``max_epochs`` defaults to ``min(400, round(20000 / n_cells * 400))``.  ``plan_kwargs``
        go to :class:`~scprob.train.TrainingPlan` (lr, weight_decay, n_epochs_kl_warmup,
        n_steps_kl_warmup, reduce_lr_on_plateau, ...); other keyword arguments go to
        ``lightning.Trainer`` (``strategy``, ``check_val_every_n_epoch``, ...) or to the
        early-stopping callback (``early_stopping_patience``, ``early_stopping_monitor``).
        ``datasplitter_kwargs={"external_indexing": [train_idx, val_idx]}`` fixes the split.

        Split and last minibatch (scvi-tools' rules): ``train_size`` defaults to 0.9.  A
        last training minibatch of a single cell (``n_train % batch_size == 1``) cannot be
        trained with batch normalisation: with the default ``train_size`` that cell moves
        to the validation set; with an explicit ``train_size`` or split it is a
        ``ValueError`` unless ``datasplitter_kwargs={"drop_last": True}`` (drop the
        incomplete last batch every epoch).  A last batch of two cells trains, with a warning.
        """
        import lightning.pytorch as pl

        self._require_adata()
        if self.registry.get("minified"):
            raise ValueError("cannot train on a minified AnnData (its counts were dropped)")
        settings.apply_threads()
        fingerprint = data_fingerprint(self.adata.obs_names, self.adata.var_names)
        resumed = None
        if resume_from is not None:  # checked before any work
            ckpt_path, resumed, _ = read_checkpoint(resume_from, fingerprint, type(self).__name__)
            seed, max_epochs = int(resumed["seed"]), int(resumed["max_epochs"]) if max_epochs is None else max_epochs
            datasplitter_kwargs = dict(datasplitter_kwargs or {}, external_indexing=[
                resumed["train_indices"].numpy(), resumed["validation_indices"].numpy()])
            checkpoint_dir = resume_from if checkpoint_dir is None else checkpoint_dir
        seed = settings.seed if seed is None else seed
        pl.seed_everything(seed, verbose=False)
        n = self.adata.n_obs
        max_epochs = default_max_epochs(n) if max_epochs is None else int(max_epochs)
        strategy = trainer_kwargs.get("strategy", "auto")
        if (
            torch.cuda.is_available() and accelerator in ("auto", "gpu", "cuda")
            and strategy == "auto" and devices in ("auto", 1, [0], "1")
        ):
            self.to_device("cuda")  # tensors are built once on the GPU
        else:
            self.to_device("cpu")
        store = self._store()
        ds = dict(datasplitter_kwargs or {})
        ext, drop_last = ds.pop("external_indexing", None), bool(ds.pop("drop_last", False))
        if ds:
            raise TypeError(f"unknown datasplitter_kwargs {sorted(ds)} (known: external_indexing, drop_last)")
        if ext is not None:
            train_idx, val_idx = np.asarray(ext[0], dtype=np.int64), np.asarray(ext[1], dtype=np.int64)
            if train_idx.size == 0 or train_idx.max() >= n or (val_idx.size and val_idx.max() >= n):
                raise ValueError("external_indexing must hold valid cell indices (train non-empty)")
        else:
            train_idx, val_idx = split_indices(n, 0.9 if train_size is None else train_size, validation_size, seed=seed)
        rest = len(train_idx) % batch_size if "n_samples_per_epoch" not in self._train_loader_kwargs else 0
        if rest == 1 and not drop_last:
            if train_size is None and ext is None and len(train_idx) > 1:
                train_idx, val_idx = train_idx[:-1], np.append(val_idx, train_idx[-1])
            else:
                raise ValueError(
                    f"the last training minibatch would hold 1 cell ({len(train_idx)} training cells, "
                    f"batch_size={batch_size}), which batch normalisation cannot train on: change batch_size or "
                    "train_size, or pass datasplitter_kwargs={'drop_last': True}."
                )
        elif rest == 2 and not drop_last:
            warnings.warn(
                f"the last training minibatch holds 2 cells ({len(train_idx)} training cells, batch_size="
                f"{batch_size}); consider another batch_size or datasplitter_kwargs={{'drop_last': True}}.",
                UserWarning, stacklevel=3,
            )
        unused = np.ones(n, dtype=bool)  # a mask, not setdiff1d: its sorts hold ~5 int64 copies of n at 1M cells
        unused[train_idx] = False
        unused[val_idx] = False
        test_idx = np.flatnonzero(unused)
        loader_cls = self._loader_cls(store)
        train_loader = loader_cls(
            store, train_idx, batch_size, shuffle=True, seed=seed, drop_last_below=batch_size if drop_last else 2,
            shard=True, **self._train_loader_kwargs
        )
        val_loader = loader_cls(store, val_idx, batch_size, shuffle=False, shard=True) if len(val_idx) else None
        if len(train_loader) == 0:
            raise DataError(f"Too few cells to train ({len(train_idx)} in the training split).")
        self.train_indices_, self.validation_indices_, self.test_indices_ = train_idx, val_idx, test_idx
        if not any(p.requires_grad for p in self.module.parameters()):
            raise ValueError("nothing to train: every parameter is frozen (a query with no new batches needs no training)")
        self.module.train()  # Lightning keeps modules in the mode it finds them
        plan = self._plan_cls(self.module, **(self._plan_defaults | (plan_kwargs or {})))
        callbacks = list(trainer_kwargs.pop("callbacks", None) or [])
        if checkpoint_dir is not None or resumed is not None:
            extra = dict(model_class=type(self).__name__, data=fingerprint, seed=int(seed), max_epochs=int(max_epochs),
                         train_indices=torch.as_tensor(train_idx), validation_indices=torch.as_tensor(val_idx))
            callbacks.append(EpochCheckpoint(checkpoint_dir, checkpoint_every_n_epochs, extra, [train_loader, val_loader]))
        previous = self.history_ if (self.is_trained_ and resumed is None) else {}
        trainer = None
        try:
            trainer = run_training(
                plan, train_loader, val_loader, max_epochs=max_epochs, accelerator=accelerator, devices=devices,
                early_stopping=early_stopping, enable_progress_bar=enable_progress_bar, callbacks=callbacks,
                ckpt_path=str(ckpt_path) if resumed is not None else None, **trainer_kwargs,
            )
        except NonFiniteLossError:
            # the completed epochs; weights are the last finite ones
            self.history_ = _append_history(previous, history_frames(plan.history))
            self.module.eval()
            raise
        self.history_ = _append_history(previous, history_frames(self._run_history(plan, trainer)))
        self.module.eval()
        self._device = next(self.module.parameters()).device
        self.is_trained_ = True

    @staticmethod
    def _run_history(plan, trainer) -> dict[str, list[tuple[int, float]]]:
        """The plan's epoch metrics plus what callbacks logged through the Trainer's
        :class:`~scprob.train.trainer.HistoryLogger` (e.g. ``LearningRateMonitor``'s ``lr-Adam``)."""
        rows = {k: list(v) for k, v in plan.history.items()}
        for lg in getattr(trainer, "loggers", []) or []:
            if isinstance(lg, HistoryLogger):
                for key, vals in lg.history.items():
                    rows.setdefault(key, vals)
        return rows

    # -------------------------------------------------------------- inference
    def _check_trained(self, warn: bool = False) -> None:
        """Raise (or, with ``warn``, only warn as scvi-tools does for likelihood queries)
        when the model has not been trained."""
        if not self.is_trained_:
            msg = f"{type(self).__name__} is not trained yet: call .train() first."
            if not warn:
                raise RuntimeError(msg)
            warnings.warn(msg + " Returning values of the untrained model.", UserWarning, stacklevel=3)

    def _make_data_loader(self, adata=None, indices=None, batch_size: int | None = None, shuffle: bool = False):
        """A minibatch loader over ``adata`` (validated against the model; default the
        model's own), as scvi-tools' ``_make_data_loader``: pass it as ``dataloader=`` to
        ``get_latent_representation``, ``get_elbo``, ``get_reconstruction_error`` or
        ``get_marginal_ll``.  It yields dicts of tensors keyed as the module expects."""
        return self._loader(adata, indices, batch_size, shuffle)

    def _batches(self, adata=None, indices=None, batch_size: int | None = None, dataloader=None):
        if dataloader is not None and (adata is not None or indices is not None):
            raise ValueError("pass either dataloader or adata/indices, not both")
        settings.apply_threads()
        self.module.eval()
        with torch.inference_mode():
            yield from (self._loader(adata, indices, batch_size) if dataloader is None else dataloader)

    @torch.inference_mode()
    def get_latent_representation(
        self, adata=None, indices=None, give_mean: bool = True, mc_samples: int = 5000, batch_size: int | None = None,
        return_dist: bool = False, dataloader=None,
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Posterior of z per cell: its mean (``give_mean``) or one sample.  For the
        logistic-normal latent the mean is a Monte-Carlo average of softmax samples.
        ``return_dist=True`` returns the mean and variance of q(z|x) instead.
        ``dataloader``: iterate this loader (see :meth:`_make_data_loader`) instead of ``adata``."""
        self._check_trained()
        out, var = [], []
        for tensors in self._batches(adata, indices, batch_size, dataloader):
            inf = self.module.inference(**self.module._get_inference_input(tensors))
            qz = inf["qz"]
            if return_dist:
                out.append(qz.loc.cpu())
                var.append(qz.scale.pow(2).cpu())
                continue
            if getattr(self.module, "latent_distribution", "normal") == "ln":
                z = self.module.z_encoder.z_transform(qz.sample((mc_samples,))).mean(0) if give_mean else inf["z"]
            else:
                z = qz.loc if give_mean else inf["z"]
            out.append(z.cpu())
        if return_dist:
            return torch.cat(out).numpy(), torch.cat(var).numpy()
        return torch.cat(out).numpy()

    # ------------------------------------------------------------ save / load
    def save(
        self, dir_path: str | os.PathLike, prefix: str | None = None, overwrite: bool = False,
        save_anndata: bool = False, **anndata_write_kwargs,
    ) -> None:
        """Write weights, registry, constructor arguments, history, the train/validation/test
        indices and versions to ``dir_path/<prefix>model.pt`` (and ``<prefix>adata.h5ad`` if
        ``save_anndata``; ``anndata_write_kwargs`` go to ``write_h5ad``).  The folder is
        written under a temporary name and renamed at the end: never half-written (so
        ``overwrite=True`` replaces the whole folder, other prefixes included)."""
        self._require_adata()

        def write(tmp: Path) -> None:
            indices = {k: torch.as_tensor(v) for k, v in (
                ("train", self.train_indices_), ("validation", self.validation_indices_), ("test", self.test_indices_),
            ) if v is not None}
            payload = dict(
                model_class=type(self).__name__, state_dict={k: v.cpu() for k, v in self.module.state_dict().items()},
                init_params=self.init_params, registry=self.registry, history=self.history_,
                is_trained=self.is_trained_, versions=_versions(), extra=self._extra_state(), indices=indices,
            )
            torch.save(payload, _prefixed(tmp, prefix, _FILE))
            if save_anndata:
                self.adata.write_h5ad(_prefixed(tmp, prefix, "adata.h5ad"), **anndata_write_kwargs)

        write_dir_atomic(dir_path, write, overwrite)

    @classmethod
    def _setup_loaded(cls, adata, registry: dict) -> None:
        """Register ``adata`` with a saved model's registry before the model is rebuilt."""
        transfer_setup(adata, registry)

    def _extra_state(self) -> dict:
        return {}

    def _load_extra_state(self, extra: dict) -> None:
        pass

    @classmethod
    def load(
        cls, dir_path: str | os.PathLike, adata=None, accelerator: str = "cpu", device: int | str = "auto",
        prefix: str | None = None,
    ):
        """Load a model saved in ``dir_path`` (files ``<prefix>model.pt`` and, if saved,
        ``<prefix>adata.h5ad``) onto ``adata`` (which must have the model's genes; its
        batches must be among the model's).  ``adata=None`` uses the saved AnnData.
        ``accelerator="gpu"`` (or ``device="cuda:1"``) puts it on a GPU."""
        from ..data.io import read_input
        from ._files import load_weights

        payload = _read_saved(dir_path, prefix, cls.__name__, required=(
            "state_dict", "init_params", "registry", "history", "is_trained"))  # DataError if corrupt or foreign
        if adata is None:
            h5 = _prefixed(dir_path, prefix, "adata.h5ad")
            if not h5.exists():
                raise DataError(f"{dir_path} was saved without its AnnData ({h5.name}); pass adata=.")
            adata = read_input(h5, kinds=("h5ad",))
        cls._setup_loaded(adata, payload["registry"])
        model = cls(adata, **payload["init_params"])
        load_weights(model.module, payload["state_dict"], dir_path)
        model.history_ = payload["history"]
        model.is_trained_ = payload["is_trained"]
        for split, value in (payload.get("indices") or {}).items():
            setattr(model, f"{split}_indices_", np.asarray(value, dtype=np.int64))
        model._load_extra_state(payload.get("extra", {}))
        model.module.eval()
        if isinstance(device, str) and device.startswith("cuda"):
            model.to_device(device)
        elif accelerator in ("gpu", "cuda") and torch.cuda.is_available():
            model.to_device("cuda" if device == "auto" else f"cuda:{device}")
        return model

    def __repr__(self) -> str:
        r = self.registry
        if r is None:
            return f"{type(self).__name__}(no AnnData yet, trained={self.is_trained_})"
        return (
            f"{type(self).__name__}({r['n_obs']} cells x {r['n_vars']} genes, "
            f"{len(r['batch_categories'])} batch(es), trained={self.is_trained_})"
        )


def _read_saved(dir_path: str | os.PathLike, prefix: str | None, expected_class: str | None,
                required: tuple[str, ...] = ()) -> dict:
    """The checked payload of ``dir_path/<prefix>model.pt`` (see ``_files.read_model_file``);
    ``expected_class=None`` accepts any scprob model class."""
    from ._files import read_model_file

    if expected_class is None:
        from ._files import MODEL_FILE, peek_header

        found, _ = peek_header(_prefixed(dir_path, prefix, MODEL_FILE))
        expected_class = found or ""
    if not prefix:
        return read_model_file(dir_path, expected_class, required=required)
    src = Path(dir_path)
    model_file = _prefixed(src, prefix, _FILE)
    if not model_file.exists():
        raise FileNotFoundError(f"No saved model at {model_file}")
    # read_model_file reads <folder>/model.pt: show it the prefixed files under their plain names
    with tempfile.TemporaryDirectory(prefix=".scprob_prefix.") as tmp:
        for name in (_FILE, "adata.h5ad"):
            f = _prefixed(src, prefix, name)
            if f.exists():
                os.symlink(f.resolve(), Path(tmp) / name)
        try:
            return read_model_file(tmp, expected_class, required=required)
        except DataError as e:
            raise DataError(str(e).replace(f"{_FILE} in {tmp}", str(model_file)).replace(tmp, str(src))) from None
