"""Training: Lightning plans (ELBO with KL warm-up, Pyro SVI) and the runner."""

from .adversarial import AdversarialTrainingPlan
from .plan import FlowTrainingPlan, NonFiniteLossError, PyroTrainingPlan, TrainingPlan
from .trainer import EpochProgressBar, RelativeEarlyStopping, history_frames, run_training

__all__ = ["AdversarialTrainingPlan", "EpochProgressBar", "FlowTrainingPlan", "NonFiniteLossError", "PyroTrainingPlan", "RelativeEarlyStopping", "TrainingPlan", "history_frames", "run_training"]
