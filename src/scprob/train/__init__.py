"""Training: Lightning plans (ELBO with KL warm-up, Pyro SVI) and the runner."""

from .plan import PyroTrainingPlan, TrainingPlan
from .trainer import EpochProgressBar, history_frames, run_training

__all__ = ["EpochProgressBar", "PyroTrainingPlan", "TrainingPlan", "history_frames", "run_training"]
