# The two commands a new machine needs:
#   make up    bootstrap, bring up the lab, `pulumi up` the dev stack (with the policy pack),
#              reinstalling first whatever the lab hosts lost since the last one
#   make test  bootstrap, then every test (unit, policy, real engine, lab end-to-end)
SHELL := /bin/bash
.DEFAULT_GOAL := help
PYTEST ?= .venv/bin/python -m pytest

.PHONY: help bootstrap up down preview test test-unit test-integration lint audit lab-up lab-down lab-status bench

help:
	@echo "make up | make test | make lint | make preview STACK=prod | make down | make audit | make bench"

bootstrap:
	scripts/bootstrap

lab-up: bootstrap
	lab/lab up

lab-down:
	lab/lab down

lab-status:
	lab/lab status

# The lab hosts are claimed by the dev stack while it is up: the lab tests refuse to run
# (they would reinstall the same hosts) until `make down` releases them.
LAB_CLAIM = $${EDGEFLEET_LAB_DIR:-$${EDGEFLEET_CACHE:-$$HOME/.cache/edgefleet}/lab}/dev-stack

up: lab-up
	printf '%s\n' "$(CURDIR) (make up, $$(date -u +%FT%TZ))" >"$(LAB_CLAIM)"
	scripts/stack dev heal --yes

preview: bootstrap
	scripts/stack $(or $(STACK),dev) preview

down:
	-scripts/stack dev destroy --yes
	lab/lab down
	rm -f "$(LAB_CLAIM)"

test: bootstrap
	scripts/test

test-unit: bootstrap
	$(PYTEST) tests/unit tests/policy

test-integration: bootstrap
	$(PYTEST) -m integration tests/integration

# ruff and mypy only (make test runs them too): needs just the Python environment.
lint:
	scripts/bootstrap venv
	scripts/lint

audit: bootstrap
	.venv/bin/python -m policies.audit --help

bench: bootstrap
	.venv/bin/python bench/run_all.py
