#!/usr/bin/env python3
"""The testbed traffic's own verdict on a span of time: the p95 of each 10 s
window of requests (by scheduled start) against the p95 of the minute before
the span, as bench/live judges its runs, from the generator's per-request log.

    bench/traffic_windows.py START END [traffic-latency.csv]

START and END are RFC 3339 times (the job's "running" and last log lines);
the log defaults to the testbed's (/var/lib/pacer-testbed/log/).
Windows with fewer than 200 requests are skipped.
"""
import datetime as dt
import os
import sys


def unix(s):
    return dt.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


def p95(v):
    v = sorted(v)
    return v[int(0.95 * (len(v) - 1))]


def main():
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    start, end = unix(sys.argv[1]), unix(sys.argv[2])
    state = os.environ.get("PACER_TESTBED_DIR", "/var/lib/pacer-testbed")
    path = sys.argv[3] if len(sys.argv) == 4 else f"{state}/log/traffic-latency.csv"
    base, wins = [], {}
    with open(path) as f:
        next(f)
        for line in f:
            t, _route, lat, _ok = line.rstrip().split(",")
            t = int(t) / 1e6
            if start - 60 <= t < start:
                base.append(int(lat))
            elif start <= t < end:
                wins.setdefault(int((t - start) // 10), []).append(int(lat))
    if not base:
        sys.exit(f"no requests in the minute before {sys.argv[1]} in {path}")
    b = p95(base)
    rs = [p95(wins[k]) / b for k in sorted(wins) if len(wins[k]) >= 200]
    if not rs:
        sys.exit(f"no 10 s window with 200 requests between {sys.argv[1]} and {sys.argv[2]}")
    over = sum(r > 1.2 for r in rs)
    slow = sum(r > 1.1 for r in rs)
    print(
        f"baseline p95 {b / 1000:.2f} ms ({len(base)} requests); {len(rs)} windows; "
        f"over stop (+20 %) {over} ({100 * over / len(rs):.1f} %); over slow (+10 %) {slow}; "
        f"worst x{max(rs):.2f}; median x{sorted(rs)[len(rs) // 2]:.2f}"
    )
    print(" ".join(f"{r:.2f}" for r in rs))


if __name__ == "__main__":
    main()
