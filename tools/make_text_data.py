"""Write a small plain-text corpus for the continued-pretraining recipe: ``{"text": ...}`` rows.

Each document is a short gazetteer entry about an invented town: where it lies, when it
was founded, how many people live there, what it makes, its river and its yearly fair,
in a few sentence patterns, e.g.

    {"text": "Orvale is a town in the northern hills of Kestria. It was founded in 1642 ..."}

Why this corpus: the towns do not exist, so a pretrained model cannot already know them;
the facts repeat in a regular style, so a short run of continued pretraining lowers the
loss on held-out entries measurably; and documents are 60-150 tokens, so they exercise
both the block layout (several documents per block) and packing (one document per row).

The generator uses only the standard library and a fixed seed, so the files are
reproducible byte for byte. Splits never share a town.

    python tools/make_text_data.py [--out data/text] [--train 400 --validation 40]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

SEED = 20250301
SYLLABLES = ("or", "val", "ke", "bra", "mon", "tes", "lu", "dar", "wen", "fi", "ros", "tal", "mi", "gor", "sel",
             "an", "pe", "quor", "ny", "hal", "ith", "zen", "bel", "cas")
REGIONS = ("Kestria", "Lormund", "Vessary", "Ombrel", "Taldane", "Quiros")
LANDSCAPES = ("northern hills", "southern plains", "eastern marshes", "western coast", "central valley",
              "high moorland")
TRADES = ("wool", "pottery", "cider", "glass", "timber", "salt", "cheese", "rope", "copper pans", "honey")
FAIR_MONTHS = ("March", "April", "May", "June", "July", "August", "September", "October")
FOUNDERS = ("a band of shepherds", "two brothers from the coast", "the monks of a nearby abbey",
            "miners looking for copper", "traders on the old salt road", "a retired river captain")


def town_name(rng: random.Random) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize()


def make_document(rng: random.Random, name: str) -> str:
    """One entry: a fixed order of facts, each sentence drawn from a few patterns."""
    region, land = rng.choice(REGIONS), rng.choice(LANDSCAPES)
    founded = rng.randint(1100, 1900)
    people = rng.randint(8, 950) * 10
    trade, second = rng.sample(TRADES, 2)
    river = town_name(rng)
    month = rng.choice(FAIR_MONTHS)
    founder = rng.choice(FOUNDERS)
    sentences = [
        rng.choice([f"{name} is a town in the {land} of {region}.",
                    f"{name} is a small town of {region}, set in the {land}."]),
        rng.choice([f"It was founded in {founded} by {founder}.",
                    f"{founder.capitalize()} founded it in {founded}."]),
        rng.choice([f"About {people} people live there today.",
                    f"Its population is close to {people}."]),
        rng.choice([f"The town is known for its {trade}, and many families also make {second}.",
                    f"Most of its trade is in {trade} and {second}."]),
        rng.choice([f"The river {river} runs along the edge of the town.",
                    f"{name} stands on the banks of the river {river}."]),
        rng.choice([f"Every {month} the town holds a fair, when traders come to buy {trade}.",
                    f"A fair is held each {month}, and a prize goes to the best {trade} of the year."]),
    ]
    if rng.random() < 0.5:
        rebuilt = founded + rng.randint(50, 120)
        sentences.append(rng.choice([f"The old bridge over the {river} was rebuilt in {rebuilt}.",
                                     f"Visitors often walk from {name} to the springs above the {river}."]))
    return " ".join(sentences)


def make_splits(sizes: dict[str, int], seed: int = SEED) -> dict[str, list[dict]]:
    """Unique towns dealt into splits in order (validation first), so validation stays fixed as train grows."""
    rng = random.Random(seed)
    seen: set[str] = set()
    splits: dict[str, list[dict]] = {}
    for split in ("validation", "train"):
        rows: list[dict] = []
        while len(rows) < sizes[split]:
            name = town_name(rng)
            if name in seen:
                continue
            seen.add(name)
            rows.append({"text": make_document(rng, name)})
        splits[split] = rows
    return splits


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "data" / "text"))
    parser.add_argument("--train", type=int, default=400)
    parser.add_argument("--validation", type=int, default=40)
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for split, rows in make_splits({"train": args.train, "validation": args.validation}, args.seed).items():
        write_jsonl(out / f"{split}.jsonl", rows)
        print(f"wrote {len(rows):5d} rows to {out / f'{split}.jsonl'}")


if __name__ == "__main__":
    main()
