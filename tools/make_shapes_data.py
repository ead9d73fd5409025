"""Write a small image task — coloured shapes on 64x64 pictures — for vision-language SFT.

Each picture holds 1-4 shapes (circle, square, triangle) in six colours, one per quarter of
the picture so they never overlap. The user sends the picture and asks one question; the
assistant answers with one exact word or number:

    "What colour is the shape?" -> "red"        (pictures with one shape)
    "Which shape is in the image?" -> "circle"  (pictures with one shape)
    "How many shapes are there?" -> "3"

A fifth of the conversations have a second turn with a second picture. Images are inline
base64 PNG in the OpenAI content-list form:

    {"messages": [{"role": "user", "content": [{"type": "image", "image": "<base64 PNG>"},
                                               {"type": "text", "text": "How many shapes are there?"}]},
                  {"role": "assistant", "content": "3"}]}

Also writes ``shapes_files/``: a few PNG files and a JSONL that references them by relative
path. Why generated: the machine has no hub, and every answer is determined by the picture.
A fixed seed and palette PNGs: running it twice writes identical files.

    python tools/make_shapes_data.py [--out data/vlm] [--train 600 --validation 60 --test 60]
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import random
from pathlib import Path

from PIL import Image, ImageDraw

SEED = 20250611
SIZE = 64
SHAPES = ("circle", "square", "triangle")
COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220),
           "yellow": (235, 200, 30), "purple": (140, 60, 180), "orange": (245, 130, 20)}
QUESTIONS = {"colour": "What colour is the shape?", "shape": "Which shape is in the image?",
             "count": "How many shapes are there?"}


def draw(shapes: list[tuple[str, str, int]]) -> Image.Image:
    """A white picture with one ``(shape, colour, quarter)`` per entry."""
    image = Image.new("RGB", (SIZE, SIZE), (255, 255, 255))
    pen = ImageDraw.Draw(image)
    half = SIZE // 2
    for k, (shape, colour, quarter) in enumerate(shapes):
        x0, y0 = (quarter % 2) * half + 4 + k % 2, (quarter // 2) * half + 4 + k // 2
        x1, y1 = x0 + half - 9, y0 + half - 9
        fill = COLOURS[colour]
        if shape == "circle":
            pen.ellipse((x0, y0, x1, y1), fill=fill)
        elif shape == "square":
            pen.rectangle((x0, y0, x1, y1), fill=fill)
        else:
            pen.polygon([((x0 + x1) // 2, y0), (x1, y1), (x0, y1)], fill=fill)
    return image


def png_bytes(image: Image.Image) -> bytes:
    """A small, reproducible PNG (palette mode, no metadata)."""
    buffer = io.BytesIO()
    image.convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def question(rng: random.Random) -> tuple[Image.Image, str, str]:
    """One picture with a question about it and its exact answer."""
    kind = rng.choice(tuple(QUESTIONS))
    count = 1 if kind != "count" else rng.randint(1, 4)
    quarters = rng.sample(range(4), count)
    shapes = [(rng.choice(SHAPES), rng.choice(tuple(COLOURS)), q) for q in quarters]
    answer = {"colour": shapes[0][1], "shape": shapes[0][0], "count": str(count)}[kind]
    return draw(shapes), QUESTIONS[kind], answer


def conversation(rng: random.Random) -> dict:
    turns = 2 if rng.random() < 0.2 else 1
    messages = []
    for _ in range(turns):
        image, text, answer = question(rng)
        picture = base64.b64encode(png_bytes(image)).decode("ascii")
        messages.append({"role": "user", "content": [{"type": "image", "image": picture},
                                                     {"type": "text", "text": text}]})
        messages.append({"role": "assistant", "content": answer})
    return {"messages": messages}


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def write_files_example(out: Path, rng: random.Random) -> None:
    """``shapes_files/images/*.png`` and ``train.jsonl`` referencing them as ``images/shape_<i>.png``."""
    rows = []
    for i in range(4):
        image, text, answer = question(rng)
        target = out / "images" / f"shape_{i}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(png_bytes(image))
        rows.append({"messages": [
            {"role": "user", "content": [{"type": "image", "path": f"images/shape_{i}.png"},
                                         {"type": "text", "text": text}]},
            {"role": "assistant", "content": [{"type": "text", "text": answer}]}]})
    write_jsonl(out / "train.jsonl", rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="data/vlm")
    parser.add_argument("--train", type=int, default=600)
    parser.add_argument("--validation", type=int, default=60)
    parser.add_argument("--test", type=int, default=60)
    args = parser.parse_args()
    rng = random.Random(SEED)
    out = Path(args.out)
    for split in ("train", "validation", "test"):
        write_jsonl(out / "shapes" / f"{split}.jsonl", [conversation(rng) for _ in range(getattr(args, split))])
    write_files_example(out / "shapes_files", rng)
    print(f"wrote {out / 'shapes'} and {out / 'shapes_files'}")


if __name__ == "__main__":
    main()
