"""A stateful fake Slack for end-to-end tests: Web API over HTTP plus Socket Mode over WebSocket.

The real slack-bolt app runs against it through the real slack_sdk clients, all on 127.0.0.1
(ports chosen by the OS), so tests exercise the exact code paths of production without a network:

    with FakeSlack() as fake:
        client = WebClient(token="xoxb-test", base_url=fake.api_url)
        app = App(client=client)                     # App calls auth.test here: start the fake first
        handler = SocketModeHandler(app, "xapp-test")
        handler.connect()                            # apps.connections.open -> ws://.../link/
        fake.mention("U123", "C0001", "<@UBOT> hello")
        fake.wait_for(lambda: fake.messages("C0001", include_bots=True)[1:])
        handler.close()

* Web API (`http.server`, one thread per request): every call is recorded (`calls()`); messages,
  reactions, threads, views and DMs are kept in memory and served back by the read methods.
  Tokens are judged by prefix like upstream's mock: `xoxb-` for the bot, `xapp-` for
  `apps.connections.open`, anything else is `invalid_auth`. Unknown methods answer `{"ok": true}`.
* Native streaming (`chat.startStream` / `appendStream` / `stopStream`, `markdown_text` or
  `markdown_text` chunks): the message's text only grows; every call's visible text is kept in
  `message["stream"]["texts"]`, and stopStream's blocks go under it. `FakeSlack(streaming=False)`
  rejects the three methods (error `stream_error`) like a workspace without agent features.
* Socket Mode (aiohttp on its own event-loop thread): sends `hello` on connect, records acks,
  delivers envelopes to the newest live connection and queues them while none is connected, the
  way Slack holds events across a reconnect. aiohttp answers the client's pings with pongs that
  echo the payload, which the builtin client needs to consider the connection fresh.
* Driving methods (`mention`, `dm`, `react`, `click`, `click_feedback`, `command`, ...) build the payloads Slack
  would send, store the user's message where Slack would, and return the envelope sent.
* The assistant view: `start_assistant_thread` opens a thread in the user's DM with the app (a root
  message of subtype `assistant_app_thread`, then `assistant_thread_started`), `assistant_message`
  is the user writing in it, `change_assistant_context` sends `assistant_thread_context_changed`.
  `assistant.threads.setStatus` / `setTitle` / `setSuggestedPrompts` are checked and recorded per
  thread (`assistant_thread()`); a status clears when the bot replies in the thread, as in Slack.
* Faults: `fail_next()` answers 429 + Retry-After (or a 5xx); `disconnect()` sends Slack's
  `disconnect` message, closes the socket, or drops the TCP connection.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import json
import threading
import time
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

from aiohttp import WSMsgType, web

MAX_TEXT_CHARS = 40_000
MAX_BLOCKS = 50
STREAM_CALL_CHARS = 12_000  # markdown text per chat.*Stream call
# Fields slack_sdk JSON-encodes inside form posts; decode them so tests see structures.
_JSON_FIELDS = ("blocks", "attachments", "view", "metadata", "chunks", "prompts")
_STREAM_METHODS = ("chat.startStream", "chat.appendStream", "chat.stopStream")

Json = dict[str, Any]


class _ApiError(Exception):
    """Raised by an API handler to answer `{"ok": false, "error": <message>}`."""


def _ts_key(ts: str) -> tuple[int, int]:
    sec, _, micro = ts.partition(".")
    return int(sec), int(micro or 0)


def _rich_text(text: str) -> list[Json]:
    """The `blocks` Slack attaches to user messages (simplified to a single text element)."""
    return [{"type": "rich_text", "block_id": uuid.uuid4().hex[:5],
             "elements": [{"type": "rich_text_section", "elements": [{"type": "text", "text": text}]}]}]


def _channel_type(channel: str) -> str:
    return {"D": "im", "G": "group"}.get(channel[:1], "channel")


def _parse_params(query: str, raw: bytes, content_type: str) -> Json:
    """Merge query string and body (JSON or form-encoded) into one dict, decoding JSON fields."""
    params: Json = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
    if raw:
        text = raw.decode("utf-8")
        if "json" in content_type or text.lstrip().startswith("{"):
            params.update(json.loads(text))
        elif "multipart" in content_type:
            params["_multipart"] = True  # file uploads are out of scope: accepted, not parsed
        else:
            params.update({k: v[-1] for k, v in parse_qs(text, keep_blank_values=True).items()})
    for key in _JSON_FIELDS:
        value = params.get(key)
        if isinstance(value, str) and value.strip()[:1] in ("[", "{"):
            try:
                params[key] = json.loads(value)
            except ValueError:
                pass  # leave it as sent; the handler will reject it if it matters
    return params


class FakeSlack:
    """In-memory Slack workspace with one bot; see the module docstring."""

    def __init__(self, bot_user_id: str = "UBOT", bot_id: str = "BBOT", team_id: str = "T0001",
                 app_id: str = "A0001", *, streaming: bool = True, stream_error: str = "not_allowed_token_type",
                 echo_events: bool = False) -> None:
        self.bot_user_id, self.bot_id, self.team_id, self.app_id = bot_user_id, bot_id, team_id, app_id
        # streaming=False: the workspace rejects chat.start/append/stopStream with `stream_error`, as one
        # without the app's agent features does (the bot must fall back to chat.postMessage + chat.update).
        self.streaming = streaming
        self.stream_error = stream_error
        self.echo_events = echo_events  # True: the bot's own DM posts come back as message events
        self.users: dict[str, Json] = {}  # users.info overrides, keyed by user id
        self.api_url = ""
        self.ws_url = ""
        self.connections = 0
        self._lock = threading.RLock()
        self._ids = itertools.count(1)
        self._last_micros = 0
        self._messages: list[Json] = []
        self._ephemerals: list[Json] = []
        self._calls: list[Json] = []
        self._acks: list[Json] = []
        self._envelopes: list[Json] = []
        self._responses: list[Json] = []
        self._response_urls: dict[str, Json] = {}  # id -> {"channel", "message_ts"}
        self._views: dict[str, Json] = {}
        self._home_views: dict[str, Json] = {}
        self._assistant_threads: dict[tuple[str, str], Json] = {}  # (channel, thread_ts) -> recorded state
        self._dm_channels: dict[str, str] = {}
        self._files: dict[str, Json] = {}       # files.info objects, keyed by file id
        self._file_data: dict[str, bytes] = {}  # what url_private_download serves, keyed by file id
        self._failures: dict[str, list[tuple[int, int]]] = {}
        # Owned by the event-loop thread only:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._sockets: list[web.WebSocketResponse] = []
        self._retiring: set[web.WebSocketResponse] = set()
        self._transports: dict[web.WebSocketResponse, Any] = {}
        self._pending: list[Json] = []
        self._tasks: set[asyncio.Task[Any]] = set()  # strong refs, so pending tasks are not collected
        self._httpd: ThreadingHTTPServer | None = None
        self._threads: list[threading.Thread] = []

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> FakeSlack:
        handler = type("_Handler", (_ApiHandler,), {"fake": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self.api_url = f"http://127.0.0.1:{self._httpd.server_address[1]}/api/"
        ready = threading.Event()
        # Daemon threads: a test that forgets stop() must not hang the pytest process.
        self._threads = [
            threading.Thread(target=self._httpd.serve_forever, args=(0.05,), name="fakeslack-http",
                             daemon=True),
            threading.Thread(target=self._run_loop, args=(ready,), name="fakeslack-ws", daemon=True)]
        for thread in self._threads:
            thread.start()
        if not ready.wait(10) or not self.ws_url:
            raise RuntimeError("FakeSlack: the Socket Mode server did not start")
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._loop is not None and self._loop.is_running():
            try:
                asyncio.run_coroutine_threadsafe(self._shutdown_ws(), self._loop).result(10)
            finally:
                self._loop.call_soon_threadsafe(self._loop.stop)
        for thread in self._threads:
            thread.join(10)
        self._threads = []

    def __enter__(self) -> FakeSlack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run_loop(self, ready: threading.Event) -> None:
        loop = self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._start_ws())
        finally:
            ready.set()
        loop.run_forever()
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()

    async def _start_ws(self) -> None:
        app = web.Application()
        app.router.add_get("/link", self._ws_handler)
        app.router.add_get("/link/", self._ws_handler)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.ws_url = "ws://127.0.0.1:%d/link/" % self._runner.addresses[0][1]

    async def _shutdown_ws(self) -> None:
        for ws in list(self._sockets):
            await ws.close(code=1001, message=b"server shutdown")
        if self._runner is not None:
            await self._runner.cleanup()

    # ------------------------------------------------------------------ Socket Mode server

    async def _ws_handler(self, request: web.Request) -> web.WebSocketResponse:
        # compress=False: the builtin client does not negotiate permessage-deflate anyway;
        # timeout bounds how long close() waits for a close frame the client never sends.
        ws = web.WebSocketResponse(autoping=True, compress=False, timeout=2.0)
        await ws.prepare(request)
        with self._lock:
            self.connections += 1
            count = self.connections
        self._transports[ws] = request.transport
        await ws.send_str(json.dumps({
            "type": "hello", "num_connections": 1,
            "debug_info": {"host": "fakeslack", "build_number": 1, "approximate_connection_time": 3600},
            "connection_info": {"app_id": self.app_id}}))
        # Flush what was queued while nobody was connected, and only then become the live
        # connection, so new deliveries land in the queue behind the backlog (order is kept).
        while self._pending:
            await ws.send_str(json.dumps(self._pending[0]))  # dropped mid-flush: the rest stays queued
            self._pending.pop(0)
        self._sockets.append(ws)
        # The replacement is up: close the connections it replaces (Slack does, a little later).
        # The builtin client then stops waiting out its 3 s recv timeout on the old socket.
        for old in list(self._retiring):
            self._spawn(old.close(code=1001, message=b"replaced"))
        keepalive = self._spawn(self._keepalive(ws))
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    self._on_client_message(msg.data, count)
        finally:
            keepalive.cancel()
            self._sockets.remove(ws)
            self._retiring.discard(ws)
            self._transports.pop(ws, None)
        return ws

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    @staticmethod
    async def _keepalive(ws: web.WebSocketResponse) -> None:
        # Server pings (Slack sends them too) wake the client's blocking recv(), which holds a
        # lock that handler.close() and session replacement need: without them each waits ~3 s.
        # Not aiohttp's heartbeat, which would also drop a client whose pong is merely slow.
        while not ws.closed:
            await asyncio.sleep(0.2)
            try:
                await ws.ping(b"fakeslack")
            except (ConnectionError, RuntimeError):
                return

    def _on_client_message(self, data: str, connection: int) -> None:
        try:
            message = json.loads(data)
        except ValueError:
            return
        if isinstance(message, dict) and "envelope_id" in message:
            ack = {"envelope_id": message["envelope_id"], "connection": connection}
            if "payload" in message:
                ack["payload"] = message["payload"]
            with self._lock:
                self._acks.append(ack)

    def _live_socket(self) -> web.WebSocketResponse | None:
        live = [ws for ws in self._sockets if ws not in self._retiring and not ws.closed]
        return live[-1] if live else None

    async def _push(self, envelope: Json) -> None:
        ws = self._live_socket()
        if ws is None:
            self._pending.append(envelope)
            return
        try:
            await ws.send_str(json.dumps(envelope))
        except (ConnectionError, RuntimeError):
            self._pending.append(envelope)  # socket died under us: hold it for the reconnect

    async def _disconnect(self, how: str) -> bool:
        ws = self._live_socket()
        if ws is None:
            return False
        # No new envelopes go to a connection we are retiring: they wait for its successor.
        self._retiring.add(ws)
        if how == "message":
            await ws.send_str(json.dumps({"type": "disconnect", "reason": "refresh_requested",
                                          "debug_info": {"host": "fakeslack"}}))
        elif how == "close":
            self._spawn(ws.close(code=1001, message=b"going away"))
        else:  # "drop": no close frame, the client has to notice by itself
            self._transports[ws].abort()
        return True

    def _run(self, coro: Any, timeout: float = 10.0) -> Any:
        assert self._loop is not None, "FakeSlack is not started"
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    @property
    def connected(self) -> bool:
        """True if a Socket Mode connection is live (and not being retired)."""
        return self._loop is not None and self._run(self._async_connected())

    async def _async_connected(self) -> bool:
        return self._live_socket() is not None

    def disconnect(self, how: str = "message") -> None:
        """Make the client reconnect. how="message": Slack's disconnect warning; "close": a close
        frame; "drop": TCP abort (the builtin client needs ~5 ping_intervals to notice that)."""
        if how not in ("message", "close", "drop"):
            raise ValueError(f"unknown disconnect mode {how!r}")
        self.wait_for(lambda: self.connected, timeout=10)
        self._run(self._disconnect(how))

    # ------------------------------------------------------------------ delivering envelopes

    def deliver(self, envelope: Json, retry_attempt: int = 0, retry_reason: str = "") -> Json:
        """Send an envelope; with retry_attempt > 0 it is a redelivery under a new envelope_id."""
        env = copy.deepcopy(envelope)
        if retry_attempt > 0:
            env["envelope_id"] = str(uuid.uuid4())
        if env.get("type") == "events_api" or retry_attempt > 0:
            env["retry_attempt"], env["retry_reason"] = retry_attempt, retry_reason
        with self._lock:
            self._envelopes.append(env)
        self._run(self._push(copy.deepcopy(env)))
        return env

    def _envelope(self, kind: str, payload: Json, accepts_response_payload: bool) -> Json:
        return self.deliver({"envelope_id": str(uuid.uuid4()), "payload": payload, "type": kind,
                             "accepts_response_payload": accepts_response_payload})

    def _event(self, event: Json) -> Json:
        event_id = "Ev%08d" % next(self._ids)
        return self._envelope("events_api", {
            "token": "verification-token", "team_id": self.team_id, "api_app_id": self.app_id,
            "event": event, "type": "event_callback", "event_id": event_id, "event_time": int(time.time()),
            "authorizations": [{"enterprise_id": None, "team_id": self.team_id, "user_id": self.bot_user_id,
                                "is_bot": True, "is_enterprise_install": False}],
            "is_ext_shared_channel": False,
            "event_context": f"4-{event['type']}-{self.team_id}-{event.get('channel', '')}"}, False)

    def _user_message(self, user: str, channel: str, text: str, thread_ts: str | None, kind: str) -> Json:
        with self._lock:
            ts = self._next_ts()
            self._messages.append(self._new_message(channel, ts, thread_ts, text, None, user, None))
        event = {"client_msg_id": str(uuid.uuid4()), "type": kind, "text": text, "user": user, "ts": ts,
                 "team": self.team_id, "blocks": _rich_text(text), "channel": channel, "event_ts": ts}
        if thread_ts:
            event["thread_ts"] = thread_ts
        return event

    def mention(self, user: str, channel: str, text: str, thread_ts: str | None = None) -> Json:
        """app_mention; "<@bot>" is prepended when the text lacks it (Slack needs it to fire)."""
        if f"<@{self.bot_user_id}>" not in text:
            text = f"<@{self.bot_user_id}> {text}"
        return self._event(self._user_message(user, channel, text, thread_ts, "app_mention"))

    def dm(self, user: str, text: str, thread_ts: str | None = None, channel: str = "D0001") -> Json:
        with self._lock:
            self._dm_channels.setdefault(user, channel)
        event = self._user_message(user, channel, text, thread_ts, "message")
        event["channel_type"] = "im"
        return self._event(event)

    def message_event(self, **event_fields: Any) -> Json:
        """Any message event; state follows plain/bot messages, message_changed and message_deleted."""
        event: Json = {"type": "message", "channel": "C0001", **event_fields}
        channel, subtype = event["channel"], event.get("subtype")
        with self._lock:
            event.setdefault("ts", self._next_ts())
            event.setdefault("event_ts", event["ts"])
            event.setdefault("channel_type", _channel_type(channel))
            if subtype == "message_changed" and "message" in event:
                old = self._find(channel, event["message"]["ts"])
                if old is not None:
                    event.setdefault("previous_message", self._api_message(old))
                    event["message"] = {**self._api_message(old), **event["message"]}
                    self._update(old, event["message"].get("text"), event["message"].get("blocks"))
            elif subtype == "message_deleted" and "deleted_ts" in event:
                old = self._find(channel, event["deleted_ts"])
                if old is not None:
                    event.setdefault("previous_message", self._api_message(old))
                    old["deleted"] = True
            elif subtype in (None, "bot_message", "thread_broadcast", "file_share", "me_message"):
                self._messages.append(self._new_message(
                    channel, event["ts"], event.get("thread_ts"), event.get("text", ""), event.get("blocks"),
                    event.get("user"), event.get("bot_id")))
        return self._event(event)

    def react(self, user: str, channel: str, ts: str, reaction: str, removed: bool = False) -> Json:
        with self._lock:
            message = self._find(channel, ts)
            event_ts = self._next_ts()
            if message is not None:
                users = message["reactions"].setdefault(reaction, [])
                if removed and user in users:
                    users.remove(user)
                elif not removed and user not in users:
                    users.append(user)
        event: Json = {"type": "reaction_removed" if removed else "reaction_added", "user": user,
                       "reaction": reaction, "item": {"type": "message", "channel": channel, "ts": ts},
                       "event_ts": event_ts}
        if message is not None and message["user"]:
            event["item_user"] = message["user"]
        return self._event(event)

    def share_file(self, user: str, channel: str, name: str, data: bytes, text: str = "", *,
                   mention: bool = False, thread_ts: str | None = None, filetype: str | None = None,
                   size: int | None = None, stub: bool = False) -> Json:
        """A person shares a file: a DM `message` (subtype file_share) or, with `mention`, an
        `app_mention` carrying `files`. The file is served at its `url_private_download` to bot tokens
        only (others get Slack's HTML login page, as without files:read). `size` overrides the
        declared size; `stub` sends only `{id, file_access: check_file_info}` so the bot needs files.info."""
        with self._lock:
            file_id = "F%08d" % next(self._ids)
            url = f"{self.api_url.rsplit('/api/', 1)[0]}/files-pri/{self.team_id}-{file_id}/download/{name}"
            info: Json = {"id": file_id, "created": int(time.time()), "timestamp": int(time.time()), "name": name,
                          "title": name, "mimetype": "application/octet-stream",
                          "filetype": filetype or (name.rsplit(".", 1)[-1] if "." in name else "text"),
                          "user": user, "mode": "hosted", "is_external": False,
                          "size": len(data) if size is None else size,
                          "url_private": url, "url_private_download": url + "?download=1"}
            self._files[file_id], self._file_data[file_id] = info, data
        files = [{"id": file_id, "mode": "hidden_by_limit", "file_access": "check_file_info"} if stub
                 else copy.deepcopy(info)]
        if mention:
            if f"<@{self.bot_user_id}>" not in text:
                text = f"<@{self.bot_user_id}> {text}".rstrip()
            event = self._user_message(user, channel, text, thread_ts, "app_mention")
        else:
            event = self._user_message(user, channel, text, thread_ts, "message")
            event.update(subtype="file_share", upload=True, channel_type=_channel_type(channel))
        event["files"] = files
        return self._event(event)

    def handle_file_download(self, path: str, token: str | None) -> tuple[int, str, bytes]:
        """GET of a url_private(_download): (status, content type, body)."""
        with self._lock:
            self._calls.append({"method": "files-pri", "params": {"path": path}, "token": token, "status": 200})
            file_id = path.split("/")[2].rsplit("-", 1)[-1] if path.count("/") >= 3 else ""
            if file_id not in self._file_data:
                return 404, "text/plain", b"not found"
            if not token or not token.startswith("xoxb-"):
                return 200, "text/html; charset=utf-8", b"<!DOCTYPE html><html><body>Sign in to Slack</body></html>"
            return 200, "application/octet-stream", self._file_data[file_id]

    def start_assistant_thread(self, user: str, context_channel: str | None = None,
                               channel: str | None = None) -> Json:
        """The user opens a new thread in the app's assistant view: Slack posts the thread's root
        message (subtype `assistant_app_thread`, from the app) in their DM and sends
        `assistant_thread_started`. The thread is `event["assistant_thread"]["thread_ts"]`."""
        with self._lock:
            channel = channel or self._dm_channel(user)
            self._dm_channels.setdefault(user, channel)
            ts = self._next_ts()
            root = self._new_message(channel, ts, None, "New chat", None, self.bot_user_id, self.bot_id)
            root["subtype"] = "assistant_app_thread"
            self._messages.append(root)
            self._assistant_threads.setdefault((channel, ts), self._new_assistant_thread())
            event_ts = self._next_ts()
        return self._event({"type": "assistant_thread_started", "event_ts": event_ts,
                            "assistant_thread": self._assistant_thread_payload(user, channel, ts, context_channel)})

    def change_assistant_context(self, user: str, thread_ts: str, context_channel: str | None,
                                 channel: str | None = None) -> Json:
        """The user switched channels while the assistant thread was open."""
        with self._lock:
            channel = channel or self._dm_channel(user)
            event_ts = self._next_ts()
        return self._event({"type": "assistant_thread_context_changed", "event_ts": event_ts,
                            "assistant_thread": self._assistant_thread_payload(user, channel, thread_ts,
                                                                               context_channel)})

    def assistant_message(self, user: str, text: str, thread_ts: str, channel: str | None = None) -> Json:
        """The user writes in an assistant thread: a DM `message` event inside the thread."""
        with self._lock:
            channel = channel or self._dm_channel(user)
        return self.dm(user, text, thread_ts=thread_ts, channel=channel)

    def _assistant_thread_payload(self, user: str, channel: str, thread_ts: str,
                                  context_channel: str | None) -> Json:
        context: Json = {"channel_id": context_channel, "team_id": self.team_id, "enterprise_id": None} \
            if context_channel else {}
        return {"user_id": user, "context": context, "channel_id": channel, "thread_ts": thread_ts}

    @staticmethod
    def _new_assistant_thread() -> Json:
        return {"status": "", "statuses": [], "title": None, "titles": [], "prompts": None, "prompt_calls": []}

    def assistant_thread(self, channel: str, thread_ts: str) -> Json:
        """What the app set on a thread: `status` (current; "" once cleared), `statuses` (every
        setStatus call's params), `title` / `titles`, `prompts` (the latest list) / `prompt_calls`."""
        with self._lock:
            return copy.deepcopy(self._assistant_threads.get((channel, thread_ts)) or self._new_assistant_thread())

    def home_opened(self, user: str) -> Json:
        with self._lock:
            event: Json = {"type": "app_home_opened", "user": user, "channel": self._dm_channel(user),
                           "tab": "home", "event_ts": self._next_ts()}
            if user in self._home_views:
                event["view"] = copy.deepcopy(self._home_views[user])
        return self._event(event)

    def _actor(self, user: str) -> Json:
        return {"id": user, "username": user.lower(), "name": user.lower(), "team_id": self.team_id}

    def _trigger_id(self) -> str:
        return f"{next(self._ids)}.{next(self._ids)}.{uuid.uuid4().hex}"

    def _response_url(self, channel: str, message_ts: str | None) -> str:
        key = uuid.uuid4().hex
        with self._lock:
            self._response_urls[key] = {"channel": channel, "message_ts": message_ts}
        return self.api_url.replace("/api/", f"/response/{key}")

    def click(self, user: str, channel: str, message_ts: str, action_id: str, value: str,
              block_id: str = "feedback") -> Json:
        """block_actions on a stored message; the element's type/text are taken from its blocks."""
        with self._lock:
            message = self._find(channel, message_ts)
            assert message is not None, f"click: no message {channel}/{message_ts}\n{self.dump()}"
            api_message = self._api_message(message)
        action: Json = {"action_id": action_id, "block_id": block_id, "type": "button", "value": value,
                        "action_ts": "%.6f" % time.time()}
        for block in api_message.get("blocks") or []:
            for element in block.get("elements", []) if isinstance(block, dict) else []:
                if isinstance(element, dict) and element.get("action_id") == action_id:
                    action["type"] = element.get("type", "button")
                    action["block_id"] = block.get("block_id") or block_id
                    if "text" in element:
                        action["text"] = element["text"]
                    for side in ("positive_button", "negative_button"):  # feedback_buttons: the one clicked
                        if (element.get(side) or {}).get("value") == value:
                            action["text"] = element[side]["text"]
                    options = [o for o in element.get("options", []) if o.get("value") == value]
                    if options:  # selects and overflows report the chosen option, not a value
                        del action["value"]
                        action["selected_option"] = options[0]
        container: Json = {"type": "message", "message_ts": message_ts, "channel_id": channel,
                           "is_ephemeral": False}
        if message["thread_ts"]:
            container["thread_ts"] = message["thread_ts"]
        return self._envelope("interactive", {
            "type": "block_actions", "user": self._actor(user), "api_app_id": self.app_id,
            "token": "verification-token", "container": container, "trigger_id": self._trigger_id(),
            "team": {"id": self.team_id, "domain": "fake"}, "enterprise": None,
            "is_enterprise_install": False, "channel": {"id": channel, "name": channel.lower()},
            "message": api_message,
            "state": {"values": {}}, "response_url": self._response_url(channel, message_ts),
            "actions": [action]}, False)

    def click_feedback(self, user: str, channel: str, message_ts: str, positive: bool = True) -> Json:
        """Click 👍 (positive) or 👎 on the message's feedback_buttons element, sending the value the
        app put on that button, as Slack does."""
        with self._lock:
            message = self._find(channel, message_ts)
            assert message is not None, f"click_feedback: no message {channel}/{message_ts}\n{self.dump()}"
            elements = [e for b in message["blocks"] or [] if b.get("type") == "context_actions"
                        for e in b.get("elements", []) if e.get("type") == "feedback_buttons"]
        assert elements, f"click_feedback: no feedback_buttons on {channel}/{message_ts}\n{self.dump()}"
        button = elements[0]["positive_button" if positive else "negative_button"]
        return self.click(user, channel, message_ts, elements[0]["action_id"], button["value"])

    def submit_view(self, user: str, view: Json, values: Json) -> Json:
        """view_submission of a view (as views.open returned it, or any view dict).

        `values` is {block_id: {action_id: state}}; a bare str state means a plain_text_input value."""
        with self._lock:
            stored = self._views.get(view.get("id", ""))
            base = copy.deepcopy(stored if stored is not None else self._store_view(view))
        state = {block: {action: ({"type": "plain_text_input", "value": v} if isinstance(v, str) else v)
                         for action, v in actions.items()} for block, actions in values.items()}
        base["state"] = {"values": state}
        return self._envelope("interactive", {
            "type": "view_submission", "team": {"id": self.team_id, "domain": "fake"},
            "user": self._actor(user), "api_app_id": self.app_id, "token": "verification-token",
            "trigger_id": self._trigger_id(), "view": base, "response_urls": [],
            "enterprise": None, "is_enterprise_install": False}, True)

    def command(self, user: str, command: str, text: str, channel: str = "C0001") -> Json:
        return self._envelope("slash_commands", {
            "token": "verification-token", "team_id": self.team_id, "team_domain": "fake",
            "channel_id": channel, "channel_name": channel.lower(),
            "user_id": user, "user_name": user.lower(),
            "command": command, "text": text, "api_app_id": self.app_id, "is_enterprise_install": "false",
            "response_url": self._response_url(channel, None), "trigger_id": self._trigger_id()}, True)

    # ------------------------------------------------------------------ inspection

    def messages(self, channel: str | None = None, thread_ts: str | None = None, include_bots: bool = True,
                 *, include_parent: bool = True, include_deleted: bool = True) -> list[Json]:
        """Stored messages in ts order. With thread_ts: the thread as conversations.replies shows it
        (its parent first unless include_parent=False, then the replies)."""
        with self._lock:
            found = [m for m in self._messages
                     if (channel is None or m["channel"] == channel)
                     and (thread_ts is None or m["thread_ts"] == thread_ts
                          or (include_parent and m["ts"] == thread_ts))
                     and (include_bots or not m["bot_id"]) and (include_deleted or not m["deleted"])]
            return copy.deepcopy(sorted(found, key=lambda m: _ts_key(m["ts"])))

    def ephemerals(self) -> list[Json]:
        """chat.postEphemeral messages and ephemeral respond() bodies: {"channel","user","text","blocks"}."""
        with self._lock:
            return copy.deepcopy(self._ephemerals)

    def calls(self, method: str | None = None) -> list[Json]:
        with self._lock:
            return copy.deepcopy([c for c in self._calls if method is None or c["method"] == method])

    def acks(self) -> list[Json]:
        with self._lock:
            return copy.deepcopy(self._acks)

    def envelopes(self) -> list[Json]:
        """Every envelope sent or queued, in order."""
        with self._lock:
            return copy.deepcopy(self._envelopes)

    def responses(self) -> list[Json]:
        with self._lock:
            return copy.deepcopy(self._responses)

    def home_view(self, user: str) -> Json | None:
        with self._lock:
            return copy.deepcopy(self._home_views.get(user))

    def fail_next(self, method: str, status: int = 429, retry_after: int = 1, count: int = 1) -> None:
        with self._lock:
            self._failures.setdefault(method, []).extend([(status, retry_after)] * count)

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 15.0) -> Any:
        """Poll until predicate() is truthy and return its value; exceptions count as "not yet"."""
        deadline = time.monotonic() + timeout
        error: BaseException | None = None
        while True:
            try:
                value = predicate()
                if value:
                    return value
            except Exception as exc:  # e.g. IndexError while the reply is not there yet
                error = exc
            if time.monotonic() > deadline:
                raise AssertionError(f"condition not met within {timeout}s"
                                     f"{f' (last error: {error!r})' if error else ''}\n{self.dump()}")
            time.sleep(0.02)

    def dump(self) -> str:
        """Human-readable state, for assertion messages."""
        with self._lock:
            lines = [f"connections={self.connections} envelopes={len(self._envelopes)} "
                     f"acks={len(self._acks)}", "messages:"]
            for m in sorted(self._messages, key=lambda m: _ts_key(m["ts"])):
                who = f"bot:{m['bot_id']}" if m["bot_id"] else m["user"]
                flags = (" [deleted]" if m["deleted"] else "") + (
                    f" [{len(m['updates'])} updates]" if m["updates"] else "")
                lines.append(f"  {m['channel']} ts={m['ts']} thread={m['thread_ts']} {who}: "
                             f"{m['text'][:100]!r}{flags}")
            lines.append("last calls:")
            for c in self._calls[-25:]:
                params = {k: v for k, v in c["params"].items()
                          if k in ("channel", "ts", "thread_ts", "text", "name")}
                lines.append(f"  {c['method']} -> {c['status']} {c['response'].get('error', '')} "
                             f"{str(params)[:160]}")
        return "\n".join(lines)

    # ------------------------------------------------------------------ state helpers (lock held)

    def _next_ts(self) -> str:
        # Real-clock based like Slack's, but strictly increasing so ordering by ts is total.
        self._last_micros = max(int(time.time() * 1_000_000), self._last_micros + 1)
        return "%d.%06d" % divmod(self._last_micros, 1_000_000)

    def _new_message(self, channel: str, ts: str, thread_ts: str | None, text: str, blocks: Any,
                     user: str | None, bot_id: str | None) -> Json:
        return {"channel": channel, "ts": ts, "thread_ts": thread_ts, "text": text, "blocks": blocks,
                "user": user, "bot_id": bot_id, "updates": [], "deleted": False, "reactions": {}}

    def _find(self, channel: str, ts: str) -> Json | None:
        return next((m for m in self._messages if m["channel"] == channel and m["ts"] == ts), None)

    def _update(self, message: Json, text: str | None, blocks: Any) -> None:
        message["updates"].append({"text": message["text"], "blocks": copy.deepcopy(message["blocks"])})
        if text is not None:
            message["text"] = text
        if blocks is not None:  # like Slack, omitting blocks keeps the old ones
            message["blocks"] = blocks

    def _api_message(self, m: Json) -> Json:
        """A stored message in the shape the Web API and payloads use."""
        out: Json = {"type": "message", "ts": m["ts"], "text": m["text"], "team": self.team_id}
        if m.get("subtype"):
            out["subtype"] = m["subtype"]
        if m["user"]:
            out["user"] = m["user"]
        if m["bot_id"]:
            out.update(bot_id=m["bot_id"], app_id=self.app_id)
        if m["blocks"]:
            out["blocks"] = copy.deepcopy(m["blocks"])
        replies = [r for r in self._messages if r["thread_ts"] == m["ts"] and r is not m and not r["deleted"]]
        if m["thread_ts"] or replies:
            out["thread_ts"] = m["thread_ts"] or m["ts"]
        if replies:
            out["reply_count"] = len(replies)
        if any(m["reactions"].values()):
            out["reactions"] = [{"name": n, "users": list(u), "count": len(u)}
                                for n, u in m["reactions"].items() if u]
        return out

    def _dm_channel(self, user: str) -> str:
        if user not in self._dm_channels:
            self._dm_channels[user] = "D%04d" % (100 + len(self._dm_channels))
        return self._dm_channels[user]

    def _store_view(self, view: Json) -> Json:
        view_id = "V%08d" % next(self._ids)
        stored = {"id": view_id, "team_id": self.team_id, "type": "modal", "blocks": [],
                  "private_metadata": "", "callback_id": "", "state": {"values": {}},
                  "hash": uuid.uuid4().hex[:12],
                  "clear_on_close": False, "notify_on_close": False, "previous_view_id": None,
                  "root_view_id": view_id, "app_id": self.app_id, "external_id": "",
                  "app_installed_team_id": self.team_id, "bot_id": self.bot_id, **copy.deepcopy(view)}
        stored["id"] = view_id
        self._views[view_id] = stored
        return stored

    @staticmethod
    def _check_content(text: Any, blocks: Any) -> None:
        if isinstance(text, str) and len(text) > MAX_TEXT_CHARS:
            raise _ApiError("msg_too_long")
        if blocks is not None and (not isinstance(blocks, list) or len(blocks) > MAX_BLOCKS):
            raise _ApiError("invalid_blocks")

    def _message_param(self, p: Json) -> Json:
        message = self._find(p.get("channel", ""), p.get("ts", ""))
        if message is None or message["deleted"]:
            raise _ApiError("message_not_found")
        return message

    # ------------------------------------------------------------------ Web API

    def handle_api(self, method: str, params: Json, token: str | None) -> tuple[int, dict[str, str], Json]:
        """One Web API call: (HTTP status, extra headers, JSON body). Runs in an HTTP thread."""
        echo: Json | None = None
        with self._lock:
            call: Json = {"method": method, "params": params, "token": token, "status": 200}
            self._calls.append(call)
            status, headers = 200, {}
            wanted = "xapp-" if method == "apps.connections.open" else "xoxb-"
            failures = self._failures.get(method)
            if not token or not token.startswith(wanted):
                body: Json = {"ok": False, "error": "invalid_auth"}
            elif failures:
                status, retry_after = failures.pop(0)
                if status == 429:
                    headers["Retry-After"] = str(retry_after)
                    body = {"ok": False, "error": "ratelimited"}
                else:
                    body = {"ok": False, "error": "internal_error"}
            elif method in _STREAM_METHODS and not self.streaming:
                body = {"ok": False, "error": self.stream_error}
            else:
                handler = getattr(self, "_api_" + method.replace(".", "_"), None)
                try:
                    body = {"ok": True, **(handler(params) if handler else {})}
                except _ApiError as exc:
                    body = {"ok": False, "error": str(exc)}
                posted_dm = method == "chat.postMessage" and body["ok"] and body["channel"][0] == "D"
                if posted_dm and self.echo_events:
                    echo = {**body["message"], "channel": body["channel"], "event_ts": body["ts"],
                            "channel_type": "im"}
            call["status"], call["response"] = status, body
        if echo is not None:  # outside the lock: delivering waits on the loop thread, which takes it
            self._event(echo)
        return status, headers, body

    def _api_auth_test(self, p: Json) -> Json:
        return {"url": "https://fake.slack.com/", "team": "Fake Workspace", "user": "flywheel",
                "team_id": self.team_id, "user_id": self.bot_user_id, "bot_id": self.bot_id,
                "is_enterprise_install": False}

    def _api_apps_connections_open(self, p: Json) -> Json:
        return {"url": f"{self.ws_url}?ticket={uuid.uuid4()}&app_id={self.app_id}"}

    def _api_chat_postMessage(self, p: Json) -> Json:
        channel = p.get("channel") or ""
        if not channel:
            raise _ApiError("channel_not_found")
        if channel[:1] in ("U", "W"):  # posting to a user id lands in the bot's DM with them
            channel = self._dm_channel(channel)
        text, blocks = p.get("text"), p.get("blocks")
        if not text and not blocks and not p.get("attachments"):
            raise _ApiError("no_text")
        self._check_content(text, blocks)
        message = self._new_message(channel, self._next_ts(), p.get("thread_ts") or None, text or "", blocks,
                                    self.bot_user_id, self.bot_id)
        self._messages.append(message)
        self._replied(channel, p.get("thread_ts"))
        return {"channel": channel, "ts": message["ts"], "message": self._api_message(message)}

    def _api_chat_update(self, p: Json) -> Json:
        message = self._message_param(p)
        self._check_content(p.get("text"), p.get("blocks"))
        self._update(message, p.get("text"), p.get("blocks"))
        return {"channel": message["channel"], "ts": message["ts"], "text": message["text"],
                "message": self._api_message(message)}

    def _api_chat_delete(self, p: Json) -> Json:
        message = self._message_param(p)
        message["deleted"] = True
        return {"channel": message["channel"], "ts": message["ts"]}

    def _api_chat_postEphemeral(self, p: Json) -> Json:
        self._check_content(p.get("text"), p.get("blocks"))
        self._ephemerals.append({"channel": p.get("channel"), "user": p.get("user"),
                                 "text": p.get("text", ""), "blocks": p.get("blocks"),
                                 "thread_ts": p.get("thread_ts")})
        return {"message_ts": self._next_ts()}

    def _api_chat_getPermalink(self, p: Json) -> Json:
        channel, ts = p.get("channel", ""), p.get("message_ts", "")
        permalink = f"https://fake.slack.com/archives/{channel}/p{ts.replace('.', '')}"
        return {"channel": channel, "permalink": permalink}

    # Slack's native streaming: the message's visible text only grows (appendStream adds to it) until
    # stopStream, which may attach blocks under it. Each call's visible text is kept in
    # message["stream"]["texts"], so a test can check that nothing shown was ever taken back.

    @staticmethod
    def _stream_text(p: Json) -> str:
        """The text one streaming call adds: `markdown_text` and/or `markdown_text` chunks."""
        text = p.get("markdown_text") or ""
        chunks = p.get("chunks") or []
        if not isinstance(chunks, list):
            raise _ApiError("invalid_chunks")
        for chunk in chunks:
            if not isinstance(chunk, dict) or "type" not in chunk:
                raise _ApiError("invalid_chunks")
            if chunk["type"] == "markdown_text":
                text += str(chunk.get("text") or "")
        if len(text) > STREAM_CALL_CHARS:
            raise _ApiError("msg_too_long")
        return text

    def _streaming_message(self, p: Json) -> Json:
        message = self._message_param(p)
        if (message.get("stream") or {}).get("state") != "open":
            raise _ApiError("message_not_in_streaming_state")
        return message

    def _stream_to(self, message: Json, added: str, blocks: Any = None) -> None:
        self._update(message, message["text"] + added, blocks)
        message["stream"]["texts"].append(message["text"])

    def _api_chat_startStream(self, p: Json) -> Json:
        channel = p.get("channel") or ""
        if not channel:
            raise _ApiError("channel_not_found")
        if _channel_type(channel) != "im" and not (p.get("recipient_user_id") and p.get("recipient_team_id")):
            raise _ApiError("invalid_arguments")  # outside DMs Slack needs to know whom the stream is for
        text = self._stream_text(p)
        message = self._new_message(channel, self._next_ts(), p.get("thread_ts") or None, text, None,
                                    self.bot_user_id, self.bot_id)
        message["stream"] = {"state": "open", "texts": [text], "recipient_user_id": p.get("recipient_user_id"),
                             "recipient_team_id": p.get("recipient_team_id")}
        self._messages.append(message)
        self._replied(channel, p.get("thread_ts"))
        return {"channel": message["channel"], "ts": message["ts"]}

    def _api_chat_appendStream(self, p: Json) -> Json:
        message = self._streaming_message(p)
        self._stream_to(message, self._stream_text(p))
        return {"channel": message["channel"], "ts": message["ts"]}

    def _api_chat_stopStream(self, p: Json) -> Json:
        message = self._streaming_message(p)
        self._check_content(None, p.get("blocks"))
        self._stream_to(message, self._stream_text(p), p.get("blocks"))
        message["stream"]["state"] = "stopped"
        return {"channel": message["channel"], "ts": message["ts"], "message": self._api_message(message)}

    # The assistant view's thread methods (scope assistant:write; setStatus also takes chat:write, so it
    # works in any thread). Each call is checked like Slack does and recorded on the thread.

    def _thread_state(self, p: Json, need_thread: bool = True) -> Json:
        channel, thread_ts = p.get("channel_id") or "", p.get("thread_ts") or ""
        if not channel:
            raise _ApiError("channel_not_found")
        if need_thread and not thread_ts:
            raise _ApiError("invalid_arguments")
        if thread_ts and self._find(channel, thread_ts) is None:
            raise _ApiError("thread_not_found")
        return self._assistant_threads.setdefault((channel, thread_ts), self._new_assistant_thread())

    def _replied(self, channel: str, thread_ts: str | None) -> None:
        """Slack clears a thread's status when the app replies in it."""
        state = self._assistant_threads.get((channel, thread_ts or ""))
        if state is not None:
            state["status"] = ""

    def _api_assistant_threads_setStatus(self, p: Json) -> Json:
        if not isinstance(p.get("status"), str):
            raise _ApiError("invalid_arguments")  # required; "" clears it
        loading = p.get("loading_messages")
        if isinstance(loading, str):  # form-encoded lists arrive comma-joined
            loading = [m for m in loading.split(",") if m]
        if loading is not None and (not isinstance(loading, list) or len(loading) > 10):
            raise _ApiError("invalid_arguments")
        state = self._thread_state(p)
        state["status"] = p["status"]
        state["statuses"].append({"status": p["status"], "loading_messages": loading})
        return {}

    def _api_assistant_threads_setTitle(self, p: Json) -> Json:
        title = p.get("title")
        if not isinstance(title, str) or not title.strip():
            raise _ApiError("invalid_arguments")
        state = self._thread_state(p)
        state["title"] = title
        state["titles"].append(title)
        return {}

    def _api_assistant_threads_setSuggestedPrompts(self, p: Json) -> Json:
        prompts = p.get("prompts")
        if isinstance(prompts, str):
            try:
                prompts = json.loads(prompts)
            except ValueError:
                raise _ApiError("invalid_arguments") from None
        if (not isinstance(prompts, list) or not 1 <= len(prompts) <= 4
                or not all(isinstance(x, dict) and x.get("title") and x.get("message") for x in prompts)):
            raise _ApiError("invalid_arguments")  # 1–4 prompts, each with a title and a message
        state = self._thread_state(p, need_thread=False)
        state["prompts"] = {"title": p.get("title"), "prompts": prompts}
        state["prompt_calls"].append(state["prompts"])
        return {}

    def _reaction(self, p: Json) -> list[str]:
        message = self._find(p.get("channel", ""), p.get("timestamp", ""))
        if message is None:
            raise _ApiError("message_not_found")
        return message["reactions"].setdefault(p.get("name", ""), [])

    def _api_reactions_add(self, p: Json) -> Json:
        users = self._reaction(p)
        if self.bot_user_id in users:
            raise _ApiError("already_reacted")
        users.append(self.bot_user_id)
        return {}

    def _api_reactions_remove(self, p: Json) -> Json:
        users = self._reaction(p)
        if self.bot_user_id not in users:
            raise _ApiError("no_reaction")
        users.remove(self.bot_user_id)
        return {}

    def _history(self, p: Json, thread: bool) -> Json:
        channel, ts = p.get("channel", ""), p.get("ts", "")
        found = [m for m in self._messages if m["channel"] == channel and not m["deleted"]
                 and ((m["ts"] == ts or m["thread_ts"] == ts) if thread
                      else m["thread_ts"] in (None, m["ts"]))]
        if thread and not any(m["ts"] == ts for m in found):
            raise _ApiError("thread_not_found")
        found.sort(key=lambda m: _ts_key(m["ts"]), reverse=not thread)  # history is newest first
        limit = int(p.get("limit") or 1000)
        return {"messages": [self._api_message(m) for m in found[:limit]], "has_more": len(found) > limit,
                "response_metadata": {"next_cursor": ""}}

    def _api_conversations_replies(self, p: Json) -> Json:
        return self._history(p, thread=True)

    def _api_conversations_history(self, p: Json) -> Json:
        return self._history(p, thread=False)

    def _api_conversations_open(self, p: Json) -> Json:
        users = str(p.get("users", "")).split(",")
        if p.get("channel"):
            return {"channel": {"id": p["channel"]}, "already_open": True}
        if not users[0]:
            raise _ApiError("users_list_not_supplied")
        return {"channel": {"id": self._dm_channel(users[0])}, "no_op": True, "already_open": True}

    def _api_users_info(self, p: Json) -> Json:
        uid = p.get("user", "")
        user = {"id": uid, "team_id": self.team_id, "name": uid.lower(), "real_name": f"User {uid}",
                "tz": "UTC", "is_bot": uid == self.bot_user_id, "deleted": False,
                "profile": {"real_name": f"User {uid}", "display_name": uid.lower()}}
        return {"user": {**user, **self.users.get(uid, {})}}

    def _api_files_info(self, p: Json) -> Json:
        info = self._files.get(str(p.get("file", "")))
        if info is None:
            raise _ApiError("file_not_found")
        return {"file": copy.deepcopy(info), "comments": [], "response_metadata": {"next_cursor": ""}}

    def _api_views_open(self, p: Json) -> Json:
        if not isinstance(p.get("view"), dict):
            raise _ApiError("invalid_arguments")
        if not p.get("trigger_id"):
            raise _ApiError("invalid_trigger_id")
        return {"view": copy.deepcopy(self._store_view(p["view"]))}

    def _api_views_update(self, p: Json) -> Json:
        external_id = p.get("external_id")
        matches = [v for v in self._views.values()
                   if v["id"] == p.get("view_id") or (external_id and v["external_id"] == external_id)]
        if not matches or not isinstance(p.get("view"), dict):
            raise _ApiError("not_found")
        matches[0].update(copy.deepcopy(p["view"]), hash=uuid.uuid4().hex[:12])
        return {"view": copy.deepcopy(matches[0])}

    def _api_views_publish(self, p: Json) -> Json:
        if not isinstance(p.get("view"), dict) or not p.get("user_id"):
            raise _ApiError("invalid_arguments")
        view = {**self._store_view(p["view"]), "type": p["view"].get("type", "home")}
        self._home_views[p["user_id"]] = view
        return {"view": copy.deepcopy(view)}

    def handle_response_url(self, key: str, raw: bytes) -> tuple[int, str]:
        """A POST to a response_url (Bolt's respond()): apply it like Slack, answer "ok"."""
        with self._lock:
            target = self._response_urls.get(key)
            if target is None:
                return 404, "no_such_response_url"
            body = json.loads(raw or b"{}")
            self._responses.append(body)
            original = self._find(target["channel"], target["message_ts"] or "")
            if body.get("delete_original") and original is not None:
                original["deleted"] = True
            elif body.get("replace_original") and original is not None:
                self._update(original, body.get("text"), body.get("blocks"))
            elif body.get("response_type") == "in_channel":
                self._messages.append(self._new_message(
                    target["channel"], self._next_ts(), body.get("thread_ts"), body.get("text", ""),
                    body.get("blocks"), self.bot_user_id, self.bot_id))
            else:  # the default response_type is ephemeral
                self._ephemerals.append({"channel": target["channel"], "user": None,
                                         "text": body.get("text", ""), "blocks": body.get("blocks"),
                                         "thread_ts": body.get("thread_ts")})
        return 200, "ok"


class _ApiHandler(BaseHTTPRequestHandler):
    """Routes /api/<method> and /response/<id> to the owning FakeSlack (set per server)."""

    fake: FakeSlack

    def log_message(self, format: str, *args: Any) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        url = urlparse(self.path)
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if url.path.startswith("/response/"):
            status, text = self.fake.handle_response_url(url.path.rsplit("/", 1)[-1], raw)
            self._reply(status, {}, text.encode(), "text/plain")
            return
        if url.path.startswith("/files-pri/"):
            auth = self.headers.get("Authorization", "")
            status, content_type, data = self.fake.handle_file_download(
                url.path, auth[len("Bearer "):] if auth.startswith("Bearer ") else None)
            self._reply(status, {}, data, content_type)
            return
        if not url.path.startswith("/api/"):
            self._reply(404, {}, b'{"ok": false, "error": "unknown_path"}', "application/json")
            return
        params = _parse_params(url.query, raw, self.headers.get("Content-Type", ""))
        auth = self.headers.get("Authorization", "")
        token = auth[len("Bearer "):] if auth.startswith("Bearer ") else params.pop("token", None)
        status, headers, body = self.fake.handle_api(url.path[len("/api/"):], params, token)
        self._reply(status, headers, json.dumps(body).encode(), "application/json; charset=utf-8")

    def _reply(self, status: int, headers: dict[str, str], data: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)
