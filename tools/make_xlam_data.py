"""Write a small function-calling task in the xLAM format (query, tools, answers as JSON strings).

Each row offers two to four tools out of a small catalogue (arithmetic, unit and currency
conversion, weather, time zones, book search) and asks for one or two of them in plain
words; the answer is the exact calls, e.g.

    {"id": 7, "query": "Convert 12 km to miles.",
     "tools": "[{\"name\": \"convert_units\", \"description\": ..., \"parameters\": {...}}, ...]",
     "answers": "[{\"name\": \"convert_units\", \"arguments\": {\"value\": 12, \"from_unit\": \"km\", ...}}]"}

Why generated: the machine has no hub, and a fixed, small, checkable task (the calls are
fully determined by the query) is what tests and a quick LoRA run need. Parameters with a
``default`` are optional, as in xLAM. The generator uses only the standard library and a
fixed seed, so the files are reproducible byte for byte; splits never share a query.

    python tools/make_xlam_data.py [--out data/xlam] [--train 240 --validation 40]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from typing import Any, Callable

SEED = 20250105

TOOLS: dict[str, dict[str, Any]] = {
    "add_numbers": {
        "description": "Add two numbers and return their sum.",
        "parameters": {"a": {"description": "The first number.", "type": "float"},
                       "b": {"description": "The second number.", "type": "float"}},
    },
    "convert_units": {
        "description": "Convert a length or a mass from one unit to another.",
        "parameters": {"value": {"description": "The amount to convert.", "type": "float"},
                       "from_unit": {"description": "The unit of the value, e.g. km or lb.", "type": "str"},
                       "to_unit": {"description": "The unit wanted, e.g. miles or kg.", "type": "str"}},
    },
    "convert_currency": {
        "description": "Convert an amount of money between currencies at today's rate.",
        "parameters": {"amount": {"description": "The amount of money.", "type": "float"},
                       "from_currency": {"description": "ISO code of the currency held.", "type": "str"},
                       "to_currency": {"description": "ISO code of the currency wanted.", "type": "str",
                                       "default": "USD"}},
    },
    "get_weather": {
        "description": "Get the weather forecast for a city.",
        "parameters": {"city": {"description": "The city name.", "type": "str"},
                       "days": {"description": "How many days ahead, 1 to 7.", "type": "int, optional",
                                "default": 1}},
    },
    "time_in_zone": {
        "description": "Get the current local time in an IANA time zone.",
        "parameters": {"timezone": {"description": "The time zone, e.g. Europe/Paris.", "type": "str"}},
    },
    "search_books": {
        "description": "Search a library catalogue for books.",
        "parameters": {"query": {"description": "Words to search for.", "type": "str"},
                       "max_results": {"description": "How many books to return.", "type": "int, optional",
                                       "default": 5},
                       "authors": {"description": "Only books by these authors.", "type": "List[str], optional",
                                   "default": []}},
    },
}

CITIES = ["Paris", "Lagos", "Osaka", "Lima", "Oslo", "Cairo", "Denver", "Hanoi", "Perth", "Quito"]
ZONES = ["Europe/Paris", "Africa/Lagos", "Asia/Tokyo", "America/Lima", "Europe/Oslo", "Australia/Perth"]
UNITS = [("km", "miles"), ("miles", "km"), ("kg", "lb"), ("lb", "kg"), ("m", "ft"), ("ft", "m")]
CURRENCIES = ["EUR", "JPY", "GBP", "INR", "BRL", "CHF"]
TOPICS = ["sailing", "bread baking", "volcanoes", "chess openings", "bird songs", "Roman roads"]
AUTHORS = ["Ada Moss", "Ken Ito", "Rosa Vidal", "Tom Okafor"]


def _add(rng: random.Random) -> tuple[str, dict]:
    a, b = rng.randint(2, 999), rng.randint(2, 999)
    return rng.choice(["What is {a} plus {b}?", "Add {a} and {b}.", "Sum {a} and {b} for me."]).format(a=a, b=b), \
        {"name": "add_numbers", "arguments": {"a": a, "b": b}}


def _units(rng: random.Random) -> tuple[str, dict]:
    value, (src, dst) = rng.randint(1, 500), rng.choice(UNITS)
    return f"Convert {value} {src} to {dst}.", \
        {"name": "convert_units", "arguments": {"value": value, "from_unit": src, "to_unit": dst}}


def _currency(rng: random.Random) -> tuple[str, dict]:
    amount, src = rng.randint(5, 5000), rng.choice(CURRENCIES)
    if rng.random() < 0.5:  # the default target currency
        return f"How many US dollars is {amount} {src}?", \
            {"name": "convert_currency", "arguments": {"amount": amount, "from_currency": src}}
    dst = rng.choice([c for c in CURRENCIES if c != src])
    return f"Change {amount} {src} into {dst}.", \
        {"name": "convert_currency", "arguments": {"amount": amount, "from_currency": src, "to_currency": dst}}


def _weather(rng: random.Random) -> tuple[str, dict]:
    city = rng.choice(CITIES)
    if rng.random() < 0.5:
        return f"What's the weather in {city} tomorrow?", {"name": "get_weather", "arguments": {"city": city}}
    days = rng.randint(2, 7)
    return f"Give me the {days}-day forecast for {city}.", \
        {"name": "get_weather", "arguments": {"city": city, "days": days}}


def _time(rng: random.Random) -> tuple[str, dict]:
    zone = rng.choice(ZONES)
    return f"What time is it now in {zone}?", {"name": "time_in_zone", "arguments": {"timezone": zone}}


def _books(rng: random.Random) -> tuple[str, dict]:
    topic = rng.choice(TOPICS)
    if rng.random() < 0.4:
        author = rng.choice(AUTHORS)
        return f"Find books about {topic} by {author}.", \
            {"name": "search_books", "arguments": {"query": topic, "authors": [author]}}
    n = rng.randint(2, 10)
    return f"List {n} books on {topic}.", {"name": "search_books", "arguments": {"query": topic, "max_results": n}}


ASKS: list[Callable[[random.Random], tuple[str, dict]]] = [_add, _units, _currency, _weather, _time, _books]


def make_row(rng: random.Random) -> dict[str, Any]:
    """One query asking for one or two calls, the tools on offer (the needed ones among others), the calls."""
    asks = rng.sample(ASKS, 2 if rng.random() < 0.3 else 1)
    parts = [ask(rng) for ask in asks]
    query = parts[0][0]
    if len(parts) == 2:
        second = parts[1][0]
        query += f" Also: {second[0].lower()}{second[1:]}"
    needed = [call["name"] for _, call in parts]
    offered = needed + rng.sample([n for n in TOOLS if n not in needed], rng.randint(1, 2))
    rng.shuffle(offered)
    tools = [{"name": name, **TOOLS[name]} for name in offered]
    return {"query": query, "tools": json.dumps(tools), "answers": json.dumps([call for _, call in parts])}


def make_splits(sizes: dict[str, int], seed: int = SEED) -> dict[str, list[dict[str, Any]]]:
    """Unique queries dealt into splits in order (validation first), each row with an ``id``."""
    rng = random.Random(seed)
    seen: set[str] = set()
    splits: dict[str, list[dict[str, Any]]] = {}
    next_id = 0
    for name in ("validation", "train"):
        rows: list[dict[str, Any]] = []
        while len(rows) < sizes[name]:
            row = make_row(rng)
            if row["query"] in seen:
                continue
            seen.add(row["query"])
            rows.append({"id": next_id, **row})
            next_id += 1
        splits[name] = rows
    return splits


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "data" / "xlam"))
    parser.add_argument("--train", type=int, default=240)
    parser.add_argument("--validation", type=int, default=40)
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in make_splits({"train": args.train, "validation": args.validation}, args.seed).items():
        path = out / f"{name}.json"
        path.write_text(json.dumps(rows, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"wrote {len(rows):4d} rows to {path}")


if __name__ == "__main__":
    main()
