"""Shared fixtures. Tests never touch the network: the Hugging Face hub is forced offline, and a
developer's own Flywheel/Slack/Anthropic environment is cleared so it cannot leak into a test."""

from __future__ import annotations

import os
import tempfile

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
for _name in list(os.environ):
    if _name.startswith(("SLACK_", "FLYWHEEL_")) or _name in ("ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL",
                                                                "OPENAI_API_KEY"):
        del os.environ[_name]
# Settings also read `$FLYWHEEL_HOME/config.toml` (default ~/.flywheel): point it at an empty dir.
os.environ["FLYWHEEL_HOME"] = tempfile.mkdtemp(prefix="flywheel-test-home-")

from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from storage.config import Settings, get_settings  # noqa: E402
from storage.db import Store  # noqa: E402

get_settings.cache_clear()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny, randomly initialised Llama with the real SmolLM2 tokenizer and chat template.

    Its output is garbage, but it exercises the exact code paths of the real model in ~1 s of
    compute (the tokenizer comes from the bundled GGUF, which takes a few seconds to parse).
    """
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from agent.models import CHATML_TEMPLATE, END_OF_TURN, bundled_gguf

    gguf = bundled_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if not tokenizer.chat_template:
        tokenizer.chat_template = CHATML_TEMPLATE
    end_id = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=end_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config).eval()
    model.generation_config.eos_token_id = end_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    out = tmp_path_factory.mktemp("tiny-smollm")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture
def settings(tmp_path: Path, tiny_model_dir: Path) -> Settings:
    """Settings rooted in a fresh temporary home, generating with the tiny model."""
    s = Settings(home=tmp_path / "home", model=str(tiny_model_dir), max_new_tokens=16)
    s.ensure_dirs()
    return s


@pytest.fixture
def store(settings: Settings) -> Iterator[Store]:
    db = Store(settings.db_path)
    yield db
    db.close()
