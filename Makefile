# Kiln: `make run` starts it locally, `make test` runs every test. See README.md.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

CARGO ?= cargo
KILN_ADDR ?= 127.0.0.1:3000
export KILN_ADDR

.PHONY: help run build test lint fmt clean bench chaos

help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

build: ## Build every crate (debug, dependencies optimised)
	$(CARGO) build --workspace --locked

run: ## Build and start Kiln on http://127.0.0.1:3000 (embedded backend, built-in renderer)
	$(CARGO) build -p kiln-cli --bin kiln --locked
	@echo
	@echo "  Kiln is starting on http://$(KILN_ADDR)  (data in ./.kiln, Ctrl-C stops it)"
	@echo "  In another terminal:"
	@echo "    export KILN_API_KEY=\$$(./target/debug/kiln keys create --user me | tail -n1)"
	@echo "    curl -s -H \"Authorization: Bearer \$$KILN_API_KEY\" -H 'Content-Type: application/json' \\"
	@echo "         -H 'Prefer: wait=10' -d '{\"prompt\":\"a lighthouse at dusk\",\"size\":\"512x512\"}' \\"
	@echo "         http://$(KILN_ADDR)/v1/jobs"
	@echo "    ./target/debug/kiln submit 'a lighthouse at dusk' --wait   # saves PNGs in ./kiln-images"
	@echo
	./target/debug/kiln serve

test: venv ## Run every test: unit, integration, end to end, AWS adapters on moto, the SAM template's linters
	$(CARGO) build --workspace --all-targets --locked
	$(CARGO) test --workspace --locked --no-fail-fast
	tools/schemathesis.sh
	$(MAKE) --no-print-directory lint-infra

lint: lint-infra ## rustfmt, clippy (warnings are errors), cfn-lint and checkov
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

fmt: ## Format the code
	$(CARGO) fmt --all

bench: ## Benchmarks (release build, a few minutes): one table, each figure beside a baseline from the same run
	@# The Python environment (moto) installs while cargo builds.
	$(MAKE) --no-print-directory -j2 venv bench-build
	./target/release/kiln-bench

.PHONY: bench-build
bench-build:
	$(CARGO) build --release --locked --features kiln-api/lambda,kiln-worker/lambda \
	  --bin kiln-bench --bin kiln-api-lambda --bin kiln-worker-lambda

chaos: ## SIGKILLs and provider faults under load (release build); fails if a job is lost or run twice
	$(CARGO) build --release --locked --bin kiln --bin kiln-chaos
	./target/release/kiln-chaos

clean: ## Remove build output and local data
	$(CARGO) clean
	rm -rf .kiln kiln-images

include tools/make/aws.mk
