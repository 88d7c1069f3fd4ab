"""Training throughput: the Flywheel SFT recipe vs plain trl `SFTTrainer` defaults, same data.

    python bench/train_speed.py [--examples 8] [--data sft_train.jsonl] [--home DIR]

The baseline needs ~1000 s per batch of 8 on the 2-core CPU, hence the small default.

Every run trains a LoRA (r=16, all linear modules) on the real default model (SmolLM2-135M-Instruct,
converted once into `$FLYWHEEL_HOME/models`) over the same prompt-completion examples — one epoch,
each in its own fresh process so none inherits another's warm caches or thread pools.
tokens/s = real tokens of the examples (prompt + completion, no padding) / trainer train_runtime.

    ours-all  training/sft.py with LoRA on all layers: fp32 (bf16 is ~3.5x slower on this CPU), no
              gradient checkpointing, batches of 4, LM head on completion positions only, threads = cores
    ours      the same with the default FLYWHEEL_LORA_LAYERS=0.5: LoRA on the top half of the decoder
              layers, so backward stops halfway down
    baseline  SFTTrainer(model, args=SFTConfig(output_dir, use_cpu=True, max_steps=N), train_dataset,
              peft_config) — trl's defaults: bf16 autocast, gradient checkpointing, padded batches of 8

Without --data the examples are built from the bundled sample handbook with the agent's own
prompt (3 passages + question → reference answer with a citation), like the distilled dataset.
Prints one JSON object: ours/baseline tokens/s, seconds, and the speedup.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from report import add_report_argument, record  # noqa: E402  (bench/ is sys.path[0] when run as a script)


@dataclass
class _Passage:
    source: str
    page: int | None
    heading: str | None
    text: str


def build_examples(n: int) -> list[dict]:
    """`n` prompt-completion examples from the sample handbook (questions cycled over passage windows)."""
    from agent.prompts import build_messages
    from storage.samples import sample_handbook, sample_questions

    paragraphs: list[_Passage] = []
    for path in sorted(Path(sample_handbook()).glob("*.md")):
        for block in path.read_text().split("\n\n"):
            if len(block.split()) >= 20:
                paragraphs.append(_Passage(path.name, None, None, block.strip()))
    questions = [q for q in sample_questions() if q.get("answer")]
    rows = []
    for i in range(n):
        item = questions[i % len(questions)]
        own = [p for p in paragraphs if p.source == item["source"]] or paragraphs
        passages = [own[i % len(own)], paragraphs[(i * 7) % len(paragraphs)], paragraphs[(i * 13 + 5) % len(paragraphs)]]
        messages = build_messages(item["question"], passages)
        rows.append({"prompt": messages, "completion": [{"role": "assistant", "content": item["answer"] + " [1]"}],
                     "id": f"bench-{i}", "source": item["source"]})
    return rows


def real_tokens(model_dir: str, data: Path) -> int:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    total = 0
    for line in data.read_text().splitlines():
        row = json.loads(line)
        total += len(tokenizer.apply_chat_template(row["prompt"] + row["completion"], tokenize=True,
                                                   return_dict=True)["input_ids"])
    return total


def run_ours(model_dir: str, data: Path, out: Path, lora_layers: float) -> float:
    from training.sft import RunConfig, run

    cfg = RunConfig(model=model_dir, train_file=str(data), output_dir=str(out), epochs=1, save_steps=10_000,
                    lora_layers=lora_layers)
    return float(run(cfg)["train_seconds"])


def run_baseline(model_dir: str, data: Path, out: Path, examples: int) -> float:
    from datasets import load_dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    train = load_dataset("json", data_files=str(data), split="train").select_columns(["prompt", "completion"])
    args = SFTConfig(output_dir=str(out), use_cpu=True, max_steps=math.ceil(examples / 8), report_to="none")
    peft_config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = SFTTrainer(model_dir, args=args, train_dataset=train, peft_config=peft_config)
    return float(trainer.train().metrics["train_runtime"])


def child(which: str, model_dir: str, data: Path, out: Path, examples: int) -> None:
    from storage.config import Settings

    if which == "baseline":
        seconds = run_baseline(model_dir, data, out, examples)
    else:
        seconds = run_ours(model_dir, data, out, 1.0 if which == "ours-all" else Settings().lora_layers)
    print("RESULT " + json.dumps({"which": which, "seconds": seconds}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, default=8)
    parser.add_argument("--data", type=Path, help="prompt-completion JSONL (default: built from the sample handbook)")
    parser.add_argument("--home", type=Path, help="FLYWHEEL_HOME holding the converted model")
    parser.add_argument("--child", choices=["ours-all", "ours", "baseline"], help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    add_report_argument(parser)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.model_dir, args.data, args.out, args.examples)
        return

    from agent.models import default_model_dir
    from storage.config import Settings

    settings = Settings(home=args.home) if args.home else Settings()
    model_dir = str(default_model_dir(settings))
    work = Path(tempfile.mkdtemp(prefix="flywheel-train-speed-"))
    data = work / "train.jsonl"
    if args.data:
        rows = [json.loads(line) for line in args.data.read_text().splitlines() if line.strip()][: args.examples]
    else:
        rows = build_examples(args.examples)
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tokens = real_tokens(model_dir, data)
    seconds: dict[str, float] = {}
    for which in ("ours-all", "ours", "baseline"):
        command = [sys.executable, __file__, "--child", which, "--model-dir", model_dir, "--data", str(data),
                   "--out", str(work / which), "--examples", str(len(rows))]
        done = subprocess.run(command, capture_output=True, text=True, cwd=str(ROOT))
        results = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if done.returncode != 0 or not results:
            raise SystemExit(f"{which} run failed ({done.returncode}):\n{done.stderr[-3000:]}")
        seconds[which] = json.loads(results[-1][len("RESULT "):])["seconds"]
        print(f"{which}: {seconds[which]:.1f} s, {tokens / seconds[which]:.1f} tokens/s", file=sys.stderr, flush=True)
    speed = {which: tokens / s for which, s in seconds.items()}
    result = {
        "examples": len(rows), "real_tokens": tokens, "model": model_dir,
        **{f"{which}_tokens_per_s": round(v, 1) for which, v in speed.items()},
        **{f"{which}_seconds": round(s, 1) for which, s in seconds.items()},
        "speedup_all_layers": round(speed["ours-all"] / speed["baseline"], 2),
        "speedup": round(speed["ours"] / speed["baseline"], 2),
    }
    print(json.dumps(result, indent=2))
    record("train_speed", result, args.report)  # the parent only: the --child runs print RESULT lines


if __name__ == "__main__":
    main()
