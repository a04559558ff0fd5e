"""The workloads that ship with Pylon. Each check here must stay torch-free (it runs in the API)."""

from __future__ import annotations

from pylon_services.engines.queue_limits import queue_violations
from pylon_services.engines.torch_engine.settings import config_violations as torch_engine_config
from pylon_services.trainers.causal_lm_config import config_violations as causal_lm_config
from pylon_services.workloads.registry import Workload, WorkloadKind, WorkloadRegistry


def register(registry: WorkloadRegistry) -> None:
    registry.register(Workload(
        WorkloadKind.TRAINER, "causal-lm", "pylon_services.trainers.causal_lm_job:run",
        "a Llama-architecture causal LM on tokenized dataset versions, data-parallel over the gang "
        "(one process per GPU), optionally fine-tuning a Hugging Face model",
        check_config=causal_lm_config, max_gpus_per_worker=1, needs_tokens=True,
        base_model_formats=("MODEL_FORMAT_HF_TRANSFORMERS",), output_format="MODEL_FORMAT_HF_TRANSFORMERS"))
    registry.register(Workload(
        WorkloadKind.ENGINE, "torch", "pylon_services.engines.replica:run",
        "Pylon's PyTorch engine: continuous batching over a paged KV cache for Hugging Face Llama, Mistral, "
        "Qwen2 and GPT-2 models, served over EngineService",
        check_config=torch_engine_config, max_gpus_per_worker=1))
    registry.register(Workload(
        WorkloadKind.ENGINE, "vllm", "pylon_services.engines.replica:run",
        "vLLM, where the worker has it installed (pylon-services[vllm]), served over the same EngineService; "
        "vLLM checks its own settings when the replica starts",
        check_config=queue_violations, max_gpus_per_worker=1))
