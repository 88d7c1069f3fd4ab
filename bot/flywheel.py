"""The Slack side of the data flywheel: `/flywheel retrain | eval | promote <v> | rollback`, progress
by DM, the scheduled cycle, and notices to `FLYWHEEL_NOTIFY_CHANNEL`.

A retrain takes minutes and a `response_url` takes only five posts within 30 minutes, so progress goes
to a DM thread with the admin who asked, and `respond()` carries the start and the result. The
serving agent switches adapters by itself: it checks the registry before each answer.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from training.cycle import gate_questions, run_cycle

if TYPE_CHECKING:
    from bot.common import Bot

log = logging.getLogger(__name__)


def training_command(bot: Bot, name: str, args: list[str], user: str, respond: Any) -> str:
    """Run one training subcommand on a worker thread; returns the reply shown to the admin."""
    if name == "retrain":
        return retrain(bot, user, respond)
    if name == "eval":
        return evaluate_serving(bot)
    if name == "promote":
        if not args:
            return "Usage: `promote <version>` — see the versions in the App Home or `flywheel adapters`."
        return promote_version(bot, args[0], user)
    if name == "rollback":
        return rollback_version(bot, user)
    raise ValueError(f"not a training command: {name}")


class DMThread:
    """Posts a parent message to the user's DM and progress lines as replies under it."""

    def __init__(self, bot: Bot, user: str, title: str):
        self.bot = bot
        self.channel: str | None = None
        self.ts: str | None = None
        try:
            response = bot.client.chat_postMessage(channel=user, text=title)
            self.channel, self.ts = response["channel"], response["ts"]
        except Exception:  # progress is a courtesy; the result still comes through respond()
            log.warning("could not open a DM thread with %s", user, exc_info=True)

    def say(self, text: str) -> None:
        if self.ts is None:
            return
        try:
            self.bot.client.chat_postMessage(channel=self.channel, thread_ts=self.ts, text=text)
        except Exception:
            log.warning("could not post progress", exc_info=True)


def retrain(bot: Bot, user: str, respond: Any) -> str:
    respond(text="Starting a flywheel cycle — I'll post progress in a DM and the result here.")
    thread = DMThread(bot, user, "Flywheel cycle started (ingest → distill → datasets → train → evaluate).")
    result = run_cycle(bot.settings, bot.store, trigger=f"slack:{user}", on_progress=thread.say)
    summary = result.summary()
    if result.status in ("succeeded", "failed"):
        notify(bot, f"<@{user}> ran a flywheel cycle — {summary}")
    return summary


def evaluate_serving(bot: Bot) -> str:
    from training.gate import evaluate_adapter, make_generator
    from training.registry import current

    qa = gate_questions(bot.store, bot.settings.gate_max_items)
    if not qa:
        return "There are no held-out questions yet: run `retrain` (or `flywheel distill`) first."
    serving = current(bot.store)
    settings = bot.settings.model_copy(update={"max_new_tokens": bot.settings.gate_max_new_tokens})
    report = evaluate_adapter(settings, bot.store, bot.agent.kb, serving.version if serving else None, qa,
                              generator=make_generator(settings))
    final = report["final"]  # what users see, as the gate judges it
    judged = ""
    if "judge_relevance" in report:  # with an Anthropic key, Claude's 1–5 scores
        judged = (f" Claude judge (1–5): relevance {report['judge_relevance']:.1f}, groundedness "
                  f"{report['judge_groundedness']:.1f}, coherence {report['judge_coherence']:.1f}, similarity "
                  f"{report['judge_similarity']:.1f} (${report['judge_usage']['cost_usd']:.3f}).")
    return (f"*Evaluation of {report['label']}* on {report['n']} questions: "
            f"accuracy {final.get('accuracy', 0.0):.0%}, F1 {final.get('f1', 0.0):.2f}, "
            f"groundedness {final.get('groundedness', 0.0):.2f}, "
            f"false refusals {final.get('false_refusal', 0.0):.0%}, correct refusals {final.get('correct_refusal', 0.0):.0%}, "
            f"written by the model {final.get('produced_by_model', 0.0):.0%} "
            f"({report['seconds']:.0f} s)." + judged)


def promote_version(bot: Bot, version: str, user: str) -> str:
    from training.registry import RegistryError, promote

    try:
        record = promote(bot.settings, bot.store, version, actor=user)
    except RegistryError as exc:
        return f"Could not promote `{version}`: {exc}"
    notify(bot, f"<@{user}> promoted adapter {record.version}.")
    return f"Promoted adapter `{record.version}`; answers use it from the next question on."


def rollback_version(bot: Bot, user: str) -> str:
    from training.registry import RegistryError, rollback

    try:
        record = rollback(bot.settings, bot.store, actor=user)
    except RegistryError as exc:
        return f"Could not roll back: {exc}"
    notify(bot, f"<@{user}> rolled back to adapter {record.version}.")
    return f"Rolled back: serving adapter `{record.version}` from the next question on."


def notify(bot: Bot, text: str) -> None:
    """A notice in FLYWHEEL_NOTIFY_CHANNEL, if one is configured; never raises."""
    channel = bot.settings.notify_channel
    if not channel:
        return
    try:
        bot.client.chat_postMessage(channel=channel, text=text)
    except Exception:
        log.warning("could not post to the notify channel %s", channel, exc_info=True)


def start_schedule(bot: Bot) -> str | None:
    """Start the cycle schedule inside the bot process; returns the next run time (ISO) or None."""
    from training.scheduler import build_scheduler, start

    scheduler = build_scheduler(bot.settings, notify=lambda text: notify(bot, text))
    if scheduler is None:
        return None
    bot.scheduler = scheduler
    return start(scheduler, bot.settings)
