"""Scenes: the objects of a picture, families of look-alike scenes, and detector-like regions.

A scene is a JSON-able dict: ``objects`` (shape, colour, size, radius, angle, rgb, centre cx, cy in
pixels, y pointing down), a ``background`` (texture, tint, its own noise seed) and ``regions`` (boxes
of objects, object parts, object pairs and background patches). Everything here draws from the
random generator it is given, so a family is a function of its seed.
"""
from __future__ import annotations

import bisect
import math
from itertools import accumulate
from typing import Sequence

import numpy as np

CAPTIONS_PER_IMAGE = 5
FAMILY_SIZE = 4
IMAGE_SIZE = 128
MAX_REGIONS = 12

SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond")
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "star": "stars",
           "cross": "crosses", "diamond": "diamonds", "shape": "shapes", "object": "objects"}
COLOURS = {"red": (215, 40, 40), "orange": (245, 140, 25), "yellow": (240, 215, 35), "green": (45, 160, 60),
           "cyan": (40, 195, 210), "blue": (45, 75, 215), "purple": (140, 60, 185), "white": (245, 245, 245)}
SIZES = {"small": (8.0, 10.0), "large": (14.0, 17.0)}  # radius range in pixels
TEXTURES = ("noisy", "striped", "checkered")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five")
VARIANTS = ("colour swap", "shape swap", "size swap", "position swap", "mirrored", "flipped")
MIN_GAP = 5.0            # pixels between two objects' outlines (as circles)

# ----------------------------------------------------------------------------------- scenes

def pick(rng: np.random.Generator, options: Sequence, weights: Sequence[float] | None = None):
    """One of ``options`` as it is (rng.choice would make numpy scalars of them, and is slow)."""
    if weights is None:
        return options[int(rng.integers(len(options)))]
    return options[bisect.bisect(list(accumulate(weights)), rng.random() * sum(weights))]


def _object(rng: np.random.Generator, shape: str, colour: str, size: str) -> dict:
    jitter = rng.integers(-12, 13, size=3)
    return {"shape": shape, "colour": colour, "size": size,
            "radius": round(float(rng.uniform(*SIZES[size])), 2),
            "angle": round(float(rng.uniform(-12.0, 12.0)), 2),
            "rgb": [int(np.clip(c + j, 0, 255)) for c, j in zip(COLOURS[colour], jitter)],
            "cx": 0.0, "cy": 0.0}


def _fits(objects: list[dict]) -> bool:
    """Objects lie inside the picture and do not touch one another."""
    for k, a in enumerate(objects):
        r = a["radius"]
        if not (r + 2 <= a["cx"] <= IMAGE_SIZE - r - 2 and r + 2 <= a["cy"] <= IMAGE_SIZE - r - 2):
            return False
        for b in objects[:k]:
            if math.hypot(a["cx"] - b["cx"], a["cy"] - b["cy"]) < r + b["radius"] + MIN_GAP:
                return False
    return True


def _place(objects: list[dict], rng: np.random.Generator) -> bool:
    """Give every object a position by rejection sampling; False when they do not fit."""
    for k, obj in enumerate(objects):
        for _ in range(100):
            margin = obj["radius"] + 2
            obj["cx"], obj["cy"] = (round(float(v), 2) for v in rng.uniform(margin, IMAGE_SIZE - margin, size=2))
            if _fits(objects[: k + 1]):
                break
        else:
            return False
    return True


def _base_objects(rng: np.random.Generator) -> list[dict]:
    """2 to 5 objects; some repeat an earlier object's shape (and colour), so that counts occur."""
    while True:
        n = pick(rng, (2, 3, 4, 5), (0.2, 0.3, 0.3, 0.2))
        objects = []
        for k in range(n):
            shape, colour = pick(rng, SHAPES), pick(rng, list(COLOURS))
            if k and rng.random() < 0.3:
                model = objects[int(rng.integers(k))]
                shape = model["shape"]
                colour = model["colour"] if rng.random() < 0.5 else colour
            objects.append(_object(rng, shape, colour, "large" if rng.random() < 0.45 else "small"))
        if _place(objects, rng):
            return objects


def _swap(objects: list[dict], rng: np.random.Generator, keys: tuple[str, ...],
          must_differ: tuple[str, ...]) -> list[dict] | None:
    """Swap ``keys`` between two objects that differ in every one of ``must_differ``; None if no pair fits."""
    pairs = [(i, j) for i in range(len(objects)) for j in range(i)
             if all(objects[i][x] != objects[j][x] for x in must_differ)]
    for p in rng.permutation(len(pairs)):
        i, j = pairs[p]
        swapped = [dict(o) for o in objects]
        for key in keys:
            swapped[i][key], swapped[j][key] = objects[j][key], objects[i][key]
        if _fits(swapped):
            return swapped
    return None


# a swap variant: the attributes two objects exchange, and those they must differ in
_SWAPS = {"colour swap": (("colour", "rgb"), ("colour", "shape")), "shape swap": (("shape",), ("shape", "colour")),
          "size swap": (("size", "radius"), ("size", "shape")), "position swap": (("cx", "cy"), ("shape", "colour"))}


def _variant(objects: list[dict], kind: str, rng: np.random.Generator) -> list[dict] | None:
    """The objects of a variant scene of kind ``kind`` (one of VARIANTS), or None when it does not apply."""
    if kind in _SWAPS:
        return _swap(objects, rng, *_SWAPS[kind])
    axis = "cx" if kind == "mirrored" else "cy"
    return [{**o, axis: round(IMAGE_SIZE - o[axis], 2)} for o in objects]


def _background(rng: np.random.Generator, texture: str) -> dict:
    grey = rng.uniform(95, 165)
    tint = rng.uniform(-12, 12, size=3)
    return {"texture": texture, "rgb": [round(float(grey + t), 2) for t in tint],
            "period": round(float(rng.uniform(9, 18)), 2), "angle": round(float(rng.uniform(0, 180)), 2),
            "seed": int(rng.integers(2**31))}


def family_scenes(rng: np.random.Generator, family: int) -> list[dict]:
    """A base scene and FAMILY_SIZE - 1 variants of distinct kinds (a new base when too few kinds apply).

    Members share the background texture (a word captions use), each with its own colour and noise.
    """
    texture = pick(rng, TEXTURES)
    while True:
        objects = _base_objects(rng)
        members = [("base", objects)]
        for kind in rng.permutation(len(VARIANTS)):
            varied = _variant(objects, VARIANTS[kind], rng)
            if varied is not None:
                members.append((VARIANTS[kind], varied))
            if len(members) == FAMILY_SIZE:
                return [{"family": family, "variant": variant, "background": _background(rng, texture), "objects": objs}
                        for variant, objs in members]


# ------------------------------------------------------------------------------------ regions

def _clip_box(x1: float, y1: float, x2: float, y2: float, min_size: float = 4.0) -> list[float]:
    x1, x2 = sorted((max(0.0, x1), min(float(IMAGE_SIZE), x2)))
    y1, y2 = sorted((max(0.0, y1), min(float(IMAGE_SIZE), y2)))
    x2, y2 = max(x2, min(x1 + min_size, IMAGE_SIZE)), max(y2, min(y1 + min_size, IMAGE_SIZE))
    return [round(float(v), 2) for v in (x1, y1, x2, y2)]


def _jitter(box: list[float], rng: np.random.Generator) -> list[float]:
    """Move each side outwards by -5 % to +20 % of the box size, as a detector's loose box."""
    w, h = box[2] - box[0], box[3] - box[1]
    out = rng.uniform(-0.05, 0.2, size=4) * np.array([w, h, w, h])
    return _clip_box(box[0] - out[0], box[1] - out[1], box[2] + out[2], box[3] + out[3])


def _overlap(a: list[float], b: list[float]) -> float:
    """Fraction of box ``a`` covered by box ``b``."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    return w * h / max(1e-6, (a[2] - a[0]) * (a[3] - a[1]))


def scene_regions(objects: list[dict], rng: np.random.Generator) -> list[dict]:
    """Object boxes plus 2+ distractors (parts, pairs, background), shuffled, at most MAX_REGIONS."""
    tight = [tight_box(o) for o in objects]
    regions = [{"kind": "object", "objects": [k], "box": _jitter(tight[k], rng)} for k in range(len(objects))]
    for _ in range(int(rng.integers(2, MAX_REGIONS - len(objects) + 1))):
        kind = pick(rng, ("part", "pair", "background"), (0.35, 0.25, 0.4))
        if kind == "part":
            k = int(rng.integers(len(objects)))
            x1, y1, x2, y2 = tight[k]
            fx, fy = rng.uniform(0.4, 0.7, size=2)
            left, top = rng.uniform(0, 1 - fx), rng.uniform(0, 1 - fy)
            w, h = x2 - x1, y2 - y1
            box = _clip_box(x1 + left * w, y1 + top * h, x1 + (left + fx) * w, y1 + (top + fy) * h)
            regions.append({"kind": kind, "objects": [k], "box": box})
        elif kind == "pair":
            i, j = (int(v) for v in rng.choice(len(objects), size=2, replace=False))
            a, b = tight[i], tight[j]
            box = _jitter([min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])], rng)
            regions.append({"kind": kind, "objects": sorted([i, j]), "box": box})
        else:
            for _ in range(20):
                w, h = rng.uniform(12, 40, size=2)
                x, y = rng.uniform(0, IMAGE_SIZE - w), rng.uniform(0, IMAGE_SIZE - h)
                box = _clip_box(x, y, x + w, y + h)
                if all(_overlap(box, t) < 0.25 for t in tight):
                    break
            regions.append({"kind": kind, "objects": [], "box": box})
    return [regions[i] for i in rng.permutation(len(regions))]


def outline(obj: dict) -> np.ndarray:
    """The polygon of an object, (P, 2) points in pixels (a circle is a 48-gon)."""
    r, shape = obj["radius"], obj["shape"]
    if shape == "circle":
        angles = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        points = np.stack([np.cos(angles), np.sin(angles)], 1) * r
    else:
        if shape == "square":
            unit = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * 0.8
        elif shape == "diamond":
            unit = np.array([[0, -1], [0.62, 0], [0, 1], [-0.62, 0]])
        elif shape == "triangle":
            angles = np.radians([-90, 30, 150])
            unit = np.stack([np.cos(angles), np.sin(angles)], 1) * 1.1 + [0, 0.25]
        elif shape == "star":
            angles = np.radians(np.arange(10) * 36 - 90)
            unit = np.stack([np.cos(angles), np.sin(angles)], 1) * np.where(np.arange(10) % 2, 0.45, 1.1)[:, None]
        else:  # cross
            w = 0.33
            unit = np.array([[-w, -1], [w, -1], [w, -w], [1, -w], [1, w], [w, w],
                             [w, 1], [-w, 1], [-w, w], [-1, w], [-1, -w], [-w, -w]])
        theta = np.radians(obj["angle"])
        rotation = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
        points = unit @ rotation.T * r
    return points + [obj["cx"], obj["cy"]]


def tight_box(obj: dict) -> list[float]:
    points = outline(obj)
    return _clip_box(*points.min(axis=0), *points.max(axis=0))
