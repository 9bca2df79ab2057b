# The two entry points a new user needs: `make demo` and `make test`. Both install what they need.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
export ANSIBLE_COLLECTIONS_PATH := $(CURDIR)/.build/collections
export ANSIBLE_CONFIG := $(CURDIR)/tests/ansible.cfg

.PHONY: bootstrap demo test e2e unit integration sanity lint bench clean

bootstrap:
	@tools/bootstrap.sh

# lab.yml tears the lab down itself; the second run only matters if the playbook could not even
# start, and then it removes whatever a previous build left.
demo: bootstrap
	@$(VENV)/bin/ansible-playbook -i playbooks/lab/inventory.yml playbooks/lab.yml; rc=$$?; \
	$(VENV)/bin/ansible-playbook -i playbooks/lab/inventory.yml playbooks/lab.yml --tags lab_teardown >/dev/null 2>&1; \
	exit $$rc

test: bootstrap
	$(PY) -m pytest -p no:cacheprovider tests
	$(MAKE) --no-print-directory sanity lint

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
	@tools/sanity.sh

lint: bootstrap
	@tools/lint.sh

# Benchmarks, not tests: ratios against partclone, udpcast and uftp measured in the same run.
bench: bootstrap
	$(PY) bench/bench_image.py
	$(PY) bench/bench_transport.py

clean:
	rm -rf .build $(VENV)
