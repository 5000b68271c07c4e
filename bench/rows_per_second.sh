#!/usr/bin/env bash
# Backfill throughput, measured side by side in one run on the same data:
#   1. a plain psql keyset loop (server-side DO block: read BATCH keys after
#      the cursor, update them, COMMIT, repeat; no round trips at all);
#   2. `pacer run` with the same batches: BATCH rows, one worker, no sleep;
#   3. `pacer run` with the controller unconstrained (no signals; batch may
#      grow to 10000 and workers to 4).
# Each variant gets a freshly generated, vacuumed demo table (ROWS rows).
# With --runs N, variants 1 and 2 alternate N times (1 2 1 2 ...) and the
# table shows each one's median and the ratio of the medians; variant 3
# runs once (--no-free: not at all). Every variant is timed as a whole
# command (pacer's start, migrations and preflight included).
#
# Round trips per batch: counted by pacer itself (every request whose
# answer a worker or the reader awaits: the batch's statements and the key
# reads; opening connections not counted), from the line it logs at the
# end of a run, divided by its batch attempts. The psql loop is one
# statement in all: 0 per batch.
#
#   bench/rows_per_second.sh [--database-url URL] [--rows N] [--batch N]
#                            [--runs N] [--no-free]
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
runs=1
free=1
while [[ $# -gt 0 ]]; do
    case "$1" in
        --database-url) url="$2"; shift 2 ;;
        --rows) rows="$2"; shift 2 ;;
        --batch) batch="$2"; shift 2 ;;
        --runs) runs="$2"; shift 2 ;;
        --no-free) free=0; shift ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
pacer="${PACER:-target/release/pacer}"
[[ -x "$pacer" ]] || { echo "no $pacer: cargo build --release first" >&2; exit 2; }

db=${PACER_BENCH_DB:-pacer_bench}
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

median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# pacer's own count: "round trips / batch attempts" from its last log line.
trips_per_batch() { # log file
    local line t b
    line=$(grep '"round_trips"' "$1" | tail -1 || true)
    t=$(grep -oE '"round_trips":[0-9]+' <<<"$line" | grep -oE '[0-9]+$' || true)
    b=$(grep -oE '"batches":[0-9]+' <<<"$line" | grep -oE '[0-9]+$' || true)
    awk -v t="$t" -v b="$b" 'BEGIN { if (b > 0) printf "%.2f (%d / %d)\n", t / b, t, b; else print "?" }'
}

loop_once() {
    fresh_table
    local t0 t1
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
    echo "$t1 - $t0" | bc
}

pacer_once() { # policy name -> seconds; the log in $work/<name>.log
    fresh_table
    local t0 t1
    t0=$(now)
    "$pacer" --log-format json --log-level info run --policy "$work/$1.toml" >&2 2>"$work/$1.log"
    t1=$(now)
    check_done
    echo "$t1 - $t0" | bc
}

policy fixed "$batch" "$batch" "$batch" 1
policy free "$batch" 100 10000 4
: > "$work/loop.s"
: > "$work/fixed.s"
: > "$work/fixed.rt"
for i in $(seq 1 "$runs"); do
    echo "run $i/$runs: psql loop ($batch rows/batch, 1 session)..." >&2
    s=$(loop_once)
    echo "$s" >> "$work/loop.s"
    echo "run $i/$runs: pacer, same batches ($batch rows, 1 worker)..." >&2
    s=$(pacer_once fixed)
    echo "$s" >> "$work/fixed.s"
    trips_per_batch "$work/fixed.log" >> "$work/fixed.rt"
    echo "  loop $(tail -1 "$work/loop.s") s, pacer $s s, pacer round trips per batch $(tail -1 "$work/fixed.rt")" >&2
done

rps() { awk -v r="$rows" -v s="$1" 'BEGIN { printf "%.0f", r / s }'; }
per_run() { while read -r s; do rps "$s"; echo; done < "$1" | paste -sd' ' | sed 's/ /, /g'; }
loop_s=$(median < "$work/loop.s")
fixed_s=$(median < "$work/fixed.s")
rows_out=()
rows_out+=("| psql keyset loop, batch $batch, 1 session | $runs | $(printf '%.1f' "$loop_s") | $(rps "$loop_s") | $(per_run "$work/loop.s") | 0 (one statement in all) |")
rows_out+=("| pacer run, batch $batch fixed, 1 worker | $runs | $(printf '%.1f' "$fixed_s") | $(rps "$fixed_s") | $(per_run "$work/fixed.s") | $(sort "$work/fixed.rt" | uniq | paste -sd';') |")

if [[ $free == 1 ]]; then
    echo "pacer, controller unconstrained..." >&2
    s=$(pacer_once free)
    rows_out+=("| pacer run, controller unconstrained (batch ≤ 10000, workers ≤ 4) | 1 | $(printf '%.1f' "$s") | $(rps "$s") | $(rps "$s") | $(trips_per_batch "$work/free.log") |")
fi

psql "$url" -q -c "DROP DATABASE IF EXISTS $db WITH (FORCE)"
echo
echo "| variant | runs | seconds (median) | rows/s (median) | rows/s per run | round trips per batch |"
echo "|---|---:|---:|---:|---|---|"
printf '%s\n' "${rows_out[@]}"
awk -v l="$loop_s" -v p="$fixed_s" 'BEGIN { printf "\npacer / psql loop at batch '"$batch"' (medians of %d alternating runs): %.3f\n", '"$runs"', l / p }'
