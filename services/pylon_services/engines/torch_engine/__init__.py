"""The PyTorch serving engine: streams tokens from a tiny-GPT checkpoint or a Hugging Face Llama
directory, on CPU or one GPU."""

from pylon_services.engines.torch_engine.hf_runner import HfRunner, IncrementalDecoder
from pylon_services.engines.torch_engine.runner import (
    FINISH_LENGTH,
    FINISH_STOP,
    GeneratedPiece,
    ModelRunner,
    Runner,
    SamplingParams,
)

__all__ = ["FINISH_LENGTH", "FINISH_STOP", "GeneratedPiece", "HfRunner", "IncrementalDecoder", "ModelRunner",
           "Runner", "SamplingParams"]
