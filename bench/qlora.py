"""QLoRA vs LoRA: speed and peak memory of `flywheel train` with FLYWHEEL_QUANTIZE=nf4 against the default float base.

    python bench/qlora.py [--examples 16] [--steps 12] [--warmup 2] [--data sft_train.jsonl] [--home DIR]

Each variant is exactly what `flywheel train` runs: the RunConfig of training.train.build_run_config with the
default settings (LoRA r=16 on the top half of the decoder, batch 4, max length 768) and only `quantize`
changed — none (fp32 base on CPU) or nf4 (4-bit NormalFloat base via bitsandbytes, float32 compute) —
trained by `python -m training.sft --config RUN.json` in its own fresh process, one after the other, on the
same rows, the same model (the default SmolLM2-135M-Instruct, converted once into `$FLYWHEEL_HOME/models`),
the same threads and the same number of optimizer steps.

Measured per variant, from the run's own losses.jsonl (one row per optimizer step: tokens seen, seconds):
tokens/s = non-padding tokens trained on (prompt + completion) / seconds, over the steps after the first
`--warmup`; s/step likewise; peak RSS = the training process's `ru_maxrss` (os.wait4 on that process: its
own high-water mark, model load included — the safetensors file is memory-mapped, so loading counts the
float weights once for either variant); training RSS = the highest VmRSS sampled every 0.5 s after the
warm-up steps; weights = the loaded base's get_memory_footprint() (measured after the runs). Also the first and last step's loss: the same rows and seed, so
the two curves should track each other. Rows: without --data, built from the bundled sample handbook with
the agent's prompt (context passages + question → cited answer); --data takes a real `sft_train.jsonl`.
Prints a table and one JSON object, and appends a report card (bench/report.py).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from report import add_report_argument, record  # noqa: E402  (bench/ is sys.path[0] when run as a script)
from train_speed import write_dataset  # noqa: E402  (the same SFT rows as the training-speed bench)

VARIANTS = ("none", "nf4")


def timed_steps(losses: Path, warmup: int) -> dict[str, Any]:
    """tokens/s and s/step over the steps after the first `warmup`, from a run's losses.jsonl."""
    rows = [json.loads(line) for line in losses.read_text().splitlines() if line.strip()]
    steps = [r for r in rows if "loss" in r]
    warmup = max(warmup, 1)  # the clock starts at the end of a step
    if len(steps) <= warmup:
        raise RuntimeError(f"only {len(steps)} steps ran, not more than the {warmup} warm-up steps")
    start, end = steps[warmup - 1], steps[-1]
    seconds, tokens, count = end["time"] - start["time"], end["tokens"] - start["tokens"], len(steps) - warmup
    return {"steps": count, "seconds": round(seconds, 2), "tokens": tokens,
            "tokens_per_s": round(tokens / seconds, 1), "s_per_step": round(seconds / count, 3),
            "first_loss": round(steps[0]["loss"], 4), "last_loss": round(steps[-1]["loss"], 4)}


def _logged_steps(losses: Path) -> int:
    try:
        return sum(1 for line in losses.read_text().splitlines() if '"loss"' in line)
    except OSError:
        return 0


def _rss_kb(pid: int) -> int | None:
    """The process's resident set size now (Linux /proc), in kB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def weights_mb(model_dir: str, quantize: str) -> float:
    """The loaded training base's parameters and buffers (transformers' get_memory_footprint), in MB."""
    from training.sft import load_base

    model, _ = load_base(model_dir, quantize)
    return round(model.get_memory_footprint() / 2**20, 1)


def run_variant(quantize: str, home: Path, dataset_dir: Path, out: Path, steps: int, warmup: int,
                threads: int | None) -> dict[str, Any]:
    """One `python -m training.sft` run with `quantize`; its speed and its own peak RSS."""
    from storage.config import Settings
    from training.train import build_run_config

    update: dict[str, Any] = {"quantize": quantize}
    if threads is not None:
        update["train_threads"] = threads
    settings = Settings(home=home).model_copy(update=update)
    cfg = build_run_config(settings, dataset_dir, out, method="sft", run_id=f"bench-{quantize}", max_steps=steps,
                           init_adapter=None, counts={})
    cfg.save_steps = 10_000  # no checkpoint inside the timed steps
    out.mkdir(parents=True)
    cfg.save(out / "RUN.json")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    started = time.perf_counter()
    training_rss: list[int] = []  # VmRSS samples (kB) once the warm-up steps are done
    with (out / "train.log").open("w") as log:
        process = subprocess.Popen([sys.executable, "-m", "training.sft", "--config", str(out / "RUN.json")],
                                   stdout=log, stderr=subprocess.STDOUT, cwd=str(ROOT), env=env)
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)  # this process's own rusage, not all children's
            if pid:
                break
            if _logged_steps(out / "losses.jsonl") >= max(warmup, 1) and (rss := _rss_kb(process.pid)):
                training_rss.append(rss)
            time.sleep(0.5)
    process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    summary_path = out / "flywheel.json"
    if process.returncode != 0 or not summary_path.is_file():
        tail = (out / "train.log").read_text()[-3000:]
        raise SystemExit(f"quantize={quantize}: training failed ({process.returncode}):\n{tail}")
    summary = json.loads(summary_path.read_text())
    return {"quantize": quantize, "quantized": summary.get("quantized"), "threads": cfg.threads or os.cpu_count(),
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),  # Linux: kilobytes
            "training_rss_mb": round(max(training_rss) / 1024, 1) if training_rss else None,
            "wall_seconds": round(wall, 1), "adapter_mb": round((out / "adapter_model.safetensors").stat().st_size / 2**20, 2),
            **timed_steps(out / "losses.jsonl", warmup)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, default=16)
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps per variant")
    parser.add_argument("--warmup", type=int, default=2, help="optimizer steps not timed (at least 1)")
    parser.add_argument("--threads", type=int, help="torch threads (default: FLYWHEEL_TRAIN_THREADS, 0 = all cores)")
    parser.add_argument("--data", type=Path, help="sft_train.jsonl (default: built from the sample handbook)")
    parser.add_argument("--home", type=Path, help="FLYWHEEL_HOME holding the converted model")
    parser.add_argument("--only", choices=VARIANTS, action="append", help="run only these (repeatable)")
    add_report_argument(parser)
    args = parser.parse_args()
    from agent.models import default_model_dir
    from storage.config import Settings
    from training.quantize import bitsandbytes_version, quantize_problem

    settings = Settings(home=args.home) if args.home else Settings()
    variants = args.only or list(VARIANTS)
    if "nf4" in variants and (problem := quantize_problem("nf4", settings.backend)):
        raise SystemExit(problem)
    model_dir = str(default_model_dir(settings))  # converts once, before any timing
    work, dataset_dir, rows = write_dataset(args.data, args.examples, "flywheel-qlora-")
    results: dict[str, dict[str, Any]] = {}
    for quantize in variants:
        print(f"quantize={quantize}: training {args.steps} steps …", file=sys.stderr, flush=True)
        results[quantize] = r = run_variant(quantize, settings.home, dataset_dir, work / quantize, args.steps,
                                            args.warmup, args.threads)
        r["load_1m_end"] = round(os.getloadavg()[0], 2)
        print(f"quantize={quantize}: {r['tokens_per_s']} tokens/s, {r['s_per_step']} s/step, peak RSS "
              f"{r['peak_rss_mb']} MB, training RSS {r['training_rss_mb']} MB, load {r['load_1m_end']:.2f}",
              file=sys.stderr, flush=True)
    for quantize in variants:  # after the timed runs, so the runs never share the machine with this
        results[quantize]["weights_mb"] = weights_mb(model_dir, quantize)
    summary: dict[str, Any] = {"examples": len(rows), "steps": args.steps, "warmup_steps": args.warmup,
                               "model": model_dir, "data": str(args.data) if args.data else "sample handbook",
                               "bitsandbytes": bitsandbytes_version(), "variants": results}
    if len(results) == 2:
        summary["nf4_over_none_tokens_per_s"] = round(results["nf4"]["tokens_per_s"] / results["none"]["tokens_per_s"], 2)
        summary["nf4_over_none_peak_rss"] = round(results["nf4"]["peak_rss_mb"] / results["none"]["peak_rss_mb"], 2)
    print(f"\n{'quantize':<9} {'steps':>5} {'tokens':>7} {'tokens/s':>9} {'s/step':>7} {'peak RSS MB':>12} "
          f"{'training RSS MB':>16} {'weights MB':>11} {'loss first→last':>16}")
    for name, r in results.items():
        print(f"{name:<9} {r['steps']:>5} {r['tokens']:>7} {r['tokens_per_s']:>9} {r['s_per_step']:>7} "
              f"{r['peak_rss_mb']:>12} {r['training_rss_mb']!s:>16} {r['weights_mb']:>11} "
              f"{r['first_loss']:>7}→{r['last_loss']:<8}")
    print(json.dumps(summary, indent=2))
    record("qlora", summary, args.report)


if __name__ == "__main__":
    main()
