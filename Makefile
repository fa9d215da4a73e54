# teapot.kms: one command runs every check: `make test`.
#
# Everything built for the tests (the tools venv, service venvs, the test-host
# rootfs, .deb files and wheels) lives below TEAPOT_KMS_CACHE.
TEAPOT_KMS_CACHE ?= $(HOME)/.cache/teapot-kms
export TEAPOT_KMS_CACHE

PYTHON ?= python3
VENV := $(TEAPOT_KMS_CACHE)/venv
BIN := $(VENV)/bin
# Per checkout, so that two checkouts sharing one cache never test each
# other's tree.
CHECKOUT_ID := $(shell printf '%s' '$(CURDIR)' | sha256sum | cut -c1-12)
COLLECTION_ROOT := $(TEAPOT_KMS_CACHE)/sanity/$(CHECKOUT_ID)/ansible_collections/teapot/kms
PYTEST_ARGS ?=

export PATH := $(BIN):$(PATH)
# Keep ansible-lint, ansible-test and Molecule from looking outside this tree.
export ANSIBLE_COLLECTIONS_PATH := $(TEAPOT_KMS_CACHE)/collections/$(CHECKOUT_ID)
export ANSIBLE_LOCAL_TEMP := $(TEAPOT_KMS_CACHE)/ansible-tmp

.PHONY: test venv collection-link lint sanity unit integration molecule build clean-cache lab lab-down

TEST_STEPS := lint sanity unit integration molecule

test:
	@all=$$(date +%s); for step in $(TEST_STEPS); do \
		start=$$(date +%s); \
		$(MAKE) --no-print-directory $$step || { echo "make test: $$step FAILED"; exit 1; }; \
		echo "make test: $$step passed in $$(( $$(date +%s) - start ))s"; \
	done; echo "make test: $(TEST_STEPS) all passed in $$(( $$(date +%s) - all ))s"

venv: $(VENV)/.installed

$(VENV)/.installed: tests/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r tests/requirements.txt
	touch $@

# The collection itself, installed where ansible-lint and Molecule look.
collection-link: venv
	mkdir -p $(ANSIBLE_COLLECTIONS_PATH)/ansible_collections/teapot
	ln -sfn $(CURDIR) $(ANSIBLE_COLLECTIONS_PATH)/ansible_collections/teapot/kms

lint: venv collection-link
	$(BIN)/ansible-lint --offline

# ansible-test needs the collection at ansible_collections/teapot/kms: copy
# the files git knows (tracked, and untracked but not ignored) there.  It runs
# from its own venv (its sanity tests pin their own tool versions) with HOME
# inside the cache, where its pip bootstrap script is provided.
SANITY_VENV := $(TEAPOT_KMS_CACHE)/sanity-venv
SANITY_HOME := $(TEAPOT_KMS_CACHE)/ansible-test-home
ANSIBLE_TEST_PIP := 24.2

$(SANITY_VENV)/.installed: tests/requirements.txt
	$(PYTHON) -m venv $(SANITY_VENV)
	$(SANITY_VENV)/bin/pip install --quiet "$$(grep '^ansible-core==' tests/requirements.txt)"
	touch $@

sanity: $(SANITY_VENV)/.installed
	mkdir -p $(SANITY_HOME)/.ansible/test/cache
	cp tests/bin/ansible-test-pip-bootstrap.py $(SANITY_HOME)/.ansible/test/cache/get_pip_$(subst .,_,$(ANSIBLE_TEST_PIP)).py
	rm -rf $(COLLECTION_ROOT)
	mkdir -p $(COLLECTION_ROOT)
	git ls-files -z --cached --others --exclude-standard | \
		xargs -0 -I{} sh -c 'test -e "{}" && echo "{}"' | \
		rsync -a --files-from=- ./ $(COLLECTION_ROOT)/
	cd $(COLLECTION_ROOT) && HOME=$(SANITY_HOME) $(SANITY_VENV)/bin/ansible-test sanity --venv --python 3.11 --color no

unit: venv
	$(BIN)/pytest tests/unit daemon/tests $(PYTEST_ARGS)

# INTEGRATION_JOBS pytest-xdist workers; --dist loadgroup keeps the tests of
# one xdist_group (those sharing the session's Keystone and Barbican, see
# tests/integration/conftest.py) on one worker.  INTEGRATION_JOBS=0 runs
# them in this process, one after another.
INTEGRATION_JOBS ?= 2

integration: venv
	$(BIN)/pytest -n $(INTEGRATION_JOBS) --dist loadgroup tests/integration $(PYTEST_ARGS)

# Every scenario with a molecule.yml, MOLECULE_JOBS at a time: each boots its
# own test hosts on its own bridge, so scenarios do not share state.
# molecule/dogtag runs on RHEL-family hosts that the user provides (Dogtag's
# server is not packaged for Debian, see its README): left out here, run it
# with `make molecule-dogtag`.
MOLECULE_EXTERNAL_SCENARIOS := dogtag
# The longest start first, so that the short ones fill the gaps.
MOLECULE_LONGEST_FIRST := default keystone_barbican_ha openbao
MOLECULE_FOUND := $(filter-out $(MOLECULE_EXTERNAL_SCENARIOS),$(sort $(patsubst molecule/%/molecule.yml,%,$(wildcard molecule/*/molecule.yml))))
MOLECULE_SCENARIOS := $(filter $(MOLECULE_FOUND),$(MOLECULE_LONGEST_FIRST)) $(filter-out $(MOLECULE_LONGEST_FIRST),$(MOLECULE_FOUND))
MOLECULE_JOBS ?= 2

molecule: venv collection-link
	@test -n "$(MOLECULE_SCENARIOS)" || { echo "make molecule: no scenario found under molecule/"; exit 1; }
	$(MAKE) --no-print-directory -j$(MOLECULE_JOBS) --output-sync=target $(addprefix molecule-,$(MOLECULE_SCENARIOS))

molecule-%: venv collection-link
	@start=$$(date +%s); $(BIN)/molecule test -s $*; rc=$$?; \
		echo "molecule scenario $*: exit $$rc after $$(( $$(date +%s) - start ))s"; exit $$rc

# The lab (tests/lab/): the collection deployed by its own playbooks on local
# systemd-nspawn hosts, as root. `make lab` on a running lab converges it and
# prints the summary again; `make lab-down` removes it completely.
lab:
	@test "$$(id -u)" -eq 0 || { echo "make lab: run it as root: the lab boots systemd-nspawn hosts on a bridge of its own"; exit 2; }
	@echo "lab: Debian packages (tests/bin/install-system-deps)"
	@tests/bin/install-system-deps
	@echo "lab: the controller's tools ($(VENV))"
	@$(MAKE) --no-print-directory venv collection-link
	@$(BIN)/python -m tests.lab up

lab-down:
	@test "$$(id -u)" -eq 0 || { echo "make lab-down: run it as root"; exit 2; }
	@if [ -x $(BIN)/python ]; then $(BIN)/python -m tests.lab down; else $(PYTHON) -m tests.lab down; fi

build: venv
	$(BIN)/ansible-galaxy collection build --force --output-path $(TEAPOT_KMS_CACHE)/build

clean-cache:
	rm -rf $(TEAPOT_KMS_CACHE)
