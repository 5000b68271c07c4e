#!/usr/bin/env bash
# What a waiting fleet target costs (the fleet issue: "a waiting target costs
# 0 connections and <= 5 MB"). Two fleets of the same policy, each with
# max_active_targets = 2 and the knobs pinned slow (batch 100, sleep 1s, one
# worker, no signals), so that the two active targets are still running
# when measured:
#
#   wa: 2 targets      (2 running, 0 waiting)
#   wb: N targets      (2 running, N-2 waiting)
#
# Each run starts `pacer run --policy` on one fleet, waits until two targets
# run (the fleet's /metrics), lets them run SETTLE seconds, then records the
# process's VmRSS, VmHWM and threads (/proc/PID/status), its established TCP
# connections (ss -tnp), and pacer's backends in pg_stat_activity on the
# targets' cluster and on the primary (the coordination database): all of
# them, and those on the databases of waiting targets (which should be 0).
# While the fleet starts, a psql session samples pacer's backends on the
# targets' cluster every 50 ms (the peak it saw is a lower bound). Then
# SIGTERM, and the next run. Runs alternate wa wb wa wb ..., RUNS each; the
# table shows medians, and (RSS_wb - RSS_wa) / (N - 2) is the memory one
# waiting target costs.
#
#   bench/fleet_waiting.sh [--targets 200] [--rows 20000] [--runs 3]
#                          [--settle 15] [--keep] [--server URL | --own-cluster]
#
# Creates N databases pacer_bench_fleet_0001.. on the testbed's solo cluster
# (CREATE DATABASE ... TEMPLATE pacer_bench_fleet_template, each with a table
# items of ROWS rows) and pacer_bench_fleet_coord on the testbed primary;
# drops and recreates them on every run of this script, and drops them all
# at the end unless --keep. Ports from scripts/testbed-ports.sh. Uses
# target/debug/pacer unless PACER=path/to/pacer. Results: docs/BENCHMARKS.md,
# "Fleet: what a waiting target costs".
#
# The fleet runner reads each target's cluster (system_identifier) when it
# starts, 4 connections at a time (it used to open them all at once, which
# a 200-target fleet on solo's 50 connections did not survive; see
# docs/BENCHMARKS.md).
# --server URL puts the targets on another cluster (postgres://user@host:port,
# no database); --own-cluster starts a scratch PostgreSQL 15 for them (initdb
# as the postgres user in a temporary directory, a free port, TCP on
# 127.0.0.1 only, max_connections = N + 50, shared_buffers 32MB like solo)
# and stops and removes it at the end, --keep or not.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/testbed-ports.sh
. scripts/testbed-ports.sh

n=200
rows=20000
runs=3
settle=15
keep=0
own=0
tsrv="postgres://postgres@127.0.0.1:${PACER_TESTBED_SOLO_PORT}"
while [[ $# -gt 0 ]]; do
    case "$1" in
        --targets) n="$2"; shift 2 ;;
        --rows) rows="$2"; shift 2 ;;
        --runs) runs="$2"; shift 2 ;;
        --settle) settle="$2"; shift 2 ;;
        --keep) keep=1; shift ;;
        --server) tsrv="${2%/}"; shift 2 ;;
        --own-cluster) own=1; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
(( n >= 3 )) || { echo "--targets must be at least 3" >&2; exit 2; }
(( settle >= 2 )) || { echo "--settle must be at least 2 (seconds)" >&2; exit 2; }
pacer="${PACER:-target/debug/pacer}"
[[ -x "$pacer" ]] || { echo "no $pacer: cargo build --locked --bin pacer first" >&2; exit 2; }

primary="postgres://postgres@127.0.0.1:${PACER_TESTBED_PRIMARY_PORT}"
prefix=pacer_bench_fleet
coord_db=${prefix}_coord
tmpl_db=${prefix}_template
db() { printf '%s_%04d' "$prefix" "$1"; }
pgbin=/usr/lib/postgresql/15/bin
as_pg() { (cd / && runuser -u postgres -- "$@"); }
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

work=$(mktemp -d)
pid=""
sampler=""
own_dir=""
drop_all() {
    # Every database of this benchmark on the targets' cluster (leftovers of
    # an earlier run with another N too), and the coordination database.
    psql "$tsrv/postgres" -qtA -c \
        "SELECT format('DROP DATABASE IF EXISTS %I WITH (FORCE);', datname) FROM pg_database WHERE datname LIKE '${prefix}\_%'" \
        | psql "$tsrv/postgres" -q -v ON_ERROR_STOP=1 >/dev/null
    psql "$primary/postgres" -q -c "DROP DATABASE IF EXISTS $coord_db WITH (FORCE)" 2>/dev/null
}
cleanup() {
    [[ -n "$sampler" ]] && kill "$sampler" 2>/dev/null
    if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        sleep 3
        kill -KILL "$pid" 2>/dev/null || true
    fi
    if (( keep )); then
        echo "kept the databases ($(db 1)..$(db "$n") on ${tsrv#postgres://}, $coord_db on the primary) and $work" >&2
    else
        drop_all || true
        rm -rf "$work"
    fi
    if [[ -n "$own_dir" ]]; then
        as_pg "$pgbin/pg_ctl" -D "$own_dir/data" -m fast -w stop >/dev/null 2>&1 || true
        rm -rf "$own_dir"
    fi
}
trap cleanup EXIT

if (( own )); then
    own_dir=$(mktemp -d /tmp/pacer-bench-fleet-pg.XXXXXX)
    chown postgres:postgres "$own_dir"
    own_port=$(free_port)
    as_pg "$pgbin/initdb" -D "$own_dir/data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >"$work/initdb.log" 2>&1 \
        || { cat "$work/initdb.log" >&2; exit 1; }
    cat >> "$own_dir/data/postgresql.conf" <<CONF
# bench/fleet_waiting.sh --own-cluster: a scratch cluster for the targets.
port = $own_port
listen_addresses = '127.0.0.1'
unix_socket_directories = ''
ssl = off
shared_buffers = '32MB'
max_connections = $((n + 50))
CONF
    as_pg "$pgbin/pg_ctl" -D "$own_dir/data" -l "$own_dir/log" -w start >/dev/null
    tsrv="postgres://postgres@127.0.0.1:$own_port"
    echo "scratch cluster for the targets: ${tsrv#postgres://}, PostgreSQL $(psql "$tsrv/postgres" -tAq -c 'SHOW server_version')" >&2
fi
tport=${tsrv##*:}
max_conn=$(psql "$tsrv/postgres" -tAq -c 'SHOW max_connections')

t0=$(date +%s.%N)
drop_all
psql "$tsrv/postgres" -q -c "CREATE DATABASE $tmpl_db"
psql "$tsrv/$tmpl_db" -q -v ON_ERROR_STOP=1 \
    -c "CREATE TABLE items (id bigint PRIMARY KEY, counter int NOT NULL DEFAULT 0)" \
    -c "INSERT INTO items (id) SELECT g FROM generate_series(1, $rows) g" \
    -c "VACUUM (ANALYZE) items"
for i in $(seq 1 "$n"); do
    echo "CREATE DATABASE $(db "$i") TEMPLATE $tmpl_db;"
done | psql "$tsrv/postgres" -q -v ON_ERROR_STOP=1
psql "$primary/postgres" -q -c "CREATE DATABASE $coord_db"
echo "created $n target databases of $rows rows on ${tsrv#postgres://} (max_connections $max_conn) in $(echo "$(date +%s.%N) - $t0" | bc | xargs printf '%.0f') s" >&2

policy() { # fleet-name targets port -> policy file
    local f="$work/$1.toml" i
    cat > "$f" <<TOML
[job]
name = "$1"
table = "items"
key = "id"
pending = "counter = 0"
update = "UPDATE items SET counter = counter + 1 WHERE id = ANY(\$1) AND counter = 0"

[limits]
batch_size = { start = 100, min = 100, max = 100 }
sleep = { start = "1s", min = "1s", max = "1s" }
workers = { start = 1, min = 1, max = 1 }

[controller]
tick = "1s"

[fleet]
coordination_url = "$primary/$coord_db"
max_active_targets = 2

[http]
listen = "127.0.0.1:$3"
TOML
    for i in $(seq 1 "$2"); do
        printf '\n[[target]]\nname = "t%04d"\nurl = "%s/%s"\n' "$i" "$tsrv" "$(db "$i")" >> "$f"
    done
    echo "$f"
}

gauge() { # metrics-text fleet state -> pacer_fleet_targets value
    awk -v k="pacer_fleet_targets{pacer_job=\"$2\",state=\"$3\"}" '$1 == k { print $2 }' <<<"$1"
}

# One run of fleet $1 over $2 targets; appends one line of figures to
# $work/$1, the backends it saw to $work/backends.
one() {
    local fleet=$1 count=$2 run=$3 port f log started running="" waiting t
    port=$(free_port)
    f=$(policy "$fleet" "$count" "$port")
    log="$work/$fleet.$run.log"
    # pacer's backends on the targets' cluster while the fleet starts.
    printf "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'pacer%%' AND datname LIKE '%s\\\\_%%' \\\\watch 0.05\n" "$prefix" \
        | psql "$tsrv/postgres" -tAq > "$work/peak.$fleet.$run" 2>/dev/null &
    sampler=$!
    sleep 0.3
    "$pacer" --log-level info run --policy "$f" >"$work/$fleet.$run.out" 2>"$log" &
    pid=$!
    started=$(date +%s.%N)
    for _ in $(seq 1 600); do
        if ! kill -0 "$pid" 2>/dev/null; then
            kill "$sampler" 2>/dev/null; wait "$sampler" 2>/dev/null || true; sampler=""
            echo "pacer exited before 2 targets ran (fleet $fleet, $count targets, run $run); pacer's backends on the targets' cluster peaked at >= $(sort -n "$work/peak.$fleet.$run" | tail -1) while it started:" >&2
            cat "$work/$fleet.$run.out" "$log" >&2
            exit 1
        fi
        running=$(gauge "$(curl -fsS "http://127.0.0.1:$port/metrics" 2>/dev/null || true)" "$fleet" running)
        [[ "$running" == 2 ]] && break
        sleep 0.2
    done
    [[ "$running" == 2 ]] || { echo "fleet $fleet never ran 2 targets:" >&2; cat "$log" >&2; exit 1; }
    t=$(echo "$(date +%s.%N) - $started" | bc)
    sleep 2
    kill "$sampler" 2>/dev/null; wait "$sampler" 2>/dev/null || true; sampler=""
    local peak
    peak=$(sort -n "$work/peak.$fleet.$run" | tail -1)
    sleep "$((settle - 2))"

    local m rss hwm threads tcp tcp_t tcp_p ports
    m=$(curl -fsS "http://127.0.0.1:$port/metrics")
    running=$(gauge "$m" "$fleet" running)
    waiting=$(gauge "$m" "$fleet" waiting)
    rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status")
    hwm=$(awk '/^VmHWM:/ { print $2 }' "/proc/$pid/status")
    threads=$(awk '/^Threads:/ { print $2 }' "/proc/$pid/status")
    ss -tnpH state established 2>/dev/null | grep -F "pid=$pid," > "$work/ss" || true
    tcp=$(wc -l < "$work/ss")
    tcp_t=$(awk -v p=":$tport" '$4 ~ p "$"' "$work/ss" | wc -l)
    tcp_p=$(awk -v p=":$PACER_TESTBED_PRIMARY_PORT" '$4 ~ p "$"' "$work/ss" | wc -l)
    # This process's client ports: its backends, whatever their names.
    ports=$(awk '{ n = split($3, a, ":"); print a[n] }' "$work/ss" | paste -sd, -)
    [[ -n "$ports" ]] || ports=0

    # Running targets by the coordination database; every other target of
    # the fleet waits.
    local run_dbs all_dbs q_all q_wait q_mine tb_all tb_wait tb_mine pb_all pb_mine i
    run_dbs=$(psql "$primary/$coord_db" -tAq -c \
        "SELECT string_agg(quote_literal('${prefix}_' || substr(target, 2)), ',') FROM pacer.fleet_targets WHERE fleet = '$fleet' AND state = 'running'")
    all_dbs=$(for i in $(seq 1 "$count"); do printf "'%s'\n" "$(db "$i")"; done | paste -sd, -)
    q_all="SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'pacer%' AND datname LIKE '${prefix}\_%'"
    q_wait="$q_all AND datname IN ($all_dbs) AND datname NOT IN (${run_dbs:-''})"
    q_mine="SELECT count(*) FROM pg_stat_activity WHERE client_addr = '127.0.0.1' AND client_port IN ($ports)"
    tb_all=$(psql "$tsrv/postgres" -tAq -c "$q_all")
    tb_wait=$(psql "$tsrv/postgres" -tAq -c "$q_wait")
    tb_mine=$(psql "$tsrv/postgres" -tAq -c "$q_mine")
    pb_all=$(psql "$primary/postgres" -tAq -c "$q_all")
    pb_mine=$(psql "$primary/postgres" -tAq -c "$q_mine")
    {
        echo "== fleet $fleet run $run: running targets' databases: $run_dbs"
        local srv
        for srv in "$tsrv" "$primary"; do
            echo "-- ${srv#postgres://} (datname | application_name | state | backends):"
            psql "$srv/postgres" -tAq -c "SELECT datname, application_name, state, count(*) FROM pg_stat_activity WHERE (client_addr = '127.0.0.1' AND client_port IN ($ports)) OR (application_name LIKE 'pacer%' AND datname LIKE '${prefix}\_%') GROUP BY 1, 2, 3 ORDER BY 1, 2"
        done
    } >> "$work/backends"

    kill -TERM "$pid"
    local rc=0
    wait "$pid" || rc=$?
    pid=""
    [[ $rc == 0 ]] || { echo "pacer (fleet $fleet, run $run) exited $rc after SIGTERM:" >&2; tail -20 "$log" >&2; }
    echo "$rss $hwm $threads $tcp $tcp_t $tcp_p $tb_all $tb_wait $tb_mine $pb_all $pb_mine $peak $running/$waiting $t" >> "$work/$fleet"
    printf 'run %d %s (%d targets): running/waiting %s/%s, 2 running %.1f s after start, measured %d s later; VmRSS %d KiB, VmHWM %d KiB, %d threads; TCP %d (targets'"'"' cluster %d, primary %d); pacer backends: targets'"'"' cluster %d (on waiting targets %d, of this process %d), primary %d (of this process %d); start-up peak >= %d\n' \
        "$run" "$fleet" "$count" "$running" "$waiting" "$t" "$settle" "$rss" "$hwm" "$threads" \
        "$tcp" "$tcp_t" "$tcp_p" "$tb_all" "$tb_wait" "$tb_mine" "$pb_all" "$pb_mine" "$peak" >&2
}

: > "$work/wa"
: > "$work/wb"
: > "$work/backends"
for r in $(seq 1 "$runs"); do
    one wa 2 "$r"
    one wb "$n" "$r"
done

col() { cut -d' ' -f"$2" "$work/$1" | median; }
echo
echo "pacer: $pacer ($("$pacer" --version), file modified $(date -u -r "$pacer" '+%F %T') UTC, sha256 $(sha256sum "$pacer" | cut -c1-12)); targets on ${tsrv#postgres://} (max_connections $max_conn), $rows rows each; $runs runs of each fleet, medians"
echo
echo "| fleet | targets (running + waiting) | VmRSS MiB | VmHWM MiB | threads | TCP connections (targets' cluster + primary) | pacer backends, targets' cluster | of them on waiting targets' databases | pacer backends, primary | pacer backends at start, peak seen |"
echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
for v in wa wb; do
    count=2; [[ $v == wb ]] && count=$n
    printf '| %s | %d (2 + %d) | %.1f | %.1f | %s | %s (%s + %s) | %s | %s | %s | %s |\n' \
        "$v" "$count" $((count - 2)) "$(echo "$(col "$v" 1) / 1024" | bc -l)" "$(echo "$(col "$v" 2) / 1024" | bc -l)" \
        "$(col "$v" 3)" "$(col "$v" 4)" "$(col "$v" 5)" "$(col "$v" 6)" "$(col "$v" 7)" "$(col "$v" 8)" "$(col "$v" 10)" "$(col "$v" 12)"
done
echo
awk -v a="$(col wa 1)" -v b="$(col wb 1)" -v ha="$(col wa 2)" -v hb="$(col wb 2)" -v w=$((n - 2)) 'BEGIN {
    printf "per waiting target: VmRSS (%d - %d KiB) / %d = %.1f KiB; VmHWM (%d - %d KiB) / %d = %.1f KiB\n", b, a, w, (b - a) / w, hb, ha, w, (hb - ha) / w }'
echo "waiting targets' backends, per run of wb: $(cut -d' ' -f8 "$work/wb" | paste -sd' ')"
echo
echo "per run: VmRSS KiB, VmHWM KiB, threads, TCP, TCP targets' cluster, TCP primary, pacer backends targets' cluster, on waiting targets, of this process; primary, of this process; start-up peak; running/waiting; s to 2 running"
for v in wa wb; do sed "s/^/$v: /" "$work/$v"; done
echo
echo "pacer's backends at each measurement:"
cat "$work/backends"
