"""The slash command (`/flywheel` by default, `settings.slack_command`) and the App Home tab.

    /flywheel help                 anyone
    /flywheel status               anyone: documents, chunks, answers and 👍 rate this week, adapter, a running cycle
    /flywheel ingest <path>        admin: ingest a file or folder under FLYWHEEL_INGEST_ROOTS, in the background
    /flywheel scope [show | set <folder or file> … | clear]     admin: this channel's knowledge scope
    /flywheel retrain | eval | promote <version> | rollback     admin: the training flywheel

Admins are the user ids in `settings.admin_users` (FLYWHEEL_ADMIN_USERS, comma-separated). `help`
and `status` only read aggregate numbers, so everyone may run them; everything else changes state
or costs minutes of CPU, so it needs an admin. Every admin-only attempt, allowed or refused, is
written to the audit log as `slash:<sub>`. The command is acked at once (with "Working on it…" for
slow subcommands) and slow work runs on the bot's worker pool, replying through `respond()`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.status import collect_status
from bot import scopes
from bot.common import BUSY
from bot.files import INGEST_LOCK
from bot.flywheel import training_command
from bot.hardening import ingest_path

if TYPE_CHECKING:
    from bot.common import Bot

log = logging.getLogger(__name__)

REFUSED = "Sorry, only Flywheel admins can run `{command} {sub}`. Ask an admin, or try `{command} help`."
WORKING = "Working on it…"
SUBCOMMANDS: dict[str, str] = {
    "help": "show this help",
    "status": "documents, answers and 👍 rate this week, serving adapter",
    "ingest": "`ingest <path>` — add or refresh documents from a folder on the bot's host that Slack may read (admin)",
    "scope": "`scope [show | set <folder or file> … | clear]` — what this channel's answers may cite (admin)",
    "retrain": "train a new adapter from feedback and distilled Q&A (admin)",
    "eval": "evaluate the serving model (admin)",
    "promote": "`promote <version>` — serve an adapter version (admin)",
    "rollback": "go back to the previously promoted adapter (admin)",
}
PUBLIC = {"help", "status"}
TRAINING = {"retrain", "eval", "promote", "rollback"}


def help_text(command: str) -> str:
    lines = [f"*{command}* — ask me questions by mentioning me or in a DM. Commands:"]
    lines += [f"• `{command} {name}` — {text}" for name, text in SUBCOMMANDS.items()]
    return "\n".join(lines)


def status_text(bot: Bot) -> str:
    info = collect_status(bot.settings, bot.store)
    rate = info["thumbs_up_rate_this_week"]
    rate_text = f"{rate:.0%}" if rate is not None else "no votes yet"
    adapter = info["adapter"] or "none (base model)"
    lines = [
        "*Flywheel status*",
        f"• Documents: {info['documents']} ({info['chunks']} chunks)"
        + (f", {info['failed_documents']} failed" if info["failed_documents"] else ""),
        f"• Last ingest: {info['last_ingest_at'] or 'never'}",
        f"• Answers this week: {info['answers_this_week']} · 👍 rate: {rate_text}",
        f"• Model: {info['model']} · adapter: {adapter}",
    ]
    if info["adapter_metrics"]:
        metrics = ", ".join(f"{k} {v}" for k, v in dict(info["adapter_metrics"]).items())
        lines.append(f"• Adapter metrics: {metrics}")
    lines.append(f"• Retriever: {retriever_line(info)}")
    if info.get("cycle"):
        lines.append(f"• {cycle_line(info['cycle'])}")
    next_run = bot.store.get_kv("next_training_run_at")  # written by the scheduler once it exists
    lines.append(f"• Next scheduled training: {next_run or 'not scheduled'}")
    return "\n".join(lines)


CYCLE_STAGES = {
    "start": "starting", "ingest": "refreshing the documents", "distill": "distilling Q&A pairs",
    "dataset": "building the datasets", "plan": "planning the training", "train_dpo": "preference training (DPO)",
    "train_kto": "preference training (KTO)", "evaluate": "gating the new adapter",
    "retriever_train": "training the retriever", "retriever_gate": "gating the retriever",
    "retriever_switch": "switching the retriever",
}


def cycle_line(cycle: dict[str, Any]) -> str:
    """`Cycle running: training 120 of 565 new pairs (step 30/118), ETA 14:32 UTC` while it trains, else the
    stage (`Cycle running: gating the new adapter`); from `flywheel status`'s `cycle` (agent/status.py)."""
    stage = cycle.get("stage") or "start"
    if stage != "train":
        return f"Cycle running: {CYCLE_STAGES.get(stage, stage.replace('_', ' '))}"
    # The plan's head ("training 120 of 565 new pairs (+30 already learned)"), without its estimate and budget.
    text = re.split(r"[,;·]", cycle.get("plan") or "training")[0].strip()
    if cycle.get("step") and cycle.get("max_steps"):
        text += f" (step {cycle['step']}/{cycle['max_steps']})"
    eta = _utc_clock(cycle.get("eta_at"))
    return f"Cycle running: {text}" + (f", ETA {eta}" if eta else "")


def _utc_clock(iso: str | None) -> str | None:
    """`14:32 UTC` of an ISO timestamp (the store keeps UTC), or None."""
    if not iso:
        return None
    try:
        when = datetime.fromisoformat(iso)
    except ValueError:
        return None
    if when.tzinfo is not None:
        when = when.astimezone(UTC)
    return f"{when:%H:%M} UTC"


def retriever_line(info: dict[str, Any]) -> str:
    """`r0002 (hit@1 0.86 vs 0.84, p 0.03) · switching: …`: the serving embedder and its gate numbers."""
    line = info.get("retriever") or "base"
    if line == "base":
        line += " (the configured embedder)"
    numbers = info.get("retriever_metrics") or {}
    if "hit@1" in numbers:
        line += f" (hit@1 {numbers['hit@1']}" + (f" vs {numbers['vs hit@1']}" if "vs hit@1" in numbers else "")
        line += (f", p {numbers['p']}" if numbers.get("p") is not None else "") + ")"
    if info.get("retriever_switch"):
        line += f" · switching: {info['retriever_switch']}"
    return line


def ingest_text(bot: Bot, args: list[str]) -> str:
    if not args:
        return f"Usage: `{bot.settings.slack_command} ingest <path>`"
    allowed = ingest_path(bot.settings, bot.store, " ".join(args))
    if isinstance(allowed, str):  # outside the configured roots: the reason, not the file system's answer
        return allowed
    path = allowed
    if not path.exists():
        return f"`{path}` does not exist on the bot's host."
    with INGEST_LOCK:
        report = bot.agent.kb.ingest([path])
    summary = ", ".join(
        f"{report.count(s)} {s}" for s in ("added", "updated", "unchanged", "skipped", "failed") if report.count(s)
    )
    lines = [f"Ingested `{path}`: {summary or 'nothing to do'} — {report.chunks} chunks."]
    lines += [f"• ✗ {Path(f.path).name}: {f.error}" for f in report.failed]
    return "\n".join(lines)


def scope_text(bot: Bot, channel: str, user: str, args: list[str]) -> str:
    """`/flywheel scope [show | set <entry> … | clear]` for the channel the command was typed in."""
    action, entries = (args[0].lower(), scopes.parse_entries(" ".join(args[1:]))) if args else ("show", [])
    command = bot.settings.slack_command
    if action == "show":
        return scopes.describe(bot.settings, bot.store, channel)
    if scopes.is_direct_message(channel):
        return "Scopes apply to channels; a DM always sees every document. Run this in the channel to scope."
    if action == "clear":
        scopes.set_channel_scope(bot.store, channel, None, user)
        return "Scope cleared: " + scopes.describe(bot.settings, bot.store, channel)
    if action != "set" or not entries:
        return f"Usage: `{command} scope show`, `{command} scope set <folder or file> …` or `{command} scope clear`."
    documents = bot.store.query("SELECT path, name FROM documents WHERE status != 'failed'")
    unknown = [e for e in entries if not scopes.resolve([e], documents)]
    if unknown:  # a typo would silently leave the channel with nothing to cite
        return ("Not set: " + ", ".join(f"`{e}`" for e in unknown) + " matches no ingested document. Use a folder "
                "path, a folder name such as `runbooks`, or a file name as `flywheel sources` lists them.")
    scopes.set_channel_scope(bot.store, channel, entries, user)
    return "Scope set. " + scopes.describe(bot.settings, bot.store, channel)


def register_commands(bot: Bot) -> None:
    app = bot.app
    command_name = bot.settings.slack_command

    @app.command(command_name)
    def on_command(ack: Any, command: dict[str, Any], respond: Any) -> None:
        parts = (command.get("text") or "").split()
        sub, args = (parts[0].lower(), parts[1:]) if parts else ("help", [])
        user = command.get("user_id") or ""
        if sub not in SUBCOMMANDS:
            ack()
            respond(text=f"I don't know `{sub}`.\n" + help_text(command_name))
            return
        if sub not in PUBLIC:
            allowed = bot.is_admin(user)
            bot.store.audit(user, f"slash:{sub}", {"args": args, "channel": command.get("channel_id"),
                                                    "allowed": allowed})
            if not allowed:
                ack()
                respond(text=REFUSED.format(command=command_name, sub=sub))
                return
        if sub == "help":
            ack()
            respond(text=help_text(command_name))
        elif sub == "status":
            ack()
            respond(text=status_text(bot))
        elif sub == "scope":  # a few SQLite reads: answered right away
            ack()
            respond(text=scope_text(bot, command.get("channel_id") or "", user, args))
        else:
            ack(text=WORKING)
            job: Callable[[], str] = (
                (lambda: ingest_text(bot, args))
                if sub == "ingest"
                else (lambda: training_command(bot, sub, args, user, respond))
            )
            if not bot.pool.submit(_run_and_respond, job, respond, sub):
                respond(text=BUSY)

    @app.event("app_home_opened")
    def on_home_opened(event: dict[str, Any]) -> None:
        if event.get("tab", "home") != "home":
            return
        user = event["user"]
        bot.client.views_publish(user_id=user, view=home_view(bot, admin=bot.is_admin(user)))


def _run_and_respond(job: Callable[[], str], respond: Any, sub: str) -> None:
    try:
        text = job()
    except Exception:
        log.exception("slash command %s failed", sub)
        text = f"Sorry — `{sub}` failed. The details are in the bot's logs."
    respond(text=text)


def home_view(bot: Bot, admin: bool, weeks: int = 4) -> dict[str, Any]:
    """The App Home tab: knowledge base, recent answer quality, serving adapter (+ training runs for admins)."""
    info = collect_status(bot.settings, bot.store)
    since = f"datetime('now', '-{7 * weeks} days')"
    answers = {r["week"]: r["n"] for r in bot.store.query(
        f"SELECT strftime('%Y-W%W', created_at) AS week, COUNT(*) AS n FROM interactions "
        f"WHERE route = 'question' AND created_at >= {since} GROUP BY week")}
    votes: dict[str, tuple[int, int]] = {r["week"]: (r["up"], r["n"]) for r in bot.store.query(
        f"SELECT strftime('%Y-W%W', updated_at) AS week, SUM(vote > 0) AS up, COUNT(*) AS n FROM feedback "
        f"WHERE vote != 0 AND updated_at >= {since} GROUP BY week")}
    week_lines = []
    for week in sorted(set(answers) | set(votes), reverse=True):
        up, total = votes.get(week, (0, 0))
        rate = f"{up / total:.0%} 👍 ({total} votes)" if total else "no votes"
        week_lines.append(f"• {week}: {answers.get(week, 0)} answers · {rate}")

    def section(text: str) -> dict[str, Any]:
        return {"type": "section", "text": {"type": "mrkdwn", "text": text[:3000]}}

    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": "Flywheel"}},
        section(f"*Knowledge base:* {info['documents']} documents, {info['chunks']} chunks · "
                f"last ingest {info['last_ingest_at'] or 'never'}"),
        section(f"*Answers, last {weeks} weeks*\n" + ("\n".join(week_lines) or "No answers yet.")),
        section(f"*Serving:* {info['model']} · adapter {info['adapter'] or 'none (base model)'} · "
                f"retriever {retriever_line(info)}"),
    ]
    if admin:
        runs = bot.store.query(
            "SELECT id, trigger, status, stage, started_at, adapter_version FROM training_runs "
            "ORDER BY started_at DESC LIMIT 5")
        run_lines = [f"• {r['started_at'][:16]} {r['status']} ({r['trigger'] or '?'}) "
                     f"{r['adapter_version'] or ''}".rstrip() for r in runs]
        blocks += [{"type": "divider"},
                   section("*Training runs (admin)*\n" + ("\n".join(run_lines) or "No training runs yet."))]
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text":
                   f"Mention me or DM me a question · `{bot.settings.slack_command} help` for commands"}]})
    return {"type": "home", "blocks": blocks}
