"""How Flywheel treats the Hugging Face libraries: never the hub when told offline, and no noise."""

from __future__ import annotations

import os


def hf_offline() -> bool:
    """True when HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is set (tests, air-gapped installs)."""
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def quiet_libraries() -> None:
    """Weight-loading and GGUF-conversion progress bars, over-length tokenizer warnings (we count tokens of
    long blocks on purpose) and bitsandbytes' missing-kernels notice are noise in a CLI and the bot's logs."""
    import logging

    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    # With the qlora extra installed, peft imports bitsandbytes, whose CPU backend warns on every import
    # that its optional Hub-downloaded kernels are missing (they can't be fetched offline anyway).
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
