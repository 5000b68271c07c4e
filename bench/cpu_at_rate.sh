#!/usr/bin/env bash
# pacer's own cost at a given rate: `pacer run` with the knobs pinned
# (batch BATCH, one worker, no sleep, no signals) and the hard cap
# `max_rows_per_second` at RATE, on a freshly generated, vacuumed demo table
# of ROWS rows, under /usr/bin/time -v: the rows/s it reached, its CPU time
# as a share of one core over the run's wall time, and its peak RSS.
#
#   bench/cpu_at_rate.sh [--database-url URL] [--rows N] [--rate N] [--batch N]
#
# Like bench/rows_per_second.sh it creates and drops the database
# pacer_bench, on the testbed's own primary unless --database-url says
# otherwise. Needs a release build (or PACER=path/to/pacer).
set -euo pipefail
cd "$(dirname "$0")/.."

url="postgres://postgres@127.0.0.1:${PACER_TESTBED_PRIMARY_PORT:-15432}/postgres"
rows=300000
rate=10000
batch=1000
while [[ $# -gt 0 ]]; do
    case "$1" in
        --database-url) url="$2"; shift 2 ;;
        --rows) rows="$2"; shift 2 ;;
        --rate) rate="$2"; shift 2 ;;
        --batch) batch="$2"; shift 2 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
pacer="${PACER:-target/release/pacer}"
[[ -x "$pacer" ]] || { echo "no $pacer: cargo build --release first" >&2; exit 2; }
[[ -x /usr/bin/time ]] || { echo "needs /usr/bin/time (GNU time)" >&2; exit 2; }

db=${PACER_BENCH_DB:-pacer_bench}
psql "$url" -q -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db"
base="${url%%\?*}"
query="${url#"$base"}"
bench_url="${base%/*}/$db$query"
work=$(mktemp -d)
trap 'rm -rf "$work"; psql "$url" -q -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true' EXIT

scripts/demo-data.sh --database-url "$bench_url" --rows "$rows" >/dev/null
psql "$bench_url" -q -c "DROP SCHEMA IF EXISTS pacer CASCADE" -c "VACUUM (ANALYZE) public.orders" 2>/dev/null

cat > "$work/policy.toml" <<TOML
[job]
name = "bench-cpu"
table = "public.orders"
key = "id"
pending = "status IS NULL"
update = "UPDATE public.orders SET status = CASE WHEN paid_at IS NULL THEN 'open' ELSE 'paid' END WHERE id = ANY(\$1) AND status IS NULL"

[database]
url = "$bench_url"

[limits]
batch_size = { start = $batch, min = $batch, max = $batch }
sleep = { start = "0ms", min = "0ms", max = "0ms" }
workers = { start = 1, min = 1, max = 1 }
read_chunk = 20000
max_rows_per_second = $rate
TOML

/usr/bin/time -v "$pacer" --log-level warn run --policy "$work/policy.toml" >"$work/out" 2>"$work/time"
left=$(psql "$bench_url" -tAq -c "SELECT count(*) FROM public.orders WHERE status IS NULL")
[[ "$left" == 0 ]] || { echo "left $left rows pending" >&2; cat "$work/out" "$work/time" >&2; exit 1; }
cat "$work/out"
wall=$(grep 'Elapsed (wall clock)' "$work/time" | awk '{ print $NF }' | awk -F: '{ s = 0; for (i = 1; i <= NF; i++) s = s * 60 + $i; print s }')
user=$(grep 'User time' "$work/time" | awk '{ print $NF }')
sys=$(grep 'System time' "$work/time" | awk '{ print $NF }')
rss=$(grep 'Maximum resident set size' "$work/time" | awk '{ print $NF }')
awk -v r="$rows" -v w="$wall" -v u="$user" -v s="$sys" -v m="$rss" -v cap="$rate" 'BEGIN {
    printf "| cap rows/s | rows | wall s | rows/s | user s | sys s | CPU, %% of one core | peak RSS MiB |\n|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    printf "| %d | %d | %.1f | %.0f | %.2f | %.2f | %.1f | %.1f |\n", cap, r, w, r / w, u, s, 100 * (u + s) / w, m / 1024 }'
