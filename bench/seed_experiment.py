"""The seed experiment: does fine-tuning the default 135M model on distilled pairs of one real document
beat the base model on that document's held-out questions, and how does it grow with data?

    python bench/seed_experiment.py --doc ../shared/eval/sqlite/docs/fts5.html --sizes 0 8 32 64 256

One document is ingested into a fresh FLYWHEEL_HOME and distilled by the offline teacher; its sections
are split into train and held-out by the fixed hash split (training never sees a held-out section).
For each size N an adapter is trained on the first N distilled pairs (plus the usual share of
"not in the documents" examples) in its own process, and the model's own drafts — not the agent's
grounding fallback — are scored on the same held-out questions: accuracy (token-F1 ≥ 0.5 against
the teacher's reference), token-F1, ROUGE-L, groundedness and citation validity. N = 0 is the base.
Writes results.json, a Markdown table and seed_experiment.png to --out.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path


def subset(dataset_dir: Path, out_dir: Path, pairs: int, notfound_share: float, seed: int = 0) -> dict[str, int]:
    """The first `pairs` distilled SFT rows (a fixed shuffle) and a proportional number of not-found rows."""
    rows = [json.loads(line) for line in (dataset_dir / "sft_train.jsonl").read_text().splitlines() if line]
    distilled = [r for r in rows if r.get("source") == "distilled"]
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


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [r["trained_on"]["distilled"] for r in results]
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for key, label in (("accuracy", "accuracy"), ("f1", "token-F1"), ("groundedness", "groundedness")):
        ax.plot(range(len(sizes)), [r[key] for r in results], marker="o", label=label)
    ax.set_xticks(range(len(sizes)), [str(s) for s in sizes])
    ax.set_xlabel("distilled training pairs (0 = base model)")
    ax.set_ylabel("held-out score (model drafts)")
    ax.set_ylim(0, 1)
    ax.set_title("SmolLM2-135M + LoRA on one document's distilled Q&A")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--doc", type=Path, required=True, help="One real document (PDF, HTML, Markdown, text).")
    parser.add_argument("--sizes", type=int, nargs="+", default=[0, 8, 32, 64, 256])
    parser.add_argument("--heldout", type=int, default=30, help="Held-out questions asked of every model.")
    parser.add_argument("--home", type=Path, default=Path("bench/out/seed-home"))
    parser.add_argument("--out", type=Path, default=Path("bench/out/seed"))
    args = parser.parse_args()

    from storage.config import Settings
    from storage.db import Store
    from storage.knowledge import KnowledgeBase
    from training.cycle import heldout_questions
    from training.dataset import build_datasets
    from training.distill import distill
    from training.gate import evaluate_adapter, make_generator
    from training.teachers import load_teacher
    from training.train import train_adapter

    settings = Settings(home=args.home, max_new_tokens=96)
    store = Store(settings.db_path)
    kb = KnowledgeBase(settings, store)
    report = kb.ingest([args.doc])
    assert not report.failed, report.failed
    teacher = load_teacher(settings, "offline")
    distilled = distill(settings, store, teacher)
    data = build_datasets(settings, store, kb, teacher=teacher)
    qa = heldout_questions(store, args.heldout)
    print(json.dumps({"document": args.doc.name, "chunks": report.chunks or kb.stats()["chunks"],
                      "pairs_kept": distilled.kept, "train": distilled.train, "heldout": distilled.heldout,
                      "heldout_asked": len(qa), "dataset": data.files}), flush=True)

    generator = make_generator(settings)  # one model load; adapters are swapped in turn
    results = []
    for pairs in args.sizes:
        started = time.perf_counter()
        version, counts, final_loss = None, {"distilled": 0}, None
        if pairs:
            counts = subset(Path(data.out_dir), args.out / f"data-{pairs}", pairs, settings.notfound_fraction)
            if counts["distilled"] < pairs:
                print(f"only {counts['available']} distilled train pairs: size {pairs} trains on all of them")
            adapter = train_adapter(settings, store, args.out / f"data-{pairs}", run_id=f"seed-{pairs}")
            version, final_loss = adapter.version, adapter.final_loss
        train_s = time.perf_counter() - started
        evaluation = evaluate_adapter(settings, store, kb, version, qa, generator=generator,
                                      out_dir=args.out / f"eval-{pairs}")
        draft = evaluation["draft"]
        row = {"pairs": pairs, "trained_on": counts, "adapter": version, "train_s": round(train_s, 1),
               "final_loss": final_loss,
               "accuracy": draft["accuracy"], "f1": draft["f1"], "rouge_l": draft["rouge_l"],
               "groundedness": draft["groundedness"], "citation_validity": draft["citation_validity"],
               "cite_rate": draft["cite_rate"], "eval_s": evaluation["seconds"]}
        results.append(row)
        print(json.dumps(row), flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    header = "| pairs | accuracy | token-F1 | ROUGE-L | groundedness | valid citations | train s |\n"
    header += "|---:|---:|---:|---:|---:|---:|---:|\n"
    table = header + "".join(
        f"| {r['trained_on']['distilled']}{' (base)' if r['pairs'] == 0 else ''} | {r['accuracy']:.2f} | {r['f1']:.2f} | "
        f"{r['rouge_l']:.2f} | {r['groundedness']:.2f} | {r['citation_validity']:.2f} | {r['train_s']:.0f} |\n"
        for r in results
    )
    (args.out / "table.md").write_text(table)
    plot(results, args.out / "seed_experiment.png")
    print(table)


if __name__ == "__main__":
    main()
