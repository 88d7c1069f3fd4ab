"""The seed experiment: does fine-tuning the default 135M model on distilled pairs beat the base model on
questions PEOPLE wrote, and how does it grow with data? Three seeds per size, mean ± spread.

    python bench/seed_experiment.py --docs ../shared/eval/sqlite/docs \
        --qa ../shared/eval/sqlite/qa.jsonl --qa bench/eval/sqlite_unanswerable.jsonl \
        --sizes 0 8 32 64 256 --seeds 0 1 2

The documents are ingested into a fresh FLYWHEEL_HOME and distilled by the offline teacher (whose rules
were never tuned on them). For each seed and size N an adapter is trained, in its own process, on N
distilled pairs drawn with that seed (plus the usual share of "not in the documents" rows), and the
agent — retrieval, the model with the adapter, the grounding check — answers the human-written
questions; the final answers are scored as `flywheel eval` scores them (accuracy: every must_include
string and not a refusal; refusals both ways; the share the model wrote). N = 0 is the base model.
Writes results.json, a Markdown table and seed_experiment.png to --out.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

from report import add_report_argument, record


def subset(dataset_dir: Path, out_dir: Path, pairs: int, notfound_share: float, seed: int = 0) -> dict[str, int]:
    """`pairs` distilled SFT rows drawn with `seed` (teacher refusals count as pairs) and a proportional
    number of not-found rows."""
    rows = [json.loads(line) for line in (dataset_dir / "sft_train.jsonl").read_text().splitlines() if line]
    distilled = [r for r in rows if r.get("source") in ("distilled", "refusal")]
    notfound = [r for r in rows if r.get("source") == "not_found"]
    rng = random.Random(seed)
    rng.shuffle(distilled)
    rng.shuffle(notfound)
    chosen = distilled[:pairs] + notfound[: round(pairs * notfound_share)]
    rng.shuffle(chosen)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "sft_train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in chosen))
    return {"distilled": min(pairs, len(distilled)), "not_found": round(pairs * notfound_share),
            "available": len(distilled)}


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [r["pairs"] for r in rows]
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for key, label in (("accuracy", "accuracy"), ("produced_by_model", "written by the model"),
                       ("correct_refusal", "unanswerable refused")):
        ax.errorbar(range(len(sizes)), [r[key]["mean"] for r in rows], yerr=[r[key]["sd"] for r in rows],
                    marker="o", capsize=3, label=label)
    ax.set_xticks(range(len(sizes)), [str(s) for s in sizes])
    ax.set_xlabel("distilled training pairs (0 = base model)")
    ax.set_ylabel("human-written questions (mean ± sd over seeds)")
    ax.set_ylim(0, 1)
    ax.set_title("SmolLM2-135M + LoRA, scored on questions people wrote")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _spread(values: list[float]) -> dict[str, float]:
    from statistics import mean, pstdev

    return {"mean": round(mean(values), 4), "sd": round(pstdev(values), 4) if len(values) > 1 else 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=Path, nargs="+", required=True, help="Documents or folders to learn from.")
    parser.add_argument("--qa", type=Path, action="append", required=True, help="Human-written QA JSONL (repeatable).")
    parser.add_argument("--sizes", type=int, nargs="+", default=[0, 8, 32, 64, 256])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--home", type=Path, default=Path("bench/out/seed-home"))
    parser.add_argument("--out", type=Path, default=Path("bench/out/seed"))
    add_report_argument(parser)
    args = parser.parse_args()

    from agent.evaluate import load_qa
    from storage.config import Settings
    from storage.db import Store
    from storage.knowledge import KnowledgeBase
    from training.dataset import build_datasets
    from training.distill import distill
    from training.gate import evaluate_adapter, make_generator
    from training.teachers import load_teacher
    from training.train import train_adapter

    settings = Settings(home=args.home, max_train_pairs=0)  # every distilled pair is available to draw from
    store = Store(settings.db_path)
    kb = KnowledgeBase(settings, store)
    report = kb.ingest(args.docs)
    assert not report.failed, report.failed
    teacher = load_teacher(settings, "offline")
    distilled = distill(settings, store, teacher)
    data = build_datasets(settings, store, kb, teacher=teacher)
    qa = load_qa(args.qa)
    print(json.dumps({"documents": len(args.docs), "pairs_kept": distilled.kept, "train": distilled.train,
                      "questions": len(qa), "dataset": data.files}), flush=True)

    generator = make_generator(settings)  # one model load; adapters are swapped in turn
    runs = []
    for pairs in args.sizes:
        for seed in args.seeds if pairs else args.seeds[:1]:  # the base model is the same for every seed
            started = time.perf_counter()
            version, counts = None, {"distilled": 0}
            if pairs:
                folder = args.out / f"data-{pairs}-seed{seed}"
                counts = subset(Path(data.out_dir), folder, pairs, settings.notfound_fraction, seed=seed)
                version = train_adapter(settings, store, folder, run_id=f"seed-{pairs}-{seed}").version
            train_s = time.perf_counter() - started
            final = evaluate_adapter(settings, store, kb, version, qa, generator=generator, judge=None,
                                     out_dir=args.out / f"eval-{pairs}-seed{seed}")["final"]
            run = {"pairs": pairs, "seed": seed, "trained_on": counts, "adapter": version, "train_s": round(train_s, 1),
                   **{k: final.get(k, 0.0) for k in ("accuracy", "false_refusal", "correct_refusal", "produced_by_model")}}
            runs.append(run)
            print(json.dumps(run), flush=True)
            record("seed_experiment", run, args.report)

    rows = [{"pairs": n, "seeds": len([r for r in runs if r["pairs"] == n]),
             **{k: _spread([r[k] for r in runs if r["pairs"] == n])
                for k in ("accuracy", "false_refusal", "correct_refusal", "produced_by_model", "train_s")}}
            for n in args.sizes]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"runs": runs, "rows": rows}, indent=2))
    table = "| pairs | seeds | accuracy | false refusals | correct refusals | written by the model | train s |\n"
    table += "|---:|---:|---:|---:|---:|---:|---:|\n" + "".join(
        f"| {r['pairs']}{' (base)' if r['pairs'] == 0 else ''} | {r['seeds']} | "
        + " | ".join(f"{r[k]['mean']:.2f} ± {r[k]['sd']:.2f}" for k in
                     ("accuracy", "false_refusal", "correct_refusal", "produced_by_model"))
        + f" | {r['train_s']['mean']:.0f} |\n" for r in rows)
    (args.out / "table.md").write_text(table)
    plot(rows, args.out / "seed_experiment.png")
    print(table)


if __name__ == "__main__":
    main()
