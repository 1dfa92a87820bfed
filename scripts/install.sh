#!/usr/bin/env bash
# Builds the pgcdc extension in release mode and installs it into the
# PostgreSQL of $PG_CONFIG, with the `wal2arrow` alias PostgreSQL loads the
# output plugin by.
set -euo pipefail

PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
sudo_flag=()
[ "$(id -u)" -eq 0 ] || sudo_flag=(--sudo)

install_into() {
    local pg_config=$1
    (cd "$(dirname "$0")/../extension" && cargo pgrx install --release --pg-config "${pg_config}" "${sudo_flag[@]}")
    local libdir
    libdir=$("${pg_config}" --pkglibdir)
    local link=(ln -sfn pgcdc.so "${libdir}/wal2arrow.so")
    if [ -w "${libdir}" ]; then "${link[@]}"; else sudo "${link[@]}"; fi
    echo "install: pgcdc and the wal2arrow alias are in ${libdir}"
}

install_into "${PG_CONFIG}"
# The other majors scripts/setup.sh installed (PG_MAJORS), for their
# end-to-end tests.
PG_ROOT=${PGCDC_PG_ROOT:-${CARGO_TARGET_DIR:-$(pwd)/target}/postgresql}
for major in ${PG_MAJORS-}; do
    if [ -x "${PG_ROOT}/${major}/bin/pg_config" ]; then
        install_into "${PG_ROOT}/${major}/bin/pg_config"
    fi
done

# The Python package, into the test virtualenv, by the README's command
# (maturin builds it; cargo's target directory caches the build).
if [ -n "${PGCDC_VENV:-}" ]; then
    (cd "$(dirname "$0")/.." && "${PGCDC_VENV}/bin/pip" install --quiet --disable-pip-version-check ./python)
    echo "install: the pgcdc Python package is in ${PGCDC_VENV}"
fi
