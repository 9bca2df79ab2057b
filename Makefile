# The two entry points a new user needs: `make demo` and `make test`. Both install what they need.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
export ANSIBLE_COLLECTIONS_PATH := $(CURDIR)/.build/collections
export ANSIBLE_CONFIG := $(CURDIR)/tests/ansible.cfg
# The ansible-core releases the collection supports (meta/runtime.yml); `make test` checks the
# oldest and the newest, `make test-cores` every one.
CORE_RELEASES := $(shell grep -v '^\#' tools/ansible-versions.txt)
CORE_ENDS := $(sort $(firstword $(CORE_RELEASES)) $(lastword $(CORE_RELEASES)))

.PHONY: bootstrap demo test e2e unit integration sanity lint cores test-cores release bench clean

bootstrap:
	@tools/bootstrap.sh

# lab.yml tears the lab down itself; the second run only matters if the playbook could not even
# start, and then it removes whatever a previous build left.
demo: bootstrap
	@$(VENV)/bin/ansible-playbook -i playbooks/inventory/lab.yml playbooks/lab.yml; rc=$$?; \
	$(VENV)/bin/ansible-playbook -i playbooks/inventory/lab.yml playbooks/lab.yml --tags lab_teardown >/dev/null 2>&1; \
	exit $$rc

test: bootstrap
	$(PY) -m pytest -p no:cacheprovider tests
	$(MAKE) --no-print-directory sanity lint cores

# Bare metal to an imaged fleet on qemu VMs (TCG): PXE into the imaging environment, capture,
# deploy, reboot, verify each running clone; then again with one participant's network cut.
# 30-60 minutes on 2 cores (TCG); not part of `make test` (see README).
e2e:
	@tools/bootstrap.sh e2e
	$(PY) tests/e2e/e2e.py

unit: bootstrap
	$(PY) -m pytest -p no:cacheprovider tests/unit

integration: bootstrap
	$(PY) -m pytest -p no:cacheprovider tests/integration

sanity: bootstrap
	@tools/sanity.sh $(CORE_ENDS)

# The unit tests that exercise ansible-core, under the oldest and newest supported releases.
cores: bootstrap
	@tools/core-tests.sh $(CORE_ENDS)

# Every supported ansible-core release: sanity and the unit tests that exercise ansible-core.
test-cores: bootstrap
	@tools/sanity.sh $(CORE_RELEASES)
	@tools/core-tests.sh $(CORE_RELEASES)

# Release notes for galaxy.yml's version (docs/releasing.md).
release: bootstrap
	@tools/release.sh

lint: bootstrap
	@tools/lint.sh

# Benchmarks, not tests: ratios against partclone, udpcast and uftp measured in the same run.
bench: bootstrap
	$(PY) bench/bench_image.py
	$(PY) bench/bench_transport.py

clean:
	rm -rf .build $(VENV)
