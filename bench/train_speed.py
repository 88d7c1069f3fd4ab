"""Training throughput: `flywheel train`'s SFT recipe vs trl `SFTTrainer` set up by a competent CPU user, one run.

    python bench/train_speed.py [--examples 28] [--epochs 3] [--warmup 1] [--data sft_train.jsonl] [--home DIR]

Three trainers, each in its own fresh process (no shared warm caches or thread pools), one after the
other on the same rows, the same model (the default SmolLM2-135M-Instruct, converted once into
`$FLYWHEEL_HOME/models`), the same torch threads and the same number of optimizer steps:

    ours      exactly what `flywheel train` runs: the RunConfig of training.train.build_run_config
              (default settings: LoRA r=16/alpha=32/dropout 0.05 on every linear layer of the top half of
              the decoder, lr 2e-4, batch 4, max length 768, 3 epochs) trained by training.sft.build_trainer
    trl       SFTTrainer(fp32 model, SFTConfig(bf16=False, fp16=False, gradient_checkpointing=False,
              completion_only_loss=True on prompt/completion rows, train_sampling_strategy="group_by_length"
              — transformers 5's group_by_length=True —, per_device_train_batch_size=4, max_length=768, the
              same lr/scheduler/seed), peft_config = the same LoRA (rank, alpha, dropout, modules, top-half
              layers): the same recipe, trl's own machinery
    trl-all   the same with LoRA on all layers (target_modules="all-linear"), what most trl users run

Rows: without --data, built from the bundled sample handbook with the agent's prompt (context passages +
question → cited answer), as training/dataset.py builds sft_train.jsonl; --data takes a real
`sft_train.jsonl` from `flywheel dataset`. Every trainer runs ceil(examples × epochs / batch) optimizer
steps — `flywheel train`'s default is 3 epochs, so each row is seen 3 times, which is what ours' cache of
the frozen lower layers' activations exploits; the first `--warmup` steps are not timed (≥ 20 must remain).

Measured per trainer, over the timed steps: tokens/s = non-padding tokens fed to the model (the sum of
each micro-batch's attention mask, prompt + completion, the same count for all three) / wall seconds from
the end of the last warm-up step to the end of the last step (data loading, forward, backward, optimizer:
everything but model loading and tokenising); s/step = those seconds / timed steps. The ratios are
ours/trl and ours/trl-all of tokens/s. On a shared machine wall time follows the load of the moment
(the three trainers run one after another), so tokens per CPU-second of the trainer's process over the
same steps (all its threads; idle OpenMP threads sleep, see below) is reported next to it, with its
ratios: the steadier measure of the work each recipe needs. Prints a table and one JSON object, and
appends a report card.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from report import add_report_argument, record  # noqa: E402  (bench/ is sys.path[0] when run as a script)

VARIANTS = ("ours", "trl", "trl-all")


@dataclass
class _Passage:
    source: str
    page: int | None
    heading: str | None
    text: str


def build_examples(n: int) -> list[dict]:
    """`n` prompt-completion rows from the sample handbook (questions cycled over passage windows), in the
    shape of training/dataset.py's sft_example: build_messages(question, passages) → answer with its marker."""
    from agent.prompts import build_messages
    from storage.samples import sample_handbook, sample_questions
    from training.dataset import with_marker

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
        rows.append({"prompt": messages, "completion": [{"role": "assistant", "content": with_marker(item["answer"], 1)}],
                     "id": f"bench-{i}", "source": "distilled"})
    return rows


def write_dataset(data: Path | None, examples: int, prefix: str) -> tuple[Path, Path, list[dict]]:
    """(work dir, dataset dir holding sft_train.jsonl, rows): the first `examples` rows of `data` (an SFT
    JSONL file), or `build_examples(examples)`; shared by the training benches."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    dataset_dir = work / "dataset"
    dataset_dir.mkdir()
    if data:
        rows = [json.loads(line) for line in data.read_text().splitlines() if line.strip()][:examples]
    else:
        rows = build_examples(examples)
    (dataset_dir / "sft_train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return work, dataset_dir, rows


class StepClock:
    """Counts the non-padding tokens of every micro-batch a trainer trains on and timestamps the end of
    every optimizer step; `metrics(warmup)` measures the steps after the first `warmup`."""

    def __init__(self) -> None:
        self.tokens = 0
        # (perf_counter, tokens so far, this process's CPU seconds over all its threads) at the end of each step
        self.marks: list[tuple[float, int, float]] = []

    def attach(self, trainer: Any) -> None:
        from transformers import TrainerCallback

        inner = trainer.training_step
        clock = self

        def counted(model: Any, inputs: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
            mask = inputs.get("attention_mask")
            clock.tokens += int(mask.sum()) if mask is not None else int(inputs["input_ids"].numel())
            return inner(model, inputs, *args, **kwargs)

        class _Marks(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
                clock.marks.append((time.perf_counter(), clock.tokens, time.process_time()))

        trainer.training_step = counted
        trainer.add_callback(_Marks())

    def metrics(self, warmup: int) -> dict[str, Any]:
        warmup = max(warmup, 1)  # the clock starts at the end of a step
        if len(self.marks) <= warmup:
            raise RuntimeError(f"only {len(self.marks)} steps ran, not more than the {warmup} warm-up steps")
        (t0, k0, c0), (t1, k1, c1) = self.marks[warmup - 1], self.marks[-1]
        steps, seconds, cpu = len(self.marks) - warmup, t1 - t0, c1 - c0
        gaps = [b[0] - a[0] for a, b in zip(self.marks[warmup - 1:], self.marks[warmup:], strict=False)]
        return {"steps": steps, "seconds": round(seconds, 2), "tokens": k1 - k0,
                "tokens_per_s": round((k1 - k0) / seconds, 1), "s_per_step": round(seconds / steps, 3),
                "cpu_seconds": round(cpu, 2), "tokens_per_cpu_s": round((k1 - k0) / cpu, 1),
                "step_seconds": [round(g, 2) for g in gaps]}


def ours_trainer(home: Path, dataset_dir: Path, out: Path, max_steps: int) -> tuple[Any, Any]:
    """The trainer `flywheel train` would run on `dataset_dir` (its RUN.json, built the same way)."""
    from storage.config import Settings
    from training.sft import build_trainer, set_threads
    from training.train import build_run_config

    cfg = build_run_config(Settings(home=home), dataset_dir, out, method="sft", run_id="bench", max_steps=max_steps,
                           init_adapter=None, counts={})
    cfg.save_steps = 10_000  # no checkpoint inside the timed steps (trl's runs save nothing either)
    set_threads(cfg.threads)
    trainer, _, _ = build_trainer(cfg)
    return trainer, cfg


def trl_trainer(home: Path, dataset_dir: Path, out: Path, max_steps: int, all_layers: bool) -> tuple[Any, Any]:
    """trl SFTTrainer as a careful CPU user sets it up, with ours' LoRA (or LoRA on every layer)."""
    import dataclasses

    import torch
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from storage.config import Settings
    from training.sft import lora_config, set_threads
    from training.train import build_run_config

    cfg = build_run_config(Settings(home=home), dataset_dir, out, method="sft", run_id="bench", max_steps=max_steps,
                           init_adapter=None, counts={})
    if all_layers:
        cfg = dataclasses.replace(cfg, lora_layers=1.0)
    set_threads(cfg.threads)
    tokenizer = AutoTokenizer.from_pretrained(cfg.model)
    model = AutoModelForCausalLM.from_pretrained(cfg.model, dtype=torch.float32)
    train = load_dataset("json", data_files=cfg.train_file, split="train").select_columns(["prompt", "completion"])
    args = SFTConfig(
        output_dir=str(out), use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=False,
        completion_only_loss=True, train_sampling_strategy="group_by_length",
        per_device_train_batch_size=cfg.batch_size, gradient_accumulation_steps=cfg.grad_accum,
        max_length=cfg.max_seq_len, learning_rate=cfg.learning_rate, lr_scheduler_type="cosine",
        max_steps=max_steps, logging_steps=1, save_strategy="no", report_to="none", dataloader_num_workers=0,
        seed=cfg.seed, disable_tqdm=True,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=train, processing_class=tokenizer,
                         peft_config=lora_config(cfg, model))
    return trainer, cfg


def child(which: str, home: Path, dataset_dir: Path, out: Path, max_steps: int, warmup: int) -> None:
    import torch

    from storage.hub import quiet_libraries

    quiet_libraries()
    if which == "ours":
        trainer, cfg = ours_trainer(home, dataset_dir, out, max_steps)
    else:
        trainer, cfg = trl_trainer(home, dataset_dir, out, max_steps, all_layers=which == "trl-all")
    clock = StepClock()
    clock.attach(trainer)
    trainer.train()
    adapted = sorted({int(n.split(".layers.")[1].split(".")[0]) for n, p in trainer.model.named_parameters()
                      if p.requires_grad and ".layers." in n})
    result = {"which": which, "threads": torch.get_num_threads(), "lora_layers": [adapted[0], adapted[-1]],
              "trainable_params": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
              "batch_size": cfg.batch_size, "max_len": cfg.max_seq_len,
              "final_loss": trainer.state.log_history[-2].get("loss") if len(trainer.state.log_history) > 1 else None,
              "prefix_cache": cache.stats() if (cache := getattr(trainer, "prefix_cache", None)) else None,
              **clock.metrics(warmup)}
    print("RESULT " + json.dumps(result), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, default=28)
    parser.add_argument("--epochs", type=float, default=3, help="passes over the rows (flywheel train's default: 3)")
    parser.add_argument("--warmup", type=int, default=1, help="optimizer steps not timed (at least 1)")
    parser.add_argument("--min-steps", type=int, default=20, help=argparse.SUPPRESS)  # smoke tests only
    parser.add_argument("--data", type=Path, help="sft_train.jsonl (default: built from the sample handbook)")
    parser.add_argument("--home", type=Path, help="FLYWHEEL_HOME holding the converted model")
    parser.add_argument("--only", choices=VARIANTS, action="append", help="run only these (repeatable)")
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--dataset-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--max-steps", type=int, help=argparse.SUPPRESS)
    add_report_argument(parser)
    args = parser.parse_args()
    from storage.config import Settings

    settings = Settings(home=args.home) if args.home else Settings()
    if args.child:
        child(args.child, settings.home, args.dataset_dir, args.out, args.max_steps, args.warmup)
        return

    from agent.models import default_model_dir

    model_dir = str(default_model_dir(settings))  # converts once, before any timing
    work, dataset_dir, rows = write_dataset(args.data, args.examples, "flywheel-train-speed-")
    max_steps = math.ceil(len(rows) * args.epochs / settings.batch_size)
    if max_steps - max(args.warmup, 1) < args.min_steps:
        raise SystemExit(f"{max_steps} steps leave fewer than {args.min_steps} after {args.warmup} warm-up steps: "
                         "raise --examples or --epochs")
    results: dict[str, dict[str, Any]] = {}
    load_start = round(os.getloadavg()[0], 2)
    # `flywheel train` runs with OMP_WAIT_POLICY=PASSIVE (training.sft.passive_openmp); every trainer here
    # gets the same OpenMP setting, so the ratios measure the recipes, not a thread setting.
    env = {**os.environ, "FLYWHEEL_HOME": str(settings.home),
           "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    for which in args.only or VARIANTS:
        command = [sys.executable, __file__, "--child", which, "--dataset-dir", str(dataset_dir),
                   "--out", str(work / which), "--max-steps", str(max_steps), "--warmup", str(args.warmup),
                   "--report", ""]
        if args.home:
            command += ["--home", str(args.home)]
        print(f"{which}: training {max_steps} steps …", file=sys.stderr, flush=True)
        done = subprocess.run(command, capture_output=True, text=True, cwd=str(ROOT), env=env)
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if done.returncode != 0 or not lines:
            raise SystemExit(f"{which} run failed ({done.returncode}):\n{done.stderr[-3000:]}")
        results[which] = r = {**json.loads(lines[-1][len("RESULT "):]), "load_1m_end": round(os.getloadavg()[0], 2)}
        print(f"{which}: {r['tokens_per_s']} tokens/s, {r['s_per_step']} s/step, load {os.getloadavg()[0]:.2f}",
              file=sys.stderr, flush=True)
    summary: dict[str, Any] = {"examples": len(rows), "epochs": args.epochs, "max_steps": max_steps,
                               "warmup_steps": args.warmup, "model": model_dir,
                               "data": str(args.data) if args.data else "sample handbook",
                               "omp_wait_policy": env["OMP_WAIT_POLICY"],
                               "load_1m_start": load_start, "variants": results}
    for other in ("trl", "trl-all"):
        if "ours" in results and other in results:
            name = other.replace("-", "_")
            summary[f"ours_over_{name}"] = round(results["ours"]["tokens_per_s"] / results[other]["tokens_per_s"], 2)
            summary[f"ours_over_{name}_cpu"] = round(
                results["ours"]["tokens_per_cpu_s"] / results[other]["tokens_per_cpu_s"], 2)
    print(f"\n{'trainer':<9} {'LoRA layers':>11} {'steps':>5} {'tokens':>7} {'tokens/s':>9} {'s/step':>7} "
          f"{'tokens/CPU-s':>12} {'load':>5}")
    for which, r in results.items():
        layers = f"{r['lora_layers'][0]}-{r['lora_layers'][1]}"
        print(f"{which:<9} {layers:>11} {r['steps']:>5} {r['tokens']:>7} {r['tokens_per_s']:>9} {r['s_per_step']:>7} "
              f"{r['tokens_per_cpu_s']:>12} {r['load_1m_end']:>5}")
    for key in ("ours_over_trl", "ours_over_trl_all"):
        if key in summary:
            print(f"{key}: {summary[key]}× wall, {summary[key + '_cpu']}× per CPU-second")
    print(json.dumps(summary, indent=2))
    record("train_speed", summary, args.report)  # the parent only: the --child runs print RESULT lines


if __name__ == "__main__":
    main()
