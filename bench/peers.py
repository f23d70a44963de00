#!/usr/bin/env python3
"""Peers for bench/run: installs them, runs them on the same events, and measures them.

- Installing (idempotent, quiet): syslog-ng-core and zstd with apt-get; rsyslog's binary and
  modules unpacked from its Debian package into a cache directory (Debian's rsyslog and
  syslog-ng-core conflict, both being "the system log daemon", so both cannot be installed; the
  unpacked rsyslogd runs from there, its libraries installed with apt-get); DuckDB and chDB with pip.
- Capture peers: syslog-ng (a `program()` source: it runs the child and reads its stdout) and
  rsyslog (Debian builds no `improg`, so the child's stdout is a connected Unix stream socket that
  rsyslog's `imptcp` reads; no relay process in between), each into a file, each run as a plain
  foreground process with its own config in a temp dir.
- Load and query workers (`python3 bench/peers.py load|serve ...`): DuckDB and chDB run in a child
  process so that its CPU and peak RSS are those of the engine doing the work, not of the harness.

Not here: sluice itself (bench/run drives the real binary) and the table.
"""

import json
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import time

DUCKDB_VERSION = "2.0.0"
CHDB_VERSION = "4.4.0"
APT_PACKAGES = ["syslog-ng-core", "zstd"]
CACHE_DIR = os.environ.get("SLUICE_BENCH_PEERS", os.path.expanduser("~/.cache/sluice-bench-peers"))
RSYSLOG_ROOT = os.path.join(CACHE_DIR, "rsyslog")
RSYSLOG_MODULES = os.path.join(RSYSLOG_ROOT, "usr/lib/x86_64-linux-gnu/rsyslog")
RSYSLOGD = os.path.join(RSYSLOG_ROOT, "usr/sbin/rsyslogd")
SYSLOG_NG = "/usr/sbin/syslog-ng"
POLL_S = 0.005  # how often a capture peer's output size is checked: the wall-time resolution
CAPTURE_DEADLINE_S = 3600


def _quiet(cmd, log):
    """Runs cmd with its output appended to log; on failure raises with the log's tail."""
    with open(log, "ab") as f:
        r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)
    if r.returncode != 0:
        with open(log, "rb") as f:
            tail = f.read()[-3000:].decode(errors="replace")
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {r.returncode}); see {log}:\n{tail}")


def _apt(packages, log):
    env_prefix = ["env", "DEBIAN_FRONTEND=noninteractive"]
    _quiet(env_prefix + ["apt-get", "update", "-qq"], log)
    _quiet(env_prefix + ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages], log)


def _pip_has(module, version):
    r = subprocess.run([sys.executable, "-c", f"import {module}; print({module}.__version__)"],
                       capture_output=True, text=True)
    return r.returncode == 0 and r.stdout.strip() == version


def install():
    """Installs every missing peer; returns what each is (name → version string)."""
    os.makedirs(CACHE_DIR, exist_ok=True)
    log = os.path.join(CACHE_DIR, "install.log")
    missing = [p for p, exe in (("syslog-ng-core", SYSLOG_NG), ("zstd", "/usr/bin/zstd")) if not os.path.exists(exe)]
    if missing:
        _apt(missing, log)
    if not os.path.exists(RSYSLOGD):
        work = os.path.join(CACHE_DIR, "download")
        os.makedirs(work, exist_ok=True)
        for n in os.listdir(work):
            os.remove(os.path.join(work, n))
        if not missing:
            _quiet(["apt-get", "update", "-qq"], log)
        _quiet(["sh", "-c", f"cd {work} && apt-get download -qq rsyslog"], log)
        deb = os.path.join(work, next(n for n in os.listdir(work) if n.endswith(".deb")))
        depends = subprocess.run(["dpkg-deb", "-f", deb, "Depends"], capture_output=True, text=True,
                                 check=True).stdout
        # "libc6 (>= 2.34), libestr0 (>= 0.1.9) | other, ..." → the first name of each.
        libs = [d.split("|")[0].split("(")[0].strip() for d in depends.split(",") if d.strip()]
        _apt(libs, log)
        _quiet(["dpkg-deb", "-x", deb, RSYSLOG_ROOT], log)
    for module, version in (("duckdb", DUCKDB_VERSION), ("chdb", CHDB_VERSION)):
        if not _pip_has(module, version):
            pip = [sys.executable, "-m", "pip", "install", "--quiet", f"{module}=={version}"]
            try:
                _quiet(pip, log)
            except RuntimeError:
                _quiet(pip + ["--break-system-packages"], log)  # a distribution's Python (PEP 668)
    return versions()


def versions():
    def first_version(cmd):
        out = subprocess.run(cmd, capture_output=True, text=True).stdout
        m = re.search(r"\d+\.\d+\.\d+", out)
        return m.group(0) if m else "unknown"
    return {"syslog-ng": first_version([SYSLOG_NG, "--version"]), "rsyslog": first_version([RSYSLOGD, "-v"]),
            "duckdb": DUCKDB_VERSION, "chdb": CHDB_VERSION}


# ---- capture peers -------------------------------------------------------------------------------

def proc_stat(pid):
    """(CPU-seconds of the process itself, all threads, children excluded; peak RSS MB)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    rss = 0.0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                rss = int(line.split()[1]) / 1024
    return cpu, rss


def count_lines(path):
    n = 0
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            n += block.count(b"\n")
    return n


def _wait_for_size(proc, out, size, what):
    deadline = time.perf_counter() + CAPTURE_DEADLINE_S
    while True:
        try:
            if os.path.getsize(out) >= size:
                return
        except FileNotFoundError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited (code {proc.returncode}) before writing all events; "
                               f"see its log in {os.path.dirname(out)}")
        if time.perf_counter() > deadline:
            raise RuntimeError(f"{what} did not write all events within {CAPTURE_DEADLINE_S} s")
        time.sleep(POLL_S)


def _stop(proc):
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # a child it started (syslog-ng's program) goes too
    except ProcessLookupError:
        pass


def _finish(proc, t0, out, src, lines, what):
    """After the output holds every byte: sync, measure, stop, and check the lines arrived intact."""
    size = os.path.getsize(src)
    _wait_for_size(proc, out, size, what)
    cpu, rss = proc_stat(proc.pid)
    subprocess.run(["sync"], check=True)
    wall = time.perf_counter() - t0
    _stop(proc)
    got_size, got_lines = os.path.getsize(out), count_lines(out)
    if got_size != size or got_lines != lines:
        raise RuntimeError(f"{what} wrote {got_lines} lines ({got_size} bytes), want {lines} ({size} bytes)")
    os.remove(out)
    return dict(wall=wall, cpu=cpu, rss=rss)


def capture_syslog_ng(src, work, lines):
    """syslog-ng runs `cat SRC` with a program() source and writes each line as is to a file."""
    d = os.path.join(work, "syslog-ng")
    os.makedirs(d, exist_ok=True)
    out = os.path.join(d, "out.ndjson")
    conf = os.path.join(d, "syslog-ng.conf")
    # The child sleeps after cat: program() restarts a child that exits, which would repeat the events.
    with open(conf, "w") as f:
        f.write(f"""@version: 3.38
options {{ stats_freq(0); log-msg-size(65536); }};
source s_child {{ program("cat {src}; exec sleep 36000" flags(no-parse) log-iw-size(10000)); }};
destination d_file {{ file("{out}" template("${{MSG}}\\n")); }};
log {{ source(s_child); destination(d_file); flags(flow-control); }};
""")
    t0 = time.perf_counter()
    with open(os.path.join(d, "log.txt"), "wb") as log:
        proc = subprocess.Popen([SYSLOG_NG, "-F", "--no-caps", "-f", conf, "-R", f"{d}/persist", "-p", f"{d}/pid",
                                 "-c", f"{d}/ctl"], stdout=log, stderr=log, start_new_session=True)
    return _finish(proc, t0, out, src, lines, "syslog-ng")


def capture_rsyslog(src, work, lines):
    """rsyslogd reads `cat SRC`'s stdout, a connected Unix stream socket (imptcp), into a file."""
    d = os.path.join(work, "rsyslog")
    os.makedirs(d, exist_ok=True)
    out, sock_path, conf = os.path.join(d, "out.ndjson"), os.path.join(d, "in.sock"), os.path.join(d, "rsyslog.conf")
    with open(conf, "w") as f:
        f.write(f"""global(workDirectory="{d}" maxMessageSize="64k")
module(load="imptcp")
template(name="raw" type="string" string="%rawmsg%\\n")
input(type="imptcp" path="{sock_path}" unlink="on")
action(type="omfile" file="{out}" template="raw")
""")
    t0 = time.perf_counter()
    with open(os.path.join(d, "log.txt"), "wb") as log:
        proc = subprocess.Popen([RSYSLOGD, "-n", "-f", conf, "-i", f"{d}/pid", "-M", RSYSLOG_MODULES],
                                stdout=log, stderr=log, start_new_session=True)
    deadline = time.perf_counter() + 30
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    while True:
        try:
            s.connect(sock_path)
            break
        except (FileNotFoundError, ConnectionRefusedError):
            if proc.poll() is not None or time.perf_counter() > deadline:
                raise RuntimeError(f"rsyslogd did not open its socket; see {d}/log.txt")
            time.sleep(0.005)
    child = subprocess.Popen(["cat", src], stdout=s.fileno())
    s.close()
    r = _finish(proc, t0, out, src, lines, "rsyslog")
    child.wait()
    return r


# ---- DuckDB and chDB workers ---------------------------------------------------------------------

def _cpu_self():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def duck_type(t):
    return {"int": "UBIGINT", "str": "VARCHAR", "float": "DOUBLE", "bool": "BOOLEAN"}[t]


def ch_type(t):
    return {"int": "Nullable(UInt64)", "str": "Nullable(String)", "float": "Nullable(Float64)",
            "bool": "Nullable(Bool)"}[t]


def load(engine, path, ndjson, schema):
    """Loads the NDJSON into a native table; returns the load's own CPU-s and wall-s (imports and
    start-up excluded) and the bytes the engine keeps on disk afterwards."""
    if engine == "duckdb":
        import duckdb
        cols = ", ".join(f"'{k}': '{duck_type(t)}'" for k, t in schema)
        c0, t0 = _cpu_self(), time.perf_counter()
        con = duckdb.connect(path)
        con.execute(f"CREATE TABLE events AS SELECT * FROM read_ndjson('{ndjson}', columns={{{cols}}})")
        con.execute("CHECKPOINT")
        cpu, wall = _cpu_self() - c0, time.perf_counter() - t0
        rows = con.execute("SELECT count(*) FROM events").fetchone()[0]
        con.close()
        size = os.path.getsize(path) + (os.path.getsize(path + ".wal") if os.path.exists(path + ".wal") else 0)
    else:
        from chdb import session
        cols = ", ".join(f"{k} {'UInt64' if k == 'time_ns' else ch_type(t)}" for k, t in schema)
        c0, t0 = _cpu_self(), time.perf_counter()
        s = session.Session(path)
        s.query(f"CREATE TABLE events ({cols}) ENGINE = MergeTree ORDER BY time_ns")
        s.query(f"INSERT INTO events SELECT * FROM file('{ndjson}', JSONEachRow, '{cols}')")
        cpu, wall = _cpu_self() - c0, time.perf_counter() - t0
        rows = int(s.query("SELECT count() FROM events", "CSV").data().strip())
        # Parts merge in the background; the size counted is after they are merged into one.
        s.query("OPTIMIZE TABLE events FINAL")
        s.close()
        size = du(os.path.join(path, "store"))
    return dict(cpu=cpu, wall=wall, disk=size, rows=rows)


def du(path):
    total = 0
    for root, _, files in os.walk(path):
        for n in files:
            total += os.path.getsize(os.path.join(root, n))
    return total


def norm(v):
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, (bytes, bytearray)):
        return v.hex()
    return v


def serve(engine, path, parquet_filter):
    """Answers one SQL query per stdin line with one JSON line: rows, wall_ms and cpu_s of the
    query alone; at end of input, the peak RSS of this process."""
    if engine == "chdb":
        from chdb import session
        s = session.Session(path)

        def run(q):
            r = s.query(q + " SETTINGS output_format_json_quote_64bit_integers = 0", "JSONCompact")
            return json.loads(r.data())["data"] if r.bytes() else []
    else:
        import duckdb
        if engine == "duckdb":
            con = duckdb.connect(path, read_only=True)
        else:  # "duckdb-parquet": sluice's live segment files, read in place
            with open(path) as f:
                files = json.load(f)
            con = duckdb.connect()
            scan = f"read_parquet({files!r}, union_by_name = true)"
            # A segment holds only the key columns with a value in it, so a key none of these
            # segments has (`sluice_origin` of supervisor events, which live in other hours) is null
            # in every row: it is added as such for the filter's `IS NULL` tests.
            present = {r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {scan}").fetchall()}
            absent = [c for c in re.findall(r"\b([a-z_][a-z0-9_]*) IS NULL", parquet_filter) if c not in present]
            extra = "".join(f", NULL AS {c}" for c in absent)
            con.execute(f"CREATE VIEW events AS SELECT * FROM (SELECT *{extra} FROM {scan}) WHERE {parquet_filter}")

        def run(q):
            return con.execute(q).fetchall()
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        q = json.loads(line)["sql"]
        c0, t0 = _cpu_self(), time.perf_counter()
        try:
            rows = run(q)
        except Exception as e:  # noqa: BLE001 - the harness reports the engine's own message
            print(json.dumps({"error": f"{type(e).__name__}: {e}"}), flush=True)
            continue
        wall, cpu = (time.perf_counter() - t0) * 1000, _cpu_self() - c0
        print(json.dumps({"rows": [[norm(v) for v in r] for r in rows], "wall_ms": wall, "cpu_s": cpu},
                         default=str), flush=True)
    print(json.dumps({"rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}), flush=True)


class Worker:
    """A `serve` child process: query(sql) → (rows, wall_ms, cpu_s); close() → its peak RSS MB."""

    def __init__(self, engine, path, parquet_filter=""):
        self.engine = engine
        self.p = subprocess.Popen([sys.executable, os.path.abspath(__file__), "serve", engine, path, parquet_filter],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        hello = self.p.stdout.readline()
        if not hello:
            raise RuntimeError(f"{engine} worker did not start")

    def query(self, sql):
        self.p.stdin.write(json.dumps({"sql": sql}) + "\n")
        self.p.stdin.flush()
        line = self.p.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.engine} worker died on: {sql}")
        r = json.loads(line)
        if "error" in r:
            raise RuntimeError(f"{self.engine}: {r['error']}\n  in: {sql}")
        return r["rows"], r["wall_ms"], r["cpu_s"]

    def close(self):
        self.p.stdin.close()
        rss = json.loads(self.p.stdout.readline())["rss_mb"]
        self.p.wait()
        return rss


def run_load(engine, path, ndjson, schema):
    """Runs load() in a child process; adds the child's peak RSS (wait4's rusage)."""
    p = subprocess.Popen([sys.executable, os.path.abspath(__file__), "load", engine, path, ndjson, json.dumps(schema)],
                         stdout=subprocess.PIPE, text=True)
    out = p.stdout.read()
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise RuntimeError(f"loading into {engine} failed (exit {p.returncode})")
    r = json.loads(out)
    r["rss"] = ru.ru_maxrss / 1024
    return r


if __name__ == "__main__":
    if sys.argv[1] == "load":
        print(json.dumps(load(sys.argv[2], sys.argv[3], sys.argv[4], json.loads(sys.argv[5]))))
    elif sys.argv[1] == "serve":
        serve(sys.argv[2], sys.argv[3], sys.argv[4])
    elif sys.argv[1] == "install":
        print(install())
    else:
        sys.exit("usage: peers.py install | load ENGINE PATH NDJSON SCHEMA | serve ENGINE PATH FILTER")
