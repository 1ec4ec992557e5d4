"""Local fake LLM servers for scripts/bench.

One class, `FakeLLM`, an HTTP/1.1 server on 127.0.0.1 run by a selector loop in a thread. It
records when each request's head arrived (the moment a client "asked the model") and then
behaves according to its mode:

- "stall": never answers; the client sits where an idle shadow sits, waiting on the model.
- "stream": answers a chat completions request with text deltas (one per SSE event) as fast
  as the client reads them. A turn ends after `turn_bytes` of text: with a `bash` tool call
  (`true`) while `continue_turns` is set and the deadline is ahead, so the shadow asks again,
  else with `finish_reason: stop`. Once `deadline` (monotonic; movable) has passed, or
  `max_deltas` have been sent in all, every turn ends at once with `stop`: the stream is
  endless-ish but cannot run away with the disk. With `hold`, requests wait unanswered until
  `release()`, so many clients can start streaming at the same moment.
- "script": a short scripted task, the same for every agent: two shell tool calls, then a
  final answer. The step is read from the request (how many tool results it carries), so the
  server keeps no per-conversation state. Speaks chat completions (`/chat/completions`) and
  the Responses API (`/responses`), choosing a shell tool among those the request offers.

With `limit=(rpm, burst)` the key is rate limited the way providers do it: a token bucket of
`burst` requests refilled at `rpm` a minute; every response carries OpenAI's
`x-ratelimit-{limit,remaining,reset}-requests` headers and a request over the limit gets a
429 with `retry-after` / `retry-after-ms` (counted in `throttled`; `served` counts the rest).

Any GET (e.g. a model list) gets an empty list; other paths get 404.
"""
import json, selectors, socket, threading, time

DELTA_TEXT = "streamed text. "
# Shell commands of the scripted task, in order; the final answer follows them.
SCRIPT_COMMANDS = ["cat notes.txt", "echo done > result.txt"]
SCRIPT_ANSWER = "Done: result.txt written."


def sse_chat(obj):
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def sse_named(obj):
    return f"event: {obj['type']}\n".encode() + sse_chat(obj)


class Conn:
    def __init__(self, sock):
        self.sock = sock
        self.buf = b""
        self.head_seen = False
        self.out = b""  # bytes waiting to be written
        self.stream = None  # state of an endless-ish text stream
        self.close_after = False


class FakeLLM:
    def __init__(self, mode="stall", turn_bytes=64 << 10, stream_seconds=30.0, continue_turns=False,
                 max_deltas=4_000_000, batch=16, hold=False, limit=None):
        assert mode in ("stall", "stream", "script")
        self.mode = mode
        self.turn_bytes = turn_bytes
        self.deadline = time.monotonic() + stream_seconds
        self.continue_turns = continue_turns
        self.max_deltas = max_deltas
        self.batch = batch  # text deltas per write
        self.hold = hold
        self.held = []  # stream requests waiting for release(), touched by the loop only
        self.release_asked = False
        self.limit = limit  # (rpm, burst) or None
        if limit:
            self.level, self.level_at = float(limit[1]), time.monotonic()
        self.throttled = 0
        self.served_at = []  # monotonic times of requests answered within the limit
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4096)
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.arrivals = []  # monotonic times of complete request heads
        self.requests = []  # (path, parsed JSON body or None) of complete POSTs
        self.deltas_sent = 0
        self.streams_finished = 0
        self.errors = []  # what the server could not make sense of
        self.cond = threading.Condition()
        self.sel = selectors.DefaultSelector()
        self.conns = {}
        self.stopped = False
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    # -- public -------------------------------------------------------------------------

    def wait_arrivals(self, n, timeout=30):
        """Time of the n-th request head; raises if fewer than n arrive in time."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while len(self.arrivals) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"only {len(self.arrivals)} of {n} model requests arrived")
                self.cond.wait(left)
            return self.arrivals[n - 1]

    def release(self):
        """Starts every held stream (at the loop's next turn, within 0.2 s)."""
        self.release_asked = True

    def open_connections(self):
        return len(self.conns)

    def close(self):
        self.stopped = True
        self.thread.join(timeout=5)

    # -- loop ---------------------------------------------------------------------------

    def _loop(self):
        self.sel.register(self.sock, selectors.EVENT_READ, None)
        while not self.stopped:
            if self.release_asked and self.hold:
                self.hold = False
                for conn in self.held:
                    if conn.sock.fileno() >= 0:
                        self._start_stream(conn)
                self.held = []
            for key, events in self.sel.select(timeout=0.2):
                if key.data is None:
                    try:
                        self._accept()
                    except OSError as e:  # e.g. out of file descriptors: say so, keep serving
                        if len(self.errors) < 100:
                            self.errors.append(f"accept: {e}")
                        time.sleep(0.01)
                    continue
                conn = key.data
                try:
                    if events & selectors.EVENT_READ:
                        self._read(conn)
                    if conn.sock.fileno() >= 0 and events & selectors.EVENT_WRITE:
                        self._write(conn)
                except OSError:
                    self._drop(conn)
                except Exception as e:  # a request this server cannot parse must not stop it
                    if len(self.errors) < 100:
                        self.errors.append(f"{type(e).__name__}: {e}")
                    self._drop(conn)
        for conn in list(self.conns.values()):
            self._drop(conn)
        self.sel.close()
        self.sock.close()

    def _accept(self):
        while True:
            try:
                sock, _ = self.sock.accept()
            except BlockingIOError:
                return
            sock.setblocking(False)
            conn = Conn(sock)
            self.conns[sock.fileno()] = conn
            self.sel.register(sock, selectors.EVENT_READ, conn)

    def _drop(self, conn):
        fd = conn.sock.fileno()
        if fd >= 0:
            self.conns.pop(fd, None)
            try:
                self.sel.unregister(conn.sock)
            except (KeyError, ValueError):
                pass
            conn.sock.close()

    def _want_write(self, conn, on):
        mask = selectors.EVENT_READ | (selectors.EVENT_WRITE if on else 0)
        self.sel.modify(conn.sock, mask, conn)

    def _read(self, conn):
        data = conn.sock.recv(262144)
        if not data:
            self._drop(conn)
            return
        if len(conn.buf) < (16 << 20):
            conn.buf += data
        while True:
            end = conn.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            if not conn.head_seen:
                conn.head_seen = True
                with self.cond:
                    self.arrivals.append(time.monotonic())
                    self.cond.notify_all()
            head = conn.buf[:end].decode("latin-1")
            body_start = end + 4
            lines = head.split("\r\n")
            method, path = (lines[0].split(" ") + ["", ""])[:2]
            headers = {}
            for line in lines[1:]:
                k, _, v = line.partition(":")
                headers[k.strip().lower()] = v.strip()
            if "chunked" in headers.get("transfer-encoding", "").lower():
                body, used = _dechunk(conn.buf, body_start)
                if body is None:
                    return  # wait for the rest
            else:
                length = int(headers.get("content-length", "0") or 0)
                if len(conn.buf) < body_start + length:
                    return
                body, used = conn.buf[body_start:body_start + length], body_start + length
            conn.buf = conn.buf[used:]
            conn.head_seen = False
            self._handle(conn, method, path, headers, body)

    def _handle(self, conn, method, path, headers, body):
        if method == "GET":
            self._respond_json(conn, 200, {"object": "list", "data": []})
            return
        if method != "POST":
            self._respond_json(conn, 404, {"error": {"message": "not found"}})
            return
        parsed = None
        if headers.get("content-encoding"):
            self.errors.append(f"compressed request body ({headers['content-encoding']}) on {path}")
        else:
            try:
                parsed = json.loads(body) if body else None
            except ValueError:
                self.errors.append(f"request body on {path} is not JSON")
        with self.cond:
            self.requests.append((path, parsed))
        if self.mode == "stall":
            return
        if self.mode == "stream":
            if self.hold:
                self.held.append(conn)
            else:
                self._start_stream(conn)
            return
        limit_headers = b""
        if self.limit:
            rpm, burst = self.limit
            now = time.monotonic()
            self.level = min(float(burst), self.level + (now - self.level_at) * rpm / 60.0)
            self.level_at = now
            admitted = self.level >= 1.0
            if admitted:
                self.level -= 1.0
            wait = 0.0 if admitted else (1.0 - self.level) * 60.0 / rpm
            reset = (burst - self.level) * 60.0 / rpm
            limit_headers = (f"x-ratelimit-limit-requests: {rpm}\r\n"
                             f"x-ratelimit-remaining-requests: {int(max(self.level, 0))}\r\n"
                             f"x-ratelimit-reset-requests: {reset:.3f}s\r\n").encode()
            if not admitted:
                self.throttled += 1
                body = json.dumps({"error": {"message": "Rate limit reached for requests",
                                             "type": "requests", "code": "rate_limit_exceeded"}}).encode()
                conn.out += (f"HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\n"
                             f"retry-after: {max(1, int(wait + 0.999))}\r\n"
                             f"retry-after-ms: {max(1, int(wait * 1000 + 0.999))}\r\n"
                             f"content-length: {len(body)}\r\nconnection: close\r\n").encode() \
                    + limit_headers + b"\r\n" + body
                conn.close_after = True
                self._want_write(conn, True)
                return
            with self.cond:
                self.served_at.append(now)
        if path.endswith("/responses"):
            events = self._script_responses(parsed or {})
        elif path.endswith("/chat/completions"):
            events = self._script_chat(parsed or {})
        else:
            self._respond_json(conn, 404, {"error": {"message": f"no such endpoint {path}"}})
            return
        conn.out += (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                     b"cache-control: no-cache\r\nconnection: close\r\n" + limit_headers
                     + b"\r\n" + events)
        conn.close_after = True
        self._want_write(conn, True)

    def _start_stream(self, conn):
        conn.stream = {"t0": time.monotonic(), "sent": 0, "done": False}
        conn.out += (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                     b"cache-control: no-cache\r\nconnection: close\r\n\r\n")
        self._want_write(conn, True)

    def _respond_json(self, conn, status, obj):
        body = json.dumps(obj).encode()
        reason = {200: "OK", 404: "Not Found"}[status]
        conn.out += (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
                     f"content-length: {len(body)}\r\n\r\n").encode() + body
        self._want_write(conn, True)

    def _write(self, conn):
        if conn.stream is not None and not conn.stream["done"] and len(conn.out) < 65536:
            conn.out += self._stream_chunk(conn.stream)
        if conn.out:
            n = conn.sock.send(conn.out)
            conn.out = conn.out[n:]
        if not conn.out:
            if conn.stream is not None and conn.stream["done"] or conn.close_after:
                self._drop(conn)
            elif conn.stream is None:
                self._want_write(conn, False)

    def _stream_chunk(self, st):
        out = []
        for _ in range(self.batch):
            out.append(sse_chat({"choices": [{"index": 0, "delta": {"content": DELTA_TEXT}}]}))
            st["sent"] += len(DELTA_TEXT)
        self.deltas_sent += self.batch
        over = time.monotonic() >= self.deadline or self.deltas_sent >= self.max_deltas
        if st["sent"] >= self.turn_bytes or over:
            st["done"] = True
            self.streams_finished += 1
            if self.continue_turns and not over:
                call = {"index": 0, "id": f"call_{self.streams_finished}", "type": "function",
                        "function": {"name": "bash", "arguments": json.dumps({"command": "true"})}}
                out.append(sse_chat({"choices": [{"index": 0, "delta": {"tool_calls": [call]}}]}))
                out.append(sse_chat({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}))
            else:
                out.append(sse_chat({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}))
            out.append(sse_chat({"choices": [], "usage": {"prompt_tokens": 10,
                                                          "completion_tokens": st["sent"] // 4,
                                                          "total_tokens": 10 + st["sent"] // 4}}))
            out.append(b"data: [DONE]\n\n")
        return b"".join(out)

    # -- the scripted task --------------------------------------------------------------

    @staticmethod
    def _shell_call(tool_names, command):
        """(tool name, JSON arguments) running `command` with whichever shell tool is offered."""
        if "bash" in tool_names:
            return "bash", {"command": command}
        if "exec_command" in tool_names:
            return "exec_command", {"cmd": command}
        if "shell_command" in tool_names:
            return "shell_command", {"command": command}
        if "shell" in tool_names:
            return "shell", {"command": ["bash", "-lc", command]}
        raise ValueError(f"no shell tool among {sorted(tool_names)}")

    def _script_chat(self, req):
        names = {t.get("function", {}).get("name") or t.get("name") for t in req.get("tools") or []}
        step = sum(1 for m in req.get("messages") or [] if m.get("role") == "tool")
        rid = f"chatcmpl-{len(self.requests)}"
        if step < len(SCRIPT_COMMANDS):
            try:
                name, args = self._shell_call(names, SCRIPT_COMMANDS[step])
            except ValueError as e:
                self.errors.append(str(e))
                name, args = "bash", {"command": SCRIPT_COMMANDS[step]}
            call = {"index": 0, "id": f"call_{step}", "type": "function",
                    "function": {"name": name, "arguments": json.dumps(args)}}
            chunks = [{"id": rid, "choices": [{"index": 0, "delta": {"role": "assistant", "tool_calls": [call]}}]},
                      {"id": rid, "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}]
        else:
            chunks = [{"id": rid, "choices": [{"index": 0, "delta": {"role": "assistant", "content": SCRIPT_ANSWER}}]},
                      {"id": rid, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}]
        chunks.append({"id": rid, "choices": [], "usage": {"prompt_tokens": 100, "completion_tokens": 10,
                                                            "total_tokens": 110}})
        return b"".join(sse_chat(c) for c in chunks) + b"data: [DONE]\n\n"

    def _script_responses(self, req):
        names = {t.get("name") for t in req.get("tools") or []}
        step = sum(1 for item in req.get("input") or []
                   if isinstance(item, dict) and item.get("type") in ("function_call_output", "custom_tool_call_output"))
        rid = f"resp_{len(self.requests)}"
        events = [{"type": "response.created", "response": {"id": rid}}]
        if step < len(SCRIPT_COMMANDS):
            try:
                name, args = self._shell_call(names, SCRIPT_COMMANDS[step])
            except ValueError as e:
                self.errors.append(str(e))
                name, args = "shell", {"command": ["bash", "-lc", SCRIPT_COMMANDS[step]]}
            item = {"type": "function_call", "id": f"fc_{step}", "call_id": f"call_{step}",
                    "name": name, "arguments": json.dumps(args)}
        else:
            item = {"type": "message", "role": "assistant", "id": f"msg_{step}",
                    "content": [{"type": "output_text", "text": SCRIPT_ANSWER}]}
        events.append({"type": "response.output_item.done", "output_index": 0, "item": item})
        events.append({"type": "response.completed",
                       "response": {"id": rid, "usage": {"input_tokens": 100, "input_tokens_details": None,
                                                         "output_tokens": 10, "output_tokens_details": None,
                                                         "total_tokens": 110}}})
        return b"".join(sse_named(e) for e in events)


def _dechunk(buf, start):
    """(body, end offset) of a chunked body starting at `start`, or (None, 0) if incomplete."""
    body, pos = b"", start
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None, 0
        size = int(buf[pos:eol].split(b";")[0] or b"0", 16)
        if size == 0:
            end = buf.find(b"\r\n", eol + 2)
            return (body, end + 2) if end >= 0 else (None, 0)
        if len(buf) < eol + 2 + size + 2:
            return None, 0
        body += buf[eol + 2:eol + 2 + size]
        pos = eol + 2 + size + 2
