#!/usr/bin/env python3
"""kugetsu benchmarks: measures the performance budgets on this machine and writes BENCHMARKS.md.

Run through scripts/bench (which builds release binaries first). Everything talks to a local
fake LLM (scripts/bench_llm.py): mostly one that accepts requests and never answers, so workers
sit exactly where an idle shadow sits, waiting on the model. Numbers are medians of one run;
the machine is noisy.

Parts: single workers (below), the daemon under many shadows (bench_daemon.py), and the peer
agents side by side (bench_peers.py). `--smoke` runs every part at tiny scale, offline, and
prints the table instead of writing BENCHMARKS.md; any error fails the run.
"""
import argparse, json, os, resource, shutil, signal, statistics, subprocess, sys, tempfile, threading, time, traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_llm import FakeLLM  # noqa: E402
import bench_daemon, bench_peers, bench_proc as proc  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REL = os.path.join(ROOT, "target", "release")

# How big each measurement is, in full and in smoke runs.
FULL = dict(launch_runs=30, idle_copies=20, many=200, kills=15, cpu_shadows=100, cpu_window=10.0,
            journal=1000, daemon_many=1000, many_window=10.0, ps_runs=5, many_settle=300,
            spreads=(20, 200), stream_shadows=200, stream_warmup=2.0, stream_window=10.0,
            subscribers=3, stalled_bytes=3 << 20, stalled_time=120.0, stalled_rss_cap=4 << 30,
            peer_copies=20, peer_launch_runs=5, peer_task_runs=3, peer_settle=1.0,
            governor=((20, 240, 8), (100, 600, 20)), governor_timeout=300.0, chaos_kills=1000,
            fuzz_cases=10000, cluster_failures=1000, queue_tasks=5000, queue_claimers=8)
SMOKE = dict(launch_runs=3, idle_copies=3, many=5, kills=2, cpu_shadows=3, cpu_window=1.0,
             journal=50, daemon_many=5, many_window=1.0, ps_runs=1, many_settle=20,
             spreads=(3, 5), stream_shadows=5, stream_warmup=0.5, stream_window=1.0,
             subscribers=3, stalled_bytes=256 << 10, stalled_time=15.0, stalled_rss_cap=1 << 30,
             peer_copies=2, peer_launch_runs=1, peer_task_runs=1, peer_settle=0.3,
             governor=((3, 600, 4),), governor_timeout=60.0, chaos_kills=5,
             fuzz_cases=32, cluster_failures=6, queue_tasks=200, queue_claimers=4)


class Ctx:
    """What every measurement shares: paths, the scratch directory, the test repository."""

    def __init__(self, smoke):
        self.smoke = smoke
        self.root = ROOT
        self.kugetsu = os.path.join(REL, "kugetsu")
        self.worker = os.path.join(REL, "kugetsu-worker")
        self.journal_bench = os.path.join(REL, "examples", "journal_bench")
        for path in (self.kugetsu, self.worker, self.journal_bench):
            if not os.access(path, os.X_OK):
                raise SystemExit(f"bench: {path} is missing; run scripts/bench, which builds it")
        self.work = tempfile.mkdtemp(prefix="kugetsu-bench-", dir=os.path.join(ROOT, "target"))
        self.repo = os.path.join(self.work, "repo")
        make_repo(self.repo)
        # The fake servers hold one socket per shadow: let this process have what the hard limit
        # allows, but give the product the limit it would have had (reported with the figures).
        self.fd_soft, self.fd_hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.fd_hard, self.fd_hard))

    def child_limits(self):
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.fd_soft, self.fd_hard))

    def env_for(self, server):
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("OPENAI_", "ANTHROPIC_", "OPENROUTER_", "KUGETSU_", "CODEX_", "PI_"))}
        if server is not None:
            env.update(OPENAI_BASE_URL=server.url, OPENAI_API_KEY="bench-key")
        return env


def make_repo(repo):
    os.makedirs(repo)
    subprocess.run(["git", "init", "-q", repo], check=True)
    with open(os.path.join(repo, "a.txt"), "w") as f:
        f.write("a\n")
    subprocess.run(["git", "-C", repo, "add", "."], check=True)
    subprocess.run(["git", "-C", repo, "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "a"],
                   check=True)


def start_line(task_dir, prompt="say hello"):
    spec = {"id": "bench", "prompt": prompt, "model": "openai/bench-model", "max_turns": 10,
            "task_dir": task_dir}
    return (json.dumps({"type": "start", "task": spec, "resume": False}) + "\n").encode()


def spawn_worker(ctx, server, i, prompt="say hello"):
    d = os.path.join(ctx.work, f"w{i}-{time.monotonic_ns()}")
    os.makedirs(d)
    t0 = time.monotonic()
    p = subprocess.Popen([ctx.worker], cwd=d, env=ctx.env_for(server), stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=open(os.path.join(d, "worker.log"), "wb"))
    p.stdin.write(start_line(d, prompt))
    p.stdin.flush()
    return p, t0


def stop(procs):
    for p in procs:
        p.kill()
    for p in procs:
        p.wait()


def mib(n):
    return f"{n / (1 << 20):.2f} MiB"


# -- single workers -----------------------------------------------------------------------

def bench_launch(ctx, server, runs):
    times = []
    for i in range(runs):
        n = len(server.arrivals) + 1
        p, t0 = spawn_worker(ctx, server, f"launch{i}")
        t = server.wait_arrivals(n)
        times.append((t - t0) * 1000)
        stop([p])
    return statistics.median(times), min(times)


def settle(procs, server, n_before):
    server.wait_arrivals(n_before + len(procs))
    time.sleep(0.3)


def bench_idle(ctx, server, copies):
    n = len(server.arrivals)
    one, _ = spawn_worker(ctx, server, "idle1")
    settle([one], server, n)
    rss1, pss1 = proc.mem(one.pid)
    n = len(server.arrivals)
    more = [spawn_worker(ctx, server, f"idle{i}")[0] for i in range(copies - 1)]
    settle(more, server, n)
    total = sum(proc.mem(p.pid)[1] for p in [one] + more)
    rss_med = statistics.median(proc.mem(p.pid)[0] for p in [one] + more)
    stop([one] + more)
    return rss1, pss1, (total - pss1) / (copies - 1), rss_med


def bench_big_context(ctx, server):
    n = len(server.arrivals)
    # ~100k tokens: 400 kB of prompt text.
    prompt = ("Refactor the parser module so that every error carries a span. " * 6300)[:400_000]
    p, _ = spawn_worker(ctx, server, "ctx", prompt)
    settle([p], server, n)
    rss, _ = proc.mem(p.pid)
    stop([p])
    return rss


def bench_many(ctx, server, count):
    n = len(server.arrivals)
    procs = [spawn_worker(ctx, server, f"many{i}")[0] for i in range(count)]
    settle(procs, server, n)
    total = sum(proc.mem(p.pid)[1] for p in procs)
    stop(procs)
    return total


def bench_restart(ctx, server, kills):
    env = ctx.env_for(server)
    env["KUGETSU_MAX_RESTARTS"] = str(kills + 5)
    n = len(server.arrivals)
    run = subprocess.Popen([ctx.kugetsu, "run", "--json", "-C", ctx.repo, "--state-dir",
                            os.path.join(ctx.work, "state"), "-m", "openai/bench-model",
                            "wait for the model"], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    pids = []

    def read_events():
        for line in run.stdout:
            ev = json.loads(line)
            if ev["type"] == "started":
                pids.append(ev["pid"])

    threading.Thread(target=read_events, daemon=True).start()
    gaps = []
    try:
        server.wait_arrivals(n + 1)
        for k in range(kills):
            deadline = time.monotonic() + 30
            while len(pids) < k + 1:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no started event for attempt {k + 1}")
                time.sleep(0.001)
            time.sleep(0.05)
            t0 = time.monotonic()
            os.kill(pids[k], signal.SIGKILL)
            t = server.wait_arrivals(n + k + 2)
            gaps.append((t - t0) * 1000)
    finally:
        run.send_signal(signal.SIGTERM)
        try:
            run.wait(timeout=20)
        except subprocess.TimeoutExpired:
            run.kill()
    return statistics.median(gaps), max(gaps)


def bench_journal(ctx, count):
    out = subprocess.run([ctx.journal_bench, os.path.join(ctx.work, "journal"), str(count)], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out)


# -- the report ---------------------------------------------------------------------------

def ratio(peer, base):
    return f"{peer / base:.0f}×" if base and peer / base >= 10 else (f"{peer / base:.1f}×" if base else "—")


def peers_block(peers, s):
    cols = ["kugetsu worker", "kugetsu run", "pi", "codex"]
    ok = [c for c in cols if c in peers and "error" not in peers[c]]
    metrics = [
        ("idle RSS (one copy, process tree)", "rss1", mib),
        ("idle PSS (one copy)", "pss1", mib),
        (f"extra PSS per added copy (N={s['peer_copies']})", "extra_pss", mib),
        ("launch to first model request", "launch", lambda v: f"{v * 1000:.1f} ms" if v < 1 else f"{v:.2f} s"),
        ("peak RSS, scripted task", "peak_rss", mib),
        ("CPU per scripted task (user+sys)", "cpu", lambda v: f"{v * 1000:.0f} ms" if v < 1 else f"{v:.2f} s"),
    ]
    base = peers["kugetsu worker"]
    peer_cols = [c for c in ("pi", "codex") if c in ok]
    lines = ["| what | " + " | ".join(ok) + "".join(f" | {c} / worker" for c in peer_cols) + " |",
             "|---" * (1 + len(ok) + len(peer_cols)) + "|"]
    for label, key, fmt in metrics:
        row = [label] + [fmt(peers[c][key]) for c in ok] + [ratio(peers[c][key], base[key]) for c in peer_cols]
        lines.append("| " + " | ".join(row) + " |")
    notes = []
    for c in ("pi", "codex"):
        r = peers.get(c, {"error": "not measured"})
        if "error" in r:
            notes.append(f"- **{c}: not measured.** {r['error']}")
    return "\n".join(lines) + "\n", notes


class Failed:
    """What a part that raised leaves in a full run: its rows say so instead of ending the run."""

    def __init__(self, error):
        self.error = error


def groups(s, r):
    """(result keys, [(what, budget)], rows builder) for each part of the table, in order."""
    n, m = s["daemon_many"], r.get("many")

    def single():
        return [
            ("idle worker (waiting on the model), RSS", "≤ 4 MB", mib(r["idle"][0]),
             f"median RSS over {s['idle_copies']}: {mib(r['idle'][3])}; PSS of one {mib(r['idle'][1])}"),
            ("extra PSS per added idle shadow", "≤ 1.5 MB", mib(r["idle"][2]),
             f"(PSS of {s['idle_copies']} − PSS of 1) / {s['idle_copies'] - 1}")]

    def many():
        return [
            (f"{n} concurrent idle shadows (daemon): running", "all running", f"{m['running']} of {n}",
             f"`kugetsu serve`, max_shadows {n}, {n} `submit` (no_worktree) pipelined on the socket in "
             f"{m['submit_s']:.1f} s; {m['requests']} model requests arrived"
             + (f", the last {m['all_requests_s']:.1f} s after the first submit" if m["all_requests_s"] else "")
             + f"; fd limit {m['fd_limit']}; statuses {dict(sorted(m['statuses'].items()))}"
             + (f"; daemon log: `{m['daemon_log'][-200:]}`" if m.get("daemon_log") else "")),
            (f"{n} idle shadows: workers' total PSS", "< 1 GiB", mib(m["workers_pss"]),
             f"sum of smaps_rollup Pss over the running workers' pids (daemon itself: {mib(m['daemon_rss'])} RSS)"),
            (f"{n} idle shadows: daemon CPU", "< 1%", f"{m['cpu_median']:.2f}%",
             f"median of {s['many_window']:.0f} one-second samples of the daemon's threads' CPU time "
             f"(schedstat, ns); {m['cpu_total']:.2f}% over the whole window by clock ticks (user+sys)"),
            (f"{n} idle shadows: `kugetsu ps`", "< 2 s", f"{m['ps_median'] * 1000:.0f} ms",
             f"median wall time of {s['ps_runs']} runs")]

    def spread(k):
        sp = r[f"spread{k}"]
        return [(f"spawn spread, {k} submitted at once", "—", f"{sp['started_spread'] * 1000:.0f} ms",
                 f"first to last `started` event seen by a subscriber; first to last model request "
                 f"{sp['request_spread'] * 1000:.0f} ms; first submit to last request "
                 f"{sp['submit_to_last_request'] * 1000:.0f} ms")]

    def events():
        ev = r["events"]
        return [
            (f"events/s ingested, {ev['shadows']} shadows streaming text", "—", f"{ev['events_per_s']:,.0f}/s",
             f"new lines in tasks/*/events.jsonl over {s['stream_window']:.0f} s while the fake LLM streams one "
             f"delta per SSE event as fast as workers read ({ev['deltas_per_s']:,.0f} deltas/s sent, so the "
             f"daemon wrote {100 * ev['events_per_s'] / max(1, ev['deltas_per_s']):.0f}% of them as they came); "
             f"daemon {ev['daemon_cpu']:.0f}% CPU; load generator on the same 2 cores"),
            ("events.jsonl seq without gaps", "none", f"{ev['bad']} of {ev['tasks']} tasks with a gap",
             f"every line of every task's log after the streams ended ({ev['completed']} completed)"
             + (f"; first: {ev['first_problem']}" if ev["first_problem"] else ""))]

    def stalled():
        st = r["stalled"]
        return [(f"daemon RSS with {st['subscribers']} stalled subscribers", "< 64 MiB", mib(st["peak_rss"]),
                 f"peak (VmHWM); {st['subscribers']} clients `subscribe` and never read, one shadow streams "
                 f"{st['streamed'] / (1 << 20):.1f} MiB of text in {st['seconds']:.1f} s; RSS before "
                 f"{mib(st['base_rss'])}"
                 + (f"; **stopped early: {st['capped']}**" if st["capped"] else f"; task {st['status']}"))]

    j = r.get("journal")
    return [
        (["idle"], [("idle worker (waiting on the model), RSS", "≤ 4 MB"),
                    ("extra PSS per added idle shadow", "≤ 1.5 MB")], single),
        (["ctx_rss"], [("worker with a 100k-token context, RSS", "≤ 16 MB")], lambda: [
            ("worker with a 100k-token context, RSS", "≤ 16 MB", mib(r["ctx_rss"]),
             "400 kB prompt, waiting on the model")]),
        (["launch"], [("launch to first LLM request", "≤ 10 ms")], lambda: [
            ("launch to first LLM request", "≤ 10 ms", f"{r['launch'][0]:.2f} ms",
             f"median of {s['launch_runs']} spawns (min {r['launch'][1]:.2f} ms), incl. handshake")]),
        (["many_pss"], [(f"{s['many']} concurrent shadows, total PSS", "< 1 GiB")], lambda: [
            (f"{s['many']} concurrent shadows, total PSS", "< 1 GiB", mib(r["many_pss"]), f"{s['many']} idle workers")]),
        (["cpu"], [(f"daemon CPU with {s['cpu_shadows']} idle shadows", "< 1%")], lambda: [
            (f"daemon CPU with {s['cpu_shadows']} idle shadows", "< 1%", f"{r['cpu']['total']:.2f}%",
             f"`kugetsu serve` user+sys CPU over {s['cpu_window']:.0f} s, {s['cpu_shadows']} shadows waiting on "
             f"the model (median of the seconds {r['cpu']['median']:.2f}%)")]),
        (["restart"], [("kill -9 of a worker to resumed LLM request", "≤ 100 ms")], lambda: [
            ("kill -9 of a worker to resumed LLM request", "≤ 100 ms", f"{r['restart'][0]:.2f} ms",
             f"median of {s['kills']} kills under `kugetsu run` (max {r['restart'][1]:.2f} ms)")]),
        (["journal"], [("journal append + fdatasync", "≤ 5 ms")], lambda: [
            ("journal append + fdatasync", "≤ 5 ms", f"{j['median_us'] / 1000:.3f} ms",
             f"median of {j['count']}; p99 {j['p99_us'] / 1000:.3f} ms, max {j['max_us'] / 1000:.3f} ms")]),
        (["many"], [(f"{n} concurrent idle shadows (daemon): running", "all running"),
                    (f"{n} idle shadows: workers' total PSS", "< 1 GiB"), (f"{n} idle shadows: daemon CPU", "< 1%"),
                    (f"{n} idle shadows: `kugetsu ps`", "< 2 s")], many),
    ] + [([f"spread{k}"], [(f"spawn spread, {k} submitted at once", "—")], lambda k=k: spread(k))
         for k in s["spreads"]] + [
        (["events"], [(f"events/s ingested, {s['stream_shadows']} shadows streaming text", "—"),
                      ("events.jsonl seq without gaps", "none")], events),
        (["stalled"], [(f"daemon RSS with {s['subscribers']} stalled subscribers", "< 64 MiB")], stalled),
    ]


def bench_chaos(kills):
    """scripts/chaos with the release binaries: its JSON summary."""
    out = subprocess.run([os.path.join(ROOT, "scripts", "chaos"), "--kills", str(kills), "--json",
                          "--bin", REL], capture_output=True, text=True, timeout=3600)
    lines = [l for l in out.stdout.splitlines() if l.startswith("{")]
    if not lines:
        raise RuntimeError(f"scripts/chaos printed no summary: {out.stderr[-500:]}")
    return json.loads(lines[-1])


# The cluster part: scripts/chaos-cluster's soak, and the queue alone (examples/cluster_queue.rs)
# against a PostgreSQL of its own. Without PostgreSQL it is skipped outside CI.


class Skipped:
    """A part that cannot run on this machine (outside CI only)."""

    def __init__(self, why):
        self.why = why

    def __str__(self):
        return f"skipped: {self.why}"


def chaos_cluster_module():
    """scripts/chaos-cluster as a module (its PostgreSQL starter)."""
    import importlib.machinery, importlib.util
    path = os.path.join(ROOT, "scripts", "chaos-cluster")
    loader = importlib.machinery.SourceFileLoader("kugetsu_chaos_cluster", path)
    spec = importlib.util.spec_from_loader("kugetsu_chaos_cluster", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def postgres_missing():
    """Why the cluster part cannot run here, or None (in CI a missing PostgreSQL is an error)."""
    try:
        chaos_cluster_module().pg_bin_dir()
        return None
    except SystemExit as e:
        if os.environ.get("CI"):
            raise RuntimeError(str(e))
        return str(e)


def bench_cluster_chaos(failures):
    """scripts/chaos-cluster with the release binaries: its JSON summary."""
    why = postgres_missing()
    if why:
        return Skipped(why)
    out = subprocess.run([os.path.join(ROOT, "scripts", "chaos-cluster"), "--failures", str(failures),
                          "--json", "--bin", REL], capture_output=True, text=True, timeout=3600)
    lines = [l for l in out.stdout.splitlines() if l.startswith("{")]
    if not lines:
        raise RuntimeError(f"scripts/chaos-cluster printed no summary: {out.stderr[-500:]}")
    return json.loads(lines[-1])


def bench_cluster_queue(ctx, tasks, claimers):
    """examples/cluster_queue against a PostgreSQL of its own: submissions, then claims and
    fenced finishes by `claimers` concurrent nodes."""
    why = postgres_missing()
    if why:
        return Skipped(why)
    binary = os.path.join(REL, "examples", "cluster_queue")
    if not os.access(binary, os.X_OK):
        raise RuntimeError(f"{binary} is missing; run scripts/bench, which builds it")
    # Under /tmp: the server runs as the postgres user (as root), which must reach its directory.
    work = tempfile.mkdtemp(prefix="kugetsu-bench-queue-")
    try:
        pg = chaos_cluster_module().Postgres(work)
        try:
            out = subprocess.run([binary, pg.url, "--tasks", str(tasks), "--claimers", str(claimers)],
                                 capture_output=True, text=True, timeout=1800)
        finally:
            pg.stop("immediate")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    lines = [l for l in out.stdout.splitlines() if l.startswith("{")]
    if not lines:
        raise RuntimeError(f"cluster_queue printed no result: {out.stderr[-500:]}")
    q = json.loads(lines[-1])
    if out.returncode != 0 or not q["ok"]:
        raise RuntimeError(f"cluster_queue: tasks claimed or finished other than once: {lines[-1]}")
    q["postgres"] = os.path.basename(os.path.dirname(pg.bin))
    return q


def cluster_block(c, q):
    out = ["\n## Cluster\n",
           "`scripts/chaos-cluster` on the release binaries: 3 nodes (`kugetsu serve`, max_shadows 4 "
           "each, `lease_ttl = 3s`) on one PostgreSQL of the run's own and one repository, with a bare "
           "`checkpoint_remote`; tasks of three shell calls submitted in waves to random nodes while a "
           "failure is injected every 0.15 s: mostly SIGKILL of a running worker, 3% SIGKILL of a whole "
           "node (restarted on its state once its leases ran out), 3% SIGSTOP of a whole node for 1.3 to "
           "2.3 lease_ttl then SIGCONT, a PostgreSQL restart at most every 10 s (1.5%). Checked: every task "
           "finished exactly once (one `finished` row, state finished) and completed, no step ran twice, "
           "journal rows consecutive, event fences never decrease in seq order, tool_start/tool_end "
           "pair up, never one task running on two nodes at once (sampled from /proc every 0.1 s), no "
           "node panicked, no process left once the nodes stopped. Takeover: a node's SIGKILL to the "
           "`started` event of each task it ran on another node. Claims+completions per second: from "
           "the first submission to the last finish (database time), bounded by the tasks' own length "
           "(three 0.4 s steps) and the 12 slots.\n"]
    if c is None:
        out.append("Soak: not measured.")
    elif isinstance(c, Failed):
        out.append(f"Soak: **error**: {c.error}")
    elif isinstance(c, Skipped):
        out.append(f"Soak: not measured ({c.why}).")
    else:
        verdict = "all invariants held" if not c["violations"] else (
            f"**{len(c['violations'])} violations**: " + "; ".join(c["violations"][:5]).replace("|", "/"))
        takeover = (f"takeover median {c['takeover_median_s']:.2f} s, max {c['takeover_max_s']:.2f} s "
                    f"({c['takeovers']} tasks taken over after a node SIGKILL)"
                    if c["takeovers"] else "no takeover measured")
        out.append(f"Soak: {c['failures']} failures ({c['worker']} workers, {c['node_kill']} node kills, "
                   f"{c['node_stop']} node stops, {c['pg_restart']} PostgreSQL restarts) over "
                   f"{c['seconds']:.0f} s, {c['tasks']} tasks, {takeover}, "
                   f"{c['claims_completions_per_s']:.1f} claims+completions/s, seed {c['seed']}: {verdict}.")
    out.append("")
    out.append("Queue alone (`supervisor/examples/cluster_queue.rs`, goal ≥ 500 claims+completions/s): the "
               "node's own `Cluster::submit` and `node::claim` against a PostgreSQL of its own (fsync off), "
               "N tasks submitted by K concurrent submitters, then claimed (up to 4 at a time) by K "
               "concurrent nodes, each finished the way a task's writer does (one transaction: fence "
               "checked, `started` and `finished` written with the fence, the task marked finished).")
    if q is None:
        out.append("Queue: not measured.")
    elif isinstance(q, Failed):
        out.append(f"Queue: **error**: {q.error}")
    elif isinstance(q, Skipped):
        out.append(f"Queue: not measured ({q.why}).")
    else:
        out.append(f"Queue: {q['tasks']} tasks, {q['claimers']} claimers, PostgreSQL {q['postgres']}: "
                   f"**{q['claims_completions_per_s']:.0f} claims+completions/s** "
                   f"({q['tasks_per_s']:.0f} tasks/s claimed and finished), submissions "
                   f"{q['submits_per_s']:.0f}/s; every task claimed once and finished once.")
    return out


FUZZ_RUNS = [["cargo", "test", "--workspace", "--lib", "--locked", "--features", "kugetsu-os/failpoints",
              "properties"],
             ["cargo", "test", "-p", "kugetsu-protocol", "--test", "properties", "--locked"]]


def bench_fuzz(cases):
    """The property tests (scripts/check's, 256 cases each) with `cases` cases each."""
    env = dict(os.environ, PROPTEST_CASES=str(cases))
    t0 = time.monotonic()
    passed = failed = 0
    failures = []
    for cmd in FUZZ_RUNS:
        out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=7200)
        for line in out.stdout.splitlines():
            if line.startswith("test result:"):
                f = line.split()
                passed += int(f[3])
                failed += int(f[5])
            elif line.startswith("test ") and line.endswith("FAILED"):
                failures.append(line[5:-len(" ... FAILED")])
        if out.returncode != 0 and not failures:
            failures.append(f"{' '.join(cmd)} exited {out.returncode}: {out.stderr[-300:]}")
    return {"cases": cases, "properties": passed + failed, "failed": failed, "failures": failures,
            "seconds": time.monotonic() - t0}


def fuzz_block(z):
    out = ["\n## Fuzzing\n",
           "The property tests of `scripts/check` (proptest on the stable toolchain: the JSON-lines "
           "codec, the SSE parser, both stream decoders, the journal reader, the JSON-RPC layer, the "
           "config parser) with many more cases each, debug build.\n"]
    if z is None:
        return out + ["not measured"]
    if isinstance(z, Failed):
        return out + [f"**error**: {z.error}"]
    verdict = "no property failed" if not z["failures"] else "**failed**: " + ", ".join(z["failures"][:10])
    return out + [f"{z['properties']} properties x {z['cases']} cases "
                  f"({z['properties'] * z['cases']:,} cases) in {z['seconds']:.0f} s: {verdict}."]


def chaos_block(c):
    out = ["\n## Chaos soak\n",
           "`scripts/chaos` on the release binaries: tasks of three shell calls on a daemon "
           "(max_shadows 8) while a killer SIGKILLs a random running worker every 0.1 s, and the "
           "daemon itself for 5% of the kills (restarted on the same state). Checked: every "
           "accepted task finished exactly once and completed, no step ran twice, journals read "
           "back, tool_start/tool_end pair up, no process left after the daemon stopped, no zombie "
           "left unreaped.\n"]
    if c is None:
        return out + ["not measured"]
    if isinstance(c, Failed):
        return out + [f"**error**: {c.error}"]
    verdict = "all invariants held" if not c["violations"] else (
        f"**{len(c['violations'])} violations**: " + "; ".join(c["violations"][:5]).replace("|", "/"))
    return out + [f"{c['kills']} kills ({c['daemon_kills']} of the daemon) over {c['seconds']:.0f} s, "
                  f"{c['tasks']} tasks, seed {c['seed']}: {verdict}."]


def governor_block(runs):
    """The governor section: the same fleet on one rate-limited key, with and without it."""
    out = ["\n## Governor\n",
           "Shadows of one daemon on one key of a local fake provider (`scripts/bench_llm.py`, "
           "`limit`) that enforces a requests-per-minute limit the way providers do: a token bucket "
           "of BURST requests refilled at RPM a minute, OpenAI's `x-ratelimit-*-requests` headers on "
           "every response, 429 with `retry-after` over the limit. Each task is the scripted "
           "three-request task (two shell calls, then the answer). \"Without\" is `governor = false`: "
           "each worker retries its own 429s (5 attempts, backoff from 1 s, honouring "
           "`retry-after`), as a lone agent does. Limit used: requests served within the limit over "
           "what the key allowed from the first served request to the last (BURST + RPM x span); "
           "goal with the governor: at least 90% used, at most 5% of requests answered 429, no task "
           "failed.\n"]
    if runs is None:
        return out + ["not measured"]
    if isinstance(runs, Failed):
        return out + [f"**error**: {runs.error}"]
    out.append("| shadows | governor | key limit | completed | failed | requests answered 429 | limit used | wall time |")
    out.append("|---|---|---|---|---|---|---|---|")
    for g in runs:
        out.append(f"| {g['shadows']} | {'on' if g['governed'] else 'off'} | {g['rpm']} rpm, burst {g['burst']} "
                   f"| {g['completed']} | {g['failed'] + g['unfinished']} "
                   f"| {g['throttled']} of {g['requests']} ({100 * g['share_429']:.1f}%) "
                   f"| {100 * g['used']:.0f}% | {g['seconds']:.1f} s |")
    return out


def report(ctx, s, r):
    uname = os.uname()
    rows = []
    for keys, labels, build in groups(s, r):
        failed = [r[k] for k in keys if isinstance(r.get(k), Failed)]
        if failed:
            why = failed[0].error.replace("|", "/").replace("\n", " ")[:300]
            rows += [(what, budget, "**error**", why) for what, budget in labels]
        else:
            rows += build()
    out = ["# Benchmarks\n",
           "Written by `scripts/bench` (release build) from one run; medians unless stated. The \"LLM\" "
           "is a local server (`scripts/bench_llm.py`) that accepts each request and never answers, so "
           "workers sit where an idle shadow sits: waiting on the model; the events rows use the same "
           "server streaming text, the peers' task a scripted two-tool-call conversation.\n",
           f"Machine: {uname.sysname} {uname.release} {uname.machine}, {os.cpu_count()} cores; "
           f"run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load average {r['load']} (1, 5, 15 min) at the start "
           "(other work shares the cores: treat timings and CPU shares as upper bounds)"
           + (" (**smoke run: tiny scale, figures meaningless**)" if ctx.smoke else "") + ".\n",
           "| what | budget | measured | how |\n|---|---|---|---|"]
    out += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    out += governor_block(r.get("governor"))
    out += chaos_block(r.get("chaos"))
    out += cluster_block(r.get("cluster_chaos"), r.get("cluster_queue"))
    out += fuzz_block(r.get("fuzz"))
    if isinstance(r["peers"], Failed):
        out += ["\n## Peers\n", f"**error**: {r['peers'].error}"]
        return "\n".join(out) + "\n"
    table, notes = peers_block(r["peers"], s)
    versions = ", ".join(f"{c} {r['peers'][c]['version']}" for c in ("pi", "codex")
                         if r["peers"].get(c, {}).get("version"))
    out += ["\n## Peers\n",
            "The same machine and run, each agent against the same local fake LLM. Idle: launched on a "
            "task whose model never answers, memory of the process tree once the first request "
            "arrived and a settle pause. Launch: process start to the request head arriving. Scripted "
            "task: the model asks for two shell commands (`cat notes.txt`, `echo done > result.txt`) "
            "then answers; CPU is user+sys from wait4(2) over the process tree; peak RSS "
            + ("is the largest single process's, from GNU time's %M (wait4 from the bench itself would "
               "count the bench's memory at fork as the child's peak)"
               if r["peers"]["kugetsu worker"]["peak_how"].startswith("GNU") else
               "is the tree's summed RSS sampled every 2 ms (no GNU time here)")
            + "; the task counts only if result.txt was written. `kugetsu worker` is one shadow as the daemon runs it; "
            "`kugetsu run` adds the supervisor process. Ratios are peer / kugetsu worker.\n",
            table,
            f"Versions: {versions or 'none installed'} (npm, pinned in `scripts/bench_peers.py`, "
            "installed under `target/bench-peers`). pi: a custom provider in "
            "`$PI_CODING_AGENT_DIR/models.json` (`api: openai-completions`, the fake server's base URL), "
            "`pi --offline --no-session -p`. codex: the native binary from the npm package, "
            "`model_providers.bench` in `$CODEX_HOME/config.toml` with `base_url` and "
            "`wire_api = \"responses\"` (this version refuses `wire_api = \"chat\"`), "
            "`codex exec --skip-git-repo-check --dangerously-bypass-approvals-and-sandbox`."]
    if notes:
        out += [""] + notes
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true",
                    help="tiny scale, offline, print the table instead of writing BENCHMARKS.md")
    ap.add_argument("--out", help="where to write the table (default BENCHMARKS.md; smoke: stdout only)")
    ap.add_argument("--only", choices=["daemon-many", "spread", "events", "stalled", "governor", "chaos",
                                       "cluster-chaos", "cluster-queue", "fuzz", "peers"],
                    help="run one daemon or peers part and print its raw figures as JSON")
    args = ap.parse_args()
    smoke = args.smoke or os.environ.get("KUGETSU_BENCH_SMOKE") == "1"
    s = SMOKE if smoke else FULL
    ctx = Ctx(smoke)
    t_start = time.monotonic()

    failures = []

    def part(name, fn, *a):
        """Runs one measurement; in a full run a failure is reported in its rows, not fatal."""
        t = time.monotonic()
        print(f"bench: {name} ...", file=sys.stderr, flush=True)
        try:
            v = fn(*a)
        except Exception as e:
            if smoke or args.only:
                raise
            traceback.print_exc()
            failures.append(f"{name}: {e}")
            return Failed(f"{type(e).__name__}: {e}")
        print(f"bench: {name} done in {time.monotonic() - t:.1f} s", file=sys.stderr, flush=True)
        return v

    # (--only name, result key, measurement) of the daemon and peers parts, in run order.
    only_parts = [
        ("daemon-many", "many", lambda: bench_daemon.bench_daemon_many(
            ctx, s["daemon_many"], s["many_window"], s["ps_runs"], s["many_settle"])),
        ("spread", "spread", lambda: [bench_daemon.bench_spawn_spread(ctx, n) for n in s["spreads"]]),
        ("events", "events", lambda: bench_daemon.bench_events(
            ctx, s["stream_shadows"], s["stream_warmup"], s["stream_window"])),
        ("stalled", "stalled", lambda: bench_daemon.bench_stalled_subscribers(
            ctx, s["subscribers"], s["stalled_bytes"], s["stalled_time"], s["stalled_rss_cap"])),
        ("governor", "governor", lambda: [
            bench_daemon.bench_governor(ctx, n, rpm, burst, governed, s["governor_timeout"])
            for n, rpm, burst in s["governor"] for governed in (True, False)]),
        ("chaos", "chaos", lambda: bench_chaos(s["chaos_kills"])),
        ("cluster-chaos", "cluster_chaos", lambda: bench_cluster_chaos(s["cluster_failures"])),
        ("cluster-queue", "cluster_queue", lambda: bench_cluster_queue(
            ctx, s["queue_tasks"], s["queue_claimers"])),
        ("fuzz", "fuzz", lambda: bench_fuzz(s["fuzz_cases"])),
        ("peers", "peers", lambda: bench_peers.run_peers(
            ctx, s["peer_copies"], s["peer_launch_runs"], s["peer_task_runs"], s["peer_settle"])),
    ]
    if args.only:
        fn = next(f for name, _, f in only_parts if name == args.only)
        try:
            print(json.dumps(part(args.only, fn), indent=1, default=str))
        finally:
            shutil.rmtree(ctx.work, ignore_errors=True)
        return
    try:
        r = {"load": " / ".join(open("/proc/loadavg").read().split()[:3])}
        server = FakeLLM("stall")
        r["launch"] = part("launch", bench_launch, ctx, server, s["launch_runs"])
        r["idle"] = part("idle", bench_idle, ctx, server, s["idle_copies"])
        r["ctx_rss"] = part("100k context", bench_big_context, ctx, server)
        r["many_pss"] = part(f"{s['many']} workers", bench_many, ctx, server, s["many"])
        r["restart"] = part("kill -9 restarts", bench_restart, ctx, server, s["kills"])
        server.close()
        r["cpu"] = part("daemon CPU", bench_daemon.bench_daemon_idle_cpu, ctx, s["cpu_shadows"], s["cpu_window"])
        r["journal"] = part("journal", bench_journal, ctx, s["journal"])
        for name, key, fn in only_parts:
            if key == "spread":
                for k in s["spreads"]:
                    r[f"spread{k}"] = part(f"spawn spread {k}", bench_daemon.bench_spawn_spread, ctx, k)
            else:
                r[key] = part(name, fn)
        text = report(ctx, s, r)
        problems = [f"failed: {f}" for f in failures]
        many, events, stalled = r["many"], r["events"], r["stalled"]
        if not isinstance(many, Failed) and many["running"] < many["shadows"]:
            problems.append(f"only {many['running']} of {many['shadows']} daemon shadows reached running")
        if not isinstance(events, Failed) and not events["finished"]:
            problems.append("the streaming shadows did not finish after their streams ended")
        if not isinstance(events, Failed) and events["bad"]:
            problems.append(f"seq gaps in {events['bad']} events.jsonl: {events['first_problem']}")
        cc = r.get("cluster_chaos")
        if isinstance(cc, dict) and cc["violations"]:
            problems.append(f"cluster chaos: {len(cc['violations'])} violations: {cc['violations'][0]}")
        if not isinstance(stalled, Failed) and stalled["capped"]:
            problems.append(f"stalled-subscriber run stopped early: {stalled['capped']}")
        if args.out or not smoke:
            path = args.out or os.path.join(ROOT, "BENCHMARKS.md")
            with open(path, "w") as f:
                f.write(text)
            print(f"bench: wrote {path}", file=sys.stderr)
        print(text)
        print(f"bench: {time.monotonic() - t_start:.1f} s in all", file=sys.stderr)
        for p in problems:
            print(f"bench: {'FAIL' if smoke else 'note'}: {p}", file=sys.stderr)
        for name in ("pi", "codex"):
            if not isinstance(r["peers"], Failed) and "error" in r["peers"].get(name, {}):
                print(f"bench: note: {name} not measured: {r['peers'][name]['error']}", file=sys.stderr)
        if failures or (smoke and problems):
            sys.exit(1)
    finally:
        shutil.rmtree(ctx.work, ignore_errors=True)


if __name__ == "__main__":
    main()
