#!/usr/bin/env bash
# Throughput of two pacer builds side by side: runs alternate A B A B ...,
# each on a freshly generated, vacuumed demo table (scripts/demo-data.sh),
# with the knobs pinned (batch fixed, workers fixed, no sleep, no signals),
# so the controller decides nothing and only the executor's per-batch cost
# differs. Alternating spreads the noise of a shared machine over both.
# Used for the cost of fencing (docs/BENCHMARKS.md, "Fencing").
#
#   bench/ab_rows_per_second.sh --a BIN --b BIN [--runs 3] [--workers 4]
#                               [--batch 1000] [--rows 1000000] [--database-url URL]
#
# Like bench/rows_per_second.sh it creates and drops the database
# pacer_bench, on the testbed's own primary unless --database-url says
# otherwise. Prints one line per run and a Markdown table of the medians.
set -euo pipefail
cd "$(dirname "$0")/.."

url="postgres://postgres@127.0.0.1:${PACER_TESTBED_PRIMARY_PORT:-15432}/postgres"
rows=1000000
batch=1000
workers=4
runs=3
a=""
b=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --a) a="$2"; shift 2 ;;
        --b) b="$2"; shift 2 ;;
        --runs) runs="$2"; shift 2 ;;
        --workers) workers="$2"; shift 2 ;;
        --batch) batch="$2"; shift 2 ;;
        --rows) rows="$2"; shift 2 ;;
        --database-url) url="$2"; shift 2 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
[[ -x "$a" && -x "$b" ]] || { echo "--a and --b must name pacer binaries" >&2; exit 2; }

db=${PACER_BENCH_DB:-pacer_bench}
psql "$url" -q -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db"
base="${url%%\?*}"
query="${url#"$base"}"
bench_url="${base%/*}/$db$query"
work=$(mktemp -d)
trap 'rm -rf "$work"; psql "$url" -q -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true' EXIT

cat > "$work/policy.toml" <<TOML
[job]
name = "bench-ab"
table = "public.orders"
key = "id"
pending = "status IS NULL"
update = "UPDATE public.orders SET status = CASE WHEN paid_at IS NULL THEN 'open' ELSE 'paid' END WHERE id = ANY(\$1) AND status IS NULL"

[database]
url = "$bench_url"

[limits]
batch_size = { start = $batch, min = $batch, max = $batch }
sleep = { start = "0ms", min = "0ms", max = "0ms" }
workers = { start = $workers, min = $workers, max = $workers }
read_chunk = 20000

[http]
listen = "127.0.0.1:0"
TOML

one() { # label binary -> "seconds rows_per_second" (pacer's own figure)
    scripts/demo-data.sh --database-url "$bench_url" --rows "$rows" >/dev/null
    psql "$bench_url" -q -c "DROP SCHEMA IF EXISTS pacer CASCADE" -c "VACUUM (ANALYZE) public.orders" 2>/dev/null
    local t0 t1 out left
    t0=$(date +%s.%N)
    out=$("$2" --log-level warn run --policy "$work/policy.toml" 2>"$work/log")
    t1=$(date +%s.%N)
    left=$(psql "$bench_url" -tAq -c "SELECT count(*) FROM public.orders WHERE status IS NULL")
    [[ "$left" == 0 ]] || { echo "$1 left $left rows pending: $out" >&2; cat "$work/log" >&2; exit 1; }
    echo "$(echo "$t1 - $t0" | bc) $(grep -oE '[0-9]+ rows/s' <<<"$out" | grep -oE '^[0-9]+')"
}

median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

: > "$work/A"
: > "$work/B"
for i in $(seq 1 "$runs"); do
    for v in A B; do
        bin=$a; [[ $v == B ]] && bin=$b
        r=$(one "$v" "$bin")
        echo "run $i $v: $r" >&2
        echo "$r" >> "$work/$v"
    done
done

echo
echo "| build | runs | wall seconds (median) | rows/s, pacer's figure (median) | rows/s per run |"
echo "|---|---:|---:|---:|---|"
for v in A B; do
    bin=$a; [[ $v == B ]] && bin=$b
    secs=$(cut -d' ' -f1 "$work/$v" | median)
    rps=$(cut -d' ' -f2 "$work/$v" | median)
    all=$(cut -d' ' -f2 "$work/$v" | paste -sd' ' | sed 's/ /, /g')
    echo "| $v ($bin) | $runs | $(printf '%.1f' "$secs") | $rps | $all |"
done
