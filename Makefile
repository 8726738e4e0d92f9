# Two commands on a fresh machine: `make run` and `make test`. Both set up everything first:
# the Debian packages the project uses (as root; apt-get update once), a venv, the pinned
# Python dependencies.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# command:package pairs for what the tests and the product call
DEBS   := tcpdump:tcpdump tshark:tshark capinfos:tshark nft:nftables ip:iproute2 \
          prometheus-alertmanager:prometheus-alertmanager systemd-analyze:systemd \
          prometheus:prometheus promtool:prometheus chromium:chromium hey:hey \
          tcpreplay:tcpreplay debootstrap:debootstrap systemd-nspawn:systemd-container

.PHONY: run test setup debs lint man bench bench-big bench-watch bench-diagnose bench-web fuzz captures clean

# diagnose exits 1 when it finds something abnormal: a finding, not a failure of make
run: setup
	$(BIN)/rsthound diagnose || [ $$? -eq 1 ]

# three workers on two cores: most tests wait on real kernels and clocks, not on a core.
# The storms run apart afterwards: the kernel trace sees every namespace, and a storm
# floods every tracer on the host. Last, alone, the tests that must have the host's trace
# to themselves (the installed unit names the client from its trace).
test: setup
	$(BIN)/ruff check src tests bench
	$(BIN)/python -m pytest -n 3 -m "not storm and not alone"
	$(BIN)/python -m pytest -n 2 -m storm
	$(BIN)/python -m pytest -m alone

setup: debs $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

debs:
	@missing=""; \
	for pair in $(DEBS); do \
	  cmd=$${pair%%:*}; pkg=$${pair##*:}; \
	  command -v $$cmd >/dev/null 2>&1 || missing="$$missing $$pkg"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -q >/dev/null && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing >/dev/null; \
	  else \
	    echo "note: missing Debian packages:$$missing (run 'sudo make debs'); tests that need them will skip"; \
	  fi; \
	fi

# the manual page, made from the parser: build/rsthound.1 (man -l build/rsthound.1)
man: setup
	mkdir -p build
	$(BIN)/argparse-manpage --module rsthound.cli --function build_parser --prog rsthound \
	  --project-name rsthound --manual-title "rsthound manual" --output build/rsthound.1

lint: setup
	$(BIN)/ruff check src tests bench

# the benchmark against tcpdump and tshark (see bench/README.md)
bench: setup
	$(BIN)/python bench/run_analyze.py --rsthound $(BIN)/rsthound

# the same on a 10,000,000-packet capture (about 6 GB in bench/out/), without tshark
bench-big: setup
	$(BIN)/python bench/run_analyze.py --big --rsthound $(BIN)/rsthound

# what watch costs over 10 minutes, beside nstat once a second (see bench/README.md)
bench-watch: setup
	$(BIN)/python bench/run_watch.py --rsthound $(BIN)/rsthound

# /metrics and the API under 50 concurrent clients (hey), while watch samples (root)
bench-web: setup
	$(BIN)/python bench/run_web.py --requests 100000 --rsthound $(BIN)/rsthound

# the parsers' fuzzing, long: 5,000 examples per parser instead of make test's few hundred
fuzz: setup
	RSTHOUND_FUZZ=long $(BIN)/python -m pytest -q tests/reliability/test_fuzz.py

# diagnose's time to its finding in the seed's case, its CPU and memory (root)
bench-diagnose: setup
	$(BIN)/python bench/run_diagnose.py --rsthound $(BIN)/rsthound

# re-make the golden captures in tests/data (root; network namespaces)
captures: setup
	bash tests/data/make_captures.sh

clean:
	rm -rf $(VENV) bench/out .pytest_cache .ruff_cache
