"""The cycle's gate in its own low-priority process, like training.

    decision, reports = run_gate_process(settings, "v0004", qa, actor="slack:U1")   # in the cycle
    python -m training.gate_process --job JOB.json                                  # the child

Why: the gate answers ~2 × gate_max_items questions with a freshly loaded model — minutes of CPU. In
the bot's process it would compete with users' answers at the same priority and share their torch
thread pool; in a child at `train_nice` with `train_threads` threads, answers get the cores first,
and the child's model and memory go away when it ends.

The job file carries the settings (every field without an alias; the secrets and ANTHROPIC_BASE_URL
reach the child as the environment variables they are read from), the candidate, the questions and
the gate's options; the child writes `{"decision": …, "reports": …}` next to it and exits 0.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from storage.config import Settings
from training.gate import Decision

log = logging.getLogger(__name__)

# Environment variables the child needs beyond the scrubbed environment: the gate's Claude judge and
# an API generator backend talk to those services (training never does, so it doesn't get them).
PASSED_SECRETS = ("ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "OPENAI_API_KEY")


def settings_fields(settings: Settings) -> dict[str, Any]:
    """The settings as init keywords for the child: fields read through an alias (secrets, base URL) are
    left out, they come from the environment."""
    aliased = {name for name, info in type(settings).model_fields.items() if info.validation_alias is not None}
    return settings.model_dump(mode="json", exclude=aliased)


def run_gate_process(settings: Settings, version: str, qa: list[dict[str, Any]], *, actor: str = "gate",
                     include_base: bool = False, force: bool = False,
                     stall_seconds: float | None = None) -> tuple[Decision, dict[str, dict[str, Any]]]:
    """training.gate.run_gate(settings, store, kb, version, qa, …) in a child process at `settings.train_nice`
    with `settings.train_threads` torch threads; returns what run_gate returns. Raises RuntimeError with the
    log's tail when the child fails."""
    from training.train import STALL_SECONDS, run_process

    settings.ensure_dirs()
    threads = settings.train_threads or settings.threads
    job_dir = Path(tempfile.mkdtemp(prefix="gate-", dir=settings.home))
    job = {"settings": {**settings_fields(settings), "threads": threads}, "version": version, "qa": qa,
           "actor": actor, "include_base": include_base, "force": force, "out": str(job_dir / "result.json")}
    job_path = job_dir / "job.json"
    job_path.write_text(json.dumps(job, ensure_ascii=False))
    env = {name: os.environ[name] for name in PASSED_SECRETS if os.environ.get(name)}
    for name, secret in (("ANTHROPIC_API_KEY", settings.anthropic_api_key), ("OPENAI_API_KEY", settings.openai_api_key)):
        if secret is not None and secret.get_secret_value():  # set in a config file or by keyword, not the env
            env[name] = secret.get_secret_value()
    if settings.anthropic_base_url:
        env["ANTHROPIC_BASE_URL"] = settings.anthropic_base_url
    log_path = job_dir / "gate.log"
    returncode, _, tail = run_process([sys.executable, "-m", "training.gate_process", "--job", str(job_path)],
                                      log_path, env=env, nice=settings.train_nice,
                                      stall_seconds=stall_seconds or STALL_SECONDS)
    result_path = Path(job["out"])
    if returncode != 0 or not result_path.is_file():
        raise RuntimeError(f"the gate process for {version} exited with code {returncode} (log: {log_path})\n"
                           "--- last lines of the log ---\n" + "\n".join(tail))
    result = json.loads(result_path.read_text())
    shutil.rmtree(job_dir, ignore_errors=True)  # the gate's own outputs are in the adapter's folder
    return Decision(**result["decision"]), result["reports"]


def _plain(value: Any) -> Any:
    """numpy scalars as Python numbers (json can't write np.int64), anything else as text."""
    return value.item() if hasattr(value, "item") else str(value)


def main(argv: list[str] | None = None) -> int:
    """The child: run the gate described by --job and write its decision and reports."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--job", required=True, type=Path)
    job = json.loads(parser.parse_args(argv).job.read_text())

    from storage.db import Store
    from storage.hub import quiet_libraries
    from storage.knowledge import KnowledgeBase
    from training.gate import run_gate

    quiet_libraries()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings(**job["settings"])
    store = Store(settings.db_path)
    kb = KnowledgeBase(settings, store)
    decision, reports = run_gate(settings, store, kb, job["version"], job["qa"], actor=job["actor"],
                                 include_base=job["include_base"], force=job["force"])
    Path(job["out"]).write_text(json.dumps({"decision": asdict(decision), "reports": reports}, default=_plain))
    return 0


if __name__ == "__main__":
    sys.exit(main())
