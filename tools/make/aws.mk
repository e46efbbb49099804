# AWS side of Kiln: the Python tool environments, the SAM template's linters, the Lambda build
# and the deploy. Included by the root Makefile (`include tools/make/aws.mk`); every path here is
# relative to the repository root, and every tool installs itself from tools/requirements-*.txt.
#
#   make venv          ./.venv: moto[server], cfn-lint, checkov, SAM translator (tests, lint-infra)
#   make lint-infra    cfn-lint and checkov on infra/template.yaml and on its SAM-expanded form
#   make build-lambda  the three Lambda binaries, with cargo-lambda (zig from PyPI), into target/lambda/
#   make deploy        sam deploy from infra/ with infra/samconfig.toml
#   make aws-env       export lines for the deployed stack: eval "$(make -s aws-env)"
#
# The test and deploy tools live in two environments because checkov and aws-sam-cli pin
# different boto3 releases. CI needs only the first.

KILN_ROOT := $(abspath $(dir $(lastword $(MAKEFILE_LIST)))/../..)

PYTHON ?= python3
VENV ?= $(KILN_ROOT)/.venv
DEPLOY_VENV ?= $(KILN_ROOT)/.venv-deploy
TEST_REQUIREMENTS := $(KILN_ROOT)/tools/requirements-test.txt
DEPLOY_REQUIREMENTS := $(KILN_ROOT)/tools/requirements-deploy.txt

# A stamp named after the requirements file's hash: editing the file makes a new stamp name, so
# the environment is brought up to date on the next run and left alone otherwise.
req_hash = $(firstword $(shell sha256sum $(1) 2>/dev/null | cut -c1-16))
VENV_STAMP := $(VENV)/.kiln-installed-$(call req_hash,$(TEST_REQUIREMENTS))
DEPLOY_VENV_STAMP := $(DEPLOY_VENV)/.kiln-installed-$(call req_hash,$(DEPLOY_REQUIREMENTS))

# Tool paths for other targets and for tests (e.g. MOTO_SERVER=$(MOTO_SERVER) cargo test).
CFN_LINT := $(VENV)/bin/cfn-lint
CHECKOV := $(VENV)/bin/checkov
MOTO_SERVER := $(VENV)/bin/moto_server
SAM := $(DEPLOY_VENV)/bin/sam

TEMPLATE := $(KILN_ROOT)/infra/template.yaml
# The template after the SAM transform (tools/sam_transform.py), linted as plain CloudFormation.
EXPANDED_TEMPLATE := $(KILN_ROOT)/target/infra/template.json
CHECKOV_FLAGS := --framework cloudformation --quiet --compact --skip-download

LAMBDA_ARCH ?= arm64
LAMBDA_BINS ?= kiln-api-lambda kiln-worker-lambda kiln-webhooks-lambda
# Copied next to each bootstrap when it exists; the functions read it as ./providers.toml.
PROVIDERS_FILE ?= $(KILN_ROOT)/providers.toml
# Must match stack_name in infra/samconfig.toml (used by aws-env).
STACK_NAME ?= kiln
# Extra `sam deploy` parameter overrides, e.g. SAM_PARAMS="AlarmEmail=ops@example.com".
SAM_PARAMS ?=

lambda_arch_flag = $(if $(filter arm64,$(1)),--arm64,$(if $(filter x86_64,$(1)),--x86-64,$(error LAMBDA_ARCH must be arm64 or x86_64, not '$(1)')))

.PHONY: venv deploy-venv lint-infra build-lambda deploy aws-env

venv: $(VENV_STAMP) ## Python tools for tests and lint-infra in ./.venv (moto, cfn-lint, checkov)

$(VENV_STAMP): $(TEST_REQUIREMENTS)
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r $(TEST_REQUIREMENTS)
	@rm -f $(VENV)/.kiln-installed-*
	@touch $@

deploy-venv: $(DEPLOY_VENV_STAMP) ## cargo-lambda, zig and the SAM CLI in ./.venv-deploy

$(DEPLOY_VENV_STAMP): $(DEPLOY_REQUIREMENTS)
	@test -x $(DEPLOY_VENV)/bin/python || $(PYTHON) -m venv $(DEPLOY_VENV)
	$(DEPLOY_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r $(DEPLOY_REQUIREMENTS)
	@rm -f $(DEPLOY_VENV)/.kiln-installed-*
	@touch $@

# Both linters on the SAM template as written, then the real SAM transform, then both linters on
# the CloudFormation it expands to (what is actually deployed). Any finding fails the target;
# checkov checks that do not apply are skipped inside the template, each with its reason.
lint-infra: $(VENV_STAMP) ## cfn-lint and checkov on the SAM template and on its SAM-expanded form
	$(CFN_LINT) $(TEMPLATE)
	$(CHECKOV) -f $(TEMPLATE) $(CHECKOV_FLAGS)
	$(VENV)/bin/python $(KILN_ROOT)/tools/sam_transform.py $(TEMPLATE) $(EXPANDED_TEMPLATE)
	$(CFN_LINT) $(EXPANDED_TEMPLATE)
	$(CHECKOV) -f $(EXPANDED_TEMPLATE) $(CHECKOV_FLAGS)

# cargo-lambda cross-compiles with zig (the ziglang wheel, found as `python3 -m ziglang` on the
# environment's PATH) and adds the Rust target itself (rustup target add) on first use.
build-lambda: $(DEPLOY_VENV_STAMP) ## Release Lambda binaries (LAMBDA_ARCH=arm64|x86_64) in target/lambda/<bin>/bootstrap
	cd $(KILN_ROOT) && for bin in $(LAMBDA_BINS); do \
	  PATH="$(DEPLOY_VENV)/bin:$$PATH" cargo lambda build --release $(call lambda_arch_flag,$(LAMBDA_ARCH)) --features kiln-api/lambda,kiln-worker/lambda --bin $$bin || exit 1; \
	done
	@if [ -f "$(PROVIDERS_FILE)" ]; then \
	  for bin in $(LAMBDA_BINS); do cp "$(PROVIDERS_FILE)" $(KILN_ROOT)/target/lambda/$$bin/providers.toml; done; \
	  echo "copied $(PROVIDERS_FILE) next to each bootstrap"; \
	fi

deploy: $(DEPLOY_VENV_STAMP) ## sam deploy (infra/samconfig.toml; SAM_PARAMS="Key=Value ..." to override)
	@for bin in $(LAMBDA_BINS); do \
	  test -f $(KILN_ROOT)/target/lambda/$$bin/bootstrap || { echo "target/lambda/$$bin/bootstrap is missing: run make build-lambda first" >&2; exit 1; }; \
	done
	cd $(KILN_ROOT)/infra && SAM_CLI_TELEMETRY=0 PATH="$(DEPLOY_VENV)/bin:$$PATH" \
	  $(SAM) deploy $(if $(strip $(SAM_PARAMS) $(filter-out arm64,$(LAMBDA_ARCH))),--parameter-overrides Architecture=$(LAMBDA_ARCH) $(SAM_PARAMS))

aws-env: $(DEPLOY_VENV_STAMP) ## Print export lines (KILN_*, AWS_REGION) for the deployed stack, for eval
	@cd $(KILN_ROOT)/infra && SAM_CLI_TELEMETRY=0 $(SAM) list stack-outputs --stack-name $(STACK_NAME) --output json \
	  | $(DEPLOY_VENV)/bin/python $(KILN_ROOT)/tools/stack_env.py
