"""Write the preference quickstart's pairs: the same correct answer, in a fixed format or as a plain sentence.

Each row asks a simple question whose answer the script knows (sums, differences, products, which of
two numbers is larger or smaller, even or odd, letters of a word, capitals, opposites). The chosen
answer opens with an ``Answer: <x>`` line and gives a short reason on the next; the rejected answer
says the same thing in one sentence, the way SmolLM2-135M-Instruct answers by habit, e.g.

    {"prompt": "What is 17 plus 25?", "chosen": "Answer: 42\\nReason: 17 + 25 = 42.",
     "rejected": "17 plus 25 equals 42."}

Why this task: both answers are right, so the pairs teach a behaviour, not knowledge, which DPO
learns in a few hundred steps; the base model never opens with ``Answer:`` (measured: 0 of the 100
test prompts), so the change is plain to see; and a script judges it without a reference answer:
:func:`nemo_like.components.rewards.answer_format.shows_answer_format`, which every chosen answer
passes and no rejected one does. Rows are short (at most 40 tokens with SmolLM2's tokenizer before
the chat template), so CPU training is cheap.

The generator uses only the standard library and a fixed seed, so the files are reproducible byte
for byte. Splits never share a prompt.

    python tools/make_preference_data.py [--out data/preference] [--train 1000 --validation 100 --test 100]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

SEED = 20250601

WORDS = (
    "apple", "bread", "chair", "dance", "eagle", "forest", "garden", "honey", "island", "jacket", "kitten",
    "lemon", "mountain", "night", "orange", "pencil", "queen", "river", "silver", "table", "umbrella",
    "violin", "window", "yellow", "zebra", "anchor", "basket", "candle", "dragon", "engine", "flower",
    "guitar", "hammer", "insect", "jungle", "ladder", "marble", "needle", "ocean", "planet", "rabbit",
    "saddle", "tiger", "valley", "wizard", "bottle", "cloud", "desert", "feather", "pillow", "rocket",
    "shadow", "turtle", "winter", "summer", "castle", "bridge", "coffee", "doctor", "farmer", "garlic",
    "helmet", "kettle", "lizard", "mirror", "napkin", "parrot", "puzzle", "ribbon", "spider", "tomato",
    "tunnel", "wallet", "button", "carpet", "cherry", "circle", "copper", "cotton", "dinner", "finger",
)
CAPITALS = (
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Japan", "Tokyo"),
    ("Canada", "Ottawa"), ("Egypt", "Cairo"), ("Kenya", "Nairobi"), ("Peru", "Lima"), ("Chile", "Santiago"),
    ("Norway", "Oslo"), ("Sweden", "Stockholm"), ("Finland", "Helsinki"), ("Poland", "Warsaw"),
    ("Greece", "Athens"), ("Portugal", "Lisbon"), ("Ireland", "Dublin"), ("Austria", "Vienna"),
    ("Hungary", "Budapest"), ("Russia", "Moscow"), ("China", "Beijing"), ("India", "New Delhi"),
    ("Thailand", "Bangkok"), ("Vietnam", "Hanoi"), ("Mexico", "Mexico City"), ("Argentina", "Buenos Aires"),
    ("Cuba", "Havana"), ("Turkey", "Ankara"), ("Iran", "Tehran"), ("Denmark", "Copenhagen"),
    ("Belgium", "Brussels"), ("Netherlands", "Amsterdam"), ("Australia", "Canberra"), ("Brazil", "Brasilia"),
)
OPPOSITES = (
    ("hot", "cold"), ("big", "small"), ("fast", "slow"), ("happy", "sad"), ("light", "dark"), ("up", "down"),
    ("open", "closed"), ("early", "late"), ("full", "empty"), ("hard", "soft"), ("high", "low"),
    ("long", "short"), ("old", "new"), ("rich", "poor"), ("strong", "weak"), ("wet", "dry"), ("near", "far"),
    ("loud", "quiet"), ("thick", "thin"), ("heavy", "light"), ("clean", "dirty"), ("first", "last"),
    ("inside", "outside"), ("push", "pull"), ("win", "lose"), ("true", "false"), ("young", "old"),
    ("cheap", "expensive"), ("safe", "dangerous"), ("begin", "end"), ("buy", "sell"), ("give", "take"),
)

Task = tuple[str, str, str, str]  # (prompt, answer, reason, sentence)


def _add(rng: random.Random) -> Task:
    a, b = rng.randint(2, 99), rng.randint(2, 99)
    return f"What is {a} plus {b}?", str(a + b), f"{a} + {b} = {a + b}.", f"{a} plus {b} equals {a + b}."


def _subtract(rng: random.Random) -> Task:
    b, a = sorted(rng.sample(range(2, 100), 2))
    return f"What is {a} minus {b}?", str(a - b), f"{a} - {b} = {a - b}.", f"{a} minus {b} equals {a - b}."


def _multiply(rng: random.Random) -> Task:
    a, b = rng.randint(2, 12), rng.randint(2, 12)
    return f"What is {a} times {b}?", str(a * b), f"{a} x {b} = {a * b}.", f"{a} times {b} equals {a * b}."


def _compare(rng: random.Random) -> Task:
    a, b = rng.sample(range(2, 100), 2)
    big, small = max(a, b), min(a, b)
    word, pick = ("larger", big) if rng.random() < 0.5 else ("smaller", small)
    return (f"Which is {word}, {a} or {b}?", str(pick), f"{big} is greater than {small}.",
            f"{pick} is the {word} number, because {big} is greater than {small}.")


def _parity(rng: random.Random) -> Task:
    n = rng.randint(2, 999)
    kind = "even" if n % 2 == 0 else "odd"
    return (f"Is {n} even or odd?", kind, f"{n} divided by 2 leaves a remainder of {n % 2}.",
            f"{n} is an {kind} number.")


def _letter_count(rng: random.Random) -> Task:
    w = rng.choice(WORDS)
    return (f'How many letters are in the word "{w}"?', str(len(w)), f'{"-".join(w)} has {len(w)} letters.',
            f'The word "{w}" has {len(w)} letters.')


def _first_or_last_letter(rng: random.Random) -> Task:
    w = rng.choice(WORDS)
    which, letter = ("first", w[0]) if rng.random() < 0.5 else ("last", w[-1])
    return (f'What is the {which} letter of the word "{w}"?', letter, f'"{w}" is spelled {"-".join(w)}.',
            f'The {which} letter of the word "{w}" is "{letter}".')


def _capital(rng: random.Random) -> Task:
    country, city = rng.choice(CAPITALS)
    return (f"What is the capital of {country}?", city, f"{city} is the seat of the government of {country}.",
            f"The capital of {country} is {city}.")


def _opposite(rng: random.Random) -> Task:
    word, other = rng.choice(OPPOSITES)
    if rng.random() < 0.5:
        word, other = other, word
    return (f'What is the opposite of "{word}"?', other, f'"{other}" means the reverse of "{word}".',
            f'The opposite of "{word}" is "{other}".')


TASKS = (_add, _subtract, _multiply, _compare, _parity, _letter_count, _first_or_last_letter, _capital, _opposite)


def make_row(rng: random.Random) -> dict:
    """One question of a random task, its formatted answer (chosen) and its plain sentence (rejected)."""
    prompt, answer, reason, sentence = rng.choice(TASKS)(rng)
    return {"prompt": prompt, "chosen": f"Answer: {answer}\nReason: {reason}", "rejected": sentence}


def make_splits(sizes: dict[str, int], seed: int = SEED) -> dict[str, list[dict]]:
    """Draw unique prompts and deal them into splits in order (test first, then validation, then
    train), so the held-out splits stay the same if the train size changes."""
    rng = random.Random(seed)
    seen: set[str] = set()
    splits: dict[str, list[dict]] = {name: [] for name in ("test", "validation", "train")}
    for name, rows in splits.items():
        while len(rows) < sizes.get(name, 0):
            row = make_row(rng)
            if row["prompt"] in seen:
                continue
            seen.add(row["prompt"])
            rows.append(row)
    return splits


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "data" / "preference"))
    parser.add_argument("--train", type=int, default=1000)
    parser.add_argument("--validation", type=int, default=100)
    parser.add_argument("--test", type=int, default=100)
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
