"""The PyTorch serving engine: streams tokens from a Pylon checkpoint on CPU or one GPU."""

from pylon_services.engines.torch_engine.runner import (
    FINISH_LENGTH,
    FINISH_STOP,
    GeneratedPiece,
    ModelRunner,
    SamplingParams,
)

__all__ = ["FINISH_LENGTH", "FINISH_STOP", "GeneratedPiece", "ModelRunner", "SamplingParams"]
