"""LoRA DPO recipe on preference pairs from 👎 + corrections: same shape as training/sft.py.

    python -m training.dpo --config RUN.json            # RUN.json with "method": "dpo"
    accelerate launch -m training.dpo --config RUN.json

Data: `dpo.jsonl`, lines `{"prompt": [system, user], "chosen": [assistant], "rejected": [assistant]}`.

Used only when there are enough pairs (settings.min_dpo_pairs): a few dozen noisy pairs move a
135M model more than they teach it. Choices, and why:
  * `init_adapter` (normally the fresh SFT adapter) is loaded trainable; trl then keeps a frozen
    copy of it as the "ref" adapter, so the reference policy is the SFT model — not the raw base —
    and the DPO term only measures movement away from what SFT learned. Without `init_adapter` the
    reference is the base with the adapter disabled (`ref_model=None` + `peft_config`).
  * An SFT term on the chosen answers (`loss_type=["sigmoid", "sft"]`, weight `sft_weight`; the
    former `rpo_alpha`): plain DPO can lower the likelihood of the chosen answers too, as long as
    the rejected ones drop faster, which shows up as worse answers (LLaMA-Factory #7643/#6153).
  * Same CPU settings as SFT: fp32, no gradient checkpointing, threads = cores.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from training.sft import (
    RunConfig,
    common_args,
    continue_or_new_adapter,
    load_base,
    load_jsonl,
    load_tokenizer,
    make_callback,
    run_recipe,
)


def build_trainer(cfg: RunConfig) -> tuple[Any, Any, dict[str, Any]]:
    import torch
    from trl import DPOConfig, DPOTrainer

    cuda = torch.cuda.is_available()
    tokenizer = load_tokenizer(cfg.model)
    model, quantized = load_base(cfg.model, cfg.quantize)
    train = load_jsonl(cfg.train_file, ("prompt", "chosen", "rejected"))
    args = DPOConfig(
        **common_args(cfg, cuda),
        max_length=cfg.max_seq_len,
        beta=cfg.dpo_beta,
        loss_type=["sigmoid", "sft"],
        loss_weights=[1.0, cfg.sft_weight],
        include_num_input_tokens_seen="non_padding",
    )
    model, peft_config = continue_or_new_adapter(cfg, model)
    callback = make_callback(Path(cfg.output_dir))
    trainer = DPOTrainer(model=model, ref_model=None, args=args, train_dataset=train, processing_class=tokenizer,
                         peft_config=peft_config, callbacks=[callback])
    info = {"train_examples": len(train), "quantized": quantized, "device": "cuda" if cuda else "cpu"}
    return trainer, callback, info


def run(cfg: RunConfig) -> dict[str, Any]:
    return run_recipe(cfg, build_trainer)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="RUN.json")
    cfg = RunConfig.load(parser.parse_args(argv).config)
    if cfg.method != "dpo":
        raise SystemExit(f"RUN.json method is {cfg.method!r}; run it with python -m training.{cfg.method}")
    run(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
