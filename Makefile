# Sandbox Gateway: `make run` to serve, `make ui` for the web console, `make test` to test everything.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: setup run ui test test-tools unit lint clean-sandboxes compose-images bench bench-smoke bench-stages bench-code-mode bench-placement

$(BIN)/.installed: pyproject.toml
	@echo "[make] creating $(VENV) and installing sandbox-gateway with its test extras"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,ui]'
	@touch $@

## setup: venv + engine + socket proxy + sandbox image (idempotent)
setup: $(BIN)/.installed
	$(BIN)/sandbox-gateway setup

## run: setup, then serve MCP on 127.0.0.1:8000 (prints the URL and a dev token)
run: setup
	$(BIN)/sandbox-gateway serve --host 127.0.0.1 --port 8000 --skills-dir skills

## ui: the web console on 127.0.0.1:7860 for the gateway at $(MCP_SERVER_URL)
MCP_SERVER_URL ?= http://127.0.0.1:8000/mcp
ui: $(BIN)/.installed
	MCP_SERVER_URL=$(MCP_SERVER_URL) $(BIN)/sandbox-gateway ui --host 127.0.0.1 --port 7860

## lint: ruff and mypy, as configured in pyproject.toml
lint: $(BIN)/.installed
	$(BIN)/ruff check gateway policy audit frontend tests seccomp bench
	$(BIN)/mypy

## unit: the tests that need no engine
unit: $(BIN)/.installed
	$(BIN)/pytest tests/unit -q $(PYTEST_ARGS)

## test-tools: system tools the suite runs itself (Redis for shared rate limits, docker-compose for the
## stack, HAProxy to check the fleet's balancer configuration, Chromium and its driver for the web
## console's browser tests, and node-oidc-provider from npm as the OAuth issuer the console signs in
## through)
test-tools:
	@command -v redis-server >/dev/null || { echo "[make] installing redis-server for the test suite"; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server >/dev/null || \
	  { apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server >/dev/null; }; }
	@command -v haproxy >/dev/null || { echo "[make] installing haproxy for the fleet's balancer configuration"; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends haproxy >/dev/null || \
	  { apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends haproxy >/dev/null; }; }
	@command -v docker-compose >/dev/null || { echo "[make] installing docker-compose for the deployment tests"; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends docker-compose >/dev/null || \
	  { apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends docker-compose >/dev/null; }; }
	@{ command -v chromium >/dev/null && command -v chromedriver >/dev/null; } || { echo "[make] installing chromium and chromium-driver for the browser tests"; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium chromium-driver >/dev/null || \
	  { apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium chromium-driver >/dev/null; }; }
	@test -d tests/support/issuer/node_modules/oidc-provider || { echo "[make] installing the test OAuth issuer (npm ci)"; \
	  npm ci --prefix tests/support/issuer --no-audit --no-fund --loglevel=error >/dev/null; }

## test: setup, lint, then the whole suite (unit, integration, end-to-end, browser) on two workers
test: setup lint test-tools
	$(BIN)/pytest -n 2 --dist loadfile $(PYTEST_ARGS)

## bench: raw docker exec vs the gateway's fast path and fallback, side by side (BENCH_ARGS="--json out.json")
BENCH_ARGS ?=
bench: setup
	$(BIN)/python -m bench $(BENCH_ARGS)

## bench-smoke: every benchmark variant with a few samples; fails only on errors
bench-smoke: setup
	$(BIN)/python -m bench --smoke $(BENCH_ARGS)

## bench-stages: only the per-stage breakdown, from a gateway that exports its spans to the benchmark
bench-stages: setup
	$(BIN)/python -m bench --parts stages $(BENCH_ARGS)

## bench-code-mode: an upstream tool call from sandbox code through the gateway vs the same call made directly
bench-code-mode: setup
	$(BIN)/python -m bench.code_mode $(BENCH_ARGS)

## bench-placement: fleet placement simulated over 1000 hosts and 100,000 principals, no engine needed
bench-placement: $(BIN)/.installed
	$(BIN)/python -m bench.placement $(BENCH_ARGS)

## compose-images: build the compose stack's gateway and socket-proxy images (offline, no registry needed)
compose-images: $(BIN)/.installed
	$(BIN)/sandbox-gateway build-images

## clean-sandboxes: remove every container this project labelled (through the socket proxy)
clean-sandboxes:
	docker -H unix:///run/sandbox-gateway/docker-proxy.sock ps -aq --filter label=sandbox-gateway.managed=true | xargs -r docker -H unix:///run/sandbox-gateway/docker-proxy.sock rm -f
