"""A loopback fake of Anthropic's POST /v1/messages for the real anthropic SDK (point
`anthropic_base_url` at it): it answers with queued responses in turn and records every request.

    with fake_messages([(429, {"retry-after": "0"}, error), (200, {}, tool_use("record_scores", {...}))]) as (url, seen):
        ...  # Settings(anthropic_base_url=url, anthropic_api_key=SecretStr("sk-test"))
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

RATE_LIMITED = {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}
USAGE = {"input_tokens": 100, "output_tokens": 50, "cache_creation_input_tokens": 200, "cache_read_input_tokens": 0}


@contextmanager
def fake_messages(responses: list[tuple[int, dict, dict]]) -> Iterator[tuple[str, list[dict]]]:
    """POST /v1/messages answers with the queued (status, headers, body) in turn; records requests.
    Past the queue it answers 500 (without retry-after: a test that runs dry waits for the backoff)."""
    requests: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            requests.append({"path": self.path, "body": body})
            status, headers, payload = responses.pop(0) if responses else (500, {}, {"error": "no more"})
            data = json.dumps(payload).encode()
            self.send_response(status)
            for key, value in {"Content-Type": "application/json", **headers}.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", requests
    finally:
        server.shutdown()
        server.server_close()


def tool_use(name: str, tool_input: Any, usage: dict | None = None) -> dict:
    """A Messages API response whose only content is one call of tool `name`."""
    return {
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-6",
        "content": [{"type": "tool_use", "id": "toolu_1", "name": name, "input": tool_input}],
        "stop_reason": "tool_use", "stop_sequence": None, "usage": usage or USAGE,
    }
