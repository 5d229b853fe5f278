#!/usr/bin/env python3
"""Data for the default demo's recipe (server/models/cogvlm-demo-boxes/README.md): link the "where"/"locate"
examples (or, with --kinds, others) of a make-data folder whose scene has two or more shapes into a new folder, so
that a model that already reads a lone shape's place must learn which shape the question names. Also
`--merge A B ... OUT` links folders into one (names prefixed with each folder's name). Needs Pillow and NumPy.

    select_where.py SRC DST [--kinds color,count]   (default kinds: where,locate)
    select_where.py --merge A B OUT
"""
import json
import os
import sys

# make-data's palette (server/src/train/make_data.rs, COLORS) and its 4 x 4 placement grid.
COLORS = [(220, 30, 30), (30, 160, 40), (30, 60, 220), (235, 200, 0), (140, 40, 170), (245, 120, 10)]
GRID = 4


def shape_count(path):
    """Cells holding a shape: a cell is one when over a sixth of its pixels are one palette colour."""
    import numpy as np
    from PIL import Image

    a = np.asarray(Image.open(path).convert("RGB")).astype(int)
    s = a.shape[0] // GRID
    n = 0
    for r in range(GRID):
        for c in range(GRID):
            patch = a[r * s:(r + 1) * s, c * s:(c + 1) * s].reshape(-1, 3)
            if any((np.abs(patch - np.array(col)).sum(1) < 10).sum() > s * s // 6 for col in COLORS):
                n += 1
    return n


def link(src, stem, dst, name):
    os.symlink(os.path.realpath(f"{src}/images/{stem}.png"), f"{dst}/images/{name}.png")
    os.symlink(os.path.realpath(f"{src}/labels/{stem}.json"), f"{dst}/labels/{name}.json")


def main(argv):
    if argv[:1] == ["--merge"]:
        *srcs, dst = argv[1:]
        os.makedirs(f"{dst}/images")
        os.makedirs(f"{dst}/labels")
        for src in srcs:
            for f in os.listdir(f"{src}/labels"):
                link(src, f[:-5], dst, f"{os.path.basename(src)}_{f[:-5]}")
        return
    kinds = ("where", "locate")
    if "--kinds" in argv:
        i = argv.index("--kinds")
        kinds = tuple(argv[i + 1].split(","))
        argv = argv[:i] + argv[i + 2:]
    src, dst = argv
    os.makedirs(f"{dst}/images")
    os.makedirs(f"{dst}/labels")
    kept = 0
    for f in sorted(os.listdir(f"{src}/labels")):
        stem = f[:-5]
        with open(f"{src}/labels/{f}") as fh:
            kind = json.load(fh).get("kind")
        if kind in kinds and shape_count(f"{src}/images/{stem}.png") >= 2:
            link(src, stem, dst, stem)
            kept += 1
    print(f"{kept} examples linked into {dst}")


if __name__ == "__main__":
    main(sys.argv[1:])
