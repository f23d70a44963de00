#!/usr/bin/env python3
"""Ingest benchmark: a pre-filled backlog on 4 supervisors, pulled by one `sluice store`.

Reports, for the store alone (its process): events/s and MB/s of raw JSON per CPU-second (the
CPU of its whole life, its graceful stop's final flush included), peak RSS, and the bytes on disk
per event after it stopped (everything under its data_dir: segments, write-ahead log, manifest),
beside `zstd -19` of the same raw lines measured in the same run. Every figure is the median of --runs runs.
Then the bytes on disk by part (each Parquet column, term indexes, WAL; per column only with DuckDB
installed) of the last run.

    python3 bench/ingest.py [--events 2000000] [--runs 3] [--smoke]
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from capture import build, machine, proc_cpu_s  # noqa: E402

SOURCES = 4


def ready_line(proc, marker):
    for raw in proc.stderr:
        line = raw.decode(errors="replace")
        if marker in line:
            return line
    raise RuntimeError(f"process exited before {marker!r}")


def drain(proc):
    """Reads a process's stderr to its end in the background, so that it never blocks on a full pipe."""
    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()


def field(line, key):
    for w in line.split():
        if w.startswith(key + "="):
            return w[len(key) + 1:]
    raise KeyError(key)


def metric(addr, name):
    with urllib.request.urlopen(f"http://{addr}/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
    return 0.0


def chunk_bytes_and_lines(d):
    size = lines = 0
    for n in os.listdir(d):
        if n.endswith(".chunk") or n.endswith(".open"):
            with open(os.path.join(d, n), "rb") as f:
                data = f.read()
            size += len(data)
            lines += data.count(b"\n")
    return size, lines


def flush_thread_cpu_s(pid):
    """CPU-seconds so far of the store's maintenance thread (its flushes, compaction and retention;
    the Linux thread name is cut to 15 bytes)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                head, rest = f.read().rsplit(")", 1)
        except OSError:
            continue
        if head.split("(", 1)[1].startswith("sluice-store-ma"):
            fields = rest.split()
            total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def peak_rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def du(path):
    total = 0
    for root, _, files in os.walk(path):
        for n in files:
            total += os.path.getsize(os.path.join(root, n))
    return total


def breakdown(store_dir):
    """Bytes of a stopped store's data dir by part: each Parquet column of the segments (through
    DuckDB's parquet_metadata, if DuckDB is installed: pip install duckdb), term indexes, WAL, the
    rest. Returns [(part, bytes)], largest first."""
    files = {"term indexes (.terms)": 0, "write-ahead log": 0, "segments (.parquet)": 0, "manifest and other": 0}
    for root, _, names in os.walk(store_dir):
        for n in names:
            size = os.path.getsize(os.path.join(root, n))
            if n.endswith(".terms"):
                files["term indexes (.terms)"] += size
            elif n.endswith(".parquet"):
                files["segments (.parquet)"] += size
            elif os.path.basename(root) == "wal":
                files["write-ahead log"] += size
            else:
                files["manifest and other"] += size
    try:
        import duckdb
    except ImportError:
        duckdb = None
    if duckdb is None or not files["segments (.parquet)"]:
        return sorted(files.items(), key=lambda kv: -kv[1])
    glob = os.path.join(store_dir, "segments", "**", "*.parquet")
    columns = duckdb.sql(f"SELECT path_in_schema, sum(total_compressed_size) FROM parquet_metadata('{glob}') "
                         "GROUP BY 1").fetchall()
    in_columns = sum(b for _, b in columns)
    parts = [(f"column {name}", b) for name, b in columns]
    parts.append(("segments: footers and page indexes", files.pop("segments (.parquet)") - in_columns))
    parts += files.items()
    return sorted(parts, key=lambda kv: -kv[1])


def prefill(exe, work, commands):
    """Runs each command under its own supervisor until it exits; returns their data dirs."""
    dirs = []
    for i, cmd in enumerate(commands):
        data = os.path.join(work, f"sup{i}")
        subprocess.run([exe, "supervise", "--data-dir", data, "--listen", "none", "--metrics-listen", "none",
                        "--restart", "never", "--retention-bytes-max", "100GB", "--", *cmd], check=True,
                       stderr=subprocess.DEVNULL)
        dirs.append(data)
    return dirs


def serve(exe, certs, named):
    """Starts a serving supervisor per (name, data_dir, child command); returns (procs, [[source]] TOML)."""
    procs, sources = [], ""
    for name, data, cmd in named:
        p = subprocess.Popen([exe, "supervise", "--data-dir", data, "--listen", "127.0.0.1:0",
                              "--metrics-listen", "none", "--retention-bytes-max", "100GB",
                              "--tls-cert", f"{certs}/server.pem", "--tls-key", f"{certs}/server.key",
                              "--allow-clients", f"{certs}/allowed-clients.txt", "--", *cmd],
                             stderr=subprocess.PIPE)
        addr = field(ready_line(p, "ready stream="), "chunks")
        drain(p)
        procs.append(p)
        sources += f'[[source]]\nname = "{name}"\nurl = "https://{addr}"\n'
    return procs, sources


def make_certs(exe, work):
    certs = os.path.join(work, "certs")
    subprocess.run([exe, "certs", "--dir", certs, "--client", "store"], check=True, stdout=subprocess.DEVNULL)
    return certs


def start_store(exe, work, certs, sources, name="store", extra=""):
    """Starts `sluice store` on its own data dir; returns (proc, listen address, data dir)."""
    store_dir = os.path.join(work, name)
    config = os.path.join(work, f"{name}.toml")
    with open(config, "w") as f:
        f.write(f'data_dir = "{store_dir}"\nlisten = "127.0.0.1:0"\n[tls]\ncert = "{certs}/store.pem"\n'
                f'key = "{certs}/store.key"\nca = "{certs}/ca.pem"\n{extra}{sources}')
    store = subprocess.Popen([exe, "store", "--config", config], stderr=subprocess.PIPE)
    listen = field(ready_line(store, "sluice store: ready"), "listen")
    drain(store)
    return store, listen, store_dir


def pull(exe, work, certs, sources, lines, name="store"):
    """One store pulls everything the sources hold: wall time until all `lines` are held, the
    store's CPU and peak RSS (from /proc), and the bytes of its data dir after it stopped."""
    t0 = time.perf_counter()
    store, listen, store_dir = start_store(exe, work, certs, sources, name)
    deadline = time.time() + 3600
    while True:
        held = metric(listen, "sluice_store_rows_in_segments") + metric(listen, "sluice_store_rows_buffered")
        if held >= lines:
            break
        if time.time() > deadline:
            raise RuntimeError("store did not catch up within an hour")
        time.sleep(0.2)
    wall = time.perf_counter() - t0
    cpu_held = proc_cpu_s(store.pid)
    cpu_held_flush = flush_thread_cpu_s(store.pid)
    rss = peak_rss_mb(store.pid)
    # Whether a compaction ran: it costs about as much as a flush of its rows, and whether one
    # fits before the stop depends on how fast the flushes were (see BENCHMARKS, "B").
    compactions = metric(listen, "sluice_store_compactions_total")
    # The CPU of its whole life, up to its exit: a graceful stop flushes what is still buffered, and
    # that work is part of ingesting it.
    store.terminate()
    _, status, usage = os.wait4(store.pid, 0)
    store.returncode = os.waitstatus_to_exitcode(status)
    cpu = usage.ru_utime + usage.ru_stime
    # And all of them, those after it was held included (the manifest counts them durably).
    with open(os.path.join(store_dir, "manifest.json")) as f:
        compactions_all = json.load(f).get("compactions_total", 0)
    return dict(wall=wall, cpu=cpu, cpu_held=cpu_held, cpu_held_flush=cpu_held_flush, rss=rss, disk=du(store_dir),
                held=held, store_dir=store_dir, minflt=usage.ru_minflt, compactions=compactions,
                compactions_all=compactions_all)


def one_run(exe, work, events, baselines):
    certs = make_certs(exe, work)
    dirs = prefill(exe, work, [[exe, "gen", "--count", str(events // SOURCES), "--seed", str(i)]
                               for i in range(SOURCES)])
    sups, sources = serve(exe, certs, [(f"web-{i}", d, ["sleep", "3600"]) for i, d in enumerate(dirs)])
    raw_bytes = raw_lines = 0
    for d in dirs:
        b, n = chunk_bytes_and_lines(d)
        raw_bytes += b
        raw_lines += n
    r = pull(exe, work, certs, sources, raw_lines)
    wall, cpu, cpu_held, rss, disk = r["wall"], r["cpu"], r["cpu_held"], r["rss"], r["disk"]
    cpu_held_flush = r["cpu_held_flush"]
    for p in sups:
        p.terminate()
        p.wait()
    # zstd -19 of the same raw lines, single-threaded.
    raw_all = os.path.join(work, "raw.ndjson")
    with open(raw_all, "wb") as out:
        for d in dirs:
            for n in sorted(os.listdir(d), key=lambda n: (len(n), n)):
                if n.endswith(".chunk") or n.endswith(".open"):
                    with open(os.path.join(d, n), "rb") as f:
                        shutil.copyfileobj(f, out)
    # The raw lines are the same in every run (same seeds): compress them once, it is the slow part.
    if not baselines:
        baselines["zstd"] = len(subprocess.run(["zstd", "-19", "-T1", "-c", raw_all], check=True,
                                               capture_output=True).stdout)
        baselines["gzip"] = len(subprocess.run(["gzip", "-6", "-c", raw_all], check=True, capture_output=True).stdout)
    zstd_bytes, gzip_bytes = baselines["zstd"], baselines["gzip"]
    return dict(lines=raw_lines, raw=raw_bytes, wall=wall, cpu=cpu, cpu_held=cpu_held, cpu_held_flush=cpu_held_flush,
                rss=rss, disk=disk, compactions=r["compactions"], compactions_all=r["compactions_all"],
                zstd=zstd_bytes, gzip=gzip_bytes, parts=breakdown(r["store_dir"]))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=2_000_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    if args.smoke:
        args.events, args.runs = 40_000, 1
    if shutil.which("zstd") is None:
        sys.exit("zstd is needed for the baseline: apt-get install -y zstd")
    exe = build()
    runs, baselines = [], {}
    for _ in range(args.runs):
        work = tempfile.mkdtemp(prefix="sluice-ingest-")
        try:
            runs.append(one_run(exe, work, args.events, baselines))
        finally:
            shutil.rmtree(work, ignore_errors=True)
    med = lambda k: statistics.median(r[k] for r in runs)  # noqa: E731
    lines, raw, wall, cpu, cpu_held, cpu_held_flush, rss, disk, zstd, gz = (
        med(k) for k in ("lines", "raw", "wall", "cpu", "cpu_held", "cpu_held_flush", "rss", "disk", "zstd", "gzip"))
    mbps_cpu = raw / 1e6 / cpu
    rows = [
        ("events/s (wall, until all held)", f"{lines / wall:,.0f}", "", ""),
        ("raw JSON MB/s per CPU-second of the store", f"{mbps_cpu:,.1f}", "≥ 150", "met" if mbps_cpu >= 150 else "NOT met"),
        ("events per CPU-second of the store", f"{lines / cpu:,.0f}", "", ""),
        ("the same, CPU counted only until all were held (before the final flush)",
         f"{raw / 1e6 / cpu_held:,.1f} MB/s", "", ""),
        ("the store's CPU-seconds: until all were held, fetching, parsing, WAL and buffer (the other threads) "
         "· flushing (the maintenance thread) · after: the final flush on stop",
         f"{cpu_held - cpu_held_flush:.2f} · {cpu_held_flush:.2f} · {cpu - cpu_held:.2f}", "", ""),
        ("compactions until all were held / in the store's whole life, each run (a compaction adds about a "
         "flush's CPU for its rows)",
         " · ".join(f"{r['compactions']:.0f}/{r['compactions_all']:.0f}" for r in runs), "", ""),
        ("peak RSS of the store, MB", f"{rss:,.0f}", "< 1024", "met" if rss < 1024 else "NOT met"),
        ("bytes on disk per event (all of data_dir)", f"{disk / lines:.1f}", "", ""),
        ("zstd -19 of the raw lines, bytes per event", f"{zstd / lines:.1f}", "", ""),
        ("gzip -6 of the raw lines, bytes per event", f"{gz / lines:.1f}", "", ""),
        ("raw NDJSON, bytes per event", f"{raw / lines:.1f}", "", ""),
        ("store bytes / zstd -19 bytes", f"{disk / zstd:.2f}", "≤ 1.0 (aim 0.8)", "met" if disk <= zstd else "NOT met"),
    ]
    print(f"Ingest benchmark: {lines:,.0f} events ({raw / 1e6:,.0f} MB raw) from {SOURCES} supervisors, "
          f"median of {args.runs} runs")
    print(f"Machine: {machine()}; date {time.strftime('%Y-%m-%d')}")
    print()
    print("| metric | sluice store | target | verdict |")
    print("|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    # Where the bytes are, in the last run (the runs differ by a fraction of a percent).
    parts = runs[-1]["parts"]
    shown = parts[:10]
    rest = sum(b for _, b in parts[10:])
    print()
    print(f"Bytes on disk by part, last run (the {len(parts) - len(shown)} smallest of {len(parts)} parts on one row):")
    print()
    print("| part | bytes per event | share |")
    print("|---|---:|---:|")
    total = sum(b for _, b in parts)
    for name, b in shown + ([(f"the other {len(parts) - len(shown)}", rest)] if rest else []):
        print(f"| {name} | {b / lines:.2f} | {100 * b / total:.1f}% |")


if __name__ == "__main__":
    sys.exit(main())
