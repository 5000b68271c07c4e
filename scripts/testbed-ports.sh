# Addresses of the pacer testbed, sourced by scripts/testbed, scripts/test,
# scripts/demo-live and bench/reaction. The testbed runs everything on ports
# of its own, away from the usual 5432/9090/9187, so a PostgreSQL or
# Prometheus the machine already runs is never touched. Set a variable to
# move one part; tests/common/mod.rs and bench/reaction.rs read the same
# variables with the same defaults, and testbed/prometheus.yml and
# policies/demo-live.toml hold the defaults (scripts/testbed and
# scripts/demo-live rewrite them when a port is moved).
# shellcheck shell=bash
: "${PACER_TESTBED_PRIMARY_PORT:=15432}"    # the testbed's own PostgreSQL primary
: "${PACER_TESTBED_REPLICA_PORT:=15433}"    # its streaming replica
: "${PACER_TESTBED_SOLO_PORT:=15434}"       # a second, standalone cluster (fleet tests)
: "${PACER_TESTBED_PROMETHEUS_PORT:=19090}" # its Prometheus
: "${PACER_TESTBED_TRAFFIC_PORT:=19300}"    # pacer-traffic (/metrics, /control)
: "${PACER_TESTBED_PACER_PORT:=19187}"      # pacer's /metrics in the demo and benchmark
: "${PACER_TESTBED_POOLER_PORT:=15439}"     # pgbouncer started by tests/exec_pooler.rs
export PACER_TESTBED_PRIMARY_PORT PACER_TESTBED_REPLICA_PORT PACER_TESTBED_SOLO_PORT \
  PACER_TESTBED_PROMETHEUS_PORT PACER_TESTBED_TRAFFIC_PORT PACER_TESTBED_PACER_PORT \
  PACER_TESTBED_POOLER_PORT
