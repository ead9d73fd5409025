"""Write the GRPO prompt sets, ``data/grpo/<task>/{train,validation,test}.jsonl``: tasks a script checks.

Every row has a plain-string ``prompt`` and the columns its reward reads:

- ``arithmetic``: single-digit additions, ``{"prompt": "What is 3 + 5?", "answer": "8"}``, judged by
  :func:`nemo_like.components.rewards.exact_answer.exact_answer`. With the answer turn pre-filled
  (``assistant_prefix: "The answer is"``) SmolLM2-135M-Instruct answers about three in four right
  by greedy decoding (measured on validation: 0.76; 0.50 with ``"Answer:"``), so sampled groups
  hold both right and wrong answers, which is what GRPO learns from. There are only 81 pairs of
  digits 1-9 (times three phrasings), so the splits are not disjoint: each split is drawn with its
  own seed (validation and test hold distinct prompts, train repeats them), and held-out accuracy
  measures the policy on the task, not on unseen sums.
- ``countdown``: 3 or 4 numbers and a target made from some of them with ``+ - * /`` (each number
  at most once, every step a positive integer), ``{"nums": [...], "target": N}``; the prompt asks
  for the equation inside ``<answer>...</answer>``. Judged by
  :class:`nemo_like.components.rewards.countdown.CountdownReward`.
- ``letters``: "How many times does the letter 'r' appear in 'strawberry'?", with ``word``,
  ``letter`` and ``count`` (about one row in five asks for a letter the word lacks: count 0); the
  prompt asks for the count as ``\\boxed{N}``. Judged by
  :class:`nemo_like.components.rewards.letter_count.LetterCountReward`.

Countdown and letters splits never share a prompt (test is drawn first, then validation, then
train, so the held-out splits stay the same if the train size changes). The generator uses only
the standard library and fixed seeds, so the files are reproducible byte for byte.

    python tools/make_reasoning_data.py [--out data/grpo] [--train 2000 --validation 100 --test 100]
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Callable
from pathlib import Path

SEED = 20250701
SPLITS = ("test", "validation", "train")  # the order they are drawn in

# Phrasings SmolLM2-135M-Instruct answers well enough with the answer turn pre-filled (greedy, "The answer is"):
# "What is 3 + 5?" 0.54, "Compute 3 + 5." 0.93, "Calculate 3 + 5." 0.80 over half of the 81 pairs; "What is 3 plus 5?"
# (0.14) and "What is the sum of 3 and 5?" (0.0: it restates the question) are left out.
ADDITION_PHRASINGS = ("What is {a} + {b}?", "Compute {a} + {b}.", "Calculate {a} + {b}.")

COUNTDOWN_PROMPT = ("Using the numbers {nums}, create an equation that equals {target}. You can use +, -, * and /, "
                    "and each number at most once. Think it through inside <think> </think> tags, then write only "
                    "the equation inside <answer> </answer> tags, for example <answer>(1 + 2) * 3</answer>.")

LETTER_PHRASINGS = ("How many times does the letter '{letter}' appear in '{word}'?",
                    "Count the letter '{letter}' in the word '{word}'.",
                    "How many '{letter}'s are there in '{word}'?")
LETTER_INSTRUCTION = " Give the final count as \\boxed{N}, for example \\boxed{2}."

WORDS = (
    "strawberry", "banana", "apple", "cherry", "mississippi", "balloon", "committee", "bookkeeper", "coffee",
    "letter", "address", "success", "necessary", "occurrence", "parallel", "pepper", "programming", "grammar",
    "assessment", "possession", "tomorrow", "embarrass", "millennium", "accommodate", "broccoli", "giraffe",
    "hippopotamus", "kangaroo", "raccoon", "squirrel", "butterfly", "caterpillar", "dragonfly", "elephant",
    "penguin", "dolphin", "octopus", "jellyfish", "alligator", "crocodile", "rhinoceros", "chimpanzee",
    "mountain", "river", "ocean", "desert", "forest", "valley", "volcano", "glacier", "island", "canyon",
    "umbrella", "pillow", "blanket", "window", "ceiling", "kitchen", "library", "hospital", "airport",
    "station", "bicycle", "motorcycle", "helicopter", "submarine", "satellite", "telescope", "microscope",
    "calendar", "dictionary", "encyclopedia", "newspaper", "magazine", "notebook", "pencil", "eraser",
    "scissors", "keyboard", "computer", "internet", "software", "hardware", "database", "algorithm",
    "avocado", "pineapple", "watermelon", "blueberry", "raspberry", "tangerine", "grapefruit",
    "potato", "tomato", "cucumber", "zucchini", "spaghetti", "lasagna", "cinnamon", "vanilla", "chocolate",
    "marshmallow", "lollipop", "popcorn", "pretzel", "cookie", "muffin", "pancake", "waffle", "barbecue",
    "football", "basketball", "baseball", "volleyball", "swimming", "running", "jumping", "skipping",
    "happiness", "sadness", "excellent", "beautiful", "wonderful", "terrible", "horrible", "possible",
    "impossible", "difference", "independence", "government", "environment", "development", "management",
    "assistant", "teacher", "engineer", "musician", "photographer", "carpenter", "plumber", "gardener",
    "referee", "volunteer", "pioneer", "engineering", "chemistry", "geography", "history", "philosophy",
    "psychology", "mathematics", "statistics", "economics", "literature", "architecture", "agriculture",
)
ALPHABET = "abcdefghijklmnopqrstuvwxyz"

Row = dict


# ---------------------------------------------------------------------- arithmetic
def addition_row(rng: random.Random) -> Row:
    """One single-digit addition (digits 1-9) in one of a few phrasings."""
    a, b = rng.randint(1, 9), rng.randint(1, 9)
    return {"prompt": rng.choice(ADDITION_PHRASINGS).format(a=a, b=b), "answer": str(a + b)}


def arithmetic_splits(sizes: dict[str, int], seed: int = SEED) -> dict[str, list[Row]]:
    """Each split from its own seeded stream; validation and test rows are distinct prompts, train may repeat."""
    splits: dict[str, list[Row]] = {}
    for offset, name in enumerate(SPLITS):
        rng = random.Random(f"arithmetic/{name}/{seed + offset}")
        rows: list[Row] = []
        seen: set[str] = set()
        unique = name != "train"
        limit = 81 * len(ADDITION_PHRASINGS)
        if unique and sizes.get(name, 0) > limit:
            raise SystemExit(f"--{name} {sizes[name]}: at most {limit} distinct additions exist")
        while len(rows) < sizes.get(name, 0):
            row = addition_row(rng)
            if unique and row["prompt"] in seen:
                continue
            seen.add(row["prompt"])
            rows.append(row)
        splits[name] = rows
    return splits


# ---------------------------------------------------------------------- countdown
def _combine(rng: random.Random, values: list[int]) -> int:
    """Fold ``values`` (in order) with random operators, keeping every step a positive integer."""
    total = values[0]
    for v in values[1:]:
        choices = [total + v, total * v]
        if total > v:
            choices.append(total - v)
        elif v > total:
            choices.append(v - total)
        if total % v == 0:
            choices.append(total // v)
        if v % total == 0:
            choices.append(v // total)
        total = rng.choice(choices)
    return total


def countdown_row(rng: random.Random) -> Row:
    """3-4 numbers in 1-50 and a target in 10-200 that some of them (at least two) reach."""
    while True:
        nums = [rng.randint(1, 50) for _ in range(rng.choice((3, 4)))]
        used = rng.sample(nums, rng.randint(max(2, len(nums) - 1), len(nums)))
        target = _combine(rng, used)
        if 10 <= target <= 200 and target not in nums:
            return {"prompt": COUNTDOWN_PROMPT.format(nums=nums, target=target), "nums": nums, "target": target}


# ---------------------------------------------------------------------- letters
def letters_row(rng: random.Random) -> Row:
    """A word and a letter it holds (or, one time in eight, one it lacks), and the count."""
    word = rng.choice(WORDS)
    if rng.random() < 0.125:
        letter = rng.choice([c for c in ALPHABET if c not in word])
    else:
        letter = rng.choice(sorted(set(word)))
    prompt = rng.choice(LETTER_PHRASINGS).format(letter=letter, word=word) + LETTER_INSTRUCTION
    return {"prompt": prompt, "word": word, "letter": letter, "count": word.count(letter)}


def unique_splits(make: Callable[[random.Random], Row], sizes: dict[str, int], seed: int) -> dict[str, list[Row]]:
    """Draw unique prompts and deal them into test, validation, then train."""
    rng = random.Random(seed)
    seen: set[str] = set()
    splits: dict[str, list[Row]] = {name: [] for name in SPLITS}
    for name, rows in splits.items():
        misses = 0
        while len(rows) < sizes.get(name, 0):
            row = make(rng)
            if row["prompt"] in seen:
                misses += 1
                if misses > 100_000:
                    raise SystemExit(f"{make.__name__}: ran out of distinct prompts for --{name}")
                continue
            seen.add(row["prompt"])
            rows.append(row)
    return splits


def make_tasks(sizes: dict[str, int], seed: int = SEED) -> dict[str, dict[str, list[Row]]]:
    """``{task: {split: rows}}`` for the three tasks."""
    return {"arithmetic": arithmetic_splits(sizes, seed),
            "countdown": unique_splits(countdown_row, sizes, seed + 1),
            "letters": unique_splits(letters_row, sizes, seed + 2)}


def write_jsonl(path: Path, rows: list[Row]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "data" / "grpo"))
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--validation", type=int, default=100)
    parser.add_argument("--test", type=int, default=100)
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)

    sizes = {"train": args.train, "validation": args.validation, "test": args.test}
    for task, splits in make_tasks(sizes, args.seed).items():
        folder = Path(args.out) / task
        folder.mkdir(parents=True, exist_ok=True)
        for name in ("train", "validation", "test"):
            write_jsonl(folder / f"{name}.jsonl", splits[name])
            print(f"wrote {len(splits[name]):5d} rows to {folder / f'{name}.jsonl'}")


if __name__ == "__main__":
    main()
