# Perennial: run `make help` for the targets.
SHELL := /bin/bash
CLUSTER := e2e/cluster
LOCAL_KUBECONFIG := $(CURDIR)/e2e/.cluster/kubeconfig
CRD_FILE := crds/perennial.dev_resilientservices.yaml
CHART_CRD_FILE := charts/perennial/crds/perennial.dev_resilientservices.yaml
REFERENCE_FILE := docs/reference.md

.PHONY: help build cluster cluster-down cluster-status crds lint test demo bench chaos

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

build: ## build the operator binary
	cargo build --bin perennial

cluster: ## start the local control plane (reused when healthy)
	$(CLUSTER)/up

cluster-down: ## stop every process of the local control plane
	$(CLUSTER)/down

cluster-status: ## say what runs
	$(CLUSTER)/status

crds: ## regenerate the CRD YAML and docs/reference.md from the Rust types
	cargo run -q --bin perennial -- crd > $(CRD_FILE)
	cp $(CRD_FILE) $(CHART_CRD_FILE)
	cargo run -q --bin perennial -- crd --reference > $(REFERENCE_FILE)

lint: ## formatting and clippy, warnings as errors
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings

.PHONY: deny
deny: ## licences, banned crates and sources of every dependency (deny.toml)
	cargo deny --offline check licenses bans sources

.PHONY: chart-lint
chart-lint: ## helm lint --strict of charts/perennial, with the default and the namespaced values
	@helm="$${HELM:-$$($(CLUSTER)/build --print-dirs | grep '/helm-')/helm}"; \
	"$$helm" lint --strict charts/perennial && \
	"$$helm" lint --strict charts/perennial --set 'watchNamespaces={team-a,team-b}' --set serviceMonitor.enabled=true

# The suite's short soak replays one schedule, so that a red run can be replayed exactly;
# `make chaos` draws a new one each time (CHAOS_SEED overrides either).
test: cluster ## the whole suite: unit, property and integration tests on the local control plane
	PERENNIAL_KUBECONFIG=$(LOCAL_KUBECONFIG) CHAOS_SEED=$${CHAOS_SEED:-424242} cargo test --all-targets --no-fail-fast

demo: ## start the control plane, run the operator and a sample service, show its status
	e2e/demo

bench: cluster ## benchmarks side by side with the built-in controllers (BENCH_TRIALS, BENCH_SCALE_SERVICES, ...)
	PERENNIAL_KUBECONFIG=$(LOCAL_KUBECONFIG) PERENNIAL_TEST_LOG=$${PERENNIAL_TEST_LOG:-info} cargo test --release --test bench -- --ignored --nocapture --test-threads=1

chaos: cluster ## a seeded chaos soak on the local control plane (CHAOS_SECONDS=600; CHAOS_SEED replays one)
	PERENNIAL_KUBECONFIG=$(LOCAL_KUBECONFIG) CHAOS_SECONDS=$${CHAOS_SECONDS:-600} cargo test --test chaos -- --nocapture --test-threads=1
