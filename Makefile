# Perennial: run `make help` for the targets.
SHELL := /bin/bash
CLUSTER := e2e/cluster
LOCAL_KUBECONFIG := $(CURDIR)/e2e/.cluster/kubeconfig
CRD_FILE := crds/perennial.dev_resilientservices.yaml
CHART_CRD_TEMPLATE := charts/perennial/templates/crd.yaml
REFERENCE_FILE := docs/reference.md

.PHONY: help build cluster cluster-down cluster-status crds lint test testapp-test images install demo bench chaos

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

crds: ## regenerate the CRD YAML, the chart's CRD template and docs/reference.md from the Rust types
	cargo run -q --bin perennial -- crd > $(CRD_FILE)
	scripts/chart-crd-template < $(CRD_FILE) > $(CHART_CRD_TEMPLATE)
	cargo run -q --bin perennial -- crd --reference > $(REFERENCE_FILE)

lint: ## formatting and clippy, warnings as errors
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings

# The RustSec advisory database, read offline: a dated snapshot in shared/, which sits beside
# the checkout (in CI too), made into the git repository cargo-deny opens under target/
# (shared/ may be read-only). deny.toml's db-path names that directory.
SHARED := $(abspath $(CURDIR)/../shared)
ADVISORY_DB := $(CURDIR)/target/advisory-db
ADVISORY_REPO := $(ADVISORY_DB)/advisory-db-3157b0e258782691

.PHONY: deny
deny: ## licences, banned crates, sources and security advisories of every dependency (deny.toml)
	@if [ ! -d "$(SHARED)/advisory-db" ] || [ ! -f "$(SHARED)/advisory-db.sh" ]; then \
	  echo "make deny: no advisory snapshot in $(SHARED) (advisory-db/ and advisory-db.sh);" \
	    "a copy of shared/ must sit beside the checkout" >&2; exit 1; fi
	@bash "$(SHARED)/advisory-db.sh" "$(ADVISORY_DB)"
	@echo "advisories: RustSec snapshot of $$(git -C "$(ADVISORY_REPO)" log -1 --format=%cs)" \
	  "($(SHARED)/advisory-db); newer advisories are not known to it"
	@# cargo metadata needs every crate of the lock file, also those of other platforms.
	cargo fetch --locked --quiet
	cargo deny --offline check advisories licenses bans sources

.PHONY: chart-lint
chart-lint: ## helm lint --strict of charts/perennial: default values, namespaced, and dashboard and alerts on
	@helm="$${HELM:-$$($(CLUSTER)/build --print-dirs | grep '/helm-')/helm}"; \
	"$$helm" lint --strict charts/perennial && \
	"$$helm" lint --strict charts/perennial --set 'watchNamespaces={team-a,team-b}' --set serviceMonitor.enabled=true && \
	"$$helm" lint --strict charts/perennial --set crds.install=false --set grafana.dashboards.enabled=true --set prometheusRule.enabled=true

# The suite's short soak replays one schedule, so that a red run can be replayed exactly;
# `make chaos` draws a new one each time (CHAOS_SEED overrides either).
# The real-node tests run the images `images` imports into every real node.
test: cluster images ## the whole suite: unit, property and integration tests on the local control plane
	$(MAKE) --no-print-directory testapp-test
	PERENNIAL_KUBECONFIG=$(LOCAL_KUBECONFIG) CHAOS_SEED=$${CHAOS_SEED:-23} cargo test --all-targets --no-fail-fast

testapp-test: ## the test application's Go tests (testapp/)
	cd testapp && GOTOOLCHAIN=local go test ./...

images: ## operator, pause and test app images in target/images/; loaded into real nodes that run
	e2e/images

install: ## helm install the chart into perennial-system on the real nodes (after `make cluster images`)
	KUBECONFIG=$(LOCAL_KUBECONFIG) "$$($(CLUSTER)/build --print-dirs | grep '/helm-')/helm" upgrade --install \
	  perennial charts/perennial --namespace perennial-system --create-namespace \
	  -f e2e/real-values.yaml --take-ownership --wait --timeout 3m
	KUBECONFIG=$(LOCAL_KUBECONFIG) "$$($(CLUSTER)/build --print-dirs | grep '/kubernetes-')/kubectl" \
	  -n perennial-system get pods -o wide

demo: ## start the control plane, run the operator and a sample service, show its status
	e2e/demo

bench: cluster ## benchmarks side by side with the built-in controllers (BENCH_TRIALS, BENCH_SCALE_SERVICES, ...)
	PERENNIAL_KUBECONFIG=$(LOCAL_KUBECONFIG) PERENNIAL_TEST_LOG=$${PERENNIAL_TEST_LOG:-info} cargo test --release --test bench -- --ignored --nocapture --test-threads=1

chaos: cluster images ## a seeded chaos soak on the local control plane (CHAOS_SECONDS=600; CHAOS_SEED replays one)
	PERENNIAL_KUBECONFIG=$(LOCAL_KUBECONFIG) CHAOS_SECONDS=$${CHAOS_SECONDS:-600} cargo test --test chaos -- --nocapture --test-threads=1
