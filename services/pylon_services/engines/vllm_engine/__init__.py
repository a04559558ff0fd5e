"""The vLLM backend of the engine port (the ``vllm`` extra of pylon-services).

Importing this package does not import vLLM; ``load_vllm_engine`` does, when it starts an engine.
"""

from pylon_services.engines.vllm_engine.config import CONFIG_KEYS
from pylon_services.engines.vllm_engine.engine import VllmEngine, load_vllm_engine

__all__ = ["CONFIG_KEYS", "VllmEngine", "load_vllm_engine"]
