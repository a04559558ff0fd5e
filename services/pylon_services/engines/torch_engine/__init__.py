"""The built-in PyTorch engine: continuous batching over a paged KV cache inside transformers'
own model code (``engine.TorchEngine``; docs/design/engine.md). Importing this package imports
nothing: ``settings`` is torch-free and the API reads it."""
