"""Side-by-side with the agents people use today, for scripts/bench.

The same measurements for the kugetsu worker, `kugetsu run` (supervisor + worker), pi and
codex, each pointed at the same local fake LLM:

- idle: launched on a task against a server that never answers; memory of the process tree
  once its first model request has arrived (and a settle pause), for 1 and for 20 copies;
- launch to first model request: process start until the server sees the request head;
- a short scripted task (two shell tool calls, then an answer): user+sys CPU seconds and peak
  RSS of the process tree, from wait4(2); the task must actually write result.txt.

pi and codex are installed with npm into target/bench-peers (pinned versions, never committed).
pi gets a custom OpenAI-compatible provider through `PI_CODING_AGENT_DIR/models.json`; codex
gets a `model_providers` entry with `wire_api = "responses"` in `CODEX_HOME/config.toml`
(0.171 no longer supports `wire_api = "chat"`) and runs as its native binary, not through the
npm launcher (a node process that only spawns it). Each copy has its own HOME and config
directory, so nothing touches the user's.
"""
import glob, json, os, shutil, signal, statistics, subprocess, time

from bench_llm import FakeLLM
import bench_proc as proc

PI_PACKAGE = "@mariozechner/pi-coding-agent@0.73.1"
CODEX_PACKAGE = "@openai/codex@0.171.0"
IDLE_PROMPT = "wait for the model"


def gnu_time():
    """The GNU time program (not the shell keyword), if installed: it reports a child's peak RSS."""
    path = shutil.which("time")
    if not path:
        return None
    r = subprocess.run([path, "--version"], capture_output=True, text=True)
    return path if "GNU" in r.stdout + r.stderr else None


GNU_TIME = gnu_time()
TASK_PROMPT = "Read notes.txt, then write done to result.txt."


class Agent:
    """How to launch one agent; `launch` returns a Popen in its own process group."""

    name = ""
    version = ""

    def __init__(self, ctx):
        self.ctx = ctx

    def command(self, server, home, repo, prompt):
        """(argv, env, cwd, stdin bytes or None)."""
        raise NotImplementedError

    def launch(self, server, tag, prompt, timed=False):
        d = os.path.join(self.ctx.work, "peers", self.name.replace(" ", "-"), f"{tag}-{time.monotonic_ns()}")
        home, repo = os.path.join(d, "home"), os.path.join(d, "repo")
        os.makedirs(home)
        os.makedirs(repo)
        with open(os.path.join(repo, "notes.txt"), "w") as f:
            f.write("hello\n")
        # A repository of its own: `kugetsu run -C` inside a non-repository directory works in
        # the enclosing repository (which would be this checkout, under target/).
        subprocess.run(["git", "init", "-q", repo], check=True)
        argv, env, cwd, stdin = self.command(server, home, repo, prompt)
        log = open(os.path.join(d, "out.log"), "wb")
        rusage_file = None
        if timed and GNU_TIME:
            # wait4(2) from this process would report our own RSS as the child's peak (maxrss
            # keeps the pre-exec memory of the forked bench); GNU time forks from a tiny process.
            rusage_file = os.path.join(d, "rusage")
            argv = [GNU_TIME, "-o", rusage_file, "-f", "%M"] + argv
        t0 = time.monotonic()
        p = subprocess.Popen(argv, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                             stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                             start_new_session=True)
        if stdin is not None:
            p.stdin.write(stdin)
            p.stdin.flush()
        p.bench_t0, p.bench_dir, p.bench_repo, p.bench_log = t0, d, repo, log
        p.bench_rusage = rusage_file
        return p


def kill_tree(p):
    pids = proc.tree(p.pid)
    try:
        os.killpg(p.pid, signal.SIGKILL)  # launched with start_new_session: pid is the group
    except OSError:
        pass
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    try:
        p.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
    if p.stdin:
        try:
            p.stdin.close()
        except OSError:
            pass
    p.bench_log.close()


def log_tail(p, n=400):
    p.bench_log.flush()
    with open(os.path.join(p.bench_dir, "out.log"), "rb") as f:
        return f.read()[-n:].decode(errors="replace").strip()


class KugetsuWorker(Agent):
    name = "kugetsu worker"

    def command(self, server, home, repo, prompt):
        env = self.ctx.env_for(server)
        env["HOME"] = home
        spec = {"id": "bench", "prompt": prompt, "model": "openai/bench-model", "max_turns": 10,
                "task_dir": home}
        line = (json.dumps({"type": "start", "task": spec, "resume": False}) + "\n").encode()
        return [self.ctx.worker], env, repo, line


class KugetsuRun(Agent):
    name = "kugetsu run"

    def command(self, server, home, repo, prompt):
        env = self.ctx.env_for(server)
        env.update(HOME=home, XDG_CONFIG_HOME=os.path.join(home, "config"))
        return ([self.ctx.kugetsu, "run", "--json", "--no-worktree", "-C", repo, "--state-dir",
                 os.path.join(home, "state"), "-m", "openai/bench-model", prompt], env, repo, None)


class Pi(Agent):
    name = "pi"

    def __init__(self, ctx, cli):
        super().__init__(ctx)
        self.cli = cli

    def command(self, server, home, repo, prompt):
        agent_dir = os.path.join(home, "pi-agent")
        os.makedirs(agent_dir)
        with open(os.path.join(agent_dir, "models.json"), "w") as f:
            json.dump({"providers": {"bench": {
                "baseUrl": server.url, "api": "openai-completions", "apiKey": "bench-key",
                "compat": {"supportsDeveloperRole": False, "supportsReasoningEffort": False},
                "models": [{"id": "bench-model"}]}}}, f)
        env = self.ctx.env_for(None)
        env.update(HOME=home, PI_CODING_AGENT_DIR=agent_dir, PI_OFFLINE="1", PI_SKIP_VERSION_CHECK="1")
        return (["node", self.cli, "--offline", "--no-session", "-p", "--provider", "bench",
                 "--model", "bench-model", prompt], env, repo, None)


class Codex(Agent):
    name = "codex"

    def __init__(self, ctx, binary):
        super().__init__(ctx)
        self.binary = binary

    def command(self, server, home, repo, prompt):
        codex_home = os.path.join(home, "codex")
        os.makedirs(codex_home)
        with open(os.path.join(codex_home, "config.toml"), "w") as f:
            f.write(f'model = "bench-model"\nmodel_provider = "bench"\n\n[model_providers.bench]\n'
                    f'name = "bench"\nbase_url = "{server.url}"\nenv_key = "BENCH_API_KEY"\n'
                    f'wire_api = "responses"\n')
        env = self.ctx.env_for(None)
        env.update(HOME=home, CODEX_HOME=codex_home, BENCH_API_KEY="bench-key")
        return ([self.binary, "exec", "--skip-git-repo-check",
                 "--dangerously-bypass-approvals-and-sandbox", "-C", repo, prompt], env, repo, None)


# -- installation -------------------------------------------------------------------------

def peers_dir(ctx):
    return os.path.join(ctx.root, "target", "bench-peers")


def installed(ctx):
    """(pi cli.js or None, codex binary or None, versions) of what is under target/."""
    base = os.path.join(peers_dir(ctx), "node_modules")
    pi = os.path.join(base, "@mariozechner", "pi-coding-agent", "dist", "cli.js")
    codex = sorted(glob.glob(os.path.join(base, "@openai", "codex-linux-*", "vendor", "*", "bin", "codex")) +
                   glob.glob(os.path.join(base, "@openai", "codex*", "vendor", "*", "codex", "codex")))
    versions = {}
    for name, pkg in (("pi", "@mariozechner/pi-coding-agent"), ("codex", "@openai/codex")):
        try:
            with open(os.path.join(base, pkg, "package.json")) as f:
                versions[name] = json.load(f)["version"]
        except (OSError, ValueError, KeyError):
            pass
    return (pi if os.path.exists(pi) else None), (codex[0] if codex else None), versions


def install(ctx):
    """Installs the pinned peers if missing; returns {name: error} for what could not be had."""
    errors = {}
    pi, codex, versions = installed(ctx)
    wanted = [pkg for pkg, have, name in ((PI_PACKAGE, pi, "pi"), (CODEX_PACKAGE, codex, "codex"))
              if not have or versions.get(name) != pkg.rsplit("@", 1)[1]]
    if wanted and not ctx.smoke:
        if not shutil.which("npm"):
            return {"pi": "npm is not installed", "codex": "npm is not installed"}
        os.makedirs(peers_dir(ctx), exist_ok=True)
        try:
            r = subprocess.run(["nice", "-n", "10", "npm", "install", "--no-audit", "--no-fund",
                                "--prefix", peers_dir(ctx)] + wanted,
                               capture_output=True, text=True, timeout=600)
            failed = r.returncode != 0
            msg = " ".join((r.stderr or r.stdout).strip().splitlines()[-3:])
        except subprocess.TimeoutExpired:
            failed, msg = True, "npm did not finish within 600 s"
        if failed:
            for pkg in wanted:
                errors["pi" if "pi-coding" in pkg else "codex"] = f"`npm install {pkg}` failed: {msg}"
    pi, codex, versions = installed(ctx)
    if not pi:
        errors.setdefault("pi", "not installed (smoke runs do not install)" if ctx.smoke else "not found after npm install")
    elif not shutil.which("node"):
        errors["pi"] = "node is not installed"
    if not codex:
        errors.setdefault("codex", "not installed (smoke runs do not install)" if ctx.smoke
                          else "native binary not found under node_modules/@openai/codex-linux-*")
    return errors


# -- measurements -------------------------------------------------------------------------

def measure_launch(agent, server, runs, timeout):
    times = []
    for i in range(runs):
        n = len(server.arrivals) + 1
        p = agent.launch(server, f"launch{i}", IDLE_PROMPT)
        try:
            t = server.wait_arrivals(n, timeout=timeout)
        except TimeoutError:
            raise RuntimeError(f"{agent.name}: no model request within {timeout} s: {log_tail(p)}")
        finally:
            kill_tree(p)
        times.append(t - p.bench_t0)
    return statistics.median(times), min(times)


def measure_idle(agent, server, copies, settle, timeout):
    n = len(server.arrivals)
    first = agent.launch(server, "idle0", IDLE_PROMPT)
    procs = [first]
    try:
        try:
            server.wait_arrivals(n + 1, timeout=timeout)
        except TimeoutError:
            raise RuntimeError(f"{agent.name}: no model request within {timeout} s: {log_tail(first)}")
        time.sleep(settle)
        rss1, pss1 = proc.tree_mem(first.pid)
        n = len(server.arrivals)
        procs += [agent.launch(server, f"idle{i}", IDLE_PROMPT) for i in range(1, copies)]
        server.wait_arrivals(n + copies - 1, timeout=timeout + 2 * copies)
        time.sleep(settle)
        mems = [proc.tree_mem(p.pid) for p in procs]
        total = sum(m[1] for m in mems)
        return {"rss1": rss1, "pss1": pss1, "extra_pss": (total - pss1) / max(1, copies - 1),
                "total_pss": total, "rss_median": statistics.median(m[0] for m in mems)}
    finally:
        for p in procs:
            kill_tree(p)


def measure_task(agent, runs, timeout):
    cpus, peaks = [], []
    for i in range(runs):
        server = FakeLLM("script")
        try:
            p = agent.launch(server, f"task{i}", TASK_PROMPT, timed=True)
            deadline = time.monotonic() + timeout
            sampled = 0  # peak of the tree's summed RSS, where GNU time is missing
            while True:
                pid, status, usage = os.wait4(p.pid, os.WNOHANG)
                if pid:
                    break
                if time.monotonic() > deadline:
                    kill_tree(p)
                    raise RuntimeError(f"{agent.name}: the scripted task took over {timeout} s: {log_tail(p)}")
                if not p.bench_rusage:
                    sampled = max(sampled, proc.tree_mem(p.pid)[0])
                time.sleep(0.002)
            p.returncode = os.waitstatus_to_exitcode(status)
            tail = log_tail(p)
            p.bench_log.close()
            result = os.path.join(p.bench_repo, "result.txt")
            ok = os.path.exists(result) and open(result).read().strip() == "done"
            if p.returncode != 0 or not ok or server.errors:
                raise RuntimeError(f"{agent.name}: scripted task failed (exit {p.returncode}, "
                                   f"result.txt {'ok' if ok else 'missing'}, {len(server.requests)} "
                                   f"model requests, server: {server.errors}): {tail}")
            # CPU from wait4 (microseconds; GNU time's own share is negligible), peak from time.
            cpus.append(usage.ru_utime + usage.ru_stime)
            if p.bench_rusage:
                with open(p.bench_rusage) as f:
                    peaks.append(int(f.read().split()[-1]) * 1024)
            else:
                peaks.append(sampled)
        finally:
            server.close()
    return {"cpu": statistics.median(cpus), "peak_rss": max(peaks),
            "peak_how": "GNU time %M" if GNU_TIME else "sampled tree RSS"}


def run_peers(ctx, copies, launch_runs, task_runs, settle):
    """Results per agent name (a dict of figures, or {"error": why})."""
    errors = install(ctx)
    pi, codex, versions = installed(ctx)
    agents = [KugetsuWorker(ctx), KugetsuRun(ctx)]
    if "pi" not in errors:
        agents.append(Pi(ctx, pi))
    if "codex" not in errors:
        agents.append(Codex(ctx, codex))
    results = {name: {"error": why} for name, why in errors.items()}
    for agent in agents:
        server = FakeLLM("stall")
        try:
            r = {}
            r["launch"], r["launch_min"] = measure_launch(agent, server, launch_runs, timeout=30)
            r.update(measure_idle(agent, server, copies, settle, timeout=60))
            r.update(measure_task(agent, task_runs, timeout=120))
            r["version"] = versions.get(agent.name.split()[0], "")
            results[agent.name] = r
        except (RuntimeError, TimeoutError, OSError) as e:
            if agent.name.startswith("kugetsu"):
                raise
            results[agent.name] = {"error": str(e)}
        finally:
            server.close()
    for name in ("pi", "codex"):
        if name in results and name in versions:
            results[name]["version"] = versions[name]
    return results
