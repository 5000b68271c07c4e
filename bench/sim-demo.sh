#!/usr/bin/env bash
# The simulator's tuning table: policies/demo.toml on a scenario for seeds
# 1..5, pacer vs the two fixed strategies, plus the wall time of each run.
#   bench/sim-demo.sh [scenario] [policy]
# Needs a release build (cargo build --release) and python3.
set -euo pipefail
cd "$(dirname "$0")/.."
scenario=${1:-business-day}
policy=${2:-policies/demo.toml}
bin=target/release/pacer
printf '%-5s %8s %8s %7s %6s %7s | %8s %8s | %8s %8s\n' seed eff above_s above_% pauses wall_s cons_eff cons_abv aggr_eff aggr_abv
for seed in 1 2 3 4 5; do
  start=$(date +%s.%N)
  json=$($bin simulate --policy "$policy" --scenario "$scenario" --seed "$seed" --json)
  end=$(date +%s.%N)
  WALL=$(echo "$end - $start" | bc) python3 -c '
import json, os, sys
o = json.loads(sys.stdin.read()); c = o["fixed_baselines"]["conservative"]; a = o["fixed_baselines"]["aggressive"]
print("%-5d %8.3f %8.0f %7.2f %6d %7.2f | %8.3f %8.0f | %8.3f %8.0f" % (o["seed"], o["efficiency"], o["seconds_above_stop"],
  100 * o["seconds_above_stop"] / o["simulated_seconds"], o["pauses"], float(os.environ["WALL"]),
  c["efficiency"], c["seconds_above_stop"], a["efficiency"], a["seconds_above_stop"]))' <<<"$json"
done
