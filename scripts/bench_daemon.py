"""Daemon benchmarks for scripts/bench: `kugetsu serve` under many shadows.

Tasks are submitted over the daemon's JSON-RPC socket (one connection, requests pipelined)
rather than through one `kugetsu submit` process each, which at 1000 tasks would measure the
CLI's start-up instead of the daemon. Each scenario runs its own daemon, state directory and
fake LLM, so one scenario's leftovers cannot skew the next.
"""
import json, os, re, signal, socket, statistics, subprocess, threading, time

from bench_llm import DELTA_TEXT, FakeLLM
import bench_proc as proc

SEQ = re.compile(rb'"seq":(\d+)')


class Rpc:
    """A JSON-RPC 2.0 client on the daemon's socket; notifications go to `on_event`."""

    def __init__(self, path, on_event=None):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.file = self.sock.makefile("rb")
        self.on_event = on_event
        self.next_id = 1
        self.lock = threading.Lock()
        self.answers = {}
        self.cond = threading.Condition()
        self.closed = False
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.file:
            t = time.monotonic()
            msg = json.loads(line)
            if "id" in msg and msg.get("method") is None:
                with self.cond:
                    self.answers[msg["id"]] = msg
                    self.cond.notify_all()
            elif msg.get("method") == "event" and self.on_event:
                self.on_event(t, msg["params"])
        with self.cond:
            self.closed = True
            self.cond.notify_all()

    def send(self, method, params):
        with self.lock:
            rid = self.next_id
            self.next_id += 1
            line = json.dumps({"jsonrpc": "2.0", "id": rid, "method": method, "params": params})
            self.sock.sendall(line.encode() + b"\n")
        return rid

    def wait(self, rid, timeout=60):
        deadline = time.monotonic() + timeout
        with self.cond:
            while rid not in self.answers:
                left = deadline - time.monotonic()
                if self.closed or left <= 0:
                    raise TimeoutError(f"no answer to request {rid}")
                self.cond.wait(left)
            msg = self.answers.pop(rid)
        if "error" in msg:
            raise RuntimeError(f"daemon error: {msg['error']}")
        return msg["result"]

    def call(self, method, params=None, timeout=60):
        return self.wait(self.send(method, params or {}), timeout)

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


class Daemon:
    """One `kugetsu serve` with its own state directory, socket and fake LLM."""

    def __init__(self, ctx, name, server, max_shadows, extra_env=None):
        self.ctx = ctx
        self.dir = os.path.join(ctx.work, name)
        os.makedirs(self.dir)
        self.state = os.path.join(self.dir, "state")
        self.socket = os.path.join(self.dir, "k.sock")
        self.env = ctx.env_for(server)
        self.env.update(KUGETSU_STATE_DIR=self.state, KUGETSU_SOCKET=self.socket,
                        KUGETSU_MAX_SHADOWS=str(max_shadows),
                        KUGETSU_QUEUE_CAPACITY=str(max(1000, 2 * max_shadows)),
                        KUGETSU_MEM_LIMIT="64MiB", XDG_CONFIG_HOME=os.path.join(self.dir, "config"))
        self.env.update(extra_env or {})
        self.log = open(os.path.join(self.dir, "daemon.log"), "wb")
        self.proc = subprocess.Popen([ctx.kugetsu, "serve"], env=self.env, stdout=self.log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     preexec_fn=ctx.child_limits)
        deadline = time.monotonic() + 15
        while True:  # the socket file appears a moment before the daemon listens on it
            try:
                self.rpc = Rpc(self.socket)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the daemon did not start: {self.log_tail()}")
                time.sleep(0.02)

    def log_tail(self, n=600):
        self.log.flush()
        with open(os.path.join(self.dir, "daemon.log"), "rb") as f:
            return f.read()[-n:].decode(errors="replace").strip()

    def submit_many(self, n, prompt, no_worktree=True, model="openai/bench-model", max_turns=None):
        """Submits n tasks at once (pipelined on one connection); returns their ids."""
        extra = {"max_turns": max_turns} if max_turns else {}
        rids = [self.rpc.send("submit", {"prompt": f"{prompt} {i}", "repo": self.ctx.repo,
                                         "no_worktree": no_worktree, "model": model, **extra})
                for i in range(n)]
        return [self.rpc.wait(r, timeout=120)["task"] for r in rids]

    def tasks(self, timeout=60):
        return self.rpc.call("list", timeout=timeout)["tasks"]

    def stop(self):
        """SIGTERM, then SIGKILL after a grace period; also kills workers the daemon left."""
        pids = []
        try:
            pids = [t["pid"] for t in self.tasks(timeout=10) if t.get("pid")]
        except Exception:
            pass
        try:
            self.rpc.close()
        except OSError:
            pass
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pid in pids:
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass
        self.log.close()


def wait_until(pred, timeout, step=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return pred()


# -- 1. many idle shadows -----------------------------------------------------------------

def bench_daemon_idle_cpu(ctx, shadows, window):
    """The existing row: daemon CPU with `shadows` idle shadows (worktrees, as `submit` makes)."""
    server = FakeLLM("stall")
    d = Daemon(ctx, f"idle{shadows}", server, shadows)
    try:
        d.submit_many(shadows, "idle", no_worktree=False)
        server.wait_arrivals(shadows, timeout=120)
        time.sleep(min(2.0, window))
        per_sec = proc.cpu_percent_samples(d.proc.pid, window)
        return {"total": statistics.mean(per_sec), "median": statistics.median(per_sec)}
    finally:
        d.stop()
        server.close()


def bench_spawn_spread(ctx, n):
    """Submits n tasks at once; spread between the first and last `started` and model request."""
    server = FakeLLM("stall")
    d = Daemon(ctx, f"spread{n}", server, n)
    started = []
    sub = Rpc(d.socket, on_event=lambda t, ev: started.append(t) if ev.get("type") == "started" else None)
    try:
        sub.call("subscribe", {})
        t0 = time.monotonic()
        d.submit_many(n, "spread")
        server.wait_arrivals(n, timeout=60 + n)
        wait_until(lambda: len(started) >= n, 10)
        if len(started) < n:
            raise RuntimeError(f"only {len(started)} of {n} started events arrived")
        arr = server.arrivals[:n]
        return {"started_spread": max(started) - min(started),
                "request_spread": max(arr) - min(arr),
                "submit_to_last_request": max(arr) - t0}
    finally:
        sub.close()
        d.stop()
        server.close()


def bench_daemon_many(ctx, shadows, window, ps_runs, settle_timeout):
    """`shadows` idle shadows under one daemon: running count, workers' PSS, daemon CPU, ps."""
    server = FakeLLM("stall")
    d = Daemon(ctx, f"many{shadows}", server, shadows)
    out = {"shadows": shadows, "fd_limit": ctx.fd_soft}
    try:
        t0 = time.monotonic()
        d.submit_many(shadows, "idle")
        out["submit_s"] = time.monotonic() - t0
        # Wait for every model request, or until no new one came for a while.
        last, last_t = -1, time.monotonic()
        deadline = time.monotonic() + settle_timeout
        while len(server.arrivals) < shadows and time.monotonic() < deadline:
            n = len(server.arrivals)
            if n != last:
                last, last_t = n, time.monotonic()
            elif time.monotonic() - last_t > 20:
                break
            time.sleep(0.25)
        out["requests"] = len(server.arrivals)
        out["all_requests_s"] = (server.arrivals[-1] - t0) if server.arrivals else None
        time.sleep(min(2.0, window))
        tasks = d.tasks()
        running = [t for t in tasks if t["status"] == "running"]
        out["running"] = len(running)
        out["statuses"] = {s: sum(1 for t in tasks if t["status"] == s) for s in {t["status"] for t in tasks}}
        pids = [t["pid"] for t in running if t.get("pid")]
        out["workers_pss"] = sum(proc.mem(p)[1] for p in pids if proc.alive(p))
        out["daemon_rss"] = proc.mem(d.proc.pid)[0]
        ticks0, t0 = proc.cpu_seconds(d.proc.pid), time.monotonic()
        per_sec = proc.cpu_percent_samples(d.proc.pid, window)
        out["cpu_median"] = statistics.median(per_sec)
        out["cpu_total"] = 100.0 * (proc.cpu_seconds(d.proc.pid) - ticks0) / (time.monotonic() - t0)
        times = []
        for _ in range(ps_runs):
            t = time.monotonic()
            r = subprocess.run([ctx.kugetsu, "ps"], env=d.env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, timeout=120)
            times.append(time.monotonic() - t)
            if r.returncode != 0:
                raise RuntimeError(f"kugetsu ps failed: {r.stderr.decode(errors='replace')[-300:]}")
        out["ps_median"] = statistics.median(times)
        if out["running"] < shadows:
            out["daemon_log"] = d.log_tail(300)
        return out
    finally:
        d.stop()
        server.close()


# -- governor: shadows sharing one rate-limited key ---------------------------------------

def bench_governor(ctx, shadows, rpm, burst, governed, timeout):
    """`shadows` scripted tasks (3 model requests each) on one key limited to `rpm`."""
    server = FakeLLM("script", limit=(rpm, burst))
    extra = {} if governed else {"KUGETSU_GOVERNOR": "off"}
    # The retry backoff as shipped (the harness default of 10 ms would make the lone workers
    # hammer the key).
    extra["KUGETSU_RETRY_BASE_MS"] = "1000"
    d = Daemon(ctx, f"governor{shadows}{'on' if governed else 'off'}", server, shadows, extra)
    try:
        t0 = time.monotonic()
        ids = d.submit_many(shadows, "governed", max_turns=10)
        final = {}
        while len(final) < len(ids) and time.monotonic() - t0 < timeout:
            for t in d.tasks():
                if t["status"] in ("completed", "failed", "cancelled", "timed_out", "paused"):
                    final[t["id"]] = t["status"]
            time.sleep(0.25)
        served = list(server.served_at)
        span = (served[-1] - served[0]) if len(served) > 1 else 0.0
        # What the key allowed over that span: the burst plus the refill.
        allowed = burst + span * rpm / 60.0
        total = len(server.requests)
        return {"shadows": shadows, "governed": governed, "rpm": rpm, "burst": burst,
                "completed": sum(1 for s in final.values() if s == "completed"),
                "failed": sum(1 for s in final.values() if s != "completed"),
                "unfinished": len(ids) - len(final),
                "requests": total, "throttled": server.throttled,
                "share_429": server.throttled / total if total else 0.0,
                "used": len(served) / allowed if allowed else 0.0,
                "seconds": time.monotonic() - t0}
    finally:
        d.stop()
        server.close()


# -- 2. events/s --------------------------------------------------------------------------

class EventCounter:
    """Counts newly appended lines of every tasks/*/events.jsonl, reading only what is new."""

    def __init__(self, state):
        self.root = os.path.join(state, "tasks")
        self.offsets = {}

    def poll(self):
        total = 0
        try:
            ids = os.listdir(self.root)
        except FileNotFoundError:
            return 0
        for tid in ids:
            path = os.path.join(self.root, tid, "events.jsonl")
            try:
                with open(path, "rb") as f:
                    f.seek(self.offsets.get(path, 0))
                    data = f.read()
            except FileNotFoundError:
                continue
            end = data.rfind(b"\n") + 1  # count only whole lines
            self.offsets[path] = self.offsets.get(path, 0) + end
            total += data.count(b"\n", 0, end)
        return total


def check_seqs(state):
    """(tasks, tasks with a gap or bad line, first problem) over every events.jsonl."""
    root = os.path.join(state, "tasks")
    bad, first, tasks = 0, None, 0
    for tid in sorted(os.listdir(root)):
        path = os.path.join(root, tid, "events.jsonl")
        if not os.path.exists(path):
            continue
        tasks += 1
        expect, problem = 1, None
        with open(path, "rb") as f:
            for n, line in enumerate(f, 1):
                if not line.endswith(b"\n"):
                    break  # a line being written when the daemon stopped
                m = SEQ.search(line)
                if not m:
                    problem = f"{tid}: line {n} has no seq"
                    break
                seq = int(m.group(1))
                if seq != expect:
                    problem = f"{tid}: seq {seq} where {expect} was due"
                    break
                expect += 1
        if problem:
            bad += 1
            first = first or problem
    return tasks, bad, first


def bench_events(ctx, shadows, warmup, window):
    """`shadows` shadows streaming text as fast as they can read it: events/s written."""
    # Turns of 64 KiB ending in a tool call keep every shadow streaming through the window
    # with realistic turn sizes (one huge turn is the hostile-streams budget's business). The
    # server holds the first requests until every shadow runs, so all start streaming together
    # (submissions slow down once events flow) and the disk sees only the window's events.
    server = FakeLLM("stream", turn_bytes=64 << 10, stream_seconds=3600, continue_turns=True, hold=True)
    d = Daemon(ctx, f"events{shadows}", server, shadows)
    try:
        d.submit_many(shadows, "stream", max_turns=100000)
        if not wait_until(lambda: sum(t["status"] == "running" for t in d.tasks()) >= shadows, 60 + shadows, 0.5):
            raise RuntimeError(f"not all {shadows} streaming shadows reached running")
        server.wait_arrivals(shadows, timeout=60)
        server.deadline = time.monotonic() + warmup + window + 0.5
        server.release()
        time.sleep(warmup)
        counter = EventCounter(d.state)
        counter.poll()
        sent0, t0 = server.deltas_sent, time.monotonic()
        cpu0 = proc.cpu_seconds(d.proc.pid)
        time.sleep(window)
        lines = counter.poll()
        elapsed = time.monotonic() - t0
        cpu = proc.cpu_seconds(d.proc.pid) - cpu0
        sent = server.deltas_sent - sent0
        # Let the streams end and the tasks finish, so the logs are complete.
        finished = wait_until(lambda: all(t["status"] != "running" for t in d.tasks()), 30 + shadows / 10, 0.5)
        statuses = [t["status"] for t in d.tasks()]
    finally:
        d.stop()
        server.close()
    tasks, bad, first = check_seqs(d.state)
    return {"events_per_s": lines / elapsed, "deltas_per_s": sent / elapsed,
            "daemon_cpu": 100.0 * cpu / elapsed, "tasks": tasks, "bad": bad, "first_problem": first,
            "finished": finished, "completed": statuses.count("completed"), "shadows": shadows}


# -- 3. stalled subscribers ---------------------------------------------------------------

def bench_stalled_subscribers(ctx, subscribers, stream_bytes, time_cap, rss_cap):
    """Subscribers that never read, one shadow streaming `stream_bytes`: daemon peak RSS."""
    server = FakeLLM("stream", turn_bytes=stream_bytes, stream_seconds=time_cap)
    d = Daemon(ctx, "stalled", server, 1)
    stalled = []
    out = {"capped": None}
    try:
        for _ in range(subscribers):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect(d.socket)
            s.sendall(b'{"jsonrpc":"2.0","id":1,"method":"subscribe","params":{}}\n')
            stalled.append(s)
        time.sleep(0.2)
        base_rss = proc.mem(d.proc.pid)[0]
        t0 = time.monotonic()
        (task,) = d.submit_many(1, "stream")
        peak = base_rss
        status = "running"
        while True:
            rss = proc.mem(d.proc.pid)[0]
            peak = max(peak, rss, proc.hwm(d.proc.pid))
            if rss > rss_cap:
                out["capped"] = f"RSS passed {rss_cap >> 20} MiB"
                break
            if time.monotonic() - t0 > time_cap + 10:
                out["capped"] = f"still running after {time_cap + 10:.0f} s"
                break
            if server.streams_finished >= 1:
                status = d.rpc.call("get", {"task": task})["status"]
                if status != "running":
                    time.sleep(0.5)
                    peak = max(peak, proc.hwm(d.proc.pid))
                    break
            time.sleep(0.05)
        out.update(base_rss=base_rss, peak_rss=peak, seconds=time.monotonic() - t0, status=status,
                   streamed=server.deltas_sent * len(DELTA_TEXT), subscribers=subscribers)
        return out
    finally:
        if out["capped"]:
            d.proc.kill()  # it may not get through SIGTERM in time with GiBs queued
        for s in stalled:
            s.close()
        d.stop()
        server.close()
