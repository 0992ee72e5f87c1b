#!/usr/bin/env python3
"""The admin lock under a burst of catalog changes: N clients take snapshots through the management API at once
while one client polls GET /v1/health; prints create and health latencies and the server's thread count.

Usage: bench/admin-burst.py API_SOCKET SERVER_PID   (a running `platter serve` on a fresh store; python3 stdlib only)
"""
import http.client, socket, json, threading, time, statistics, sys, os
api = sys.argv[1]; pid = int(sys.argv[2])
class UConn(http.client.HTTPConnection):
    def __init__(self, path): super().__init__("localhost"); self.path = path
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX); self.sock.connect(self.path)
def req(method, url, body=None):
    c = UConn(api); t = time.perf_counter()
    c.request(method, url, body=json.dumps(body) if body is not None else None, headers={"Content-Type": "application/json"})
    r = c.getresponse(); data = r.read(); c.close()
    return time.perf_counter() - t, r.status, data
def threads():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("Threads:"): return int(line.split()[1])
def pct(xs, p): xs = sorted(xs); return xs[min(len(xs)-1, int(len(xs)*p))]
print("load", open("/proc/loadavg").read().split()[:3])
req("POST", "/v1/volumes", {"name": "v", "sizeBytes": 64 << 20})
idle = [req("GET", "/v1/health")[0] for _ in range(50)]
print(f"idle health: median {statistics.median(idle)*1e3:.2f} ms, p99 {pct(idle,.99)*1e3:.2f} ms; threads {threads()}")
for writers in (8, 32):
    creates = []; lock = threading.Lock(); stop = False
    def worker(w):
        for i in range(4):
            dt, st, body = req("POST", "/v1/volumes/v/snapshots", {"name": f"s{writers}-{w}-{i}"})
            assert st == 201, (st, body)
            with lock: creates.append(dt)
    ts = [threading.Thread(target=worker, args=(w,)) for w in range(writers)]
    t0 = time.perf_counter()
    for t in ts: t.start()
    during = []; maxthreads = 0
    while any(t.is_alive() for t in ts):
        during.append(req("GET", "/v1/health")[0]); maxthreads = max(maxthreads, threads())
    for t in ts: t.join()
    wall = time.perf_counter() - t0
    print(f"{writers} concurrent snapshot creators x 4: {len(creates)} creates in {wall:.2f} s ({wall/len(creates)*1e3:.1f} ms each, serialised); "
          f"create latency median {statistics.median(creates)*1e3:.0f} ms, max {max(creates)*1e3:.0f} ms; "
          f"health during: n={len(during)} median {statistics.median(during)*1e3:.2f} ms, p99 {pct(during,.99)*1e3:.2f} ms, max {max(during)*1e3:.2f} ms; "
          f"server threads max {maxthreads}")
    # delete them so the next round starts alike
    for w in range(writers):
        for i in range(4): req("DELETE", f"/v1/volumes/v/snapshots/s{writers}-{w}-{i}")
print("load", open("/proc/loadavg").read().split()[:3])
