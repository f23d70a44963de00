#!/usr/bin/env python3
"""Query benchmark: generated events pulled by a real `sluice store` from real supervisors, then
queried through its HTTP API, end to end.

Measures, each the median of --runs runs of the same request (first run included in none: one
warm-up run is made and dropped):
  - needle: one `pii_uid` value (search, pii token), one rare bare word (search);
  - a filtered count over the last hour (the hour before the generated events' largest time_ns);
  - exact p99 (nearest rank) of duration_ms by rpc_method per minute;
  - top 10 url by count;
each with segments read/skipped and the store's peak RSS during the query (VmHWM, reset before
each query through /proc/PID/clear_refs). Every answer is checked against the raw lines before
it is timed. Then freshness: a probe child writes an event, and the time until the event is
returned by /api/tail (one phase: each probe waits for the tail to deliver it) and then by
/api/search (another phase: polled every 2 ms) is measured, p50/p99 over --probes probes each,
while a background source writes --background-rate events per second.

    python3 bench/query.py [--events 10000000] [--runs 5] [--probes 1000] [--smoke] [--keep]
"""

import argparse
import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from capture import build, machine, proc_cpu_s  # noqa: E402
from ingest import field, peak_rss_mb, ready_line  # noqa: E402

SOURCES = 2
STEP_NS = 5_000_000  # 5 ms between events of one source: 10M events span about 7 hours
TOKEN = "bench-admin-token-0123456789"
HOUR_NS = 3_600_000_000_000
UID_COUNT_MAX = 100  # a needle: a user seen in at most this many events


def api(listen, method, path, body=None, accept="application/json", timeout=600):
    conn = http.client.HTTPConnection(listen, timeout=timeout)
    headers = {"Authorization": f"Bearer {TOKEN}", "Accept": accept}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    conn.request(method, path, body=data, headers=headers)
    r = conn.getresponse()
    out = r.read()
    conn.close()
    if r.status != 200:
        raise RuntimeError(f"{method} {path}: {r.status} {out[:500]!r}")
    return json.loads(out)


def sql(listen, q):
    return api(listen, "POST", "/api/sql", {"sql": q})


def search(listen, q, since=None, limit=1000):
    params = {"q": q, "limit": str(limit), "since": since or "100000d"}
    return api(listen, "GET", "/api/search?" + urllib.parse.urlencode(params))


def raw_lines(dirs):
    for d in dirs:
        for n in sorted(os.listdir(d), key=lambda n: (len(n), n)):
            if n.endswith(".chunk") or n.endswith(".open"):
                with open(os.path.join(d, n), "rb") as f:
                    for line in f:
                        yield line


def reference(dirs, uid, word):
    """Expected answers, computed from the raw chunk files in Python."""
    uid_n = word_n = 0
    times = []
    word_re = re.compile(rb"(?i)(^|[^0-9a-z])" + word.encode() + rb"([^0-9a-z]|$)")
    uid_b = f'"pii_uid":"{uid}"'.encode()
    for line in raw_lines(dirs):
        if uid_b in line:
            uid_n += 1
        if word.encode() in line.lower():
            ev = json.loads(line)
            if any(isinstance(v, str) and not k.startswith("pii_") and word_re.search(v.encode())
                   for k, v in ev.items()):
                word_n += 1
    return uid_n, word_n


def reset_peak(pid):
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def timed(fn, runs, pid):
    fn()  # warm-up, dropped
    lat = []
    out = None
    reset_peak(pid)
    for _ in range(runs):
        t = time.perf_counter()
        out = fn()
        lat.append((time.perf_counter() - t) * 1000)
    return statistics.median(lat), out, peak_rss_mb(pid)


class Tail(threading.Thread):
    """Reads /api/tail and records when each probe id arrived; `arrival(pid)` is set then."""

    def __init__(self, listen, q):
        super().__init__(daemon=True)
        self.listen, self.q, self.seen, self.ready = listen, q, {}, threading.Event()
        self.lock, self.arrivals = threading.Lock(), {}

    def arrival(self, pid):
        with self.lock:
            return self.arrivals.setdefault(pid, threading.Event())

    def run(self):
        conn = http.client.HTTPConnection(self.listen, timeout=3600)
        conn.request("GET", "/api/tail?" + urllib.parse.urlencode({"q": self.q}),
                     headers={"Authorization": f"Bearer {TOKEN}", "Accept": "text/event-stream"})
        r = conn.getresponse()
        self.ready.set()
        event = None
        while True:
            line = r.fp.readline()
            if not line:
                return
            line = line.decode().rstrip("\r\n")
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:") and event == "row":
                t = time.perf_counter()
                pid = json.loads(line[5:]).get("probe_id")
                self.seen.setdefault(pid, t)
                self.arrival(pid).set()


def pct(values, p):
    s = sorted(values)
    return s[max(0, min(len(s) - 1, -(-len(s) * p // 100) - 1))] if s else float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--probes", type=int, default=1000)
    ap.add_argument("--background-rate", type=int, default=2000)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, to check that the harness works")
    ap.add_argument("--keep", action="store_true",
                    help="keep the work directory (the store's data_dir is its store/ folder) and print its path")
    args = ap.parse_args()
    if args.smoke:
        args.events, args.runs, args.probes, args.background_rate = 20_000, 1, 20, 200
    exe = build()
    work = tempfile.mkdtemp(prefix="sluice-query-bench-")
    procs = []
    try:
        certs = os.path.join(work, "certs")
        subprocess.run([exe, "certs", "--dir", certs, "--client", "store"], check=True, stdout=subprocess.DEVNULL)
        tls = ["--tls-cert", f"{certs}/server.pem", "--tls-key", f"{certs}/server.key",
               "--allow-clients", f"{certs}/allowed-clients.txt"]
        t_gen = time.perf_counter()
        sources, dirs = "", []
        for i in range(SOURCES):
            d = os.path.join(work, f"sup{i}")
            dirs.append(d)
            subprocess.run([exe, "supervise", "--data-dir", d, "--listen", "none", "--metrics-listen", "none",
                            "--restart", "never", "--retention-bytes-max", "100GB", "--",
                            exe, "gen", "--count", str(args.events // SOURCES), "--seed", str(i),
                            "--step-ns", str(STEP_NS)], check=True, stderr=subprocess.DEVNULL)
        gen_s = time.perf_counter() - t_gen
        live = [(f"web-{i}", dirs[i], ["sleep", "36000"]) for i in range(SOURCES)]
        live.append(("background", os.path.join(work, "bg"),
                     [exe, "gen", "--rate", str(args.background_rate), "--seed", "99"]))
        fifo = os.path.join(work, "probe.fifo")
        os.mkfifo(fifo)
        live.append(("probe", os.path.join(work, "probe"), ["cat", fifo]))
        for name, d, cmd in live:
            p = subprocess.Popen([exe, "supervise", "--data-dir", d, "--listen", "127.0.0.1:0", "--metrics-listen",
                                  "none", "--retention-bytes-max", "100GB", *tls, "--", *cmd], stderr=subprocess.PIPE)
            procs.append(p)
            addr = field(ready_line(p, "ready stream="), "chunks")
            sources += f'[[source]]\nname = "{name}"\nurl = "https://{addr}"\n'
        probe_w = open(fifo, "w")
        with open(os.path.join(work, "tokens.toml"), "w") as f:
            f.write(f'[[token]]\nname = "bench"\nsecret = "{TOKEN}"\nroles = ["viewer", "pii", "admin"]\n')
        config = os.path.join(work, "store.toml")
        with open(config, "w") as f:
            f.write(f'data_dir = "{work}/store"\nlisten = "127.0.0.1:0"\n[tls]\ncert = "{certs}/store.pem"\n'
                    f'key = "{certs}/store.key"\nca = "{certs}/ca.pem"\n[api]\ntokens = "{work}/tokens.toml"\n'
                    f'{sources}')
        t0 = time.perf_counter()
        store = subprocess.Popen([exe, "store", "--config", config], stderr=subprocess.PIPE)
        procs.append(store)
        listen = field(ready_line(store, "sluice store: ready"), "listen")
        # Drain the store's stderr so it never blocks on a full pipe.
        threading.Thread(target=lambda: [None for _ in store.stderr], daemon=True).start()
        count_sql = "SELECT count(*) AS n FROM events WHERE sluice_source LIKE 'web-%'"
        while sql(listen, count_sql)["rows"][0]["n"] < args.events // SOURCES * SOURCES:
            time.sleep(0.5)
        ingest_s = time.perf_counter() - t0
        ingest_cpu = proc_cpu_s(store.pid)
        api(listen, "POST", "/api/admin/flush")
        segs = sql(listen, "SELECT count(*) AS n FROM events")["stats"]

        # The needle values and the reference answers.
        # A needle: among the users after the middle of the first source, the first seen in at most
        # UID_COUNT_MAX events (the most frequent users are in several percent of all events).
        candidates = []
        for i, line in enumerate(raw_lines(dirs[:1])):
            if i >= args.events // SOURCES // 2 and b'"pii_uid"' in line:
                u = json.loads(line)["pii_uid"]
                if u not in candidates:
                    candidates.append(u)
                if len(candidates) >= 200:
                    break
        listed = ", ".join(f"'{u}'" for u in candidates)
        counts = {r["pii_uid"]: r["n"] for r in sql(listen, f"SELECT pii_uid, count(*) AS n FROM events "
                                                             f"WHERE pii_uid IN ({listed}) GROUP BY pii_uid")["rows"]}
        uid = next((u for u in candidates if counts.get(u, 0) <= UID_COUNT_MAX), candidates[0])
        word = "quokka" if args.events >= 5_000_000 else "pangolin"
        uid_n, word_n = reference(dirs, uid, word)
        # The data set is the generated events: not the supervisors' own (`sluice_origin` set),
        # whose time_ns is the wall clock, hours after the generated timeline.
        web = "sluice_source IN ('web-0', 'web-1') AND sluice_origin IS NULL"
        tmax = sql(listen, f"SELECT max(time_ns) AS t FROM events WHERE {web}")["rows"][0]["t"]
        queries = [
            ("needle: one pii_uid (search)", lambda: search(listen, f'pii_uid:"{uid}"'),
             lambda o: len([r for r in o["rows"] if r["sluice_source"].startswith("web-")]) == uid_n),
            (f"needle: rare word `{word}` (search)", lambda: search(listen, word),
             lambda o: len([r for r in o["rows"] if r["sluice_source"].startswith("web-")]) == word_n),
            ("count of ERROR in the last hour (SQL)",
             lambda: sql(listen, f"SELECT count(*) AS n FROM events WHERE {web} AND level = 'ERROR' "
                                 f"AND time_ns > {tmax - HOUR_NS} AND time_ns <= {tmax}"), None),
            ("p99 duration_ms by rpc_method per minute (SQL)",
             lambda: sql(listen, f"SELECT rpc_method, time_ns / arrow_cast(60000000000, 'UInt64') AS minute, "
                                 f"quantile_nearest(duration_ms, 0.99) AS p99 FROM events WHERE {web} "
                                 f"AND rpc_method IS NOT NULL GROUP BY 1, 2 ORDER BY 1, 2"), None),
            ("top 10 url by count (SQL)",
             lambda: sql(listen, f"SELECT url, count(*) AS n FROM events WHERE {web} AND url IS NOT NULL "
                                 f"GROUP BY url ORDER BY n DESC, url LIMIT 10"), None),
        ]
        rows = []
        for name, fn, check in queries:
            ms, out, rss = timed(fn, args.runs, store.pid)
            if check is not None and not check(out):
                raise RuntimeError(f"{name}: wrong answer ({len(out['rows'])} rows)")
            st = out["stats"]
            rows.append((name, ms, st["segments_read"], st["segments_skipped"], st["rows_scanned"], rss))

        # Freshness, in two phases under the same background load, so that neither competes with
        # the other: first the tail alone (each probe waits for the tail to deliver it), then search.
        tail = Tail(listen, "probe_id:*")
        tail.start()
        if not tail.ready.wait(30):
            raise RuntimeError("the tail did not answer within 30 s")

        def probe(pid):
            line = json.dumps({"time_ns": time.time_ns(), "probe_id": pid, "msg": "freshness probe"})
            t = time.perf_counter()
            probe_w.write(line + "\n")
            probe_w.flush()
            return t

        # A first probe, not counted: the tail is running (and has planned its query) once it is back.
        probe("warm-up")
        if not tail.arrival("warm-up").wait(30):
            raise RuntimeError("the tail did not deliver a probe within 30 s")
        search_lat, tail_lat = [], []
        for k in range(args.probes):
            pid = f"t{k}"
            arrived = tail.arrival(pid)
            t = probe(pid)
            if not arrived.wait(30):
                raise RuntimeError(f"probe {pid} not delivered by the tail within 30 s")
            tail_lat.append((tail.seen[pid] - t) * 1000)
        for k in range(args.probes):
            pid = f"s{k}"
            t = probe(pid)
            deadline = t + 30
            while True:
                if search(listen, f"probe_id:{pid}", since="10m", limit=1)["rows"]:
                    search_lat.append((time.perf_counter() - t) * 1000)
                    break
                if time.perf_counter() > deadline:
                    raise RuntimeError(f"probe {pid} not searchable within 30 s")
                time.sleep(0.002)
        store_rss = peak_rss_mb(store.pid)
        m = machine()
        print(f"\n## Query ({args.events:,} events from {SOURCES} supervisors; {m}; {time.strftime('%Y-%m-%d')})\n")
        print(f"Generated in {gen_s:.0f} s; ingested in {ingest_s:.0f} s wall, {ingest_cpu:.0f} CPU-s of the store; "
              f"{segs['segments_read']} segments after flush. Median of {args.runs} runs (after one warm-up).\n")
        print("| query | median ms | segments read | skipped | rows scanned | store peak RSS MB |")
        print("|---|---:|---:|---:|---:|---:|")
        for name, ms, sr, sk, rs, rss in rows:
            print(f"| {name} | {ms:.1f} | {sr} | {sk} | {rs:,} | {rss:.0f} |")
        print(f"\nNeedle answers checked against the raw lines: {uid_n} events of {uid}, {word_n} with `{word}`.\n")
        print("| freshness (child write → returned) | p50 ms | p99 ms | probes |")
        print("|---|---:|---:|---:|")
        print(f"| /api/search | {pct(search_lat, 50):.1f} | {pct(search_lat, 99):.1f} | {len(search_lat)} |")
        print(f"| /api/tail | {pct(tail_lat, 50):.1f} | {pct(tail_lat, 99):.1f} | {len(tail_lat)} |")
        print(f"\nBackground load {args.background_rate} events/s; store peak RSS over the whole run {store_rss:.0f} MB.")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        if args.keep:
            print(f"Kept {work} (the store's data: {work}/store, its config: {work}/store.toml)")
        else:
            subprocess.run(["rm", "-rf", work])


if __name__ == "__main__":
    main()
