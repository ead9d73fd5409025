"""Write the quickstart's instruction task: pick the largest or smallest number of a list.

Each row asks, in plain words, for the largest or the smallest of three to five distinct two-digit
numbers; the answer is that number alone, e.g.

    {"question": "Which is the smallest: 47, 12, 85, 30?", "answer": "12"}

Why this task: most rows are short (about 55 tokens with SmolLM2's chat template, so CPU training
is cheap), the answer is checkable by exact match, and SmolLM2-135M-Instruct fails it before
training both in form (it answers with a sentence) and in content (about half of the numbers it
names are wrong), while a couple of minutes of fine-tuning teach both.

Like real instruction data, the lengths have a long tail: after the short rows, each split ends
with about 13% rows that ask about 20 to 60 three-digit numbers (120-340 tokens). Padding a batch
to its longest row then wastes about 60% of its tokens, which is what packing
(``packed_sequence``) and ``group_by_length`` exist to win back. The long rows come last, so a
``limit_dataset_samples`` of at most the short count reads short rows only.

The generator uses only the standard library and a fixed seed, so the files are reproducible
byte for byte. Splits never share a question.

    python tools/make_quickstart_data.py [--out data/quickstart] [--train 2000 --validation 200 --test 200]
                                         [--long-train 300 --long-validation 30 --long-test 30]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

SEED = 20250101
LOW, HIGH = 10, 99
MIN_ITEMS, MAX_ITEMS = 3, 5
# The long tail: 20-60 distinct three-digit numbers (the largest of 60 two-digit ones is nearly always 99).
LONG_LOW, LONG_HIGH = 100, 999
LONG_MIN_ITEMS, LONG_MAX_ITEMS = 20, 60
LONG_SIZES = {"test": 30, "validation": 30, "train": 300}


def make_row(rng: random.Random, long: bool = False) -> dict:
    """One question about a list of distinct numbers, and its one-number answer."""
    low, high = (LONG_LOW, LONG_HIGH) if long else (LOW, HIGH)
    count = rng.randint(*((LONG_MIN_ITEMS, LONG_MAX_ITEMS) if long else (MIN_ITEMS, MAX_ITEMS)))
    numbers = rng.sample(range(low, high + 1), count)
    largest = rng.random() < 0.5
    word = "largest" if largest else "smallest"
    answer = max(numbers) if largest else min(numbers)
    question = f"Which is the {word}: {', '.join(str(n) for n in numbers)}?"
    return {"question": question, "answer": str(answer)}


def make_splits(sizes: dict[str, int], seed: int = SEED,
                long_sizes: dict[str, int] | None = None) -> dict[str, list[dict]]:
    """Draw unique questions and deal them into splits in order (test first, then validation,
    then train), so the held-out splits stay the same if the train size changes; then the
    long rows, from a second seeded stream, so the short rows stay the same if their count changes."""
    long_sizes = LONG_SIZES if long_sizes is None else long_sizes
    seen: set[str] = set()
    splits: dict[str, list[dict]] = {name: [] for name in ("test", "validation", "train")}
    for long, counts, rng in ((False, sizes, random.Random(seed)), (True, long_sizes, random.Random(seed + 1))):
        for name, rows in splits.items():
            target = len(rows) + counts.get(name, 0)
            while len(rows) < target:
                row = make_row(rng, long)
                if row["question"] in seen:
                    continue
                seen.add(row["question"])
                rows.append(row)
    return splits


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "data" / "quickstart"))
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--validation", type=int, default=200)
    parser.add_argument("--test", type=int, default=200)
    for name, count in LONG_SIZES.items():
        parser.add_argument(f"--long-{name}", type=int, default=count, help=f"long rows at the end of {name}")
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sizes = {"train": args.train, "validation": args.validation, "test": args.test}
    long_sizes = {name: getattr(args, f"long_{name}") for name in LONG_SIZES}
    for name, rows in make_splits(sizes, args.seed, long_sizes).items():
        write_jsonl(out / f"{name}.jsonl", rows)
        print(f"wrote {len(rows):5d} rows to {out / f'{name}.jsonl'}")


if __name__ == "__main__":
    main()
