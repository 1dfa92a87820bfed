# pgcdc: the commands of DESIGN.md. Each installs what it needs first.
PG_CONFIG ?= /usr/lib/postgresql/15/bin/pg_config
CARGO_TARGET_DIR ?= $(CURDIR)/target
PGCDC_VENV ?= $(CARGO_TARGET_DIR)/venv
# The other PostgreSQL majors `make test` also runs the end-to-end tests on
# (its setup installs them under PGCDC_PG_ROOT); `PG_MAJORS=` for none.
PG_MAJORS ?= 16 17 18
PGCDC_PG_ROOT ?= $(CARGO_TARGET_DIR)/postgresql
export PG_CONFIG CARGO_TARGET_DIR PGCDC_VENV PGCDC_PG_ROOT
PGCDC_PYTHON := $(PGCDC_VENV)/bin/python
export PGCDC_PYTHON

.PHONY: setup install test demo bench fuzz

setup:
	scripts/setup.sh

install: setup
	scripts/install.sh

## every test: pure unit tests, then end-to-end tests against private clusters,
## then the end-to-end tests again on each other major of PG_MAJORS
test:
	PG_MAJORS="$(PG_MAJORS)" scripts/setup.sh
	PG_MAJORS="$(PG_MAJORS)" scripts/install.sh
	cargo test --workspace --locked
	for major in $(PG_MAJORS); do \
	    echo "make test: the end-to-end tests on PostgreSQL $$major"; \
	    PG_CONFIG=$(PGCDC_PG_ROOT)/$$major/bin/pg_config cargo test --locked -p pg_test || exit 1; \
	done

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
