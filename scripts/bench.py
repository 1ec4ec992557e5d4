#!/usr/bin/env python3
"""kugetsu benchmarks: measures the budgets of DESIGN §7 on this machine and writes BENCHMARKS.md.

Run through scripts/bench (which builds release binaries first). Everything talks to a local
"LLM" server that accepts requests and never answers, so workers sit exactly where an idle
shadow sits: waiting on the model. Numbers are medians of one run; the machine is noisy.
"""
import json, os, selectors, signal, socket, statistics, subprocess, sys, tempfile, threading, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REL = os.path.join(ROOT, "target", "release")
KUGETSU = os.path.join(REL, "kugetsu")
WORKER = os.path.join(REL, "kugetsu-worker")
JOURNAL_BENCH = os.path.join(REL, "examples", "journal_bench")
WORK = tempfile.mkdtemp(prefix="kugetsu-bench-", dir=os.path.join(ROOT, "target"))


class StallServer:
    """Accepts HTTP connections, records when each request's headers arrived, never answers."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1024)
        self.port = self.sock.getsockname()[1]
        self.arrivals = []  # monotonic times of complete request heads
        self.cond = threading.Condition()
        self.conns = []
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self):
        sel = selectors.DefaultSelector()
        sel.register(self.sock, selectors.EVENT_READ, None)
        bufs = {}
        while True:
            for key, _ in sel.select():
                if key.data is None:
                    conn, _ = self.sock.accept()
                    conn.setblocking(False)
                    bufs[conn] = b""
                    self.conns.append(conn)
                    sel.register(conn, selectors.EVENT_READ, "c")
                else:
                    conn = key.fileobj
                    try:
                        data = conn.recv(65536)
                    except OSError:
                        data = b""
                    if not data:
                        sel.unregister(conn)
                        conn.close()
                        bufs.pop(conn, None)
                        continue
                    before = bufs[conn]
                    bufs[conn] = before + data if len(before) < 8192 else before
                    if b"\r\n\r\n" in bufs[conn] and b"\r\n\r\n" not in before:
                        with self.cond:
                            self.arrivals.append(time.monotonic())
                            self.cond.notify_all()

    def wait_arrivals(self, n, timeout=30):
        deadline = time.monotonic() + timeout
        with self.cond:
            while len(self.arrivals) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"only {len(self.arrivals)} of {n} requests arrived")
                self.cond.wait(left)
            return self.arrivals[n - 1]


def env_for(server):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "ANTHROPIC_", "KUGETSU_"))}
    env.update(OPENAI_BASE_URL=f"http://127.0.0.1:{server.port}/v1", OPENAI_API_KEY="bench-key")
    return env


def start_line(task_dir, prompt="say hello"):
    spec = {"id": "bench", "prompt": prompt, "model": "openai/bench-model", "max_turns": 10,
            "task_dir": task_dir}
    return (json.dumps({"type": "start", "task": spec, "resume": False}) + "\n").encode()


def spawn_worker(server, i, prompt="say hello"):
    d = os.path.join(WORK, f"w{i}-{time.monotonic_ns()}")
    os.makedirs(d)
    t0 = time.monotonic()
    p = subprocess.Popen([WORKER], cwd=d, env=env_for(server), stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=open(os.path.join(d, "worker.log"), "wb"))
    p.stdin.write(start_line(d, prompt))
    p.stdin.flush()
    return p, t0


def mem(pid):
    rss = pss = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                pss = int(line.split()[1]) * 1024
    return rss, pss


def stop(procs):
    for p in procs:
        p.kill()
    for p in procs:
        p.wait()


def mib(n):
    return f"{n / (1 << 20):.2f} MiB"


def bench_launch(server, runs=30):
    times = []
    for i in range(runs):
        n = len(server.arrivals) + 1
        p, t0 = spawn_worker(server, f"launch{i}")
        t = server.wait_arrivals(n)
        times.append((t - t0) * 1000)
        stop([p])
    return statistics.median(times), min(times)


def settle(procs, server, n_before):
    server.wait_arrivals(n_before + len(procs))
    time.sleep(0.3)


def bench_idle(server):
    n = len(server.arrivals)
    one, _ = spawn_worker(server, "idle1")
    settle([one], server, n)
    rss1, pss1 = mem(one.pid)
    n = len(server.arrivals)
    more = [spawn_worker(server, f"idle{i}")[0] for i in range(19)]
    settle(more, server, n)
    total20 = sum(mem(p.pid)[1] for p in [one] + more)
    rss20 = statistics.median(mem(p.pid)[0] for p in [one] + more)
    stop([one] + more)
    return rss1, pss1, (total20 - pss1) / 19, rss20


def bench_big_context(server):
    n = len(server.arrivals)
    # ~100k tokens: 400 kB of prompt text.
    prompt = ("Refactor the parser module so that every error carries a span. " * 6300)[:400_000]
    p, _ = spawn_worker(server, "ctx", prompt)
    settle([p], server, n)
    rss, _ = mem(p.pid)
    stop([p])
    return rss


def bench_many(server, count=200):
    n = len(server.arrivals)
    procs = [spawn_worker(server, f"many{i}")[0] for i in range(count)]
    settle(procs, server, n)
    total = sum(mem(p.pid)[1] for p in procs)
    stop(procs)
    return total


def bench_restart(server, kills=15):
    repo = os.path.join(WORK, "repo")
    os.makedirs(repo)
    subprocess.run(["git", "init", "-q", repo], check=True)
    with open(os.path.join(repo, "a.txt"), "w") as f:
        f.write("a\n")
    subprocess.run(["git", "-C", repo, "add", "."], check=True)
    subprocess.run(["git", "-C", repo, "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "a"], check=True)
    env = env_for(server)
    env["KUGETSU_MAX_RESTARTS"] = str(kills + 5)
    n = len(server.arrivals)
    run = subprocess.Popen([KUGETSU, "run", "--json", "-C", repo, "--state-dir", os.path.join(WORK, "state"),
                            "-m", "openai/bench-model", "wait for the model"], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    pids = []

    def read_events():
        for line in run.stdout:
            ev = json.loads(line)
            if ev["type"] == "started":
                pids.append(ev["pid"])

    threading.Thread(target=read_events, daemon=True).start()
    gaps = []
    server.wait_arrivals(n + 1)
    for k in range(kills):
        while len(pids) < k + 1:
            time.sleep(0.001)
        time.sleep(0.05)
        t0 = time.monotonic()
        os.kill(pids[k], signal.SIGKILL)
        t = server.wait_arrivals(n + k + 2)
        gaps.append((t - t0) * 1000)
    run.send_signal(signal.SIGTERM)
    try:
        run.wait(timeout=20)
    except subprocess.TimeoutExpired:
        run.kill()
    return statistics.median(gaps), max(gaps)


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def bench_daemon_idle(server, shadows=100, window=10.0):
    state = os.path.join(WORK, "dstate")
    repo = os.path.join(WORK, "repo")
    env = env_for(server)
    env.update(KUGETSU_STATE_DIR=state, KUGETSU_SOCKET=os.path.join(WORK, "k.sock"),
               KUGETSU_MAX_SHADOWS=str(shadows), KUGETSU_MEM_LIMIT="64MiB")
    daemon = subprocess.Popen([KUGETSU, "serve"], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not os.path.exists(env["KUGETSU_SOCKET"]):
        if time.monotonic() > deadline:
            raise TimeoutError("the daemon did not start")
        time.sleep(0.05)
    n = len(server.arrivals)
    for i in range(shadows):
        subprocess.run([KUGETSU, "submit", "-C", repo, "-m", "openai/bench-model", f"idle {i}"],
                       env=env, check=True, stdout=subprocess.DEVNULL)
    server.wait_arrivals(n + shadows, timeout=120)
    time.sleep(2)
    before = cpu_seconds(daemon.pid)
    time.sleep(window)
    used = cpu_seconds(daemon.pid) - before
    daemon.send_signal(signal.SIGTERM)
    try:
        daemon.wait(timeout=60)
    except subprocess.TimeoutExpired:
        daemon.kill()
    return 100.0 * used / window


def bench_journal():
    out = subprocess.run([JOURNAL_BENCH, os.path.join(WORK, "journal"), "1000"], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out)


def main():
    server = StallServer()
    launch_med, launch_min = bench_launch(server)
    rss1, pss1, pss_extra, rss20 = bench_idle(server)
    ctx_rss = bench_big_context(server)
    many = bench_many(server)
    restart_med, restart_max = bench_restart(server)
    daemon_cpu = bench_daemon_idle(server)
    journal = bench_journal()
    uname = os.uname()
    rows = [
        ("idle worker (waiting on the model), RSS", "≤ 4 MB", mib(rss1), f"median RSS over 20: {mib(rss20)}; PSS of one {mib(pss1)}"),
        ("extra PSS per added idle shadow", "≤ 1.5 MB", mib(pss_extra), "(PSS of 20 − PSS of 1) / 19"),
        ("worker with a 100k-token context, RSS", "≤ 16 MB", mib(ctx_rss), "400 kB prompt, waiting on the model"),
        ("launch to first LLM request", "≤ 10 ms", f"{launch_med:.2f} ms", f"median of 30 spawns (min {launch_min:.2f} ms), incl. handshake"),
        ("200 concurrent shadows, total PSS", "< 1 GiB", mib(many), "200 idle workers"),
        ("daemon CPU with 100 idle shadows", "< 1%", f"{daemon_cpu:.2f}%", "`kugetsu serve` user+sys CPU over 10 s, 100 shadows waiting on the model"),
        ("kill -9 of a worker to resumed LLM request", "≤ 100 ms", f"{restart_med:.2f} ms", f"median of 15 kills under `kugetsu run` (max {restart_max:.2f} ms)"),
        ("journal append + fdatasync", "≤ 5 ms", f"{journal['median_us'] / 1000:.3f} ms", f"median of {journal['count']}; p99 {journal['p99_us'] / 1000:.3f} ms, max {journal['max_us'] / 1000:.3f} ms"),
    ]
    with open(os.path.join(ROOT, "BENCHMARKS.md"), "w") as f:
        f.write("# Benchmarks\n\n")
        f.write("Written by `scripts/bench` (release build) from one run; medians unless stated. "
                "The \"LLM\" is a local server that accepts each request and never answers, so "
                "workers sit where an idle shadow sits: waiting on the model.\n\n")
        f.write(f"Machine: {uname.sysname} {uname.release} {uname.machine}, {os.cpu_count()} cores; "
                f"run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.\n\n")
        f.write("| what | budget | measured | how |\n|---|---|---|---|\n")
        for r in rows:
            f.write(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} |\n")
    print(open(os.path.join(ROOT, "BENCHMARKS.md")).read())


if __name__ == "__main__":
    try:
        main()
    finally:
        subprocess.run(["rm", "-rf", WORK])
