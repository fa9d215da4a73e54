# teapot.kms: one command runs every check: `make test`.
#
# Everything built for the tests (the tools venv, service venvs, the test-host
# rootfs, .deb files and wheels) lives below TEAPOT_KMS_CACHE.
TEAPOT_KMS_CACHE ?= $(HOME)/.cache/teapot-kms
export TEAPOT_KMS_CACHE

PYTHON ?= python3
VENV := $(TEAPOT_KMS_CACHE)/venv
BIN := $(VENV)/bin
COLLECTION_ROOT := $(TEAPOT_KMS_CACHE)/sanity/ansible_collections/teapot/kms
PYTEST_ARGS ?=

export PATH := $(BIN):$(PATH)
# Keep ansible-lint, ansible-test and Molecule from looking outside this tree.
export ANSIBLE_COLLECTIONS_PATH := $(TEAPOT_KMS_CACHE)/collections
export ANSIBLE_LOCAL_TEMP := $(TEAPOT_KMS_CACHE)/ansible-tmp

.PHONY: test venv lint sanity unit integration molecule build clean-cache

test: lint sanity unit integration molecule
	@echo "make test: lint, sanity, unit, integration and molecule all passed"

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
	$(BIN)/pytest tests/unit kms_plugin/tests $(PYTEST_ARGS)

integration: venv
	$(BIN)/pytest tests/integration $(PYTEST_ARGS)

molecule: venv collection-link
	$(BIN)/molecule test --all

build: venv
	$(BIN)/ansible-galaxy collection build --force --output-path $(TEAPOT_KMS_CACHE)/build

clean-cache:
	rm -rf $(TEAPOT_KMS_CACHE)
