"""Training: the loop (``loop``), one public step (``step``), schedules, state, run writer.

``train(cfg, out_dir)`` runs a whole training; ``train_step`` is one optimizer step of
adversarial training with a sparsity method, for benchmarks and custom loops.
"""

from dnr.training.loop import TrainResult, train
from dnr.training.run import stage_plan
from dnr.training.schedule import learning_rate, milestone_epochs, schedule_warning
from dnr.training.setup import (
    TrainingParts,
    build_optimizer,
    build_training_parts,
    load_init_weights,
    model_for,
    model_meta,
)
from dnr.training.state import TrainState
from dnr.training.step import StepOutput, attacks_in_training, hybrid_loss, train_step
from dnr.training.writer import CHECKPOINT_VERSION, RunExistsError, RunWriter

__all__ = [
    "CHECKPOINT_VERSION",
    "RunExistsError",
    "RunWriter",
    "StepOutput",
    "TrainResult",
    "TrainState",
    "TrainingParts",
    "attacks_in_training",
    "build_optimizer",
    "build_training_parts",
    "hybrid_loss",
    "learning_rate",
    "load_init_weights",
    "milestone_epochs",
    "model_for",
    "model_meta",
    "schedule_warning",
    "stage_plan",
    "train",
    "train_step",
]
