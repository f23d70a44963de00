#!/usr/bin/env python3
"""Capture benchmark: events from a child's stdout to durable chunk files.

Pre-generates events with `sluice gen`, then supervises `cat` of that file and reports the
supervisor's own CPU (from its `supervisor_stopping` event: getrusage of the supervisor alone,
the child excluded), wall-clock throughput and peak RSS, beside the I/O limit measured in the same
run: `cat` of the file into another file plus `sync`. Also the supervisor's CPU while idle.
Every figure is the median of --runs runs.

    python3 bench/capture.py [--events 5000000] [--runs 3] [--smoke]
"""

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def build():
    # SLUICE_BIN runs a given binary instead (e.g. a debug build for a --smoke check).
    if os.environ.get("SLUICE_BIN"):
        return os.path.abspath(os.environ["SLUICE_BIN"])
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "sluice"], cwd=ROOT, check=True)
    return os.path.join(ROOT, "target", "release", "sluice")


def children_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def baseline(src, work):
    """cat FILE > OUT; sync — the physical limit for moving these bytes to durable storage."""
    out = os.path.join(work, "cat.out")
    cpu0 = children_cpu()
    t0 = time.perf_counter()
    with open(out, "wb") as f:
        subprocess.run(["cat", src], stdout=f, check=True)
    subprocess.run(["sync"], check=True)
    wall = time.perf_counter() - t0
    cpu = children_cpu() - cpu0
    os.remove(out)
    return wall, cpu


def last_own_event(data_dir, kind):
    found = None
    for name in sorted(os.listdir(data_dir), key=lambda n: (len(n), n)):
        if not (name.endswith(".chunk") or name.endswith(".open")):
            continue
        with open(os.path.join(data_dir, name), "rb") as f:
            for line in f:
                if b'"sluice_event":"%s"' % kind.encode() in line:
                    found = json.loads(line)
    return found


def supervise(exe, src, work, extra):
    data = os.path.join(work, "data")
    shutil.rmtree(data, ignore_errors=True)
    cmd = [exe, "supervise", "--data-dir", data, "--listen", "none", "--metrics-listen", "none",
           "--restart", "never", "--retention-bytes-max", "1000GB"] + extra + ["--", "cat", src]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    stop = last_own_event(data, "supervisor_stopping")
    cpu = (stop["cpu_user_us"] + stop["cpu_system_us"]) / 1e6
    rss_mb = stop["max_rss_kb"] / 1024
    stored = sum(os.path.getsize(os.path.join(data, n)) for n in os.listdir(data))
    lines = child_lines(data)
    shutil.rmtree(data, ignore_errors=True)
    return wall, cpu, rss_mb, stored, lines


def child_lines(data_dir):
    """Lines in the chunk files that came from the child (the supervisor's own events excluded)."""
    n = 0
    for name in os.listdir(data_dir):
        if name.endswith(".chunk") or name.endswith(".open"):
            with open(os.path.join(data_dir, name), "rb") as f:
                # Each block ends at a line end, so that no marker is split between two blocks.
                while block := f.read(1 << 24) + f.readline():
                    n += block.count(b"\n") - block.count(b'"sluice_origin":"supervisor"')
    return n


def proc_cpu_s(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def idle_cpu(exe, work, seconds):
    data = os.path.join(work, "idle")
    p = subprocess.Popen([exe, "supervise", "--data-dir", data, "--listen", "none", "--metrics-listen", "none",
                          "--", "sleep", str(seconds + 30)], stderr=subprocess.DEVNULL)
    time.sleep(2)  # past start-up
    c0, t0 = proc_cpu_s(p.pid), time.perf_counter()
    time.sleep(seconds)
    c1, t1 = proc_cpu_s(p.pid), time.perf_counter()
    p.terminate()
    p.wait()
    shutil.rmtree(data, ignore_errors=True)
    return 100.0 * (c1 - c0) / (t1 - t0)


def machine():
    cores = os.cpu_count()
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cores} cores ({cpu}), {mem_gb:.0f} GiB RAM, {platform.system()} {platform.release()}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=5_000_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--idle-seconds", type=int, default=10)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, to check the harness runs")
    args = ap.parse_args()
    if args.smoke:
        args.events, args.runs, args.idle_seconds = 20_000, 1, 1
    exe = build()
    work = tempfile.mkdtemp(prefix="sluice-bench-")
    try:
        src = os.path.join(work, "events.ndjson")
        with open(src, "wb") as f:
            subprocess.run([exe, "gen", "--count", str(args.events), "--seed", "1"], stdout=f, check=True)
        size = os.path.getsize(src)
        base, runs, runs_always = [], [], []
        for _ in range(args.runs):
            base.append(baseline(src, work))
            runs.append(supervise(exe, src, work, []))
            runs_always.append(supervise(exe, src, work, ["--fsync", "always"]))
        idle = idle_cpu(exe, work, args.idle_seconds)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    med = statistics.median
    b_wall = med(w for w, _ in base)
    s_wall, s_cpu = med(r[0] for r in runs), med(r[1] for r in runs)
    s_rss, stored = med(r[2] for r in runs), med(r[3] for r in runs)
    a_wall, a_cpu = med(r[0] for r in runs_always), med(r[1] for r in runs_always)
    mb = size / 1e6
    eps_cpu = args.events / s_cpu
    rows = [
        ("events per CPU-second of the supervisor (default fsync)", f"{eps_cpu:,.0f}", "—", "≥ 2,000,000",
         "met" if eps_cpu >= 2e6 else "NOT met"),
        ("throughput, MB/s wall (default fsync)", f"{mb / s_wall:,.0f}", f"{mb / b_wall:,.0f}", "≥ 50% of limit",
         f"{100 * b_wall / s_wall:.0f}% of limit"),
        ("events per CPU-second, --fsync always", f"{args.events / a_cpu:,.0f}", "—", "", ""),
        ("throughput, MB/s wall, --fsync always", f"{mb / a_wall:,.0f}", f"{mb / b_wall:,.0f}", "",
         f"{100 * b_wall / a_wall:.0f}% of limit"),
        ("peak RSS of the supervisor, MB", f"{s_rss:.1f}", "—", "< 16", "met" if s_rss < 16 else "NOT met"),
        ("idle CPU of the supervisor, % of one core", f"{idle:.2f}", "—", "", ""),
        ("bytes stored / bytes in", f"{stored / size:.3f}", "1.000", "", "own events add the rest"),
    ]
    print(f"Capture benchmark: {args.events:,} events ({mb:,.0f} MB), median of {args.runs} runs")
    print(f"Machine: {machine()}; date {time.strftime('%Y-%m-%d')}")
    print()
    print("| metric | sluice supervise | cat → file + sync (limit) | target | verdict |")
    print("|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
