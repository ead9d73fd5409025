"""Write a small multi-turn chat task in the OpenAI ``messages`` format, for ChatDataset recipes.

Each conversation is about one short list of two-digit numbers: the user asks for one
property (largest, smallest, sum, how many are even, sorted order), the assistant answers
in a short fixed sentence, and the user follows up once or twice about the same list. A
third of the conversations open with a system message. For example

    {"messages": [{"role": "user", "content": "Which is the largest: 47, 12, 85?"},
                  {"role": "assistant", "content": "The largest is 85."},
                  {"role": "user", "content": "And the sum of all of them?"},
                  {"role": "assistant", "content": "The sum is 144."}]}

Why generated: the machine has no hub; every answer is determined by the conversation, so
the learnt behaviour (answer format and multi-turn context) is checkable. Only the standard
library and a fixed seed: the files are reproducible byte for byte; splits share no list.

    python tools/make_chat_data.py [--out data/chat] [--train 400 --validation 50]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from typing import Callable

SEED = 20250107
SYSTEM = "You answer questions about lists of numbers in one short sentence."

# (first question, follow-up question, answer) per property of the list.
PROPERTIES: dict[str, tuple[str, str, Callable[[list[int]], str]]] = {
    "largest": ("Which is the largest: {nums}?", "And the largest?", lambda n: f"The largest is {max(n)}."),
    "smallest": ("Which is the smallest: {nums}?", "And the smallest?", lambda n: f"The smallest is {min(n)}."),
    "sum": ("What is the sum of {nums}?", "And the sum of all of them?", lambda n: f"The sum is {sum(n)}."),
    "even": ("How many of {nums} are even?", "How many of them are even?",
             lambda n: f"{sum(1 for x in n if x % 2 == 0)} of them are even."),
    "sorted": ("Sort {nums} from smallest to largest.", "Now sort them from smallest to largest.",
               lambda n: "In order: " + ", ".join(str(x) for x in sorted(n)) + "."),
}


def make_conversation(rng: random.Random) -> dict:
    """Two or three user turns about one list, each answered."""
    numbers = rng.sample(range(10, 100), rng.randint(3, 5))
    asked = rng.sample(list(PROPERTIES), rng.randint(2, 3))
    messages = [{"role": "system", "content": SYSTEM}] if rng.random() < 1 / 3 else []
    for turn, name in enumerate(asked):
        first, follow_up, answer = PROPERTIES[name]
        question = first.format(nums=", ".join(str(x) for x in numbers)) if turn == 0 else follow_up
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer(numbers)}]
    return {"messages": messages}


def make_splits(sizes: dict[str, int], seed: int = SEED) -> dict[str, list[dict]]:
    """Unique conversations dealt into splits (validation first); no number list is in two splits."""
    rng = random.Random(seed)
    seen: set[str] = set()
    splits: dict[str, list[dict]] = {}
    for name in ("validation", "train"):
        rows: list[dict] = []
        while len(rows) < sizes[name]:
            row = make_conversation(rng)
            first_user = next(m["content"] for m in row["messages"] if m["role"] == "user")
            key = "".join(ch for ch in first_user if ch.isdigit() or ch == ",")
            if key in seen:
                continue
            seen.add(key)
            rows.append(row)
        splits[name] = rows
    return splits


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "data" / "chat"))
    parser.add_argument("--train", type=int, default=400)
    parser.add_argument("--validation", type=int, default=50)
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in make_splits({"train": args.train, "validation": args.validation}, args.seed).items():
        path = out / f"{name}.jsonl"
        with open(path, "w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        print(f"wrote {len(rows):4d} rows to {path}")


if __name__ == "__main__":
    main()
