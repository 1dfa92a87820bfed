#!/usr/bin/env bash
# Installs what building and testing pgcdc needs on Debian 12, idempotently:
# PostgreSQL 15 server headers, clang (for pgrx's bindgen), wal2json (a
# benchmark peer), the pinned cargo-pgrx, and pyarrow and pytest in a
# virtualenv (the interoperability, Flight and Python package tests).
set -euo pipefail

PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
PGRX_VERSION=0.18.1
VENV=${PGCDC_VENV:-${CARGO_TARGET_DIR:-$(pwd)/target}/venv}

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# openssl: the Flight tests make a self-signed certificate.
packages=(postgresql-server-dev-15 libclang-dev clang postgresql-15-wal2json postgresql-contrib python3-venv openssl)
missing=()
for p in "${packages[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! cargo pgrx --version 2>/dev/null | grep -q " ${PGRX_VERSION}\$"; then
    echo "setup: installing cargo-pgrx ${PGRX_VERSION} (about 5 minutes, once)"
    cargo install cargo-pgrx --version "=${PGRX_VERSION}" --locked --quiet
fi

# `cargo pgrx init` rewrites its config and forces a rebuild: run it once.
if ! grep -qs "^pg15 = \"${PG_CONFIG}\"" "${PGRX_HOME:-$HOME/.pgrx}/config.toml"; then
    cargo pgrx init --pg15="${PG_CONFIG}" >/dev/null
fi

if ! "${VENV}/bin/python" -c 'import pyarrow, pytest' 2>/dev/null; then
    echo "setup: installing pyarrow and pytest into ${VENV}"
    [ -x "${VENV}/bin/python" ] || python3 -m venv "${VENV}"
    "${VENV}/bin/pip" install --quiet --disable-pip-version-check pyarrow pytest
fi
