"""Text generation backends behind one small interface.

* `TransformersGenerator` — a local causal LM (default: SmolLM2-135M-Instruct) on CPU, with the
  promoted LoRA adapter hot-swapped in as the flywheel produces new ones.
* `AnthropicGenerator` — the Anthropic Messages API (also the teacher in training).
* `OpenAIGenerator` — any OpenAI-compatible chat endpoint, typically a vLLM server.

All take chat messages `[{"role": "system" | "user" | "assistant", "content": str}]` and stream
text pieces. `load_generator(settings, store)` picks one by `settings.backend`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from agent.models import DEFAULT_MODEL_NAME, END_OF_TURN, load_causal_lm, resolve_model, set_threads

if TYPE_CHECKING:
    from storage.config import Settings
    from storage.db import Store

log = logging.getLogger(__name__)

Messages = list[dict[str, str]]

# Small models decoding greedily tend to fall into loops (the same sentence again and again).
# A mild penalty breaks those loops without stopping the model from quoting the retrieved context,
# which a stronger penalty (>1.3) visibly does.
REPETITION_PENALTY = 1.1


@runtime_checkable
class Generator(Protocol):
    name: str  # model name/id recorded with each interaction
    adapter: str | None  # adapter version in use (None = base weights)

    def stream(self, messages: Messages, max_new_tokens: int | None = None) -> Iterator[str]: ...

    def generate(self, messages: Messages, max_new_tokens: int | None = None) -> str: ...


class _JoinMixin:
    def generate(self, messages: Messages, max_new_tokens: int | None = None) -> str:
        return "".join(self.stream(messages, max_new_tokens=max_new_tokens))  # type: ignore[attr-defined]


def _split_system(messages: Messages) -> tuple[str, Messages]:
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    return system, [m for m in messages if m["role"] != "system"]


# ---------------------------------------------------------------------------------------------
# local transformers model
# ---------------------------------------------------------------------------------------------
class TransformersGenerator(_JoinMixin):
    """A local causal LM with an optional, hot-swappable LoRA adapter.

    Concurrency: one model instance serves every Slack worker thread. `self._lock` is held by
    whichever thread is running the model — a generation (for its whole decode) or an adapter
    swap — so concurrent answers run one after another instead of interleaving on the shared KV
    state, and a swap waits for the answer in flight, which therefore finishes on the old weights.
    """

    def __init__(self, settings: Settings, store: Store | None = None, model: str | None = None):
        self.settings = settings
        self.store = store
        set_threads(settings)
        source = model or resolve_model(settings)
        self.name: str = model or settings.model or DEFAULT_MODEL_NAME
        self.base, self.tokenizer = load_causal_lm(source)
        self.model: Any = self.base  # becomes a PeftModel once an adapter is loaded
        self.adapter: str | None = None
        self._adapter_name: str | None = None  # peft's name of the active adapter
        self._wanted: str | None = None  # last promoted version we tried (so a broken one isn't retried per answer)
        self._swaps = 0
        self._lock = threading.Lock()
        self._stop_ids = self._eos_ids()

        if settings.adapter.lower() == "none":  # the base weights, whatever the registry promotes
            self.use_adapter(None, None)
        elif settings.adapter:
            self.use_adapter(settings.adapter, Path(settings.adapter).name)
        else:
            self.refresh_adapter()

    def _eos_ids(self) -> list[int]:
        ids: list[int] = []
        configured = self.base.generation_config.eos_token_id
        ids += configured if isinstance(configured, list) else [configured] if configured is not None else []
        for token in (END_OF_TURN, self.tokenizer.eos_token):
            token_id = self.tokenizer.convert_tokens_to_ids(token) if token else None
            if isinstance(token_id, int) and token_id != self.tokenizer.unk_token_id:
                ids.append(token_id)
        return list(dict.fromkeys(ids))

    # --- adapters -----------------------------------------------------------------------------
    def refresh_adapter(self) -> bool:
        """Swap to the store's promoted adapter if it changed; cheap (one SQLite query).

        A forced `settings.adapter` wins over the registry. Returns True when a swap happened.
        """
        if self.settings.adapter or self.store is None:
            return False
        row = self.store.promoted_adapter()
        version = row["version"] if row else None
        if version == self._wanted:
            return False
        self._wanted = version
        return self.use_adapter(row["path"] if row else None, version)

    def use_adapter(self, path: str | Path | None, version: str | None) -> bool:
        """Serve with the LoRA adapter at `path` (None = base weights) from the next answer on.

        The new adapter is loaded under a fresh peft name and activated under the lock; the old one
        is deleted afterwards. If it cannot be loaded (missing, corrupt, wrong base) a warning is
        logged and the current weights keep serving. Returns True if the active weights changed.
        """
        from peft import PeftModel

        with self._lock:
            if path is None:
                if isinstance(self.model, PeftModel):
                    # unload() strips the LoRA layers without merging: the base weights are untouched.
                    self.model = self.model.unload()
                    self.model.eval()
                self._adapter_name, self.adapter = None, None
                return True
            problem = _adapter_problem(Path(path))
            if problem:
                log.warning("adapter %s (%s) not loaded: %s; still serving %s", version, path, problem,
                            self.adapter or "the base model")
                return False
            self._swaps += 1
            new_name = f"v{self._swaps}"
            try:
                if isinstance(self.model, PeftModel):
                    self.model.load_adapter(str(path), adapter_name=new_name)
                    self.model.set_adapter(new_name)
                else:
                    self.model = PeftModel.from_pretrained(self.base, str(path), adapter_name=new_name)
            except Exception as exc:  # wrong base model, bad tensors, ...: keep serving
                log.warning("adapter %s (%s) failed to load: %s; still serving %s", version, path, exc,
                            self.adapter or "the base model")
                self._discard(new_name)
                return False
            old = self._adapter_name
            if old is not None and old != new_name:
                self.model.delete_adapter(old)
            self.model.eval()
            self._adapter_name, self.adapter = new_name, version
            log.info("now serving adapter %s from %s", version, path)
            return True

    def _discard(self, adapter_name: str) -> None:
        """Undo a half-loaded adapter so the model is exactly as before the failed swap."""
        from peft import PeftModel

        try:
            if isinstance(self.model, PeftModel) and adapter_name in self.model.peft_config:
                if len(self.model.peft_config) == 1:
                    self.model = self.model.unload()
                else:
                    self.model.delete_adapter(adapter_name)
                    if self._adapter_name:
                        self.model.set_adapter(self._adapter_name)
        except Exception:  # never let cleanup take the bot down
            log.exception("cleaning up adapter %s failed", adapter_name)

    # --- generation ---------------------------------------------------------------------------
    def encode(self, messages: Messages) -> dict[str, Any]:
        """The model inputs for `messages` through the tokenizer's chat template."""
        return dict(
            self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
            )
        )

    def stream(self, messages: Messages, max_new_tokens: int | None = None) -> Iterator[str]:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        inputs = self.encode(messages)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        cancelled = threading.Event()

        class _Cancel(StoppingCriteria):
            # Lets an abandoned stream (client gone, exception downstream) free the model promptly.
            def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
                return torch.full((input_ids.shape[0],), cancelled.is_set(), dtype=torch.bool)

        sampling = self.settings.temperature > 0
        kwargs: dict[str, Any] = dict(
            **inputs,
            streamer=streamer,
            max_new_tokens=max_new_tokens or self.settings.max_new_tokens,
            do_sample=sampling,
            repetition_penalty=REPETITION_PENALTY,
            eos_token_id=self._stop_ids,
            pad_token_id=self.tokenizer.pad_token_id,
            stopping_criteria=StoppingCriteriaList([_Cancel()]),
        )
        if sampling:
            kwargs.update(temperature=self.settings.temperature, top_p=0.95)
        else:
            # Explicitly neutral so a model's generation_config (e.g. top_p) doesn't trigger warnings.
            kwargs.update(temperature=None, top_p=None, top_k=None)
        error: list[BaseException] = []

        def run() -> None:
            try:
                with self._lock, torch.inference_mode():
                    self.model.generate(**kwargs)
            except BaseException as exc:  # surfaced in the consumer thread below
                error.append(exc)
                streamer.end()  # unblock the consumer, which would otherwise wait forever

        worker = threading.Thread(target=run, name="flywheel-generate", daemon=True)
        worker.start()
        try:
            for piece in streamer:
                if piece:
                    yield piece
        finally:
            cancelled.set()
            worker.join()
        if error:
            raise error[0]


def _adapter_problem(path: Path) -> str | None:
    """Why the adapter folder can't be loaded, checked before the model is touched (None = looks fine)."""
    import json

    if not path.is_dir():
        return "no such directory"
    try:
        json.loads((path / "adapter_config.json").read_text())
    except (OSError, ValueError) as exc:
        return f"unreadable adapter_config.json ({exc})"
    weights = path / "adapter_model.safetensors"
    if weights.is_file():
        from safetensors import safe_open

        try:
            with safe_open(str(weights), framework="pt") as handle:
                handle.keys()
        except Exception as exc:
            return f"corrupt adapter_model.safetensors ({exc})"
    elif not (path / "adapter_model.bin").is_file():
        return "no adapter weights"
    return None


# ---------------------------------------------------------------------------------------------
# hosted APIs
# ---------------------------------------------------------------------------------------------
def _secret(value: Any) -> str | None:
    return value.get_secret_value() if value is not None else None


class AnthropicGenerator(_JoinMixin):
    """Claude through the Anthropic Messages API (`ANTHROPIC_API_KEY`, optional `ANTHROPIC_BASE_URL`)."""

    adapter: str | None = None

    def __init__(self, settings: Settings):
        import anthropic

        self.settings = settings
        self.name: str = settings.anthropic_model
        self.client = anthropic.Anthropic(
            api_key=_secret(settings.anthropic_api_key),
            base_url=settings.anthropic_base_url or None,
            max_retries=3,  # the SDK backs off on 429/5xx/overloaded
        )

    def stream(self, messages: Messages, max_new_tokens: int | None = None) -> Iterator[str]:
        system, turns = _split_system(messages)
        request: dict[str, Any] = dict(
            model=self.name,
            max_tokens=max_new_tokens or self.settings.max_new_tokens,
            messages=turns,
            # No `temperature`: anthropic SDK 2.x dropped the sampling parameters from
            # `messages.stream` (current Claude models choose their own); settings.temperature is
            # a local-model knob.
        )
        if system:
            request["system"] = system
        with self.client.messages.stream(**request) as response:
            for text in response.text_stream:
                if text:
                    yield text


class OpenAIGenerator(_JoinMixin):
    """An OpenAI-compatible chat endpoint (`FLYWHEEL_OPENAI_BASE_URL`), typically vLLM.

    Adapters: vLLM serves LoRA adapters as extra model names
    (`vllm serve BASE --enable-lora --lora-modules NAME=/path/to/adapter`). Setting
    `FLYWHEEL_ADAPTER=NAME` sends requests to that name instead of `FLYWHEEL_OPENAI_MODEL`.
    """

    def __init__(self, settings: Settings):
        import openai

        if not settings.openai_base_url:
            raise ValueError("backend 'openai' needs FLYWHEEL_OPENAI_BASE_URL (e.g. http://localhost:8000/v1)")
        self.settings = settings
        lora = "" if settings.adapter.lower() == "none" else settings.adapter  # "none": the served base model
        self.adapter: str | None = lora or None
        self.name: str = lora or settings.openai_model
        if not self.name:
            raise ValueError("backend 'openai' needs FLYWHEEL_OPENAI_MODEL (or FLYWHEEL_ADAPTER for a vLLM LoRA)")
        # Local servers (vLLM) ignore the key, but the client insists on one.
        self.client = openai.OpenAI(
            base_url=settings.openai_base_url, api_key=_secret(settings.openai_api_key) or "EMPTY", max_retries=3
        )

    def stream(self, messages: Messages, max_new_tokens: int | None = None) -> Iterator[str]:
        response = self.client.chat.completions.create(
            model=self.name,
            messages=messages,  # type: ignore[arg-type]
            max_tokens=max_new_tokens or self.settings.max_new_tokens,  # vLLM's name for the limit
            temperature=self.settings.temperature,
            stream=True,
        )
        try:
            for chunk in response:
                if chunk.choices and chunk.choices[0].delta.content:
                    yield chunk.choices[0].delta.content
        finally:
            response.close()


def load_generator(settings: Settings, store: Store | None = None) -> Generator:
    """The generator for `settings.backend`."""
    if settings.backend == "anthropic":
        return AnthropicGenerator(settings)
    if settings.backend == "openai":
        return OpenAIGenerator(settings)
    return TransformersGenerator(settings, store)
