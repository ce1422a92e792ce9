# make run        install what running needs, then run connstats on this host (as root)
# make test       install what running and testing need, lint, then run the whole test suite (as root)
# make lint       ruff over probe/ sink/ cli/ tests/, mypy over what [tool.mypy] checks
# make test-unit  the tests that need no kernel, NATS, Docker, podman or browser: seconds
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
# what `connstats up` needs: BCC, the venv, tc/ip, the embedded nats-server
RUN_PACKAGES := python3-bpfcc python3-venv libbpf1 iproute2 nats-server procps
# what the tests add: a real dockerd and a real podman (it brings conmon; runc comes with
# docker.io) with a busybox image, Chromium, compose checks, traffic tools and nft counters
# as oracles
TEST_PACKAGES := iperf3 iputils-ping docker.io podman busybox-static docker-compose chromium nftables
# pytest-xdist workers: the suite mostly waits on real processes, so one per core
JOBS ?= $(shell nproc)
ARGS ?=
UNIT := not kernel and not nats and not docker and not podman and not browser

.PHONY: install install-test deb deb-test headers venv venv-test run lint mypy-tree test test-unit bench clean

install: deb headers venv
install-test: deb deb-test headers venv-test

deb:
	@$(call apt_install,$(RUN_PACKAGES))

deb-test:
	@$(call apt_install,$(TEST_PACKAGES))

# installs the packages of $(1) that are missing, quietly
define apt_install
set -e; missing=$$(for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
if [ -n "$$missing" ]; then \
	echo "installing:" $$missing; \
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
fi
endef

headers:
	@sh deploy/kernel-headers.sh

venv: $(VENV)/.installed
venv-test: $(VENV)/.installed-test

$(VENV)/.installed: pyproject.toml
	@$(call venv_install,.)
	@touch $@

# the test extras include what running needs: one pip run makes both stamps
$(VENV)/.installed-test: pyproject.toml
	@$(call venv_install,.[test])
	@touch $(VENV)/.installed $@

# makes the venv (it sees Debian's bcc) if missing, and installs connstats as $(1) into it
define venv_install
set -e; test -x $(PY) || /usr/bin/python3 -m venv --system-site-packages $(VENV); \
$(PY) -m pip install -q --disable-pip-version-check -e '$(1)'; \
$(PY) -c 'import bcc' || { echo "bcc does not import in $(VENV)"; exit 1; }
endef

run: install
	$(VENV)/bin/connstats up $(ARGS)

# both tools run, and either one fails it
lint: venv-test mypy-tree
	@rc=0; \
	echo "== ruff check probe sink cli tests"; $(VENV)/bin/ruff check probe sink cli tests || rc=1; \
	echo "== mypy"; $(VENV)/bin/mypy || rc=1; \
	exit $$rc

# mypy reads probe/ sink/ cli/ as the package connstats.* through these symlinks (see [tool.mypy])
mypy-tree:
	@mkdir -p build/mypy/connstats; \
	for p in probe sink cli; do ln -sfn ../../../$$p build/mypy/connstats/$$p; done

test: install-test lint
	$(VENV)/bin/pytest -q -n $(JOBS) --dist loadgroup $(ARGS)

test-unit: install-test
	$(VENV)/bin/pytest -q -m "$(UNIT)" $(ARGS)

bench: install-test
	@for b in tests/bench/bench_*.py; do echo "== $$b"; PYTHONPATH=. $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) *.egg-info build/mypy .mypy_cache .ruff_cache
