#!/usr/bin/env python3
# A TCP proxy that can freeze the connections open at a given moment, to
# try pacer against a half-open network (docs/EXECUTOR.md, "Reconnect"):
#   bench/halfopen_proxy.py [LISTEN_PORT] [TARGET_PORT]   # default 15440 -> 15432 (testbed primary)
# Point a policy's database.url at 127.0.0.1:LISTEN_PORT and start `pacer run`;
# `touch /tmp/halfopen-freeze` stops forwarding on every connection open at
# that moment (new ones still work, as after a network path change), and
# removing the file lets them flow again. It never closes the server side of
# a connection whose client went away: the server keeps such a session (and
# its locks), as it does behind a half-open path. Used for the 15 s freeze measured
# in docs/EXECUTOR.md: the workers' client deadlines fired after
# statement_timeout + 5 s and the coordinator ended its own stale session.
import socket, sys, threading, os, time
LISTEN = int(sys.argv[1]) if len(sys.argv) > 1 else 15440
TARGET = int(sys.argv[2]) if len(sys.argv) > 2 else 15432
FREEZE = "/tmp/halfopen-freeze"
frozen_ids = set(); lock = threading.Lock(); n = [0]
def pipe(a, b, cid):
    try:
        while True:
            d = a.recv(65536)
            if not d: break
            while os.path.exists(FREEZE) and cid in frozen_ids: time.sleep(0.05)
            b.sendall(d)
    except Exception: pass
def freezer():
    while True:
        if os.path.exists(FREEZE):
            with lock:
                if not frozen_ids: frozen_ids.update(range(n[0]))
        else:
            frozen_ids.clear()
        time.sleep(0.02)
threading.Thread(target=freezer, daemon=True).start()
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", LISTEN)); s.listen(100)
while True:
    c, _ = s.accept()
    u = socket.create_connection(("127.0.0.1", TARGET))
    with lock:
        cid = n[0]; n[0] += 1
    threading.Thread(target=pipe, args=(c, u, cid), daemon=True).start()
    threading.Thread(target=pipe, args=(u, c, cid), daemon=True).start()
