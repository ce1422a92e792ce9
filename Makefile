# make run   install what is missing, then run connstats on this host (as root)
# make test  install what is missing, then run the whole test suite (as root)
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
DEB_PACKAGES := python3-bpfcc python3-venv libbpf1 iproute2 nats-server iperf3 iputils-ping \
	docker.io busybox-static procps docker-compose chromium
ARGS ?=

.PHONY: install deb headers venv run test bench clean

install: deb headers venv

deb:
	@missing=$$(for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing:" $$missing; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

headers:
	@sh deploy/kernel-headers.sh

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || /usr/bin/python3 -m venv --system-site-packages $(VENV)
	@$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	@$(PY) -c 'import bcc' || { echo "bcc does not import in $(VENV)"; exit 1; }
	@touch $@

run: install
	$(VENV)/bin/connstats up $(ARGS)

test: install
	$(VENV)/bin/pytest -q $(ARGS)

bench: install
	@for b in tests/bench/bench_*.py; do echo "== $$b"; PYTHONPATH=. $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) *.egg-info
