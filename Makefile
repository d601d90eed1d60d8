# Two entry points for a fresh machine: `make run` (demo cluster) and `make test`.
VENV    ?= .venv
PYTHON  ?= python3
BIN     := $(VENV)/bin
PORT    ?= 5353
SUDO    := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# tests run in a private network namespace with only loopback: nothing can leave the machine
NETNS   := $(shell [ "$$(id -u)" = 0 ] && echo "unshare -n" || echo "unshare -rn")
# Debian tools the tests drive: dig/nslookup, dnsmasq (a real upstream), dnsperf, ip, unshare
TOOLS   := dig:bind9-dnsutils nslookup:bind9-dnsutils dnsmasq:dnsmasq-base dnsperf:dnsperf ip:iproute2 unshare:util-linux openssl:openssl knotd:knot musl-gcc:musl-tools

.PHONY: install tools run test lint bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

install: $(BIN)/.installed

tools:
	@missing=""; for t in $(TOOLS); do command -v $${t%%:*} >/dev/null 2>&1 || missing="$$missing $${t#*:}"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

run: install
	@echo "serving the demo cluster on 127.0.0.1:$(PORT) and [::1]:$(PORT); try:"
	@echo "  dig @127.0.0.1 -p $(PORT) httpd-svc.default.svc.cluster.local"
	$(BIN)/clusterdns serve --manifests config/demo-cluster.yaml --listen 127.0.0.1:$(PORT) --listen [::1]:$(PORT) --external-zone example.com

# lint first (seconds), then the suite in a private network namespace
test: install tools lint
	$(NETNS) sh -c 'ip link set lo up && $(BIN)/pytest -q -p no:cacheprovider $(PYTEST_ARGS)'

# ruff (lint, format) and mypy, as configured in pyproject.toml
lint: install
	$(BIN)/ruff check clusterdns tests bench && $(BIN)/ruff format --check clusterdns && $(BIN)/mypy

# side-by-side benchmark (~10 min; BENCH_ARGS=--quick for ~1 min); see bench/README.md
bench: install tools
	$(BIN)/python bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
