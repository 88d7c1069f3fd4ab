"""HTTP mode for production: Bolt's ASGI adapter served by uvicorn.

    flywheel bot --http --port 3000      # POST https://<host>:3000/slack/events (SLACK_SIGNING_SECRET)

Bolt's App verifies every request before any listener sees it (`RequestVerification` middleware,
on because the app has a signing secret): a missing or wrong `X-Slack-Signature`, or an
`X-Slack-Request-Timestamp` more than five minutes away from now (a replayed request), is answered
401. uvicorn replaces Bolt's development server (`http.server`, one request at a time, no
keep-alive tuning, not meant for traffic); TLS is expected to end at a proxy in front of it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import uvicorn
from slack_bolt import App, BoltRequest, BoltResponse
from slack_bolt.adapter.asgi import SlackRequestHandler
from slack_bolt.adapter.asgi.http_request import AsgiHttpRequest

MAX_BODY_BYTES = 1 << 20  # Slack's payloads are a few kB; a bigger body is not from Slack


class ThreadedSlackRequestHandler(SlackRequestHandler):
    """Bolt's ASGI handler, but `App.dispatch` runs in a worker thread: it is synchronous (it waits
    for `ack()` of commands and actions), and on the event loop it would serialise every request."""

    async def dispatch(self, request: AsgiHttpRequest) -> BoltResponse:
        headers = request.get_headers()
        declared = str(headers.get("content-length") or "0")
        if not declared.isdigit() or int(declared) > MAX_BODY_BYTES:  # refuse before reading it
            return BoltResponse(status=413, body="payload too large")
        bolt_request = BoltRequest(body=await request.get_raw_body(), query=request.query_string, headers=headers)
        return await asyncio.to_thread(self.app.dispatch, bolt_request)


class HttpServer:
    """uvicorn serving one Bolt app at `path`; `start(block=False)` runs it on a thread (tests, the CLI
    runs it blocking so Ctrl-C and SIGTERM stop it the way uvicorn handles them)."""

    def __init__(self, app: App, host: str, port: int, path: str) -> None:
        config = uvicorn.Config(
            ThreadedSlackRequestHandler(app, path=path),
            host=host,
            port=port,
            lifespan="off",
            access_log=False,  # request lines carry nothing useful and the logs stay free of payloads
            log_config=None,   # keep the application's logging set-up
            server_header=False,
        )
        self.server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    def start(self, block: bool = True, timeout: float = 15.0) -> None:
        if block:
            self.server.run()
            return
        self._thread = threading.Thread(target=self.server.run, name="flywheel-http", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:  # bound and listening: a caller may connect at once
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the HTTP server did not start (is the port in use?)")
            time.sleep(0.02)

    @property
    def port(self) -> int | None:
        servers: list[Any] = getattr(self.server, "servers", []) or []
        for server in servers:
            for sock in server.sockets or []:
                return int(sock.getsockname()[1])
        return None

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
