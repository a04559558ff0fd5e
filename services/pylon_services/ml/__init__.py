"""Models and their file formats, shared by Pylon's trainers and engines: the Llama-architecture
decoder and Hugging Face directories (``llama.py``, ``hf.py``), the presets (``presets.py``,
torch-free), throughput accounting (``perf.py``) and device choice (``device.py``). Import the submodules: this package imports
nothing, so the API can read the presets without loading torch."""
