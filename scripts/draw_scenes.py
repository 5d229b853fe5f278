#!/usr/bin/env python3
"""Scenes drawn by other code than `cogvlm make-data`, to judge the demo on pictures it was not made from.

PIL draws shapes of the demo's vocabulary (circles, squares, triangles in its six colours) at random places and
sizes, as a person would in a paint program, and writes them in the PEFT layout `cogvlm eval` reads
(images/*.png + labels/*.json with "kind" and "style"). Questions use the demo's wording; answers are computed
from the drawn geometry. Nothing here shares code with the Rust generator.

Variants (the three tried in issue 36):
  square  500 x 500, plain light background, shapes 20-30 % of the side
  aspect  640x480, 800x600, 480x720, 720x480, 600x800; otherwise as square
  rough   coloured backgrounds, faint clutter lines, slight blur, shapes 12-35 %

    python3 scripts/draw_scenes.py --out /tmp/drawn-square --variant square --count 300 --seed 1
    cogvlm eval --model server/fixtures/models/cogvlm-demo-boxes --data /tmp/drawn-square
"""

import argparse
import json
import os
import random

from PIL import Image, ImageDraw, ImageFilter

COLORS = {
    "red": (220, 30, 30),
    "green": (30, 160, 40),
    "blue": (30, 60, 220),
    "yellow": (235, 200, 0),
    "purple": (140, 40, 170),
    "orange": (245, 120, 10),
}
SHAPES = ["circle", "square", "triangle"]
ASPECTS = [(640, 480), (800, 600), (480, 720), (720, 480), (600, 800)]


def far_from_shapes(rgb, least=120):
    return all(sum((a - b) ** 2 for a, b in zip(rgb, c)) ** 0.5 >= least for c in COLORS.values())


def background(rng, variant):
    while True:
        if variant == "rough":
            rgb = tuple(rng.randint(0, 255) for _ in range(3))
        else:
            rgb = tuple(rng.randint(215, 255) for _ in range(3))
        if far_from_shapes(rgb):
            return rgb


def overlap(a, b):
    w = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    return w * h


def place(rng, w, h, variant):
    lo, hi = (0.12, 0.35) if variant == "rough" else (0.20, 0.30)
    short = min(w, h)
    shapes, tries = [], 0
    n = rng.randint(1, 3)
    while len(shapes) < n and tries < 400:
        tries += 1
        color, shape = rng.choice(list(COLORS)), rng.choice(SHAPES)
        side = int(short * rng.uniform(lo, hi))
        x0, y0 = rng.randint(0, w - side), rng.randint(0, h - side)
        box = (x0, y0, x0 + side, y0 + side)
        if any((s[0], s[1]) == (color, shape) or overlap(box, s[2]) > 0 for s in shapes):
            continue
        shapes.append((color, shape, box))
    return shapes


def draw(img, shapes):
    d = ImageDraw.Draw(img)
    for color, shape, (x0, y0, x1, y1) in shapes:
        rgb = COLORS[color]
        if shape == "circle":
            d.ellipse((x0, y0, x1 - 1, y1 - 1), fill=rgb)
        elif shape == "square":
            d.rectangle((x0, y0, x1 - 1, y1 - 1), fill=rgb)
        else:
            d.polygon([((x0 + x1) / 2, y0), (x1 - 1, y1 - 1), (x0, y1 - 1)], fill=rgb)


def clutter(rng, img):
    d = ImageDraw.Draw(img)
    w, h = img.size
    for _ in range(rng.randint(3, 8)):
        x, y = rng.randrange(w), rng.randrange(h)
        base = img.getpixel((x, y))
        shade = tuple(max(0, min(255, v + rng.randint(-35, 35))) for v in base)
        d.line((x, y, rng.randrange(w), rng.randrange(h)), fill=shade, width=1)


def thousandths(box, w, h):
    t = lambda v, side: min(999, v * 1000 // side)
    return "[[{:03d},{:03d},{:03d},{:03d}]]".format(t(box[0], w), t(box[1], h), t(box[2], w), t(box[3], h))


def question(rng, shapes, w, h):
    """One of the four kinds the issue scores, asked only when its answer is unambiguous."""
    while True:
        kind = rng.choice(["color", "shape", "count", "where"])
        color, shape, box = rng.choice(shapes)
        if kind == "color" and sum(s[1] == shape for s in shapes) == 1:
            return kind, f"What color is the {shape}?", color.capitalize() + "."
        if kind == "shape" and sum(s[0] == color for s in shapes) == 1:
            return kind, f"What shape is the {color} object?", f"A {shape}."
        if kind == "count":
            return kind, "How many shapes are there?", str(len(shapes))
        if kind == "where":
            return kind, f"Where is the {color} {shape}?", thousandths(box, w, h)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--variant", choices=["square", "aspect", "rough"], default="square")
    p.add_argument("--count", type=int, default=300)
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args()
    rng = random.Random(a.seed)
    os.makedirs(os.path.join(a.out, "images"))
    os.makedirs(os.path.join(a.out, "labels"))
    for i in range(a.count):
        w, h = (500, 500) if a.variant == "square" else rng.choice(ASPECTS)
        bg = background(rng, a.variant)
        img = Image.new("RGB", (w, h), bg)
        if a.variant == "rough":
            clutter(rng, img)
        shapes = place(rng, w, h, a.variant)
        draw(img, shapes)
        if a.variant == "rough" and rng.random() < 0.5:
            img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.4, 1.0)))
        kind, q, ans = question(rng, shapes, w, h)
        stem = f"{i:06d}"
        img.save(os.path.join(a.out, "images", stem + ".png"))
        aspect = "square" if w == h else ("wide" if w > h else "tall")
        style = {"placement": "drawn", "variant": a.variant, "aspect": aspect}
        label = {
            "conversations": [{"role": "user", "content": q}, {"role": "assistant", "content": ans}],
            "kind": kind,
            "style": style,
        }
        with open(os.path.join(a.out, "labels", stem + ".json"), "w") as f:
            json.dump(label, f, indent=1)
    print(json.dumps({"out": a.out, "count": a.count, "variant": a.variant}))


if __name__ == "__main__":
    main()
