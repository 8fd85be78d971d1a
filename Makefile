# The two commands a new machine needs:
#   make up    bootstrap, bring up the lab, `pulumi up` the dev stack (with the policy pack)
#   make test  bootstrap, then every test (unit, policy, real engine, lab end-to-end)
SHELL := /bin/bash
.DEFAULT_GOAL := help
PYTEST ?= .venv/bin/python -m pytest

.PHONY: help bootstrap up down preview test test-unit test-integration audit lab-up lab-down lab-status bench

help:
	@echo "make up | make test | make preview STACK=prod | make down | make audit | make bench"

bootstrap:
	scripts/bootstrap

lab-up: bootstrap
	lab/lab up

lab-down:
	lab/lab down

lab-status:
	lab/lab status

up: lab-up
	scripts/stack dev up --yes

preview: bootstrap
	scripts/stack $(or $(STACK),dev) preview

down:
	-scripts/stack dev destroy --yes
	lab/lab down

test: bootstrap
	scripts/test

test-unit: bootstrap
	$(PYTEST) tests/unit tests/policy

test-integration: bootstrap
	$(PYTEST) -m integration tests/integration

audit: bootstrap
	.venv/bin/python -m policies.audit --help

bench: bootstrap
	.venv/bin/python bench/run_all.py
