"""The one configuration object for Flywheel.

Every setting is read, in this order of precedence, from:
  1. keyword arguments (tests),
  2. environment variables `FLYWHEEL_<NAME>` (e.g. `FLYWHEEL_HOME`, `FLYWHEEL_TOP_K`),
  3. a TOML file: `$FLYWHEEL_CONFIG`, else `$FLYWHEEL_HOME/config.toml` if it exists,
  4. the defaults below.
Secrets of other services keep their usual names (`ANTHROPIC_API_KEY`, `SLACK_BOT_TOKEN`, ...).

`flywheel config` prints the effective settings with secrets masked.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource


def _default_home() -> Path:
    return Path(os.environ.get("FLYWHEEL_HOME") or Path.home() / ".flywheel").expanduser()


def config_file_path() -> Path | None:
    explicit = os.environ.get("FLYWHEEL_CONFIG")
    if explicit:
        return Path(explicit).expanduser()
    candidate = _default_home() / "config.toml"
    return candidate if candidate.exists() else None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FLYWHEEL_", extra="ignore", validate_default=True)

    # --- where state lives -------------------------------------------------------------------
    home: Path = Field(default_factory=_default_home, description="All state: SQLite, Chroma, models, adapters, retrievers.")

    # --- knowledge base ------------------------------------------------------------------------
    embedding_model: str = Field("", description="Sentence-transformers id or path; empty = bundled all-MiniLM-L6-v2.")
    chunk_tokens: int = Field(192, description="Max chunk size in embedder tokens (MiniLM truncates at 256).")
    chunk_overlap: int = Field(32, description="Overlap between consecutive chunks of a section, in tokens.")
    max_file_mb: float = Field(100.0, description="Files larger than this are rejected at ingest.")
    collection: str = Field("chunks", description="Chroma collection name.")
    chroma_host: str = Field("", description="Chroma server host for client/server mode; empty = embedded.")
    chroma_port: int = 8000

    # --- retrieval ----------------------------------------------------------------------------
    top_k: int = Field(5, description="Chunks returned by retrieval.")
    candidates: int = Field(40, description="Candidates per retriever before fusion.")
    rrf_k: int = Field(60, description="Reciprocal-rank-fusion constant.")
    reranker_model: str = Field("", description="Cross-encoder id or path; empty = no reranking.")
    context_chunks: int = Field(3, description="Chunks placed in the prompt.")
    context_tokens: int = Field(
        480, description="Token budget of the context; prefill dominates time to first token on CPU."
    )
    min_relevance: float = Field(0.35, description="Below this best dense similarity the model isn't asked: only a "
                                 "strong quote (min_quote_score + refusal_margin) answers, else the docs don't say.")
    min_quote_score: float = Field(
        0.5, description="When no sentence of the model's draft is supported, the best passage sentences are quoted "
        "if their match with the question (0.7·cosine + 0.3·term share) reaches this; below it the documents don't say."
    )
    refusal_margin: float = Field(
        0.05, description="When the model itself replies that the documents don't say, a quote needs this much more."
    )

    # --- generation ---------------------------------------------------------------------------
    backend: Literal["transformers", "anthropic", "openai"] = "transformers"
    model: str = Field("", description="HF id or local path for the transformers backend; empty = SmolLM2-135M.")
    adapter: str = Field("", description="Force a LoRA adapter path, or \"none\" for the base weights "
                         "(normally the promoted one is used).")
    max_new_tokens: int = 200
    max_answer_sentences: int = Field(
        4, description="Stop generating after this many finished sentences (0 = only max_new_tokens): the check "
        "shows what a passage supports, so a rambling tail only costs the user time."
    )
    evidence_runs: int = Field(
        0, description="Show the model only this many short excerpts (runs of up to 3 sentences that best match the "
        "question) instead of whole passages; 0 = whole passages."
    )
    temperature: float = 0.0
    threads: int = Field(0, description="torch threads; 0 = all cores.")
    anthropic_model: str = "claude-sonnet-4-6"
    openai_base_url: str = Field("", description="OpenAI-compatible endpoint, e.g. a vLLM server.")
    openai_model: str = ""
    anthropic_api_key: SecretStr | None = Field(None, validation_alias=AliasChoices("ANTHROPIC_API_KEY"))
    anthropic_base_url: str = Field("", validation_alias=AliasChoices("ANTHROPIC_BASE_URL"))
    openai_api_key: SecretStr | None = Field(None, validation_alias=AliasChoices("OPENAI_API_KEY"))

    # --- Slack --------------------------------------------------------------------------------
    slack_bot_token: SecretStr | None = Field(None, validation_alias=AliasChoices("SLACK_BOT_TOKEN"))
    slack_app_token: SecretStr | None = Field(None, validation_alias=AliasChoices("SLACK_APP_TOKEN"))
    slack_signing_secret: SecretStr | None = Field(None, validation_alias=AliasChoices("SLACK_SIGNING_SECRET"))
    slack_api_url: str = Field("", description="Slack Web API base URL (GovSlack, proxies, tests).")
    admin_users: str = Field("", description="Comma-separated Slack user IDs allowed to run admin commands.")
    corrections_from: str = Field(
        "admins", description="Whose 👎 corrections are used (for training, or as team answers): everyone, admins "
        "(ADMIN_USERS), or comma-separated Slack user IDs (may include `admins`); others stay in the feedback table only."
    )
    slack_command: str = Field("/flywheel", description="The slash command the bot answers (must match the manifest).")
    up_reactions: str = Field("+1,thumbsup,white_check_mark", description="Emoji names counted as 👍 (comma-separated).")
    down_reactions: str = Field("-1,thumbsdown", description="Emoji names counted as 👎 (comma-separated).")
    workers: int = Field(4, description="Slack answers computed at once.")
    queue_size: int = Field(16, description="Slack jobs waiting for a worker; beyond this the bot says it is busy.")
    feedback_buttons: bool = Field(True, description="Show 👍/👎 buttons under Slack answers.")
    notify_channel: str = Field("", description="Slack channel for operational notices; empty = none.")
    stream_interval: float = Field(1.0, description="Seconds between streamed chat.update calls (Slack allows ~1/s).")
    scopes: dict[str, list[str]] = Field(
        default_factory=dict, description="Knowledge scope per channel: {channel id: [folder or file, ...]} (JSON in "
        "the environment, a table in TOML). A folder is an absolute path or a relative run of folder names such as "
        "`runbooks` or `eng/runbooks`; a file is its name. `/flywheel scope set|clear` overrides it per channel; "
        "unlisted channels see every non-private document. DMs are never scoped."
    )
    private_sources: str = Field(
        "", description="Comma-separated folders or files (same forms as `scopes`) answered only in DMs, never in a "
        "channel; a private file's name hides any same-named file in channels too (citations key on file names)."
    )
    ingest_roots: str = Field(
        "", description="Comma-separated folders `/flywheel ingest` may read (symlinks resolved); empty = only the "
        "folders the knowledge base already holds documents from, so Slack can refresh them but reach nothing else."
    )
    slack_file_max_mb: float = Field(20.0, description="Files shared with the bot in Slack larger than this are not "
                                     "downloaded (MAX_FILE_MB still applies to what is ingested).")
    max_question_chars: int = Field(2000, description="Longer Slack questions get a friendly reply instead of an answer.")
    answers_per_minute: int = Field(10, description="Questions one Slack user may ask per minute (0 = unlimited); "
                                    "beyond it the bot asks them to wait.")
    http_host: str = Field("0.0.0.0", description="Interface `flywheel bot --http` listens on (uvicorn).")

    # --- training (LoRA fine-tuning, the eval gate) ---------------------------------------------
    lora_r: int = Field(16, description="LoRA rank.")
    lora_alpha: int = Field(32, description="LoRA scaling numerator (scale = alpha / r).")
    lora_dropout: float = 0.05
    lora_layers: float = Field(0.5, gt=0, le=1, description="Share of decoder layers, from the top, that get LoRA; "
                               "the frozen ones below need no backward pass (1.42x faster CPU steps at 0.5).")
    learning_rate: float = Field(2e-4, description="LoRA learning rate (trl's 2e-5 default is for full fine-tuning).")
    epochs: float = 3
    batch_size: int = 4
    grad_accum: int = 1
    max_seq_len: int = Field(768, description="Training sequences are truncated/packed to this many tokens.")
    quantize: Literal["none", "nf4"] = Field(
        "none", description="The training base's precision (litgpt-style): none = float (fp32 on CPU, bf16 on CUDA); "
        "nf4 = QLoRA, LoRA on a 4-bit NormalFloat base via bitsandbytes (`pip install 'flywheel[qlora]'`), on CPU "
        "or CUDA. Serving keeps the float base with the adapter on top either way."
    )
    train_threads: int = Field(0, description="torch threads of the training and gate processes; 0 = all cores.")
    train_nice: int = Field(10, ge=0, le=19, description="Niceness added to the training and gate processes, so "
                            "answers (at normal priority) get the CPU first while a cycle runs; 0 = same priority.")
    cycle_budget_min: float = Field(
        30, ge=0, description="Wall-clock minutes one cycle may take, from its start to the gate's decision and the "
        "retriever stage (0 = unbounded). From the measured seconds per training step (the last run's, when the "
        "model and recipe are unchanged, else a 3-step probe) the cycle trains on as many new pairs as fit — new "
        "and changed sections first, spread over documents and sections — and keeps the rest for the next cycle."
    )
    promote_margin: float = Field(0.02, description="Smallest accuracy gain (final answers, candidate minus the serving "
                                  "adapter) worth promoting; the gain must also be significant at 95%. The retriever "
                                  "gate asks the same of its hit@1 gain.")
    guard_tolerance: float = Field(0.02, description="Largest allowed drop of a guard metric (groundedness, citations, refusals).")
    max_train_pairs: int = Field(
        120, description="Distilled pairs one cycle trains on at most (0 = all), spread over documents and sections, "
        "pairs never trained on first; `cycle_budget_min` may admit fewer (3 epochs of 120 pairs: about 100 steps)."
    )
    min_new_pairs: int = Field(8, description="Fewer new training pairs than this and a retrain is skipped.")
    gate_max_items: int = Field(60, description="Held-out distilled pairs and 👍 answers the gate asks each adapter "
                                "(CPU time); the admin's --qa items come on top.")
    gate_min_items: int = Field(40, description="Fewer gate questions than this and the gate won't promote (unless "
                                "forced): a smaller sample can't show a real gain.")
    gate_max_new_tokens: int = Field(96, description="Answer length cap while the gate evaluates.")
    cycle_cron: str = Field(
        "0 3 * * sun",
        description="When the scheduler runs a cycle (crontab; use day names: APScheduler counts 0 as Monday); "
        "empty = never.",
    )
    min_dpo_pairs: int = Field(32, description="Preference pairs needed before a DPO stage runs after SFT.")
    kto_min_rows: int = Field(
        16, description="Voted drafts (both 👍 and 👎 among them) needed before a KTO stage runs after SFT/DPO."
    )

    # --- retriever training (training/retriever.py: the embedder learns from the distilled questions) ---
    retriever_training: bool = Field(
        True, description="Each cycle also fine-tunes the embedder on the distilled train pairs, gates it on hit@1 "
        "(held-out pairs + admin QA with sources/pages) and, when promoted, re-embeds the corpus into a new collection."
    )
    retriever_epochs: float = Field(1, description="Epochs over the retriever's training rows.")
    retriever_learning_rate: float = Field(3e-5, description="Learning rate of the embedder's full fine-tuning.")
    retriever_batch_size: int = Field(
        32, description="Rows per batch; every other row's passage is an in-batch negative (MultipleNegativesRankingLoss)."
    )
    retriever_max_pairs: int = Field(
        1000, description="Distilled train pairs one retriever run learns from (0 = all), spread over documents and "
        "sections; each gives a (question, chunk, hard negative) and a (question, answer) row."
    )

    # --- distillation and datasets ----------------------------------------------------------------
    teacher: Literal["auto", "offline", "anthropic"] = Field(
        "auto", description="Who writes Q&A pairs: anthropic when ANTHROPIC_API_KEY is set (auto), else offline rules."
    )
    teacher_model: str = Field("claude-sonnet-4-6", description="Anthropic model of the teacher.")
    heldout_fraction: float = Field(0.2, description="Share of document sections held out of training (by stable hash).")
    max_pairs_per_chunk: int = Field(3, description="Q&A pairs the teacher may write per chunk.")
    distractors: int = Field(2, description="Other retrieved chunks placed next to a pair's own chunk in SFT prompts.")
    notfound_fraction: float = Field(0.08, description="Share of SFT train examples that teach the not-found reply with off-topic passages (the teacher adds near-topic refusals).")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = config_file_path()
        if path is not None:
            if not path.exists():
                raise FileNotFoundError(f"FLYWHEEL_CONFIG points to {path}, which does not exist")
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    # --- derived paths ------------------------------------------------------------------------
    @property
    def db_path(self) -> Path:
        return self.home / "flywheel.db"

    @property
    def chroma_dir(self) -> Path:
        return self.home / "chroma"

    @property
    def bm25_dir(self) -> Path:
        return self.home / "bm25"

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def adapters_dir(self) -> Path:
        return self.home / "adapters"

    @property
    def datasets_dir(self) -> Path:
        return self.home / "datasets"

    @property
    def retrievers_dir(self) -> Path:
        return self.home / "retrievers"

    @property
    def checkpoints_path(self) -> Path:
        return self.home / "conversations.db"

    @property
    def slack_files_dir(self) -> Path:
        """Files admins shared with the bot in Slack, kept by name so a re-shared file replaces its old version."""
        return self.home / "slack_files"

    def ensure_dirs(self) -> None:
        for path in (self.home, self.chroma_dir, self.bm25_dir, self.models_dir, self.adapters_dir, self.datasets_dir,
                     self.retrievers_dir):
            path.mkdir(parents=True, exist_ok=True)

    def masked(self) -> dict[str, object]:
        """The effective settings as plain values, secrets shown as '***' (or None when unset)."""
        out: dict[str, object] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                value = "***" if value.get_secret_value() else None
            elif isinstance(value, Path):
                value = str(value)
            out[name] = value
        return out


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (tests build their own `Settings(home=tmp_path)`)."""
    return Settings()


# Other services' secrets, as they appear in the environment (the fields with validation aliases above).
SECRET_ENV_PREFIXES: tuple[str, ...] = ("SLACK_",)
SECRET_ENV_NAMES: frozenset[str] = frozenset({"ANTHROPIC_API_KEY", "OPENAI_API_KEY"})


def scrubbed_environment(environ: dict[str, str] | None = None) -> dict[str, str]:
    """A copy of `environ` (default: this process's) without Slack tokens and model-API keys.

    For child processes that never talk to those services (the training runs): a crash dump, a
    library's telemetry or a `/proc/<pid>/environ` read of that process then cannot leak them."""
    source = dict(os.environ if environ is None else environ)
    return {name: value for name, value in source.items()
            if not name.startswith(SECRET_ENV_PREFIXES) and name not in SECRET_ENV_NAMES}
