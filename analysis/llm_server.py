"""A small OpenAI-compatible server around a local GGUF model (``/v1/models``,
``/v1/chat/completions``), so that ``llm:openai:...`` policies run against a real model here.

    python -m peerpreserve.analysis.llm_server [--model smollm2 | --model gguf:PATH]
        [--host 127.0.0.1] [--port 0] [--garbage K] [--stall K] [--stall-seconds S] [--control]

It prints ``serving MODEL on http://HOST:PORT/v1`` once the model is loaded (``--port 0``: a free
port, read from that line). Requests are answered one at a time (one model, one CPU thread).
For tests of the client's retries, it can misbehave on purpose: ``--garbage K`` answers the first
K chat requests with a malformed body (HTTP 200, not JSON); ``--stall K`` holds the first K (after
those) for ``--stall-seconds``, past a client's timeout, then answers 503. ``--control`` adds
``POST /v1/_control`` with ``{"garbage": K, "stall": K, "stall_seconds": S}``, which sets them
anew and restarts the count: one server for several tests, each its own misbehaviour.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

from peerpreserve.analysis.llm import (
    LLM_PREFIX,
    LLMSpecError,
    LocalModel,
    load_local,
    model_file,
    require_extra,
)
from peerpreserve.analysis.llm import parse_spec as parse_llm_spec


class _State:
    def __init__(
        self, name: str, model: LocalModel, garbage: int, stall: int, stall_s: float, control: bool
    ) -> None:
        self.name, self.model, self.control = name, model, control
        self.garbage, self.stall, self.stall_s = garbage, stall, stall_s
        self.requests = 0
        # One model, one thread: generation is serialised; only stalls overlap.
        self.lock = threading.Lock()
        self.count_lock = threading.Lock()


def _handler(state: _State) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read stdout
            pass

        def _send(self, status: int, body: bytes, kind: str = "application/json") -> None:
            # A client that gave up (its timeout) has closed the connection: nothing to send.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        def _json(self, status: int, payload: dict[str, Any]) -> None:
            self._send(status, json.dumps(payload).encode())

        def _error(self, status: int, message: str) -> None:
            self._json(status, {"error": {"message": message, "type": "invalid_request_error"}})

        def do_GET(self) -> None:
            if self.path.rstrip("/") != "/v1/models":
                return self._error(404, f"no route {self.path}")
            model = {"id": state.name, "object": "model", "created": 0, "owned_by": "peerpreserve"}
            self._json(200, {"object": "list", "data": [model]})

        def do_POST(self) -> None:
            if state.control and self.path.rstrip("/") == "/v1/_control":
                return self._control()
            if self.path.rstrip("/") != "/v1/chat/completions":
                return self._error(404, f"no route {self.path}")
            try:
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                messages = body["messages"]
                system = " ".join(m["content"] for m in messages if m["role"] == "system")
                user = "\n\n".join(m["content"] for m in messages if m["role"] == "user")
                max_tokens = int(body.get("max_tokens") or 64)
                temperature = float(body.get("temperature") or 0.0)
                seed = body.get("seed")
            except (ValueError, KeyError, TypeError) as exc:
                return self._error(400, f"bad request: {exc}")
            if body.get("model") != state.name:
                return self._error(404, f"model {body.get('model')!r} not served")
            with state.count_lock:
                state.requests += 1
                number = state.requests
            if number <= state.garbage:
                return self._send(200, b"<html>not json{", "application/json")
            if number <= state.garbage + state.stall:
                # Past the client's timeout nobody waits for an answer: spend no model time on it.
                time.sleep(state.stall_s)
                return self._error(503, "stalled on purpose (--stall)")
            rng = np.random.default_rng(seed)
            with state.lock:
                prompt = state.model.chat_prompt(system, user)
                ((text, prompt_tokens, completion_tokens),) = state.model.generate(
                    [prompt], max_tokens, temperature, rng
                )
            finish = "length" if completion_tokens >= max_tokens else "stop"
            self._json(
                200,
                {
                    "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": state.name,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": text},
                            "finish_reason": finish,
                        }
                    ],
                    "usage": {
                        "prompt_tokens": prompt_tokens,
                        "completion_tokens": completion_tokens,
                        "total_tokens": prompt_tokens + completion_tokens,
                    },
                },
            )

        def _control(self) -> None:
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                with state.count_lock:
                    state.garbage = int(body.get("garbage", 0))
                    state.stall = int(body.get("stall", 0))
                    state.stall_s = float(body.get("stall_seconds", state.stall_s))
                    state.requests = 0
            except (ValueError, TypeError, AttributeError) as exc:
                return self._error(400, f"bad control request: {exc}")
            self._json(200, {"garbage": state.garbage, "stall": state.stall})

    return Handler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m peerpreserve.analysis.llm_server")
    parser.add_argument("--model", default="smollm2", help="smollm2, or gguf:PATH")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0: a free port")
    parser.add_argument("--garbage", type=int, default=0, metavar="K")
    parser.add_argument("--stall", type=int, default=0, metavar="K")
    parser.add_argument("--stall-seconds", type=float, default=5.0, metavar="S")
    parser.add_argument("--control", action="store_true", help="add POST /v1/_control (tests)")
    args = parser.parse_args(argv)
    try:
        spec = parse_llm_spec(LLM_PREFIX + args.model)
        if spec is None or spec.backend != "local":
            raise LLMSpecError(f"--model {args.model!r}; allowed: smollm2, gguf:PATH")
        require_extra(spec.spec)
        model = load_local(str(model_file(spec)))
    except LLMSpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    name = args.model if not args.model.startswith("gguf:") else model.name
    state = _State(name, model, args.garbage, args.stall, args.stall_seconds, args.control)
    server = ThreadingHTTPServer((args.host, args.port), _handler(state))
    host, port = server.server_address[:2]
    print(f"serving {name} on http://{host}:{port}/v1", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
