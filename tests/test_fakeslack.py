"""The fake Slack works with the real slack_sdk WebClient and the real Bolt Socket Mode stack."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from slack_bolt import App
from slack_bolt.adapter.socket_mode import SocketModeHandler
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_handlers import RateLimitErrorRetryHandler

from tests.fakeslack import FakeSlack

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("no_slack_env")]


@pytest.fixture
def fake() -> Iterator[FakeSlack]:
    with FakeSlack() as running:
        yield running


@pytest.fixture
def client(fake: FakeSlack) -> WebClient:
    return WebClient(token="xoxb-test", base_url=fake.api_url)


@pytest.fixture
def bolt(fake: FakeSlack, client: WebClient) -> Iterator[SocketModeHandler]:
    app = App(client=client)

    @app.event("app_mention")
    def on_mention(event: dict, say) -> None:  # type: ignore[no-untyped-def]
        say(text=f"echo: {event['text']}", thread_ts=event.get("thread_ts") or event["ts"])

    @app.command("/fly")
    def on_command(ack, respond, command: dict) -> None:  # type: ignore[no-untyped-def]
        ack()
        respond(text=f"got {command['text']}")

    @app.action("vote")
    def on_vote(ack, body: dict, client: WebClient) -> None:  # type: ignore[no-untyped-def]
        ack()
        client.chat_update(channel=body["channel"]["id"], ts=body["message"]["ts"], text="thanks")

    @app.event("message")
    def on_dm(event: dict, say) -> None:  # type: ignore[no-untyped-def]
        say(text=f"dm: {event['text']}", thread_ts=event.get("thread_ts") or event["ts"])

    @app.event("reaction_added")
    def on_reaction(event: dict, client: WebClient) -> None:
        text = f"saw {event['reaction']} on {event['item_user']}"
        client.chat_postMessage(channel=event["item"]["channel"], text=text)

    @app.action("rate")
    def on_rate(ack, body: dict, action: dict, client: WebClient) -> None:  # type: ignore[no-untyped-def]
        ack()
        client.chat_postMessage(channel=body["channel"]["id"], text=f"{action['type']} {action['value']}")

    @app.view("survey")
    def on_submit(ack, view: dict) -> None:  # type: ignore[no-untyped-def]
        ack(response_action="errors", errors={"b": view["private_metadata"]})

    @app.event("app_home_opened")
    def on_home(event: dict, client: WebClient) -> None:
        client.views_publish(user_id=event["user"], view={"type": "home", "blocks": []})

    # The builtin client finds closed and dropped connections only on its monitor tick
    # (every ping_interval; a drop takes 5 failed pings): keep it short so reconnects are fast.
    handler = SocketModeHandler(app, "xapp-test", ping_interval=0.5)
    handler.connect()
    fake.wait_for(lambda: fake.connected, timeout=5)
    yield handler
    handler.close()


def test_web_client_thread_roundtrip(fake: FakeSlack, client: WebClient) -> None:
    assert client.auth_test()["user_id"] == "UBOT"
    parent = client.chat_postMessage(channel="C1", text="root")
    reply = client.chat_postMessage(channel="C1", text="draft", thread_ts=parent["ts"],
                                    blocks=[{"type": "section", "text": {"type": "mrkdwn", "text": "draft"}}])
    assert float(reply["ts"]) > float(parent["ts"])
    assert reply["message"]["bot_id"] == "BBOT" and reply["message"]["user"] == "UBOT"
    client.chat_update(channel="C1", ts=reply["ts"], text="final")
    client.reactions_add(channel="C1", timestamp=parent["ts"], name="eyes")  # form-encoded

    replies = client.conversations_replies(channel="C1", ts=parent["ts"])["messages"]  # a GET
    assert [m["text"] for m in replies] == ["root", "final"]
    assert replies[0]["reactions"][0]["name"] == "eyes"
    stored = fake.messages("C1", thread_ts=parent["ts"], include_parent=False)
    assert stored[0]["updates"] == [{"text": "draft", "blocks": reply["message"]["blocks"]}]
    assert stored[0]["blocks"] == reply["message"]["blocks"]  # omitted blocks are kept, like Slack
    assert fake.calls("chat.update")[0]["token"] == "xoxb-test"

    with pytest.raises(SlackApiError, match="msg_too_long"):
        client.chat_postMessage(channel="C1", text="x" * 40_001)
    with pytest.raises(SlackApiError, match="invalid_blocks"):
        client.chat_postMessage(channel="C1", text="x", blocks=[{"type": "divider"}] * 51)
    with pytest.raises(SlackApiError, match="invalid_auth"):
        WebClient(token="bogus", base_url=fake.api_url).auth_test()


def test_rate_limit_is_retried(fake: FakeSlack, client: WebClient) -> None:
    client.retry_handlers.append(RateLimitErrorRetryHandler(max_retry_count=2))
    fake.fail_next("chat.postMessage", status=429, retry_after=1)
    assert client.chat_postMessage(channel="C1", text="hi")["ok"]
    assert [c["status"] for c in fake.calls("chat.postMessage")] == [429, 200]
    assert len(fake.messages("C1")) == 1


def test_mention_is_answered_in_thread_across_reconnects(fake: FakeSlack, bolt: SocketModeHandler) -> None:
    first = fake.mention("U1", "C1", "<@UBOT> hello")
    ts = first["payload"]["event"]["ts"]
    reply = fake.wait_for(lambda: fake.messages("C1", thread_ts=ts, include_parent=False))
    assert reply[0]["text"] == "echo: <@UBOT> hello" and reply[0]["bot_id"] == "BBOT"

    for number, how in enumerate(["close", "message", "drop"], start=2):
        fake.disconnect(how)
        again = fake.mention("U1", "C1", f"after {how}")  # queued until the client is back
        ts = again["payload"]["event"]["ts"]
        fake.wait_for(lambda: fake.messages("C1", thread_ts=ts, include_parent=False))
        assert fake.connections == number
    assert len(fake.calls("apps.connections.open")) == 4

    sent = {e["envelope_id"] for e in fake.envelopes()}
    fake.wait_for(lambda: sent <= {a["envelope_id"] for a in fake.acks()})


def test_command_click_and_redelivery(fake: FakeSlack, client: WebClient, bolt: SocketModeHandler) -> None:
    fake.command("U1", "/fly", "now")
    assert fake.wait_for(fake.responses)[0]["text"] == "got now"
    assert fake.ephemerals()[0]["text"] == "got now"  # respond() defaults to ephemeral

    posted = client.chat_postMessage(channel="C1", text="rate me", blocks=[{
        "type": "actions", "block_id": "feedback",
        "elements": [{"type": "button", "action_id": "vote", "value": "up",
                      "text": {"type": "plain_text", "text": "Up"}}]}])
    envelope = fake.click("U1", "C1", posted["ts"], "vote", "up")
    assert envelope["payload"]["actions"][0]["text"]["text"] == "Up"
    fake.wait_for(lambda: fake.messages("C1")[0]["text"] == "thanks")

    mention = fake.mention("U1", "C1", "once")
    ts = mention["payload"]["event"]["ts"]
    fake.wait_for(lambda: fake.messages("C1", thread_ts=ts, include_parent=False))
    retry = fake.deliver(mention, retry_attempt=1, retry_reason="timeout")
    assert retry["payload"]["event_id"] == mention["payload"]["event_id"]
    assert retry["envelope_id"] != mention["envelope_id"] and retry["retry_attempt"] == 1
    fake.wait_for(lambda: retry["envelope_id"] in {a["envelope_id"] for a in fake.acks()})


def test_dm_reaction_view_and_home(fake: FakeSlack, client: WebClient, bolt: SocketModeHandler) -> None:
    fake.echo_events = True  # the bot's DM replies come back as events, as on Slack: Bolt must ignore them
    ts = fake.dm("U1", "hi")["payload"]["event"]["ts"]
    reply = fake.wait_for(lambda: fake.messages("D0001", thread_ts=ts, include_parent=False))[0]
    assert reply["text"] == "dm: hi"
    sent = fake.wait_for(lambda: len(fake.envelopes()) == 2 and fake.envelopes())  # the dm and the echo
    fake.wait_for(lambda: {e["envelope_id"] for e in sent} <= {a["envelope_id"] for a in fake.acks()})
    assert len(fake.messages("D0001", include_bots=True)) == 2  # no answer to its own echo

    fake.react("U1", "D0001", reply["ts"], "thumbsup")
    fake.wait_for(lambda: any(m["text"] == "saw thumbsup on UBOT" for m in fake.messages("D0001")))

    opened = client.views_open(trigger_id="1.2.3", view={
        "type": "modal", "callback_id": "survey", "private_metadata": "meta",
        "title": {"type": "plain_text", "text": "Survey"}, "blocks": []})["view"]
    envelope = fake.submit_view("U1", opened, {"b": {"a": "typed"}})
    assert envelope["payload"]["view"]["state"]["values"]["b"]["a"]["value"] == "typed"
    ack = fake.wait_for(lambda: [a for a in fake.acks() if a["envelope_id"] == envelope["envelope_id"]])[0]
    assert ack["payload"] == {"response_action": "errors", "errors": {"b": "meta"}}

    fake.home_opened("U1")
    assert fake.wait_for(lambda: fake.home_view("U1"))["type"] == "home"


def test_streaming_text_only_grows_and_stop_attaches_blocks(fake: FakeSlack, client: WebClient) -> None:
    parent = client.chat_postMessage(channel="D1", text="question")["ts"]
    # The SDK's own helper (it sends markdown_text chunks) ...
    stream = client.chat_stream(channel="D1", thread_ts=parent, buffer_size=1)
    stream.append(markdown_text="Hel")
    stream.append(markdown_text="lo")
    # ... and the raw method with markdown_text both extend the same message.
    client.chat_appendStream(channel="D1", ts=stream.ts, markdown_text=" world")
    blocks = [{"type": "context", "elements": [{"type": "mrkdwn", "text": "[1] a.md"}]}]
    stream.stop(markdown_text="!", blocks=blocks)
    (message,) = fake.messages("D1", thread_ts=parent, include_parent=False)
    assert message["text"] == "Hello world!" and message["blocks"] == blocks
    assert message["stream"]["texts"] == ["Hel", "Hello", "Hello world", "Hello world!"]
    assert message["stream"]["state"] == "stopped"
    with pytest.raises(SlackApiError, match="message_not_in_streaming_state"):
        client.chat_appendStream(channel="D1", ts=stream.ts, markdown_text="more")
    with pytest.raises(SlackApiError, match="msg_too_long"):
        client.chat_startStream(channel="D1", thread_ts=parent, markdown_text="x" * 12_001)
    # In a channel Slack needs the recipient; the fake refuses a stream without one.
    with pytest.raises(SlackApiError, match="invalid_arguments"):
        client.chat_startStream(channel="C1", thread_ts=parent, markdown_text="hi")
    assert client.chat_startStream(channel="C1", thread_ts=parent, markdown_text="hi",
                                   recipient_user_id="U1", recipient_team_id="T0001")["ok"]


def test_streaming_can_be_rejected() -> None:
    with FakeSlack(streaming=False, stream_error="unknown_method") as fake:
        client = WebClient(token="xoxb-test", base_url=fake.api_url)
        for call in (lambda: client.chat_startStream(channel="D1", thread_ts="1.000001", markdown_text="a"),
                     lambda: client.chat_appendStream(channel="D1", ts="1.000001", markdown_text="a"),
                     lambda: client.chat_stopStream(channel="D1", ts="1.000001")):
            with pytest.raises(SlackApiError, match="unknown_method"):
                call()
        assert fake.messages() == []
        assert client.chat_postMessage(channel="D1", text="the fallback still works")["ok"]


def test_feedback_buttons_click_sends_the_clicked_buttons_value(fake: FakeSlack, client: WebClient,
                                                                bolt: SocketModeHandler) -> None:
    def button(text: str, value: str) -> dict:
        return {"text": {"type": "plain_text", "text": text}, "value": value}

    posted = client.chat_postMessage(channel="C1", text="rate me", blocks=[{"type": "context_actions", "elements": [{
        "type": "feedback_buttons", "action_id": "rate",
        "positive_button": button("Good", "good-1"), "negative_button": button("Bad", "bad-1")}]}])
    envelope = fake.click_feedback("U1", "C1", posted["ts"], positive=False)
    action = envelope["payload"]["actions"][0]
    assert action["type"] == "feedback_buttons" and action["text"]["text"] == "Bad"
    fake.wait_for(lambda: any(m["text"] == "feedback_buttons bad-1" for m in fake.messages("C1")))


def test_assistant_thread_events_and_methods(fake: FakeSlack, client: WebClient) -> None:
    """A bare Bolt `Assistant` on the fake: thread started, a message in the thread, and the
    assistant.threads.* methods it calls, recorded per thread."""
    from slack_bolt import Assistant

    app = App(client=client)
    assistant = Assistant()

    @assistant.thread_started
    def started(say, set_suggested_prompts) -> None:  # type: ignore[no-untyped-def]
        say("hello")
        set_suggested_prompts(prompts=["What is X?", {"title": "Y", "message": "Tell me about Y"}], title="Try")

    @assistant.user_message
    def message(payload: dict, say, set_status, set_title) -> None:  # type: ignore[no-untyped-def]
        set_title(payload["text"])
        set_status("is thinking…", loading_messages=["Reading…", "Writing…"])
        say(f"re: {payload['text']}")

    app.assistant(assistant)
    handler = SocketModeHandler(app, "xapp-test", ping_interval=0.5)
    handler.connect()
    try:
        fake.wait_for(lambda: fake.connected, timeout=5)
        event = fake.start_assistant_thread("U1", context_channel="C1")["payload"]["event"]
        channel, thread = event["assistant_thread"]["channel_id"], event["assistant_thread"]["thread_ts"]
        root = fake.messages(channel)[0]
        assert root["ts"] == thread and root["subtype"] == "assistant_app_thread"
        prompts = fake.wait_for(lambda: fake.assistant_thread(channel, thread)["prompts"])
        assert prompts == {"title": "Try", "prompts": [{"title": "What is X?", "message": "What is X?"},
                                                      {"title": "Y", "message": "Tell me about Y"}]}
        fake.wait_for(lambda: any(m["text"] == "hello" for m in fake.messages(channel, thread)))

        fake.assistant_message("U1", "What is X?", thread)
        fake.wait_for(lambda: any(m["text"] == "re: What is X?" for m in fake.messages(channel, thread)))
        state = fake.assistant_thread(channel, thread)
        assert state["titles"] == ["What is X?"]
        assert state["statuses"] == [{"status": "is thinking…", "loading_messages": ["Reading…", "Writing…"]}]
        assert state["status"] == ""  # cleared by the reply, as Slack does
    finally:
        handler.close()

    # Slack's checks: a thread that exists, 1–4 prompts with title and message, a non-empty title.
    with pytest.raises(SlackApiError, match="thread_not_found"):
        client.assistant_threads_setStatus(channel_id=channel, thread_ts="1.000001", status="x")
    with pytest.raises(SlackApiError, match="invalid_arguments"):
        client.assistant_threads_setSuggestedPrompts(channel_id=channel, thread_ts=thread,
                                                     prompts=[{"title": "t", "message": "m"}] * 5)
    with pytest.raises(SlackApiError, match="invalid_arguments"):
        client.assistant_threads_setTitle(channel_id=channel, thread_ts=thread, title=" ")
