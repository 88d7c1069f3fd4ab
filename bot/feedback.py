"""Feedback on answers: emoji reactions, 👍/👎 buttons and the "what was wrong?" modal.

The buttons are Slack's native `feedback_buttons` element in a `context_actions` block under the answer
(`feedback_block`); the clicked button's value is `up:<interaction id>` or `down:<interaction id>`.
Messages posted before that carry the older `feedback_up` / `feedback_down` buttons, which keep working.
All three clicks, and reactions, store the vote through `Store.set_vote`.

Every vote lands in the `feedback` table, one row per (answer, user): a later vote replaces an
earlier one, a removed reaction records 0 — but only when the stored vote points the same way as
the removed emoji (removing 👍 after clicking 👎 keeps the 👎). Reactions count only on the bot's
own answers, found by (channel, ts) via `Store.interaction_by_message`; anything else is ignored.
Redelivered events are dropped earlier by the app's event_id dedupe, and `set_vote` is an upsert,
so a duplicate vote is harmless anyway.

A correction typed into the modal (`use_correction`) is stored first, then judged:

* from a user `settings.corrections_from` doesn't allow → ignored: it stays in the feedback table only;
* supported by the passages the model was shown (training.distill's check) → training data: the
  dataset builder makes it an SFT example and the `chosen` side of a DPO pair;
* else, if a document already says it, retrieval missed it → nothing to add;
* else the documents don't have it → a "team answers" document: a section (heading = the question,
  the corrected answer, who/where/when) in `$FLYWHEEL_HOME/team_answers/team-answers.md`, ingested at
  once, so the next question is answered from it and cites it like any other document.

Each outcome is one audit row (`feedback.correction`). A failed write or ingest is logged and audited;
the correction is never lost (it is in the feedback table), and the next one re-ingests the file.
"""

from __future__ import annotations

import logging
import re
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bot.common import parse_list

if TYPE_CHECKING:
    from bot.common import Bot
    from storage.config import Settings
    from storage.db import Store
    from storage.knowledge import KnowledgeBase

log = logging.getLogger(__name__)

MODAL_CALLBACK = "feedback_modal"
FEEDBACK_ACTION = "flywheel_feedback"  # action_id of the native feedback_buttons element
LEGACY_ACTIONS = {"feedback_up": +1, "feedback_down": -1}  # buttons on answers posted by older versions
VOTE_VALUES = {"up": +1, "down": -1}
THANKS = "Thanks for the feedback!"
SKIN_TONE = re.compile(r"::skin-tone-\d$")
TEAM_ANSWERS_FILE = "team-answers.md"
TEAM_ANSWERS_TITLE = "# Team answers\n\nAnswers the team gave in Slack to questions the documents did not answer.\n"
_team_answers_lock = threading.Lock()  # one writer at a time within the bot (a file lock across processes)


def normalize_emoji(name: str) -> str:
    """`+1::skin-tone-3` → `+1`; `:thumbsup:` → `thumbsup`."""
    return SKIN_TONE.sub("", name.strip().strip(":")).strip(":").lower()


def reaction_vote(name: str, up: set[str], down: set[str]) -> int | None:
    """+1, -1, or None for an emoji that is not feedback."""
    emoji = normalize_emoji(name)
    if emoji in up:
        return 1
    if emoji in down:
        return -1
    return None


def feedback_block(interaction_id: str) -> dict[str, Any]:
    """👍/👎 as Slack's native feedback_buttons (only valid inside a context_actions block). Each
    button's value names the vote and the answer, so a click needs no lookup by message."""

    def button(emoji: str, vote: str, label: str) -> dict[str, Any]:
        return {"text": {"type": "plain_text", "text": emoji, "emoji": True},
                "value": f"{vote}:{interaction_id}", "accessibility_label": label}

    return {
        "type": "context_actions",
        "elements": [{
            "type": "feedback_buttons",
            "action_id": FEEDBACK_ACTION,
            "positive_button": button("👍", "up", "This answer helped"),
            "negative_button": button("👎", "down", "This answer was wrong or did not help"),
        }],
    }


def parse_feedback_value(value: str) -> tuple[int, str] | None:
    """`up:<id>` → (+1, id); `down:<id>` → (-1, id); anything else (forged, truncated) → None."""
    vote, _, interaction_id = (value or "").partition(":")
    if vote not in VOTE_VALUES or not interaction_id:
        return None
    return VOTE_VALUES[vote], interaction_id


def register_feedback(bot: Bot) -> None:
    app = bot.app
    up = {normalize_emoji(e) for e in parse_list(bot.settings.up_reactions)}
    down = {normalize_emoji(e) for e in parse_list(bot.settings.down_reactions)}

    def on_reaction(event: dict[str, Any], removed: bool) -> None:
        item = event.get("item") or {}
        user = event.get("user") or ""
        if item.get("type") != "message" or not user or user == bot.bot_user_id:
            return
        vote = reaction_vote(event.get("reaction") or "", up, down)
        if vote is None:
            return
        interaction = bot.store.interaction_by_message(item.get("channel") or "", item.get("ts") or "")
        if interaction is None:  # not one of our answers
            return
        if not removed:
            bot.store.set_vote(interaction["id"], user, vote, source="reaction")
            return
        current = bot.store.vote_of(interaction["id"], user)
        if current is not None and current["vote"] == vote:
            bot.store.set_vote(interaction["id"], user, 0, source="reaction")

    @app.event("reaction_added")
    def on_reaction_added(event: dict[str, Any]) -> None:
        on_reaction(event, removed=False)

    @app.event("reaction_removed")
    def on_reaction_removed(event: dict[str, Any]) -> None:
        on_reaction(event, removed=True)

    @app.action(FEEDBACK_ACTION)
    def on_feedback_buttons(ack: Any, body: dict[str, Any], action: dict[str, Any]) -> None:
        ack()
        parsed = parse_feedback_value(action.get("value") or "")
        if parsed is None:
            log.warning("feedback_buttons click with an unreadable value")
            return
        vote, interaction_id = parsed
        _vote_clicked(bot, body, interaction_id, vote)

    # Answers posted before the native buttons carry two plain buttons whose value is the interaction id.
    @app.action("feedback_up")
    def on_feedback_up(ack: Any, body: dict[str, Any], action: dict[str, Any]) -> None:
        ack()
        _vote_clicked(bot, body, action.get("value") or "", LEGACY_ACTIONS["feedback_up"])

    @app.action("feedback_down")
    def on_feedback_down(ack: Any, body: dict[str, Any], action: dict[str, Any]) -> None:
        ack()
        _vote_clicked(bot, body, action.get("value") or "", LEGACY_ACTIONS["feedback_down"])

    @app.view(MODAL_CALLBACK)
    def on_feedback_submitted(ack: Any, body: dict[str, Any], view: dict[str, Any]) -> None:
        ack()
        interaction_id = view.get("private_metadata") or ""
        user = body["user"]["id"]
        if bot.store.interaction(interaction_id) is None:
            log.warning("feedback modal for unknown interaction %r", interaction_id)
            return
        values = (view.get("state") or {}).get("values") or {}
        comment = _input(values, "wrong")
        correction = _input(values, "correction")
        current = bot.store.vote_of(interaction_id, user)
        vote = current["vote"] if current is not None else -1  # the modal follows a 👎
        bot.store.set_vote(interaction_id, user, vote, source=current["source"] if current else "button",
                           comment=comment, correction=correction)
        if correction and vote < 0:
            use_correction(bot.settings, bot.store, bot.agent.kb, bot.store.interaction(interaction_id) or {},
                           user, correction)


def _vote_clicked(bot: Bot, body: dict[str, Any], interaction_id: str, vote: int) -> None:
    """Store a button vote, then thank (👍) or open the "what was wrong?" modal (👎)."""
    if bot.store.interaction(interaction_id) is None:  # stale or forged button value
        log.warning("feedback button for unknown interaction %r", interaction_id[:64])
        return
    bot.store.set_vote(interaction_id, body["user"]["id"], vote, source="button")
    if vote < 0:
        # trigger_id expires 3 s after the click: open the modal right here, not on a worker.
        bot.client.views_open(trigger_id=body["trigger_id"], view=feedback_modal(interaction_id))
        return
    try:
        channel = (body.get("channel") or {}).get("id") or body["container"]["channel_id"]
        bot.client.chat_postEphemeral(channel=channel, user=body["user"]["id"], text=THANKS,
                                      thread_ts=(body.get("container") or {}).get("thread_ts"))
    except Exception:
        log.warning("could not thank %s", body.get("user", {}).get("id"), exc_info=True)


def _input(values: dict[str, Any], block_id: str) -> str | None:
    state = (values.get(block_id) or {}).get("value") or {}
    text = (state.get("value") or "").strip()
    return text or None


def feedback_modal(interaction_id: str) -> dict[str, Any]:
    """Two optional inputs; the answer being judged travels in private_metadata."""

    def text_input(block_id: str, label: str, placeholder: str) -> dict[str, Any]:
        return {
            "type": "input", "block_id": block_id, "optional": True,
            "label": {"type": "plain_text", "text": label},
            "element": {"type": "plain_text_input", "action_id": "value", "multiline": True,
                        "placeholder": {"type": "plain_text", "text": placeholder}},
        }

    return {
        "type": "modal",
        "callback_id": MODAL_CALLBACK,
        "private_metadata": interaction_id,
        "title": {"type": "plain_text", "text": "Improve this answer"},
        "submit": {"type": "plain_text", "text": "Send"},
        "close": {"type": "plain_text", "text": "Skip"},
        "blocks": [
            text_input("wrong", "What was wrong?", "Wrong document, outdated, missed the point…"),
            text_input("correction", "What is the right answer?", "The answer you expected, if you know it"),
        ],
    }


# --- corrections ---------------------------------------------------------------------------------
def team_answers_path(settings: Settings) -> Path:
    return settings.home / "team_answers" / TEAM_ANSWERS_FILE


def use_correction(settings: Settings, store: Store, kb: KnowledgeBase, interaction: dict[str, Any], user_id: str,
                   correction: str) -> str:
    """Judge a stored 👎 correction and act on it (see the module docstring). Returns the outcome:
    "ignored" | "training" | "in_documents" | "team_answer" | "team_answer_failed". Never raises."""
    from training.dataset import correction_allowed, correction_supported, passages_of

    detail: dict[str, Any] = {"interaction_id": interaction.get("id"), "user": user_id}
    outcome = "failed"
    try:
        if not correction_allowed(settings, user_id):
            outcome = "ignored"
            detail["reason"] = f"corrections_from={settings.corrections_from!r} does not include {user_id}"
        elif correction_supported(correction, passages_of(interaction, kb)):
            outcome = "training"
        elif (source := _documented_in(kb, correction)) is not None:
            outcome, detail["source"] = "in_documents", source
        else:
            outcome = "team_answer"
            path = add_team_answer(settings, interaction, user_id, correction)
            detail["document"] = str(path)
            report = kb.ingest([path])
            if report.failed:
                raise RuntimeError(report.failed[0].error or "ingest failed")
    except Exception as exc:  # the correction is already stored; never fail the Slack listener on this
        log.exception("correction on %s could not be used", interaction.get("id"))
        outcome, detail["error"] = ("team_answer_failed" if outcome == "team_answer" else "failed"), str(exc)
    log.info("correction by %s on interaction %s: %s", user_id, interaction.get("id"), outcome)
    store.audit(user_id, "feedback.correction", {**detail, "use": outcome})
    return outcome


def _documented_in(kb: KnowledgeBase, correction: str) -> str | None:
    """The source of a chunk that alone supports the correction, if retrieval finds one."""
    from agent.retrieval import Retriever
    from training.dataset import correction_supported

    for hit in Retriever(kb).search(correction).hits:
        if correction_supported(correction, [hit]):
            return hit.source
    return None


def _one_line(text: str) -> str:
    return " ".join(text.split()).lstrip("#").strip()


def add_team_answer(settings: Settings, interaction: dict[str, Any], user_id: str, correction: str,
                    when: datetime | None = None) -> Path:
    """Write the correction as a section of the team-answers document and return the file. A section
    with the same question is replaced (the newest answer wins), others are kept in order."""
    from filelock import FileLock

    question = _one_line(interaction.get("condensed_question") or interaction.get("question") or "Untitled")
    channel = interaction.get("channel") or "?"
    thread = (interaction.get("conversation_id") or "").rpartition(":")[2] or "?"
    stamp = (when or datetime.now(UTC)).strftime("%Y-%m-%d")
    # A line starting with "#" would open a heading and split the section: escape it.
    body = "\n".join("\\" + line.lstrip() if line.lstrip().startswith("#") else line
                     for line in correction.strip().splitlines())
    section = (f"## {question}\n\n{body}\n\n"
               f"_Answered by Slack user {user_id} in channel {channel} (thread {thread}) on {stamp}._\n")
    path = team_answers_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _team_answers_lock, FileLock(str(path.parent / ".lock")):
        text = path.read_text(encoding="utf-8") if path.exists() else TEAM_ANSWERS_TITLE
        head, *sections = re.split(r"(?m)^(?=## )", text)
        sections = [s for s in sections if s.splitlines()[0][3:].strip() != question]
        parts = [head.rstrip() + "\n", *(s.rstrip() + "\n" for s in sections), section]
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text("\n".join(parts), encoding="utf-8")
        tmp.replace(path)  # a crash mid-write never leaves half a document for ingest
    return path
