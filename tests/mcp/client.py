"""An MCP client for `kugetsu mcp`, built on the official Python SDK (`mcp` on PyPI).

Used by tests/tests/suite/mcp_server.rs: it spawns the server with `mcp.client.stdio`, lists
its tools, then runs a plan of steps given as JSON (argv[1]):

    {"server": {"command": PATH, "args": [...], "cwd": DIR, "env": {...}},
     "steps": [STEP, ...]}

A step is one of
    {"tool": NAME, "arguments": {...}, "save": {"VAR": "FIELD"}}   call a tool
    {"tool": NAME, ..., "until": {"FIELD": [VALUES]}}              call it again until FIELD is one of VALUES
    {"tool": NAME, ..., "cancel_on": "PREFIX"}                     cancel the call at the first
                                                                   progress message starting with PREFIX
    {"write": PATH, "text": TEXT}                                  write a file (opens a test gate)
String arguments may name saved values as "$VAR". It prints one JSON object on stdout:
{"tools": [{"name", "inputSchema"}], "steps": [{"tool", "is_error", "text", "json",
"progress": [[n, message], ...], "cancelled", "protocol_error"}]}, and the progress and results
as a readable transcript on stderr.
"""

import json
import sys
import time

import anyio
from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.shared.exceptions import MCPError

# A step's calls wait this long at most (a shadow on a scripted model takes seconds).
STEP_TIMEOUT_S = 120


def say(text):
    print(text, file=sys.stderr, flush=True)


def substitute(value, saved):
    if isinstance(value, str) and value.startswith("$"):
        return saved.get(value[1:], value)
    if isinstance(value, dict):
        return {k: substitute(v, saved) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, saved) for v in value]
    return value


def field(data, path):
    for part in path.split("."):
        if isinstance(data, dict):
            data = data.get(part)
        elif isinstance(data, list) and part.lstrip("-").isdigit() and -len(data) <= int(part) < len(data):
            data = data[int(part)]
        else:
            return None
    return data


async def call(session, name, arguments, cancel_on=None):
    """Calls a tool; returns the step's record."""
    record = {"tool": name, "progress": [], "cancelled": False}

    async def on_progress(progress, total, message):
        record["progress"].append([progress, message])
        say(f"  progress {progress:g}: {message}")
        if cancel_on is not None and message and message.startswith(cancel_on):
            matched.set()

    matched = anyio.Event()
    result = None
    error = None

    async def run():
        nonlocal result, error
        try:
            result = await session.call_tool(name, arguments, progress_callback=on_progress)
        except MCPError as exc:
            error = exc

    with anyio.fail_after(STEP_TIMEOUT_S):
        async with anyio.create_task_group() as group:
            scope = anyio.CancelScope()

            async def guarded():
                with scope:
                    await run()
                matched.set()

            group.start_soon(guarded)
            await matched.wait()
            if result is None and error is None:
                # The SDK sends notifications/cancelled for a request its caller abandons.
                record["cancelled"] = True
                say(f"  cancelling the {name} call")
                scope.cancel()
    if error is not None:
        record["protocol_error"] = {"code": error.error.code, "message": error.error.message}
        say(f"  protocol error {error.error.code}: {error.error.message}")
    if result is not None:
        text = "".join(getattr(block, "text", "") for block in result.content)
        record["is_error"] = bool(result.is_error)
        record["text"] = text
        try:
            record["json"] = json.loads(text)
        except ValueError:
            record["json"] = None
        say(f"  {'ERROR' if result.is_error else 'result'}: {text[:600]}")
    return record


async def main():
    plan = json.loads(sys.argv[1])
    server = StdioServerParameters(**plan["server"])
    out = {"tools": [], "steps": []}
    saved = {}
    async with stdio_client(server) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            listed = await session.list_tools()
            out["tools"] = [{"name": t.name, "inputSchema": t.input_schema} for t in listed.tools]
            say("tools: " + ", ".join(t["name"] for t in out["tools"]))
            for step in plan["steps"]:
                if "write" in step:
                    with open(step["write"], "w") as f:
                        f.write(step["text"])
                    out["steps"].append({"write": step["write"]})
                    continue
                arguments = substitute(step.get("arguments", {}), saved)
                say(f"call {step['tool']} {json.dumps(arguments)}")
                until = step.get("until")
                deadline = time.monotonic() + STEP_TIMEOUT_S
                while True:
                    record = await call(session, step["tool"], arguments, step.get("cancel_on"))
                    if not until or time.monotonic() > deadline:
                        break
                    if all(field(record.get("json"), k) in v for k, v in until.items()):
                        break
                    await anyio.sleep(0.2)
                for var, path in step.get("save", {}).items():
                    saved[var] = field(record.get("json"), path)
                out["steps"].append(record)
    print(json.dumps(out))


anyio.run(main)
