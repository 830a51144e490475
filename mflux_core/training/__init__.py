"""Training in MLX: the generic loop (loop.py), the flow-matching objective (flow_matching.py), plots."""

from mflux_core.training.loop import TrainResult, load_checkpoint, save_checkpoint, select_trainable, train

__all__ = ["TrainResult", "load_checkpoint", "save_checkpoint", "select_trainable", "train"]
