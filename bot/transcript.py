"""A scripted Slack session against the fake Slack, printed as a user would see it.

    python -m bot.transcript                 # tiny random model: fast, the answer text is gibberish-or-quote
    python -m bot.transcript --real-model    # the bundled SmolLM2-135M (first run converts it, ~30 s)

It starts tests/fakeslack.py's FakeSlack (Web API + Socket Mode on 127.0.0.1), ingests the sample
handbook into a temporary FLYWHEEL_HOME, runs the real bot over Socket Mode, then: asks a question
in a channel, shows the status, every natively streamed piece of checked text and the final answer
with citations and feedback buttons,
adds a 👍 reaction and prints the stored feedback row, and runs `/flywheel status` as an admin.
The fake lives in tests/ (it is the tests' double); this dev tool imports it from there, so run it
from the repository root.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

for _name in list(os.environ):  # a developer's real Slack env must not leak into the fake session
    if _name.startswith("SLACK_"):
        del os.environ[_name]
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ADMIN = "UADMIN"
USER = "UALICE"
CHANNEL = "C0001"


def _button_labels(element: dict[str, Any]) -> list[str]:
    if element.get("type") == "feedback_buttons":  # Slack's native 👍/👎 pair
        return [element[k]["text"]["text"] for k in ("positive_button", "negative_button") if k in element]
    return [element["text"]["text"]] if "text" in element else []


def render(message: dict[str, Any]) -> str:
    """A message as Slack would roughly display it: its text or markdown/section blocks, citation context,
    buttons (classic actions or the native feedback buttons in a context_actions block)."""
    blocks = message.get("blocks") or []
    lines: list[str] = [] if any(b["type"] in ("markdown", "section") for b in blocks) else [message["text"]]
    for block in blocks:
        if block["type"] == "markdown":
            lines.append(block["text"])
        elif block["type"] == "section":
            lines.append(block["text"]["text"])
        elif block["type"] == "context":
            lines += ["  " + line for e in block["elements"] for line in e["text"].splitlines()]
        elif block["type"] in ("actions", "context_actions"):
            labels = [label for e in block["elements"] for label in _button_labels(e)]
            lines.append("  " + "  ".join(f"[{label}]" for label in labels))
    return "\n".join(lines).replace("&gt;", ">").replace("&lt;", "<").replace("&amp;", "&")


def say(who: str, text: str) -> None:
    prefix = f"{who:>10} │ "
    print(prefix + text.replace("\n", "\n" + " " * 11 + "│ "))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real-model", action="store_true", help="Answer with the bundled SmolLM2-135M.")
    parser.add_argument("--question", default="How much traffic does a canary get, and for how long?")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "chromadb", "sentence_transformers", "transformers", "slack_bolt", "slack_sdk"):
        logging.getLogger(noisy).setLevel(logging.ERROR)

    from agent.graph import Agent
    from bot.app import build_app
    from storage.config import Settings
    from storage.samples import sample_handbook
    from tests.fakeslack import FakeSlack

    work = Path(tempfile.mkdtemp(prefix="flywheel-transcript-"))
    from agent.models import build_tiny_model

    model = "" if args.real_model else str(build_tiny_model(work / "tiny-model"))
    fake = FakeSlack(bot_user_id="UBOT", bot_id="BBOT").start()
    settings = Settings(
        home=work / "home", model=model, max_new_tokens=80 if args.real_model else 24,
        stream_interval=1.0 if args.real_model else 0.05, admin_users=ADMIN, slack_api_url=fake.api_url,
        SLACK_BOT_TOKEN="xoxb-transcript", SLACK_APP_TOKEN="xapp-transcript",
    )
    agent = Agent(settings)
    report = agent.kb.ingest([sample_handbook()])
    print(f"(ingested the sample handbook: {report.count('added')} documents, {report.chunks} chunks; "
          f"model: {'bundled SmolLM2-135M' if args.real_model else 'tiny random model'})\n")
    bot = build_app(settings, agent)
    bot.run_socket_mode(block=False, ping_interval=0.5)
    try:
        fake.wait_for(lambda: fake.connected, timeout=15)
        say(USER, f"@flywheel {args.question}")
        thread = fake.mention(USER, CHANNEL, f"<@UBOT> {args.question}")["payload"]["event"]["ts"]
        answer = fake.wait_for(
            lambda: next(m for m in fake.messages(CHANNEL, thread, include_parent=False)
                         if (m.get("stream") or {}).get("state") == "stopped" or (m["blocks"] and not m.get("stream"))),
            timeout=600)
        if fake.calls("assistant.threads.setStatus"):
            say("(status)", fake.calls("assistant.threads.setStatus")[0]["params"].get("status", ""))
        # Native streaming: each call's visible text (it only grows: nothing shown is taken back).
        streamed = (answer.get("stream") or {}).get("texts", [])
        for number, text in enumerate(t for i, t in enumerate(streamed) if i == 0 or t != streamed[i - 1]):
            say("flywheel" if number == 0 else "(stream)", text)
        if not streamed:  # the chat.update fallback, when the workspace refuses streaming
            for version in answer.get("updates", []):
                say("(update)", render(version))
        say("flywheel", render(answer))

        print()
        say(USER, "reacts 👍 (:+1::skin-tone-2:)")
        fake.react(USER, CHANNEL, answer["ts"], "+1::skin-tone-2")
        interaction = bot.store.interaction_by_message(CHANNEL, answer["ts"])
        row = fake.wait_for(lambda: bot.store.vote_of(interaction["id"], USER), timeout=15)
        say("(stored)", "feedback " + ", ".join(f"{k}={row[k]!r}" for k in
                                                ("interaction_id", "user_id", "vote", "source", "updated_at")))

        print()
        say(ADMIN, "/flywheel status")
        fake.command(ADMIN, "/flywheel", "status")
        response = fake.wait_for(lambda: fake.responses(), timeout=15)[0]
        say("flywheel", response["text"] + "\n(only visible to you)")
    finally:
        bot.close()
        fake.stop()
        shutil.rmtree(work, ignore_errors=True)  # a tiny model, a home and an index: ~17 MB per run


if __name__ == "__main__":
    main()
