"""A scripted Slack session against the fake Slack, printed as a user would see it.

    python -m bot.transcript                 # tiny random model: fast, the answer text is gibberish-or-quote
    python -m bot.transcript --real-model    # the bundled SmolLM2-135M (first run converts it, ~30 s)

It starts tests/fakeslack.py's FakeSlack (Web API + Socket Mode on 127.0.0.1), ingests the sample
handbook into a temporary FLYWHEEL_HOME, runs the real bot over Socket Mode, then: asks a question
in a channel, shows the placeholder, every streamed update and the final answer with citations,
adds a 👍 reaction and prints the stored feedback row, and runs `/flywheel status` as an admin.
The fake lives in tests/ (it is the tests' double); this dev tool imports it from there, so run it
from the repository root.
"""

from __future__ import annotations

import argparse
import logging
import os
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


def render(message: dict[str, Any]) -> str:
    """A message as Slack would roughly display it: sections, citation context, buttons."""
    if not message.get("blocks"):
        return message["text"]
    lines: list[str] = []
    for block in message["blocks"]:
        if block["type"] == "section":
            lines.append(block["text"]["text"])
        elif block["type"] == "context":
            lines += ["  " + line for e in block["elements"] for line in e["text"].splitlines()]
        elif block["type"] == "actions":
            lines.append("  " + "  ".join(f"[{e['text']['text']}]" for e in block["elements"]))
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
            lambda: next(m for m in fake.messages(CHANNEL, thread, include_parent=False) if m["blocks"]),
            timeout=600)
        if fake.calls("assistant.threads.setStatus"):
            say("(status)", fake.calls("assistant.threads.setStatus")[0]["params"].get("status", ""))
        for number, version in enumerate(answer["updates"]):
            say("flywheel" if number == 0 else "(update)", render(version))
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


if __name__ == "__main__":
    main()
