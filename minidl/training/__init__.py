"""Training: the Trainer, checkpoints, recipes (model file + CLI -> Trainer) and plots."""
from .checkpoint import CheckpointError, latest_valid_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint
from .trainer import NonFiniteError, Trainer, evaluate

__all__ = [
    "CheckpointError", "NonFiniteError", "Trainer", "evaluate", "latest_valid_checkpoint", "list_checkpoints",
    "load_checkpoint", "save_checkpoint",
]
