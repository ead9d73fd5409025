"""Write the quickstart's instruction task: pick the largest or smallest number of a short list.

Each row asks, in plain words, for the largest or the smallest of three to five distinct two-digit
numbers; the answer is that number alone, e.g.

    {"question": "Which is the smallest: 47, 12, 85, 30?", "answer": "12"}

Why this task: rows are short (about 50 tokens with SmolLM2's chat template, so CPU training is
cheap), the answer is checkable by exact match, and SmolLM2-135M-Instruct fails it before
training both in form (it answers with a sentence) and in content (about half of the numbers it
names are wrong), while a couple of minutes of fine-tuning teach both.

The generator uses only the standard library and a fixed seed, so the files are reproducible
byte for byte. Splits never share a question.

    python tools/make_quickstart_data.py [--out data/quickstart] [--train 2000 --validation 200 --test 200]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

SEED = 20250101
LOW, HIGH = 10, 99
MIN_ITEMS, MAX_ITEMS = 3, 5


def make_row(rng: random.Random) -> dict:
    """One question about a list of distinct two-digit numbers, and its one-number answer."""
    count = rng.randint(MIN_ITEMS, MAX_ITEMS)
    numbers = rng.sample(range(LOW, HIGH + 1), count)
    largest = rng.random() < 0.5
    word = "largest" if largest else "smallest"
    answer = max(numbers) if largest else min(numbers)
    question = f"Which is the {word}: {', '.join(str(n) for n in numbers)}?"
    return {"question": question, "answer": str(answer)}


def make_splits(sizes: dict[str, int], seed: int = SEED) -> dict[str, list[dict]]:
    """Draw unique questions and deal them into splits in order (test first, then validation,
    then train), so the held-out splits stay the same if the train size changes."""
    rng = random.Random(seed)
    seen: set[str] = set()
    splits: dict[str, list[dict]] = {}
    for name in ("test", "validation", "train"):
        rows: list[dict] = []
        while len(rows) < sizes[name]:
            row = make_row(rng)
            if row["question"] in seen:
                continue
            seen.add(row["question"])
            rows.append(row)
        splits[name] = rows
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
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sizes = {"train": args.train, "validation": args.validation, "test": args.test}
    for name, rows in make_splits(sizes, args.seed).items():
        write_jsonl(out / f"{name}.jsonl", rows)
        print(f"wrote {len(rows):5d} rows to {out / f'{name}.jsonl'}")


if __name__ == "__main__":
    main()
