#!/bin/sh
# Fills the GPU image's virtualenv (Dockerfile.gpu's build stage). Two variants:
#   INSTALL_VLLM=0  CUDA torch (PyPI's Linux wheel is the CUDA build), Ray and the Pylon packages
#                   with their own pins: trainers and the torch engine.
#   INSTALL_VLLM=1  vLLM first, with the torch and transformers it pins; then the Pylon packages
#                   without their dependencies, and only those dependencies vLLM did not bring,
#                   held to vLLM's versions (services/pyproject.toml: vLLM's transformers pin
#                   excludes ours, as in scripts/vllm_venv.sh).
set -eu
: "${VENV:?}" "${TORCH_VERSION:?}" "${RAY_VERSION:?}" "${VLLM_VERSION:?}" "${INSTALL_VLLM:?}"
PY="$VENV/bin/python"
install() { uv pip install --python "$PY" --no-cache "$@"; }

if [ "$INSTALL_VLLM" = "1" ]; then
  install "vllm==$VLLM_VERSION" "ray[default]==$RAY_VERSION"
  uv pip freeze --python "$PY" > "$VENV/vllm-pins.txt"
  install --no-deps /src/sdk /src/services
  # The packages' requirements whose distribution vLLM did not already install.
  "$PY" - /src/sdk/pyproject.toml /src/services/pyproject.toml > /tmp/missing.txt <<'PYEOF'
import re, sys, tomllib
from importlib import metadata

installed = {re.sub(r"[-_.]+", "-", d.metadata["Name"]).lower() for d in metadata.distributions()}
for path in sys.argv[1:]:
    with open(path, "rb") as f:
        for req in tomllib.load(f)["project"]["dependencies"]:
            name = re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9_.-]+", req).group(0)).lower()
            if name not in installed and not name.startswith("pylon-"):
                print(req)
PYEOF
  install -c "$VENV/vllm-pins.txt" -r /tmp/missing.txt
  "$PY" -c "import vllm; print('vllm', vllm.__version__)"
else
  install "torch==$TORCH_VERSION" "ray[default]==$RAY_VERSION" /src/sdk /src/services
fi
"$PY" -c "import pylon, pylon_services, ray, torch; print('torch', torch.__version__, 'ray', ray.__version__)"
