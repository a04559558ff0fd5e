"""Trainers that scheduler jobs run inside Ray workers."""

from pylon_services.trainers.tiny_gpt import (
    InvalidTrainConfig,
    TrainConfig,
    TrainResult,
    train,
)

__all__ = ["InvalidTrainConfig", "TrainConfig", "TrainResult", "train"]
