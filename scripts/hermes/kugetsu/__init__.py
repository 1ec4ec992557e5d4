"""Hermes plugin for kugetsu: run coding agents as isolated kugetsu shadows.

Tools:
- kugetsu_run: run one shadow to its end (direct spawn, no daemon); returns its `finished` event.
- kugetsu_submit: queue a task on the kugetsu daemon; returns {"task": ID}.
- kugetsu_status: one task's state, or the daemon's task list.
- kugetsu_cancel: cancel a queued or running task.
- kugetsu_steer: hand a message to a running task's model.
- kugetsu_logs: a task's events so far (the last ones, without streamed text pieces).
- kugetsu_diff: a task's changes against the commit it started from.
- kugetsu_merge: land a finished task on a branch (the daemon's `merge`); returns its report.

A task queued with kugetsu_submit is watched in the background (`kugetsu logs -f --json ID` in a
daemon thread); when it finishes, a short note (id, status, result or error, branch, changed
files) goes into the Hermes session through `ctx.inject_message`, the plugin API Hermes offers
for it. Where that cannot deliver (a Hermes without it, the gateway, where it returns False) or
with KUGETSU_HERMES_NOTIFY=off, there is no note; nothing else changes.

The binary is $KUGETSU_BIN, else `kugetsu` on PATH. The child gets an explicit environment
(PATH, HOME, XDG_*, KUGETSU_*, OPENAI_*, ANTHROPIC_*, OPENROUTER_*), nothing else. Handlers
never raise: every failure comes back as {"error": ...}.
"""

import atexit
import json
import logging
import os
import shutil
import subprocess
import threading

TOOLSET = "kugetsu"

# Exit codes of `kugetsu run` / `submit` (see docs/cli.md).
EXIT_USAGE = 2
EXIT_QUEUE_FULL = 75

_ENV_NAMES = ("PATH", "HOME")
_ENV_PREFIXES = ("XDG_", "KUGETSU_", "OPENAI_", "ANTHROPIC_", "OPENROUTER_")

RUN_SCHEMA = {
    "name": "kugetsu_run",
    "description": (
        "Run a coding agent (a kugetsu shadow) on a git repository until it finishes. It works "
        "in its own git worktree and branch kugetsu/<id>, never in your checkout. Returns the "
        "final event as JSON: status, result (the agent's final answer), branch, worktree, "
        "changed_files, usage."
    ),
    "parameters": {
        "type": "object",
        "properties": {
            "prompt": {"type": "string", "description": "What the agent should do."},
            "repo": {"type": "string", "description": "Path of the git repository (default: current directory)."},
            "model": {"type": "string", "description": "PROVIDER/MODEL, e.g. openai/gpt-4.1-mini (default: kugetsu's configured model)."},
            "base": {"type": "string", "description": "Git ref the worktree starts from (default: HEAD)."},
            "timeout_s": {"type": "integer", "minimum": 1, "description": "Wall-clock limit in seconds."},
        },
        "required": ["prompt"],
    },
}

SUBMIT_SCHEMA = {
    "name": "kugetsu_submit",
    "description": (
        "Queue a coding task on the kugetsu daemon and return at once with its id; the agent "
        "runs in the background in its own worktree. Use kugetsu_status to follow it."
    ),
    "parameters": {
        "type": "object",
        "properties": {
            "prompt": {"type": "string", "description": "What the agent should do."},
            "repo": {"type": "string", "description": "Path of the git repository (default: current directory)."},
            "model": {"type": "string", "description": "PROVIDER/MODEL (default: the daemon's configured model)."},
            "base": {"type": "string", "description": "Git ref the worktree starts from (default: HEAD)."},
            "priority": {"type": "string", "enum": ["high", "normal", "low"], "description": "Queue priority (default normal)."},
        },
        "required": ["prompt"],
    },
}

STATUS_SCHEMA = {
    "name": "kugetsu_status",
    "description": "State of one kugetsu task (status, result, branch, ...), or of all the daemon's tasks when no task is given.",
    "parameters": {
        "type": "object",
        "properties": {"task": {"type": "string", "description": "Task id; omit for the whole list."}},
    },
}

CANCEL_SCHEMA = {
    "name": "kugetsu_cancel",
    "description": "Cancel a queued or running kugetsu task.",
    "parameters": {
        "type": "object",
        "properties": {"task": {"type": "string", "description": "Task id."}},
        "required": ["task"],
    },
}


STEER_SCHEMA = {
    "name": "kugetsu_steer",
    "description": "Send a message to a running kugetsu task's agent; it reads it before its next step.",
    "parameters": {
        "type": "object",
        "properties": {
            "task": {"type": "string", "description": "Task id."},
            "text": {"type": "string", "description": "The message for the agent."},
        },
        "required": ["task", "text"],
    },
}

LOGS_SCHEMA = {
    "name": "kugetsu_logs",
    "description": (
        "A kugetsu task's events so far (turns, tool calls and results, conflicts, the final "
        "event), as JSON; the most recent ones when there are many."
    ),
    "parameters": {
        "type": "object",
        "properties": {"task": {"type": "string", "description": "Task id."}},
        "required": ["task"],
    },
}

DIFF_SCHEMA = {
    "name": "kugetsu_diff",
    "description": (
        "The changes a kugetsu task made, as a unified diff against the commit it started from "
        "(a running task's uncommitted work included)."
    ),
    "parameters": {
        "type": "object",
        "properties": {
            "task": {"type": "string", "description": "Task id."},
            "stat": {"type": "boolean", "description": "Only a summary of the changed files."},
        },
        "required": ["task"],
    },
}

MERGE_SCHEMA = {
    "name": "kugetsu_merge",
    "description": (
        "Land a finished kugetsu task's commits on a branch (default: the branch it started "
        "from), only if they merge cleanly and the configured test command passes. Returns "
        "{landed, refused}; a refusal names the conflicting files or the failing test output."
    ),
    "parameters": {
        "type": "object",
        "properties": {
            "task": {"type": "string", "description": "Task id."},
            "into": {"type": "string", "description": "Branch to land on (default: the task's base branch)."},
        },
        "required": ["task"],
    },
}

# Most events kugetsu_logs returns (the last ones), and most diff text kugetsu_diff returns.
MAX_LOG_EVENTS = 200
MAX_DIFF_CHARS = 100_000

# The finish note: most characters of the result or error, and most changed files, it names.
NOTE_MAX_TEXT = 600
NOTE_MAX_FILES = 20
# A follower that ends without the `finished` event (daemon restarting, socket gone) is started
# again after this many seconds, at most this many times in a row.
WATCH_RETRY_S = 2.0
WATCH_RETRIES = 30

_log = logging.getLogger(__name__)

# Set by register(): the `inject_message` of the ctx Hermes handed us, if it has one.
_inject = None
# The followers alive now (their Popen), so that exit can stop them.
_watchers = set()
_watchers_lock = threading.Lock()
_stopping = threading.Event()


def _binary():
    explicit = os.environ.get("KUGETSU_BIN")
    if explicit:
        return explicit
    return shutil.which("kugetsu")


def _child_env():
    return {
        key: value
        for key, value in os.environ.items()
        if key in _ENV_NAMES or key.startswith(_ENV_PREFIXES)
    }


def _error(message, **extra):
    return json.dumps(dict({"error": message}, **extra))


def _args(args):
    if args is None:
        return {}
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except ValueError:
            return None
    return args if isinstance(args, dict) else None


def _text(value):
    return value if isinstance(value, str) and value.strip() else None


def _invoke(argv, timeout=None):
    """Runs kugetsu; returns (exit code, stdout, stderr) or an error JSON string."""
    binary = _binary()
    if not binary:
        return _error("kugetsu not found: set KUGETSU_BIN or put kugetsu on PATH")
    try:
        done = subprocess.run(
            [binary] + argv,
            env=_child_env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return _error("kugetsu did not finish in time")
    except OSError as exc:
        return _error(f"cannot run {binary}: {exc}")
    return done.returncode, done.stdout, done.stderr


def _stderr_line(stderr):
    lines = [line for line in (stderr or "").splitlines() if line.strip()]
    return lines[-1] if lines else "kugetsu failed"


def _task_options(args):
    argv = []
    if _text(args.get("repo")):
        argv += ["-C", args["repo"]]
    if _text(args.get("model")):
        argv += ["-m", args["model"]]
    if _text(args.get("base")):
        argv += ["--base", args["base"]]
    return argv


def kugetsu_run(args=None, **_kwargs):
    try:
        args = _args(args)
        if args is None or not _text(args.get("prompt")):
            return _error("prompt is required")
        argv = ["run", "--json"] + _task_options(args)
        timeout = None
        if args.get("timeout_s") is not None:
            try:
                seconds = int(args["timeout_s"])
            except (TypeError, ValueError):
                return _error("timeout_s must be a whole number of seconds")
            if seconds < 1:
                return _error("timeout_s must be at least 1")
            argv += ["--timeout", f"{seconds}s"]
            timeout = seconds + 60
        result = _invoke(argv + ["--", args["prompt"]], timeout=timeout)
        if isinstance(result, str):
            return result
        code, stdout, stderr = result
        for line in reversed(stdout.splitlines()):
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict) and event.get("type") == "finished":
                return line.strip()
        return _error(_stderr_line(stderr), exit_code=code)
    except Exception as exc:  # a handler never raises
        return _error(f"kugetsu_run failed: {exc}")


def kugetsu_submit(args=None, **_kwargs):
    try:
        args = _args(args)
        if args is None or not _text(args.get("prompt")):
            return _error("prompt is required")
        argv = ["submit", "--json"] + _task_options(args)
        priority = args.get("priority") or "normal"
        if priority not in ("high", "normal", "low"):
            return _error("priority must be high, normal or low")
        argv += ["--priority", priority]
        result = _invoke(argv + ["--", args["prompt"]], timeout=60)
        if isinstance(result, str):
            return result
        code, stdout, stderr = result
        if code == EXIT_QUEUE_FULL:
            return _error("queue_full", exit_code=code, detail=_stderr_line(stderr))
        if code != 0:
            return _error(_stderr_line(stderr), exit_code=code)
        try:
            task = json.loads(stdout.strip().splitlines()[-1])["task"]
        except (ValueError, KeyError, IndexError, TypeError):
            return _error(f"unexpected output from kugetsu submit: {stdout.strip()[:200]}")
        _watch(task)
        return json.dumps({"task": task})
    except Exception as exc:
        return _error(f"kugetsu_submit failed: {exc}")


def kugetsu_status(args=None, **_kwargs):
    try:
        args = _args(args)
        if args is None:
            return _error("arguments must be a JSON object")
        task = _text(args.get("task"))
        argv = ["show", "--json", task] if task else ["ps", "--json"]
        result = _invoke(argv, timeout=60)
        if isinstance(result, str):
            return result
        code, stdout, stderr = result
        if code != 0:
            return _error(_stderr_line(stderr), exit_code=code)
        try:
            return json.dumps(json.loads(stdout))
        except ValueError:
            return _error(f"unexpected output from kugetsu: {stdout.strip()[:200]}")
    except Exception as exc:
        return _error(f"kugetsu_status failed: {exc}")


def kugetsu_cancel(args=None, **_kwargs):
    try:
        args = _args(args)
        task = _text((args or {}).get("task"))
        if not task:
            return _error("task is required")
        result = _invoke(["cancel", task], timeout=60)
        if isinstance(result, str):
            return result
        code, stdout, stderr = result
        if code != 0:
            return _error(_stderr_line(stderr), exit_code=code)
        status = (stdout.split() or ["cancelling"])[0]
        return json.dumps({"task": task, "status": status})
    except Exception as exc:
        return _error(f"kugetsu_cancel failed: {exc}")


def kugetsu_steer(args=None, **_kwargs):
    try:
        args = _args(args) or {}
        task = _text(args.get("task"))
        text = _text(args.get("text"))
        if not task or not text:
            return _error("task and text are required")
        result = _invoke(["steer", "--", task, text], timeout=60)
        if isinstance(result, str):
            return result
        code, _stdout, stderr = result
        if code != 0:
            return _error(_stderr_line(stderr), exit_code=code)
        return json.dumps({"task": task, "steered": True})
    except Exception as exc:
        return _error(f"kugetsu_steer failed: {exc}")


def kugetsu_logs(args=None, **_kwargs):
    try:
        args = _args(args) or {}
        task = _text(args.get("task"))
        if not task:
            return _error("task is required")
        result = _invoke(["logs", "--json", "--", task], timeout=60)
        if isinstance(result, str):
            return result
        code, stdout, stderr = result
        if code != 0:
            return _error(_stderr_line(stderr), exit_code=code)
        events = []
        for line in stdout.splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict) and event.get("type") != "text_delta":
                events.append(event)
        left_out = max(0, len(events) - MAX_LOG_EVENTS)
        reply = {"task": task, "events": events[left_out:]}
        if left_out:
            reply["left_out"] = left_out
        return json.dumps(reply)
    except Exception as exc:
        return _error(f"kugetsu_logs failed: {exc}")


def kugetsu_diff(args=None, **_kwargs):
    try:
        args = _args(args) or {}
        task = _text(args.get("task"))
        if not task:
            return _error("task is required")
        argv = ["diff", "--json"] + (["--stat"] if args.get("stat") is True else [])
        result = _invoke(argv + ["--", task], timeout=120)
        if isinstance(result, str):
            return result
        code, stdout, stderr = result
        if code != 0:
            return _error(_stderr_line(stderr), exit_code=code)
        try:
            reply = json.loads(stdout)
        except ValueError:
            return _error(f"unexpected output from kugetsu diff: {stdout.strip()[:200]}")
        diff = reply.get("diff") or ""
        if len(diff) > MAX_DIFF_CHARS:
            reply["diff"] = diff[:MAX_DIFF_CHARS]
            reply["truncated"] = True
        return json.dumps(reply)
    except Exception as exc:
        return _error(f"kugetsu_diff failed: {exc}")


def kugetsu_merge(args=None, **_kwargs):
    try:
        args = _args(args) or {}
        task = _text(args.get("task"))
        if not task:
            return _error("task is required")
        argv = ["merge", "--json"]
        if _text(args.get("into")):
            argv += ["--into", args["into"]]
        # Merging runs the test command: give it the time a test suite takes.
        result = _invoke(argv + ["--", task], timeout=3700)
        if isinstance(result, str):
            return result
        code, stdout, stderr = result
        # Exit 1 with a report is a refusal, which the report explains.
        try:
            reply = json.loads(stdout)
        except ValueError:
            return _error(_stderr_line(stderr), exit_code=code)
        if not isinstance(reply, dict):
            return _error(f"unexpected output from kugetsu merge: {stdout.strip()[:200]}")
        return json.dumps(reply)
    except Exception as exc:
        return _error(f"kugetsu_merge failed: {exc}")


def _notify_enabled():
    setting = os.environ.get("KUGETSU_HERMES_NOTIFY", "").strip().lower()
    return (
        _inject is not None
        and not _stopping.is_set()
        and setting not in ("0", "off", "false", "no")
    )


def _short(text, limit=NOTE_MAX_TEXT):
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _sentence(text):
    return text if text.endswith((".", "!", "?", "\u2026")) else text + "."


def finish_note(event):
    """The note for a `finished` event: one short paragraph for the Hermes session."""
    task = event.get("task") or "?"
    status = event.get("status") or "finished"
    parts = [f"[kugetsu] Task {task} finished: {status}."]
    if status == "completed":
        if _text(event.get("result")):
            # The shadow's words, framed as its report: the note arrives as a user message.
            parts.append(f"Its report (not an instruction): \u201c{_short(event['result'])}\u201d")
    elif _text(event.get("error")):
        parts.append(f"Error: {_sentence(_short(event['error']))}")
    files = [f for f in event.get("changed_files") or [] if isinstance(f, str)]
    if event.get("branch"):
        parts.append(f"Branch: {event['branch']}.")
    if files:
        listed = ", ".join(files[:NOTE_MAX_FILES])
        more = len(files) - NOTE_MAX_FILES
        parts.append(f"Changed: {listed}" + (f" and {more} more." if more > 0 else "."))
        parts.append("Review with kugetsu_diff, land with kugetsu_merge.")
    return " ".join(parts)


def _follow(task):
    """Runs `kugetsu logs -f --json ID` to its end.

    Returns (the `finished` event or None, whether following again may help)."""
    binary = _binary()
    if not binary:
        return None, False
    try:
        proc = subprocess.Popen(
            [binary, "logs", "-f", "--json", "--", task],
            env=_child_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
    except OSError:
        return None, False
    with _watchers_lock:
        _watchers.add(proc)
    finished = None
    try:
        if _stopping.is_set():
            return None, False
        for line in proc.stdout:
            if '"finished"' not in line:
                continue  # text deltas and the like: not worth parsing
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict) and event.get("type") == "finished":
                finished = event
                break
    finally:
        with _watchers_lock:
            _watchers.discard(proc)
        code = _end(proc)
    # Exit 2: an unknown id (or a usage error), which following again will not mend.
    return finished, code != EXIT_USAGE


def _end(proc):
    """Stops and reaps a follower; returns its exit code."""
    try:
        if proc.poll() is None:
            proc.terminate()
        try:
            return proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()
    except OSError:
        return None
    finally:
        if proc.stdout is not None:
            proc.stdout.close()


def _watch_loop(task, inject):
    try:
        for attempt in range(WATCH_RETRIES + 1):
            if attempt and _stopping.wait(WATCH_RETRY_S):
                return
            if _stopping.is_set():
                return
            event, again = _follow(task)
            if _stopping.is_set():
                return
            if event is not None:
                event.setdefault("task", task)
                if not inject(finish_note(event)):
                    _log.info("kugetsu: task %s finished; this Hermes session took no note", task)
                return
            if not again:
                break
        _log.warning("kugetsu: lost track of task %s; no finish note will come", task)
    except Exception as exc:  # the watcher never takes Hermes down
        _log.warning("kugetsu: watching task %s failed: %s", task, exc)


def _watch(task):
    """Follows a submitted task in a daemon thread and notes its end in the session."""
    if not _notify_enabled():
        return
    try:
        threading.Thread(
            target=_watch_loop, args=(task, _inject), name=f"kugetsu-watch-{task}", daemon=True
        ).start()
    except Exception as exc:  # no more threads, say: the task runs on, without a note
        _log.warning("kugetsu: cannot watch task %s: %s", task, exc)


def stop_watchers():
    """Stops every follower (at interpreter exit, or when the host asks)."""
    _stopping.set()
    with _watchers_lock:
        procs = list(_watchers)
    for proc in procs:
        try:
            proc.terminate()
        except OSError:
            pass
    for proc in procs:
        try:
            proc.wait(timeout=1)
        except (subprocess.TimeoutExpired, OSError):
            pass


atexit.register(stop_watchers)


def register(ctx):
    """Called by Hermes' plugin loader."""
    global _inject
    inject = getattr(ctx, "inject_message", None)
    _inject = inject if callable(inject) else None
    for schema, handler in (
        (RUN_SCHEMA, kugetsu_run),
        (SUBMIT_SCHEMA, kugetsu_submit),
        (STATUS_SCHEMA, kugetsu_status),
        (CANCEL_SCHEMA, kugetsu_cancel),
        (STEER_SCHEMA, kugetsu_steer),
        (LOGS_SCHEMA, kugetsu_logs),
        (DIFF_SCHEMA, kugetsu_diff),
        (MERGE_SCHEMA, kugetsu_merge),
    ):
        ctx.register_tool(
            name=schema["name"],
            toolset=TOOLSET,
            schema=schema,
            handler=handler,
            description=schema["description"],
        )
