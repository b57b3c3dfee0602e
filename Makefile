# The README's first two commands: `make demo` and `make test`.
# Both install what they need on a fresh Debian 12 machine (as root) and are fast when
# everything is already there.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEB_PACKAGES := etcd-server etcd-client iptables ipset iproute2 iputils-ping conntrack \
                netcat-openbsd dnsmasq-base openssl procps logrotate busybox bird2 nftables

.PHONY: all setup deb kubectl venv demo test lint unit system clean bench bench-render bench-calc \
        bench-dataplane docs

all: test

setup: deb venv kubectl

# Debian packages: only call apt when one is missing. Their services (bird, etcd) must not start
# in the root namespace: the tests run their own inside namespaces. A policy-rc.d that says "no"
# (unless the machine has its own) keeps apt from starting them; it is removed afterwards.
deb:
	@missing=$$(for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:" $$missing; \
	  ours=; if [ ! -e /usr/sbin/policy-rc.d ]; then \
	    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d; \
	    ours=1; fi; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  status=$$?; if [ -n "$$ours" ]; then rm -f /usr/sbin/policy-rc.d; fi; exit $$status; \
	fi

# Debian's kubectl (package kubernetes-client), which the Kubernetes datastore tests drive the lab
# API server with. Installed like the packages above, except where another package owns
# /usr/bin/kubectl (Google Cloud CLI's `kubectl`): dpkg would refuse to overwrite it, so the
# package's own binary is unpacked into $(VENV)/debian instead (the tests look in both places).
KUBECTL_DEB := kubernetes-client
kubectl:
	@owner=$$(dpkg -S /usr/bin/kubectl 2>/dev/null | cut -d: -f1); \
	if [ "$$owner" = "$(KUBECTL_DEB)" ] || [ -x $(VENV)/debian/usr/bin/kubectl ]; then :; \
	elif [ -z "$$owner" ]; then \
	  echo "installing Debian packages: $(KUBECTL_DEB)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(KUBECTL_DEB) >/dev/null; \
	else \
	  echo "unpacking Debian's $(KUBECTL_DEB) into $(VENV)/debian (/usr/bin/kubectl is $$owner's)"; \
	  tmp=$$(mktemp -d) && chown _apt $$tmp 2>/dev/null; apt-get update -qq \
	    && (cd $$tmp && apt-get download -qq $(KUBECTL_DEB)) \
	    && mkdir -p $(VENV)/debian && dpkg-deb -x $$tmp/$(KUBECTL_DEB)_*.deb $(VENV)/debian; \
	  status=$$?; rm -rf $$tmp; exit $$status; \
	fi

venv: $(VENV)/.stamp

# The bench extra is matplotlib: `make bench`'s plots and the unit test of their rendering.
$(VENV)/.stamp: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test,openstack,bench]'
	touch $@

demo: setup
	$(PY) -m calico.lab.demo

lint: venv
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench
	$(VENV)/bin/mypy

test: setup lint
	$(VENV)/bin/pytest -q

# The parameter reference and the example felix.cfg, regenerated from the parameter table
# (tests/unit/test_config_docs.py fails when either is stale).
docs: venv
	$(PY) -m calico.felix.config.docs --write
	$(PY) -m calico.ctl.docs --write

unit: venv
	$(VENV)/bin/pytest -q tests/unit

# The whole benchmark suite (root; lab namespaces and a private etcd only): every benchmark
# below plus the datastore, Neutron-peer and idle ones, JSON into bench/results/, then the plots
# in docs/img/ and the generated tables in docs/benchmarks.md. QUICK=1: the small version
# (under 5 minutes).
QUICK ?=
bench: setup
	$(PY) bench/suite.py run $(if $(QUICK),--quick) --command "make bench$(if $(QUICK), QUICK=1)"; \
	status=$$?; $(PY) bench/suite.py render && exit $$status

# Plots and tables again from the JSON already in bench/results/ (no benchmark is run).
bench-render: venv
	$(PY) bench/suite.py render

# The calculation graph alone at issue 3's scale (no kernel, no etcd); see docs/benchmarks.md.
bench-calc: venv
	$(PY) bench/calc_graph.py --json bench/results/calc_graph.json

# calico-felix programming a real kernel (root; lab namespaces only) against the kernel floor
# measured in the same run; see docs/benchmarks.md.
bench-dataplane: venv
	$(PY) bench/dataplane.py --json bench/results/dataplane.json

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .ruff_cache
