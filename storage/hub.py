"""How Flywheel treats the Hugging Face libraries: never the hub when told offline, and no noise."""

from __future__ import annotations

import os


def hf_offline() -> bool:
    """True when HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is set (tests, air-gapped installs)."""
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def passive_openmp() -> None:
    """OMP_WAIT_POLICY=PASSIVE unless the environment sets it: idle OpenMP threads sleep instead of spinning.

    This machine's 2 cores are shared with other jobs (and with the cycle's training child). With spinning
    threads, a torch op whose partner thread is descheduled waits out the spin: at load 6-8 a one-question
    MiniLM encode took 119 ms p50 (690 ms p95) instead of 28 ms, hybrid retrieval at 100k chunks 412 ms p50
    instead of 33 ms, and SmolLM2-135M generated 1.0 instead of 6.6 tokens/s. libgomp reads the variable
    when torch loads it, so call this before torch is imported; children (training, gate) inherit it."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


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
