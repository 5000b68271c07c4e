#!/usr/bin/env python3
"""Does a fixed loop's batch time lead the traffic's p95? Both in 5 s windows
of one bench/live run: each window's median batch time per row against its
median before the surge (from 10 s to 5 s before it), and the p95 of the
requests scheduled in the window against the p95 with no backfill (the
median of the baseline's last minute of 5 s windows).

    bench/batch_lead.py LATENCY.csv BATCHES.csv SURGE_AT_S SURGE_FOR_S

LATENCY.csv is the run's traffic log (<run>-<strategy>.csv: scheduled start
in µs since the epoch, latency in µs in the third column), BATCHES.csv its
<run>-<strategy>-batches.csv (start µs, duration µs, rows, session).
Windows inside the surge are marked S.
"""
import statistics as st
import sys

from traffic_windows import p95 as window_p95

WINDOW_US = 5e6


def p95(values):
    return window_p95(values) if values else float("nan")


def main():
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    lat_path, bat_path = sys.argv[1], sys.argv[2]
    surge_at, surge_for = float(sys.argv[3]), float(sys.argv[4])
    batches = [tuple(map(int, l.split(","))) for l in open(bat_path).read().splitlines()[1:]]
    if not batches:
        sys.exit(f"{bat_path}: no batches")
    t0 = min(b[0] for b in batches)
    requests = []
    for line in open(lat_path).read().splitlines()[1:]:
        f = line.split(",")
        try:
            requests.append((int(f[0]), float(f[2]) / 1e3))
        except (IndexError, ValueError):
            continue
    before = {}
    wins = {}
    for s, ms in requests:
        k = int((s - t0) // WINDOW_US)
        if s < t0:
            before.setdefault(k, []).append(ms)
        else:
            wins.setdefault(k, {"lat": [], "bt": []})["lat"].append(ms)
    for start, dur_us, rows, _ in batches:
        if rows > 0:
            k = int((start - t0) // WINDOW_US)
            wins.setdefault(k, {"lat": [], "bt": []})["bt"].append(dur_us / 1e3 / rows)
    base = st.median([p95(v) for k, v in before.items() if k >= -12])
    pre = [st.median(w["bt"]) for k, w in wins.items() if 10 <= k * 5 < surge_at - 5 and w["bt"]]
    if not pre:
        sys.exit("no batches between 10 s in and 5 s before the surge")
    usual = st.median(pre)
    print(f"p95 with no backfill {base:.2f} ms; batch {usual * 1000:.2f} ms per 1000 rows before the surge")
    print("  t_s  p95/base  batch/usual  batches")
    for k in sorted(wins):
        w, t = wins[k], k * 5
        mark = "S" if surge_at <= t < surge_at + surge_for else " "
        bt = st.median(w["bt"]) / usual if w["bt"] else float("nan")
        print(f"{t:5d}{mark} {p95(w['lat']) / base:8.2f}  {bt:11.2f}  {len(w['bt']):7d}")


if __name__ == "__main__":
    main()
