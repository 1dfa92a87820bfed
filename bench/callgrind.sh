#!/usr/bin/env bash
# Instructions each output plugin spends decoding the same WAL, counted by
# valgrind's callgrind in a single-user backend: repeatable to a fraction
# of a percent whatever else the machine does, where times on this 2-core
# VM move by 15-30% (bench/README.md). For comparing one change of the
# plugin with the next; `make bench` stays the measure of time.
#
# Usage: bench/callgrind.sh [ROWS]   (after `make install`; default 200000,
# the workload of `make bench`'s decode part: ROWS inserts, ROWS/2 updates,
# ROWS/4 deletes in transactions of 1000 rows)
set -euo pipefail

ROWS=${1:-200000}
PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
BIN=$("${PG_CONFIG}" --bindir)
command -v valgrind >/dev/null || { echo "callgrind.sh: needs valgrind (apt-get install valgrind)" >&2; exit 2; }
as_postgres() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

DIR=$(mktemp -d /tmp/pgcdc-callgrind.XXXXXX)
chmod 0777 "${DIR}"
trap 'as_postgres "${BIN}/pg_ctl" -D "${DIR}/data" -w stop >/dev/null 2>&1 || true; rm -rf "${DIR}"' EXIT
as_postgres "${BIN}/initdb" -D "${DIR}/data" >/dev/null 2>&1
plugins="'pgoutput, test_decoding, wal2arrow'"
# 15.19 and later load only the output plugins this setting lists.
[[ $(as_postgres "${BIN}/postgres" --describe-config 2>/dev/null) == *output_plugin_libraries* ]] || plugins=""
cat >>"${DIR}/data/postgresql.conf" <<EOF
wal_level = logical
listen_addresses = ''
unix_socket_directories = '${DIR}'
fsync = off
shared_buffers = 512MB
${plugins:+output_plugin_libraries = ${plugins}}
EOF
as_postgres "${BIN}/pg_ctl" -D "${DIR}/data" -l "${DIR}/log" -w start >/dev/null
sql() { as_postgres "${BIN}/psql" -h "${DIR}" -d postgres -qAt -v ON_ERROR_STOP=1 "$@"; }
sql -c "CREATE TABLE bench (id bigint PRIMARY KEY, qty int, price numeric(12,2), ratio float8, name text,
                            note varchar(64), created timestamptz, active bool, uid uuid);
        CREATE PUBLICATION everything FOR TABLE bench; CREATE PUBLICATION nothing;" >/dev/null
# A slot is made only in a transaction that has written nothing.
sql -c "SELECT pg_create_logical_replication_slot(s, p)
        FROM (VALUES ('floor', 'pgoutput'), ('pgoutput', 'pgoutput'), ('wal2arrow', 'wal2arrow')) v(s, p);" >/dev/null
{
    for ((start = 1; start <= ROWS; start += 1000)); do
        echo "INSERT INTO bench SELECT g, g % 97, (g % 100000) / 100.0, g / 7.0, 'name ' || g, md5(g::text),
              '2024-01-01'::timestamptz + g * interval '1 second', g % 2 = 0, md5(g::text)::uuid
              FROM generate_series($start, $((start + 999 < ROWS ? start + 999 : ROWS))) g;"
    done
    for ((start = 1; start <= ROWS / 2; start += 1000)); do
        echo "UPDATE bench SET qty = qty + 1, price = price * 2, name = name || '!' WHERE id BETWEEN $start AND $((start + 999));"
    done
    for ((start = ROWS / 2 + 1; start <= ROWS / 2 + ROWS / 4; start += 1000)); do
        echo "DELETE FROM bench WHERE id BETWEEN $start AND $((start + 999));"
    done
} | sql >/dev/null
as_postgres "${BIN}/pg_ctl" -D "${DIR}/data" -w stop >/dev/null

# One peek per plugin, each in its own single-user backend under callgrind.
instructions() {
    local slot=$1 options=$2 out="${DIR}/callgrind.$1"
    echo "SELECT count(*) FROM pg_logical_slot_peek_binary_changes('${slot}', NULL, NULL${options});" |
        as_postgres valgrind --tool=callgrind --callgrind-out-file="${out}" \
            "${BIN}/postgres" --single -D "${DIR}/data" -c shared_buffers=512MB postgres >"${DIR}/${slot}.log" 2>&1
    grep -m1 '^summary:' "${out}" | awk '{print $2}'
}
floor=$(instructions floor ", 'proto_version', '1', 'publication_names', 'nothing'")
pgoutput=$(instructions pgoutput ", 'proto_version', '1', 'publication_names', 'everything', 'binary', 'true'")
arrow=$(instructions wal2arrow "")
echo "| plugin | instructions | × floor | × pgoutput binary |"
echo "|---|---:|---:|---:|"
for row in "floor (pgoutput, no tables) ${floor}" "pgoutput binary ${pgoutput}" "wal2arrow ${arrow}"; do
    n=${row##* }
    awk -v name="${row% *}" -v n="$n" -v f="$floor" -v p="$pgoutput" \
        'BEGIN { printf "| %s | %.0fM | %.2f | %.2f |\n", name, n / 1e6, n / f, n / p }'
done
