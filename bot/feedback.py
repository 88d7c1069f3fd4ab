"""Feedback on answers: emoji reactions, 👍/👎 buttons and the "what was wrong?" modal.

Every vote lands in the `feedback` table, one row per (answer, user): a later vote replaces an
earlier one, a removed reaction records 0 — but only when the stored vote points the same way as
the removed emoji (removing 👍 after clicking 👎 keeps the 👎). Reactions count only on the bot's
own answers, found by (channel, ts) via `Store.interaction_by_message`; anything else is ignored.
Redelivered events are dropped earlier by the app's event_id dedupe, and `set_vote` is an upsert,
so a duplicate vote is harmless anyway.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any

from bot.app import parse_list

if TYPE_CHECKING:
    from bot.app import FlywheelBot

log = logging.getLogger(__name__)

MODAL_CALLBACK = "feedback_modal"
THANKS = "Thanks for the feedback!"
SKIN_TONE = re.compile(r"::skin-tone-\d$")


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


def register_feedback(bot: FlywheelBot) -> None:
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

    @app.action("feedback_up")
    def on_feedback_up(ack: Any, body: dict[str, Any], action: dict[str, Any]) -> None:
        ack()
        interaction_id = _button_vote(bot, body, action, +1)
        if interaction_id is None:
            return
        try:
            channel = (body.get("channel") or {}).get("id") or body["container"]["channel_id"]
            bot.client.chat_postEphemeral(channel=channel, user=body["user"]["id"], text=THANKS,
                                          thread_ts=(body.get("container") or {}).get("thread_ts"))
        except Exception:
            log.warning("could not thank %s", body.get("user", {}).get("id"), exc_info=True)

    @app.action("feedback_down")
    def on_feedback_down(ack: Any, body: dict[str, Any], action: dict[str, Any]) -> None:
        ack()
        interaction_id = _button_vote(bot, body, action, -1)
        if interaction_id is None:
            return
        # trigger_id expires 3 s after the click: open the modal right here, not on a worker.
        bot.client.views_open(trigger_id=body["trigger_id"], view=feedback_modal(interaction_id))

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


def _button_vote(bot: FlywheelBot, body: dict[str, Any], action: dict[str, Any], vote: int) -> str | None:
    interaction_id = action.get("value") or ""
    if bot.store.interaction(interaction_id) is None:  # stale or forged button value
        log.warning("feedback button for unknown interaction %r", interaction_id)
        return None
    bot.store.set_vote(interaction_id, body["user"]["id"], vote, source="button")
    return interaction_id


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
