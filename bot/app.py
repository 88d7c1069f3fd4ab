"""The Slack app: a slack-bolt `App` wired to the answering agent, a bounded worker pool and SQLite.

    flywheel bot                  # Socket Mode: needs SLACK_BOT_TOKEN (xoxb-) and SLACK_APP_TOKEN (xapp-)
    flywheel bot --http --port 3000   # HTTP events at /slack/events: SLACK_BOT_TOKEN + SLACK_SIGNING_SECRET

Listeners follow slack-bolt's examples: one listener per concern, `ack()` first, slow work after.
Bolt already acks events before running listeners (`process_before_response=False`); the listeners
here only hand the slow part (retrieval + generation, ingest) to `WorkerPool`, which is bounded so
a burst of questions gets a polite "busy" reply instead of an ever-growing backlog.

Listeners live in bot/answering.py (questions), bot/feedback.py (reactions, buttons, modal),
bot/commands.py (slash command, App Home), bot/files.py (files shared with the bot) and bot/assistant.py
(Slack's assistant view); the question guard (length, rate) is bot/hardening.py. What they share
(constants, the worker pool, the `Bot` type) is bot/common.py: they never import this module, which
builds the app, registers them and owns the transports.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from slack_bolt import App, BoltResponse
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_handlers import (
    ConnectionErrorRetryHandler,
    RateLimitErrorRetryHandler,
    ServerErrorRetryHandler,
)

# Re-exported: BUSY and parse_list were defined here before bot/common.py; callers may still import them.
from bot.common import BUSY as BUSY
from bot.common import WorkerPool
from bot.common import parse_list as parse_list
from storage.config import Settings
from storage.db import Store

if TYPE_CHECKING:
    from agent.graph import Agent

log = logging.getLogger(__name__)

DEFAULT_API_URL = WebClient.BASE_URL
EVENTS_PATH = "/slack/events"
# Slack retries an event at once, after ~1 min and ~5 min; keep ids well beyond that.
DEDUPE_RETENTION_HOURS = 2.0


class ConfigError(RuntimeError):
    """The bot cannot start: a token is missing or Slack rejected it. The message names the variable."""


def _secret(value: Any) -> str:
    return value.get_secret_value() if value is not None else ""


def check_tokens(settings: Settings, http: bool = False) -> None:
    """Fail fast, without the network, when a required token is missing or malformed."""
    bot_token = _secret(settings.slack_bot_token)
    if not bot_token:
        raise ConfigError("SLACK_BOT_TOKEN is not set: export the app's Bot User OAuth Token (xoxb-…).")
    if not bot_token.startswith("xoxb-"):
        raise ConfigError("SLACK_BOT_TOKEN must be a bot token starting with xoxb-.")
    if http:
        if not _secret(settings.slack_signing_secret):
            raise ConfigError("SLACK_SIGNING_SECRET is not set: HTTP mode needs it to verify Slack's requests.")
    else:
        app_token = _secret(settings.slack_app_token)
        if not app_token:
            raise ConfigError(
                "SLACK_APP_TOKEN is not set: Socket Mode needs an app-level token (xapp-…, scope connections:write)."
            )
        if not app_token.startswith("xapp-"):
            raise ConfigError("SLACK_APP_TOKEN must be an app-level token starting with xapp-.")


def make_client(settings: Settings, token: str | None = None) -> WebClient:
    """A WebClient that retries rate limits (honouring Retry-After), 5xx and dropped connections."""
    return WebClient(
        token=token,
        base_url=settings.slack_api_url or DEFAULT_API_URL,
        retry_handlers=[
            RateLimitErrorRetryHandler(max_retry_count=3),
            ServerErrorRetryHandler(max_retry_count=2),
            ConnectionErrorRetryHandler(),
        ],
    )


class FlywheelBot:
    """Holds the Bolt app, its client, the worker pool, the agent and the store; runs a transport."""

    def __init__(self, settings: Settings, app: App, client: WebClient, store: Store, agent: Agent,
                 identity: dict[str, Any]) -> None:
        self.settings = settings
        self.app = app
        self.client = client
        self.store = store
        self.agent = agent
        self.bot_user_id: str = identity.get("user_id") or ""
        self.bot_id: str = identity.get("bot_id") or ""
        self.pool = WorkerPool(settings.workers, settings.queue_size)
        self.admins = parse_list(settings.admin_users)
        self._socket_handler: Any = None
        self._http_server: Any = None
        self.scheduler: Any = None  # the flywheel's APScheduler, when started (bot/flywheel.py)

    def is_admin(self, user_id: str | None) -> bool:
        return bool(user_id) and user_id in self.admins

    def sources_for(self, channel: str) -> list[str] | None:
        """`sources=` for an answer in `channel`: its knowledge scope, without private documents unless
        it is a DM (bot/scopes.py); None = no filter. Resolved per answer, so new ingests count."""
        from bot.scopes import channel_sources

        return channel_sources(self.settings, self.store, channel)

    # --- transports ---------------------------------------------------------------------------
    def run_socket_mode(self, block: bool = True, ping_interval: float = 10.0) -> Any:
        """Connect over Socket Mode. The builtin client reconnects by itself when Slack sends
        `disconnect` or the socket drops; events held by Slack meanwhile arrive after the reconnect."""
        from slack_bolt.adapter.socket_mode import SocketModeHandler

        check_tokens(self.settings, http=False)
        handler = SocketModeHandler(
            self.app,
            _secret(self.settings.slack_app_token),
            web_client=make_client(self.settings),  # apps.connections.open must hit the same API URL
            ping_interval=ping_interval,
        )
        self._socket_handler = handler
        if block:
            handler.start()
        else:
            handler.connect()
        return handler

    def run_http(self, port: int = 3000, block: bool = True) -> Any:
        """Serve Slack's HTTP requests at /slack/events: Bolt's ASGI adapter under uvicorn (bot/http.py);
        Bolt checks each request's signature and timestamp (401 otherwise)."""
        from bot.http import HttpServer

        check_tokens(self.settings, http=True)
        server = HttpServer(self.app, self.settings.http_host, port, EVENTS_PATH)
        self._http_server = server
        server.start(block=block)
        return server

    @property
    def http_port(self) -> int | None:
        return self._http_server.port if self._http_server else None

    def close(self) -> None:
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=False)
            self.scheduler = None
        if self._socket_handler is not None:
            self._socket_handler.close()
            self._socket_handler = None
        if self._http_server is not None:
            self._http_server.stop()
            self._http_server = None
        self.pool.shutdown(wait=True)


def _verify_identity(client: WebClient) -> dict[str, Any]:
    try:
        return dict(client.auth_test().data)
    except SlackApiError as exc:
        error = exc.response.get("error") if exc.response is not None else str(exc)
        raise ConfigError(f"Slack rejected SLACK_BOT_TOKEN ({error})") from None


def _dedupe_middleware(store: Store) -> Callable[..., Any]:
    """Answer each Events API delivery once. Slack redelivers on slow acks and after reconnects, with
    a new envelope but the same `event_id`; retries are not dropped blindly, because after a
    disconnect the retry may be the only copy that arrives."""

    def dedupe_events(body: dict[str, Any], next: Callable[[], None], logger: logging.Logger) -> Any:
        event_id = body.get("event_id") if isinstance(body, dict) else None
        if event_id and not store.claim_event(event_id, DEDUPE_RETENTION_HOURS):
            logger.info("ignoring redelivered event %s", event_id)
            return BoltResponse(status=200, body="")
        return next()

    return dedupe_events


def build_app(
    settings: Settings,
    agent: Agent | None = None,
    store: Store | None = None,
    *,
    http: bool = False,
    token_verification_enabled: bool = True,
) -> FlywheelBot:
    """Validate tokens, build the Bolt app and register every listener.

    Raises ConfigError naming the variable when a token is missing or rejected (auth.test)."""
    check_tokens(settings, http=http)
    client = make_client(settings, _secret(settings.slack_bot_token))
    identity = _verify_identity(client) if token_verification_enabled else {}
    if agent is None:
        from agent.graph import Agent

        agent = Agent(settings, store=store)
    store = store or agent.store
    app = App(
        client=client,
        signing_secret=_secret(settings.slack_signing_secret) or None,
        process_before_response=False,  # ack at once, run listeners on Bolt's executor
        # auth.test already ran above (with a readable error); Bolt would repeat it.
        token_verification_enabled=False,
    )
    app.middleware(_dedupe_middleware(store))
    bot = FlywheelBot(settings, app, client, store, agent, identity)

    from bot.answering import register_answering
    from bot.assistant import register_assistant
    from bot.commands import register_commands
    from bot.feedback import register_feedback
    from bot.files import register_files
    from bot.hardening import protect_logs, register_question_guard

    register_question_guard(bot)  # before anything that answers: too long / too often never reaches it
    register_files(bot)  # before answering: the first listener that matches an event with files wins
    support = register_answering(bot)
    # Bolt's Assistant middleware: DM threads / the assistant view, answered the same way (after the guard).
    register_assistant(bot, support)
    register_feedback(bot)
    register_commands(bot)

    @app.error
    def on_error(error: Exception, body: dict[str, Any], logger: logging.Logger) -> None:
        logger.exception("Slack listener failed (%s)", body.get("type") if isinstance(body, dict) else "?",
                         exc_info=error)

    protect_logs()  # after App(): Bolt copied the root log level onto its loggers while building it
    return bot
