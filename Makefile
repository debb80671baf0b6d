# Haku: `make demo` brings up the local admin cluster; `make test` runs the whole suite.
# Both install what they need (Debian packages, a virtualenv, upstream binaries cached in
# ~/.cache/haku). Run as root: the local cluster creates bridges and runs a kubelet.

PYTHON ?= python3
VENV   := .venv
HAKU   := $(VENV)/bin/haku
PYTEST := $(VENV)/bin/pytest
export PATH := $(PATH):/usr/local/go/bin

.PHONY: all venv deps bins demo down status test test-fast test-node lint helm-lint bench bench-cold bench-density bench-backup bench-migration bench-conformance bench-crd-deletion conformance conformance-fast conformance-build conformance-images exposure-build exposure loadbalancer clean

all: test

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

## deps: Debian packages + upstream binaries (a cold build takes ~12 min on 2 cores; cached afterwards)
deps: venv
	$(HAKU) dev deps
	$(HAKU) dev build kubernetes etcd kine coredns

## demo: the local admin cluster, the operator, and a Ready tenant, with how to use them
demo: deps
	$(HAKU) dev demo

down: venv
	$(HAKU) dev down

status: venv
	$(HAKU) dev status

lint: venv
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy

## test: everything: lint, unit, API-only tier, full-node tier
test: deps lint
	$(HAKU) dev build helm
	$(PYTEST) tests

## test-fast: unit + API-only tier (needs the kubernetes, etcd and helm binaries)
# (the datastore and node tiers run in `make test`)
test-fast: venv
	$(HAKU) dev build kubernetes etcd helm
	$(PYTEST) tests/unit tests/api

## helm-lint: `helm lint --strict` of charts/haku (helm built and cached on first use)
helm-lint: venv
	$(HAKU) dev build helm
	$$($(HAKU) dev build helm | sed 's/^helm: //')/helm lint --strict --namespace haku-system charts/haku

test-node: deps
	$(PYTEST) tests/node

## bench: benchmarks, JSON on stdout
bench: deps
	$(VENV)/bin/python bench/dev_cluster.py
	$(VENV)/bin/python bench/datastores.py
	$(VENV)/bin/python bench/operator_bench.py
	$(VENV)/bin/python bench/join.py
	$(VENV)/bin/python bench/upgrade.py
	$(VENV)/bin/python bench/operator_image.py
	$(VENV)/bin/python bench/operator_in_cluster.py

## bench-cold: bench/dev_cluster.py with a measured cold build (empty Go caches, ~10 min);
## `make bench` reports the build times recorded in the cache stamps instead
bench-cold: deps
	$(VENV)/bin/python bench/dev_cluster.py --cold

## bench-density: how many running tenant control planes stay Ready on this machine (JSON on
## stdout; about 70 s per tenant, up to --max 60: over an hour); its flags in BENCH_ARGS, e.g.
## make bench-density BENCH_ARGS="--settle 30 --time-limit 2100"
bench-density: deps
	$(VENV)/bin/python bench/density.py $(BENCH_ARGS)

## bench-backup: backup and restore rate and peak RSS per driver for tenants of 1,000 and 10,000
## objects (JSON on stdout; a few minutes). Datastores of its own (state dir and ports apart), so
## no lock is needed; its flags in BENCH_ARGS, e.g.
## make bench-backup BENCH_ARGS="--sizes 1000,10000,50000 --out bench/results/backup.json"
bench-backup: deps
	$(VENV)/bin/python bench/backup.py $(BENCH_ARGS)

## bench-migration: a 1,000-object tenant moved across every driver pair: migration time and
## how long writes were refused (JSON on stdout; about 10 minutes; its own full cluster, which
## shares the node tier's ports: not beside `make test`)
bench-migration: deps
	$(VENV)/bin/python bench/migration.py $(BENCH_ARGS)

## bench-crd-deletion: how long deleting a fresh CRD takes, on the dev admin cluster or
## (BENCH_ARGS="--kubeconfig /var/lib/haku/dev/tenants/<t>.kubeconfig") a tenant; JSON on stdout
bench-crd-deletion: deps
	$(VENV)/bin/python bench/crd_deletion.py $(BENCH_ARGS)

## conformance: the upstream conformance suite ([Conformance], not [Serial]/[Disruptive]) against
## a tenant with two dev workers on the etcd DataStore: builds e2e.test and the test images if
## missing, makes the tenant, runs the specs in chunks, prints the summary (docs/conformance.md).
## Its flags in CONFORMANCE_ARGS, e.g. CONFORMANCE_ARGS="--datastore postgres --parallel 6"
conformance: deps
	$(HAKU) dev conformance run $(CONFORMANCE_ARGS)

## conformance-fast: the representative subset `make test` runs (a few minutes)
conformance-fast: deps
	$(HAKU) dev conformance run --fast $(CONFORMANCE_ARGS)

## bench-conformance: build times of e2e.test, agnhost, sample-apiserver (recorded and cached),
## the test images built and pushed, and a conformance run's wall time (JSON on stdout); its flags
## in BENCH_ARGS, e.g. BENCH_ARGS="--fast" or "--cold" (cold builds, about 20 CPU-minutes)
bench-conformance: deps
	$(VENV)/bin/python bench/conformance.py $(BENCH_ARGS)

## conformance-build: what the conformance run (issue 16) needs, built and cached: e2e.test and
## agnhost at the Kubernetes version, the CNCF Distribution registry (e2e.test: ~27 min on 2
## cores the first time; docs/conformance.md). Builds only.
conformance-build: venv
	$(HAKU) dev build e2e agnhost registry

## conformance-images: e2e.test's test images (agnhost, busybox, nginx, …) built under their
## upstream names, cached in ~/.cache/haku/test-images, pushed to the running dev cluster's
## registry (haku dev up starts it; docs/conformance.md).
conformance-images: venv
	$(HAKU) dev conformance images

## exposure-build: MetalLB (controller, speaker, its CRDs) and Traefik v3.7.10 built and cached
## for issue 17 (docs/exposure.md; Traefik's nested module pkg/config/dynamic/ext, which the
## module zip leaves out, is written by the build). Builds only.
exposure-build: venv
	$(HAKU) dev build metallb traefik

## exposure: Traefik in the running dev cluster (`haku dev exposure up`: built first if not
## cached, ~5 min cold): tenants' Ingresses (class nginx, TLS passthrough) on the admin node IP
## :8443 and Gateway API TLSRoutes (Gateway haku-exposure/tenants) on :9443.
exposure: venv
	$(HAKU) dev exposure up

## loadbalancer: MetalLB in L2 mode in the running dev cluster (built if missing), with an
## address pool LoadBalancer tenants get their addresses from (docs/exposure.md)
loadbalancer: venv
	$(HAKU) dev loadbalancer

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
