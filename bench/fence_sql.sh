#!/usr/bin/env bash
# The SQL cost of fencing alone, with pgbench: transactions per second of a
# batch's progress record written as before (INSERT ... VALUES, whose
# foreign key already takes FOR KEY SHARE on the job's row) and as now
# (INSERT ... SELECT ... FROM jobs WHERE epoch = $n FOR KEY SHARE), by
# CLIENTS concurrent sessions on one job row, while another session updates
# that row once a second like the runner's per-tick save. No update of a
# target table: the progress write is the whole transaction, so any
# difference shows at its largest. Runs alternate, SECONDS each.
#
#   bench/fence_sql.sh [--database-url URL] [--clients 4] [--seconds 15] [--runs 3]
#
# Creates and drops the database pacer_fence_bench, on the testbed's own
# primary unless --database-url says otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."

url="postgres://postgres@127.0.0.1:${PACER_TESTBED_PRIMARY_PORT:-15432}/postgres"
clients=4
seconds=15
runs=3
while [[ $# -gt 0 ]]; do
    case "$1" in
        --database-url) url="$2"; shift 2 ;;
        --clients) clients="$2"; shift 2 ;;
        --seconds) seconds="$2"; shift 2 ;;
        --runs) runs="$2"; shift 2 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
db=pacer_fence_bench
psql "$url" -q -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db"
base="${url%%\?*}"
query="${url#"$base"}"
bench_url="${base%/*}/$db$query"
work=$(mktemp -d)
ticker=""
cleanup() {
    [[ -n "$ticker" ]] && kill "$ticker" 2>/dev/null || true
    rm -rf "$work"
    psql "$url" -q -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
}
trap cleanup EXIT

psql "$bench_url" -q -v ON_ERROR_STOP=1 <<'SQL'
CREATE TABLE jobs (name text PRIMARY KEY, epoch bigint NOT NULL DEFAULT 1, state text,
                   cursor_key text, updated_at timestamptz);
CREATE TABLE progress (job text NOT NULL REFERENCES jobs (name), batch_id bigint NOT NULL,
                       pass integer NOT NULL, first_key text NOT NULL, last_key text NOT NULL,
                       keys integer NOT NULL, rows bigint NOT NULL, epoch bigint,
                       committed_at timestamptz NOT NULL DEFAULT clock_timestamp(),
                       PRIMARY KEY (job, batch_id));
CREATE SEQUENCE batch_id;
INSERT INTO jobs VALUES ('j', 1, 'running', NULL, now());
SQL
cat > "$work/before.sql" <<'SQL'
BEGIN;
INSERT INTO progress (job, batch_id, pass, first_key, last_key, keys, rows)
VALUES ('j', nextval('batch_id'), 0, '1', '100', 100, 100);
COMMIT;
SQL
cat > "$work/fenced.sql" <<'SQL'
BEGIN;
INSERT INTO progress (job, batch_id, pass, first_key, last_key, keys, rows, epoch)
SELECT 'j', nextval('batch_id'), 0, '1', '100', 100, 100, epoch FROM jobs
 WHERE name = 'j' AND epoch = 1 FOR KEY SHARE;
COMMIT;
SQL
# The runner's per-tick save of the same row.
( while true; do
    psql "$bench_url" -q -c "UPDATE jobs SET state = 'running', cursor_key = now()::text, updated_at = now() WHERE name = 'j'" >/dev/null
    sleep 1
  done ) &
ticker=$!

declare -A tps
for i in $(seq 1 "$runs"); do
    for v in before fenced; do
        psql "$bench_url" -q -c "TRUNCATE progress" -c "VACUUM jobs"
        t=$(pgbench -n -M prepared -c "$clients" -j "$clients" -T "$seconds" -f "$work/$v.sql" "$bench_url" 2>/dev/null \
            | awk '/^tps = / { printf "%.0f", $3 }')
        echo "run $i $v: $t tps" >&2
        tps[$v]+="$t "
    done
done
echo
echo "| progress write | clients | runs × seconds | tps per run |"
echo "|---|---:|---:|---|"
for v in before fenced; do
    echo "| $v | $clients | $runs × $seconds | $(echo "${tps[$v]}" | xargs | sed 's/ /, /g') |"
done
