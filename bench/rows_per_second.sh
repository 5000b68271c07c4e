#!/usr/bin/env bash
# Backfill throughput, measured side by side in one run on the same data:
#   1. a plain psql keyset loop (server-side DO block: read BATCH keys after
#      the cursor, update them, COMMIT, repeat; no round trips at all);
#   2. `pacer run` with the same batches: BATCH rows, one worker, no sleep;
#   3. `pacer run` with the controller unconstrained (no signals; batch may
#      grow to 10000 and workers to 4).
# Each variant gets a freshly generated, vacuumed demo table (ROWS rows).
#
#   bench/rows_per_second.sh [--database-url URL] [--rows N] [--batch N]
#
# It creates and drops a database (pacer_bench) on the server, so the default
# is the testbed's own primary (scripts/testbed up primary), not a server
# from DATABASE_URL that may be the user's own.
# Needs a release build: cargo build --release (or PACER=path/to/pacer).
set -euo pipefail
cd "$(dirname "$0")/.."

url="postgres://postgres@127.0.0.1:${PACER_TESTBED_PRIMARY_PORT:-15432}/postgres"
rows=1000000
batch=1000
while [[ $# -gt 0 ]]; do
    case "$1" in
        --database-url) url="$2"; shift 2 ;;
        --rows) rows="$2"; shift 2 ;;
        --batch) batch="$2"; shift 2 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
pacer="${PACER:-target/release/pacer}"
[[ -x "$pacer" ]] || { echo "no $pacer: cargo build --release first" >&2; exit 2; }

db=pacer_bench
psql "$url" -q -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db"
base="${url%%\?*}"
query="${url#"$base"}"
bench_url="${base%/*}/$db$query"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

fresh_table() {
    scripts/demo-data.sh --database-url "$bench_url" --rows "$rows" >/dev/null
    psql "$bench_url" -q -c "DROP SCHEMA IF EXISTS pacer CASCADE" -c "VACUUM (ANALYZE) public.orders" 2>/dev/null
}

now() { date +%s.%N; }

check_done() {
    local left
    left=$(psql "$bench_url" -tAq -c "SELECT count(*) FROM public.orders WHERE status IS NULL")
    [[ "$left" == 0 ]] || { echo "variant left $left rows pending" >&2; exit 1; }
}

policy() { # name batch_start batch_min batch_max workers_max
    cat > "$work/$1.toml" <<TOML
[job]
name = "bench-$1"
table = "public.orders"
key = "id"
pending = "status IS NULL"
update = "UPDATE public.orders SET status = CASE WHEN paid_at IS NULL THEN 'open' ELSE 'paid' END WHERE id = ANY(\$1) AND status IS NULL"

[database]
url = "$bench_url"

[limits]
batch_size = { start = $2, min = $3, max = $4 }
sleep = { start = "0ms", min = "0ms", max = "1s" }
workers = { start = 1, min = 1, max = $5 }
read_chunk = 20000
lock_timeout = "2s"
statement_timeout = "30s"

[controller]
tick = "1s"
worker_after = "5s"
TOML
}

results=()
report() { # label seconds
    local rps
    rps=$(awk -v r="$rows" -v s="$2" 'BEGIN { printf "%.0f", r / s }')
    results+=("| $1 | $rows | $(printf '%.1f' "$2") | $rps |")
}

echo "psql loop ($batch rows/batch, 1 session)..." >&2
fresh_table
t0=$(now)
psql "$bench_url" -q -v ON_ERROR_STOP=1 <<SQL
DO \$\$
DECLARE cur bigint := 0; ids bigint[];
BEGIN
  LOOP
    SELECT array_agg(id ORDER BY id) INTO ids
      FROM (SELECT id FROM public.orders WHERE id > cur AND status IS NULL ORDER BY id LIMIT $batch) s;
    EXIT WHEN ids IS NULL;
    UPDATE public.orders SET status = CASE WHEN paid_at IS NULL THEN 'open' ELSE 'paid' END
     WHERE id = ANY(ids) AND status IS NULL;
    cur := ids[array_length(ids, 1)];
    COMMIT;
  END LOOP;
END \$\$;
SQL
t1=$(now)
check_done
report "psql keyset loop, batch $batch, 1 session" "$(echo "$t1 - $t0" | bc)"

echo "pacer, same batches ($batch rows, 1 worker)..." >&2
fresh_table
policy fixed "$batch" "$batch" "$batch" 1
t0=$(now)
"$pacer" --log-level warn run --policy "$work/fixed.toml" >&2
t1=$(now)
check_done
report "pacer run, batch $batch fixed, 1 worker" "$(echo "$t1 - $t0" | bc)"

echo "pacer, controller unconstrained..." >&2
fresh_table
policy free "$batch" 100 10000 4
t0=$(now)
"$pacer" --log-level warn run --policy "$work/free.toml" >&2
t1=$(now)
check_done
report "pacer run, controller unconstrained (batch ≤ 10000, workers ≤ 4)" "$(echo "$t1 - $t0" | bc)"

psql "$url" -q -c "DROP DATABASE IF EXISTS $db WITH (FORCE)"
echo
echo "| variant | rows | seconds | rows/s |"
echo "|---|---:|---:|---:|"
printf '%s\n' "${results[@]}"
