# pgcdc: the commands of DESIGN.md. Each installs what it needs first.
PG_CONFIG ?= /usr/lib/postgresql/15/bin/pg_config
CARGO_TARGET_DIR ?= $(CURDIR)/target
PGCDC_VENV ?= $(CARGO_TARGET_DIR)/venv
export PG_CONFIG CARGO_TARGET_DIR PGCDC_VENV
PGCDC_PYTHON := $(PGCDC_VENV)/bin/python
export PGCDC_PYTHON

.PHONY: setup install test demo bench fuzz

setup:
	scripts/setup.sh

install: setup
	scripts/install.sh

## every test: pure unit tests, then end-to-end tests against private clusters
test: install
	cargo test --workspace --locked

demo: install
	cargo build --quiet --locked -p pgcdc-reader --features cli --bin pgcdc
	cargo run --quiet --locked -p pg_test --bin demo

bench: install
	cargo build --quiet --locked --release -p pgcdc-reader --features flight --bin pgcdc
	cargo run --quiet --locked --release -p pgcdc-bench

## a minute of coverage-guided fuzzing of the ring reader on corrupted rings
fuzz:
	cargo install cargo-fuzz --locked --quiet
	cd reader && cargo fuzz run ring --sanitizer none -- -max_total_time=60
