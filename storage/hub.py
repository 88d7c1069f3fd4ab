"""How Flywheel treats the Hugging Face libraries: never the hub when told offline, and no noise."""

from __future__ import annotations

import os


def hf_offline() -> bool:
    """True when HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is set (tests, air-gapped installs)."""
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def quiet_libraries() -> None:
    """Weight-loading and GGUF-conversion progress bars, and over-length tokenizer warnings (we count
    tokens of long blocks on purpose), are noise in a CLI and in the bot's logs."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
