"""Adversarial training plan (GLUE): two optimizers under Lightning manual optimization.

Per step, on one minibatch of every modality and one edge minibatch:

1. discriminator:  minimize ``lam_align * dsc_loss(u.detach())``  (its own Adam);
2. everything else: minimize ``vae_loss - lam_align * dsc_loss(u)``.

During the first ``align_burnin`` epochs the discriminator sees its input blurred by
Gaussian noise of ``burnin_noise * (1 - epoch / align_burnin)`` per-dimension standard
deviations: while the embeddings still learn the data and the graph it cannot win
outright, so alignment starts gently and sharpens as the noise fades.  ``vae_loss`` and
``dsc_loss`` are defined in :mod:`scprob.modules.glue`.

``lr_anneal = (hi, lo)`` sets both optimizers' learning rate at the start of each epoch
``e`` of ``E = max_epochs`` to ``lr * (lo + (hi - lo) (1 + cos(pi e / (E - 1))) / 2)``: a
half cosine from ``hi * lr`` to ``lo * lr``.  A fixed rate keeps the adversarial game
oscillating around the alignment; annealing lets it settle.  Epoch metrics go to ``history``
as in :class:`~scprob.train.TrainingPlan`; ``validation_loss`` is the validation
``vae_loss`` (the adversarial term is not a quantity to converge on).
"""

from __future__ import annotations

import math

import torch

from .optim import Adam
from .plan import TrainingPlan, _can_fuse


class AdversarialTrainingPlan(TrainingPlan):
    def __init__(self, module, lr: float = 2e-3, weight_decay: float = 0.0, eps: float = 1e-8, lam_align: float = 0.05,
                 align_burnin: int = 0, burnin_noise: float = 1.5, loss_kwargs: dict | None = None,
                 lr_anneal: tuple[float, float] | None = None, **kwargs):
        kwargs.setdefault("n_epochs_kl_warmup", None)
        super().__init__(module, lr=lr, weight_decay=weight_decay, eps=eps, **kwargs)
        self.lam_align, self.align_burnin, self.burnin_noise = float(lam_align), int(align_burnin), float(burnin_noise)
        self.loss_kwargs = dict(loss_kwargs or {})
        self.adversarial = len(module.keys) > 1 and self.lam_align > 0
        self.lr_anneal = None if lr_anneal is None else (float(lr_anneal[0]), float(lr_anneal[1]))

    def anneal_scale(self, epoch: int, n_epochs: int) -> float:
        if self.lr_anneal is None:
            return 1.0
        hi, lo = self.lr_anneal
        return lo + (hi - lo) * 0.5 * (1.0 + math.cos(math.pi * epoch / max(n_epochs - 1, 1)))

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        if self.lr_anneal is not None:
            lr = self.lr * self.anneal_scale(self.current_epoch, int(self.trainer.max_epochs))
            for opt in self.trainer.optimizers:
                for group in opt.param_groups:
                    group["lr"] = lr

    def _losses(self, batch):
        inf, _, lo = self.module(batch, loss_kwargs=self.loss_kwargs)
        return inf, lo

    def train_batch(self, batch) -> None:
        opt_vae, opt_dsc = self.optimizers()
        inf, lo = self._losses(batch)
        loss = lo.loss
        if self.adversarial:
            noise = self.burnin_noise * max(1.0 - self.current_epoch / self.align_burnin, 0.0) if self.align_burnin else 0.0
            dsc_d = self.module.discriminator_loss(batch, inf, detach=True, noise=noise)
            self._optimize(self.lam_align * dsc_d, opt_dsc)
            loss = loss - self.lam_align * self.module.discriminator_loss(batch, inf, noise=noise)
            lo.extra_metrics["dsc_loss"] = dsc_d.detach() * lo.n_obs_minibatch
        self._optimize(loss, opt_vae)
        self._accumulate("train", lo)

    def validation_step(self, batch, batch_idx):
        inf, lo = self._losses(batch)
        if self.adversarial:
            lo.extra_metrics["dsc_loss"] = self.module.discriminator_loss(batch, inf).detach() * lo.n_obs_minibatch
        self._accumulate("validation", lo)

    def configure_optimizers(self):
        vae = [p for p in self.module.vae_parameters() if p.requires_grad]
        dsc = [p for p in self.module.discriminator.parameters() if p.requires_grad]
        kw = dict(lr=self.lr, eps=self.eps, weight_decay=self.weight_decay)
        if self.optimizer_name == "RMSprop":  # foreach: one call per step for all tensors (CPU too)
            return [torch.optim.RMSprop(vae, foreach=True, **kw), torch.optim.RMSprop(dsc, foreach=True, **kw)]
        if self.optimizer_name == "Adam":
            return [Adam(vae, fused=_can_fuse(vae), **kw), Adam(dsc, fused=_can_fuse(dsc), **kw)]
        raise ValueError(f"optimizer must be 'RMSprop' or 'Adam', got {self.optimizer_name!r}")
