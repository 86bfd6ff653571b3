"""ShapeScenes: a generated image-text retrieval dataset that plays Flickr30K on a laptop.

Each 128 x 128 picture holds 2 to 5 coloured shapes on a textured background and has five
captions (attributes, counts, spatial relations). Scenes come in families of four: a base scene
and variants with colours, shapes or sizes swapped between two objects, two objects' places
swapped, or the layout mirrored. Members of a family contain the same words, so a bag of words
cannot tell them apart (``bag_of_words_scores`` measures how far that gets); a model has to bind
attributes to objects and read relations.

Region features imitate a detector's output: a jittered box per object plus distractor boxes
(object parts, pairs of objects, background patches), at most ``MAX_REGIONS`` per image, each
described only from the pixels inside the box (``describe_boxes``). Everything is deterministic in
the seed; the dataset is cached in the precomp-plus-extras format and pictures are re-rendered on
demand from ``{split}_scenes.json``. data/README.md documents the design and measured figures.
"""
from __future__ import annotations

import bisect
import hashlib
import math
import os
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from mlasm.data.dataset import RetrievalSplit
from mlasm.data.errors import DataError, load_json
from mlasm.data.precomp import list_splits, read_meta, read_split, write_json_compact, write_split
from mlasm.data.vocab import tokenize
from mlasm.io import write_json
from mlasm.paths import cache_dir

VERSION = 1
SPLITS = ("train", "dev", "test")
DEFAULT_SIZES = {"train": 4000, "dev": 500, "test": 1000}
CAPTIONS_PER_IMAGE = 5
FAMILY_SIZE = 4
IMAGE_SIZE = 128
MAX_REGIONS = 12
SUPERSAMPLE = 2  # shapes are drawn at twice the size and averaged down, for smooth edges

SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond")
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "star": "stars",
           "cross": "crosses", "diamond": "diamonds", "shape": "shapes", "object": "objects"}
COLOURS = {"red": (215, 40, 40), "orange": (245, 140, 25), "yellow": (240, 215, 35), "green": (45, 160, 60),
           "cyan": (40, 195, 210), "blue": (45, 75, 215), "purple": (140, 60, 185), "white": (245, 245, 245)}
SIZES = {"small": (8.0, 10.0), "large": (14.0, 17.0)}  # radius range in pixels
TEXTURES = ("noisy", "striped", "checkered")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five")
VARIANTS = ("colour swap", "shape swap", "size swap", "position swap", "mirrored", "flipped")

# Region descriptor: see describe_boxes.
PATCH = 12
HUE_BINS = 12                      # soft bins centred on 0, 30, ... 330 degrees
GREY_EDGES = (0.3, 0.55, 0.82)     # value bins of greyish pixels: dark, background-grey, light, white
GREY_BINS = len(GREY_EDGES) + 1
GEOMETRY = ("x1", "y1", "x2", "y2", "w", "h", "area")
FEATURE_DIM = HUE_BINS + GREY_BINS + PATCH * PATCH + len(GEOMETRY)

MIN_GAP = 5.0            # pixels between two objects' outlines (as circles)
RELATION_MARGIN = 14.0   # centre offset along an axis from which "left of"/"above" is clearly true
EXTREME_MARGIN = 12.0    # lead of the leftmost (etc.) object over the next one


# ----------------------------------------------------------------------------------- scenes

def _pick(rng: np.random.Generator, options: Sequence, weights: Sequence[float] | None = None):
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
        n = _pick(rng, (2, 3, 4, 5), (0.2, 0.3, 0.3, 0.2))
        objects = []
        for k in range(n):
            shape, colour = _pick(rng, SHAPES), _pick(rng, list(COLOURS))
            if k and rng.random() < 0.3:
                model = objects[int(rng.integers(k))]
                shape = model["shape"]
                colour = model["colour"] if rng.random() < 0.5 else colour
            objects.append(_object(rng, shape, colour, "large" if rng.random() < 0.45 else "small"))
        if _place(objects, rng):
            return objects


def _differ(a: dict, b: dict, *attributes: str) -> bool:
    return all(a[x] != b[x] for x in attributes)


def _swap(objects: list[dict], rng: np.random.Generator, keys: tuple[str, ...],
          must_differ: tuple[str, ...]) -> list[dict] | None:
    """Swap ``keys`` between two objects that differ in every one of ``must_differ``; None if no pair fits."""
    pairs = [(i, j) for i in range(len(objects)) for j in range(i) if _differ(objects[i], objects[j], *must_differ)]
    for p in rng.permutation(len(pairs)):
        i, j = pairs[p]
        swapped = [dict(o) for o in objects]
        for key in keys:
            swapped[i][key], swapped[j][key] = objects[j][key], objects[i][key]
        if _fits(swapped):
            return swapped
    return None


def _variant(objects: list[dict], kind: str, rng: np.random.Generator) -> list[dict] | None:
    """The objects of a variant scene of kind ``kind`` (one of VARIANTS), or None when it does not apply."""
    if kind == "colour swap":
        return _swap(objects, rng, ("colour", "rgb"), ("colour", "shape"))
    if kind == "shape swap":
        return _swap(objects, rng, ("shape",), ("shape", "colour"))
    if kind == "size swap":
        return _swap(objects, rng, ("size", "radius"), ("size", "shape"))
    if kind == "position swap":
        return _swap(objects, rng, ("cx", "cy"), ("shape", "colour"))
    axis = "cx" if kind == "mirrored" else "cy"
    return [{**o, axis: round(IMAGE_SIZE - o[axis], 2)} for o in objects]


def _background(rng: np.random.Generator, texture: str) -> dict:
    grey = rng.uniform(95, 165)
    tint = rng.uniform(-12, 12, size=3)
    return {"texture": texture, "rgb": [round(float(grey + t), 2) for t in tint],
            "period": round(float(rng.uniform(9, 18)), 2), "angle": round(float(rng.uniform(0, 180)), 2),
            "seed": int(rng.integers(2**31))}


def _family(rng: np.random.Generator, family: int) -> list[dict]:
    """A base scene and FAMILY_SIZE - 1 variants of distinct kinds (a new base when too few kinds apply).

    Members share the background texture (a word captions use), each with its own colour and noise.
    """
    texture = _pick(rng, TEXTURES)
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


def _regions(objects: list[dict], rng: np.random.Generator) -> list[dict]:
    """Object boxes plus 2+ distractors (parts, pairs, background), shuffled, at most MAX_REGIONS."""
    tight = [_tight_box(o) for o in objects]
    regions = [{"kind": "object", "objects": [k], "box": _jitter(tight[k], rng)} for k in range(len(objects))]
    for _ in range(int(rng.integers(2, MAX_REGIONS - len(objects) + 1))):
        kind = _pick(rng, ("part", "pair", "background"), (0.35, 0.25, 0.4))
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


# ----------------------------------------------------------------------------------- captions
# A caption is built as a list of (word, objects): ``objects`` is the tuple of object indices that
# an attribute word (colour, shape, size) names, None for every other word.

def _article(next_word: str) -> str:
    return "an" if next_word[0] in "aeiou" else "a"


def _phrase(objects: list[dict], group: list[int], rng: np.random.Generator) -> list[tuple]:
    """A noun phrase for one object ("a small red star") or a group sharing the words ("two red stars")."""
    first = objects[group[0]]

    def shared(key: str) -> bool:
        return all(objects[k][key] == first[key] for k in group)

    detail = _pick(rng, ("full", "colour shape", "size shape", "colour", "shape"), (0.3, 0.45, 0.1, 0.07, 0.08))
    wanted = {"full": ("size", "colour", "shape"), "colour shape": ("colour", "shape"), "size shape": ("size", "shape"),
              "colour": ("colour",), "shape": ("shape",)}[detail]
    keys = [k for k in wanted if shared(k)] or ["shape" if shared("shape") else "colour"]
    ids = tuple(group)
    words = [(first[k], ids) for k in ("size", "colour") if k in keys]
    plural = len(group) > 1
    if "shape" in keys and shared("shape"):
        words.append((PLURALS[first["shape"]] if plural else first["shape"], ids))
    else:
        noun = _pick(rng, ("shape", "object"))
        words.append((PLURALS[noun] if plural else noun, None))
    lead = NUMBER_WORDS[len(group)] if plural else _article(words[0][0])
    return [(lead, None)] + words


def _relation(a: dict, b: dict) -> str | None:
    """Where ``a`` lies relative to ``b`` when it is clear, along the dominant axis."""
    dx, dy = b["cx"] - a["cx"], b["cy"] - a["cy"]
    if abs(dx) >= abs(dy) and abs(dx) >= RELATION_MARGIN:
        return "to the left of" if dx > 0 else "to the right of"
    if abs(dy) > abs(dx) and abs(dy) >= RELATION_MARGIN:
        return "above" if dy > 0 else "below"
    return None


def _words(text: str) -> list[tuple]:
    return [(w, None) for w in text.split()]


def _single_caption(scene: dict, rng: np.random.Generator) -> list[tuple]:
    objects = scene["objects"]
    k = int(rng.integers(len(objects)))
    lead = _words(_pick(rng, ("", "there is", "a picture of", "an image with")))
    where = []
    o = objects[k]
    places = [p for p, ok in (("on the left", o["cx"] < 44), ("on the right", o["cx"] > IMAGE_SIZE - 44),
                              ("at the top", o["cy"] < 44), ("at the bottom", o["cy"] > IMAGE_SIZE - 44)) if ok]
    choice = rng.random()
    if places and choice < 0.5:
        where = _words(_pick(rng, places))
    elif choice < 0.75:
        where = _words(f"on a {scene['background']['texture']} background")
    return lead + _phrase(objects, [k], rng) + where


def _relation_caption(scene: dict, rng: np.random.Generator) -> list[tuple] | None:
    """"a small red star to the left of a blue circle", or "two green squares above a yellow triangle"."""
    objects = scene["objects"]
    options = []
    for b in range(len(objects)):
        others = [a for a in range(len(objects)) if a != b]
        options += [([a], b, _relation(objects[a], objects[b])) for a in others if _relation(objects[a], objects[b])]
        for shape in {objects[a]["shape"] for a in others}:
            group = [a for a in others if objects[a]["shape"] == shape]
            relations = {_relation(objects[a], objects[b]) for a in group}
            if len(group) > 1 and len(relations) == 1 and None not in relations:
                options.append((group, b, relations.pop()))
    if not options:
        return None
    group, b, relation = options[int(rng.integers(len(options)))]
    verb = "are" if len(group) > 1 else "is"
    link = _words(_pick(rng, ("", verb)))
    return _phrase(objects, group, rng) + link + _words(relation) + _phrase(objects, [b], rng)


def _count_caption(scene: dict, rng: np.random.Generator) -> list[tuple]:
    """"three shapes: two stars and a circle", or a count of some of the shapes by kind."""
    objects = scene["objects"]
    by_shape: dict[str, list[int]] = {}
    for k, o in enumerate(objects):
        by_shape.setdefault(o["shape"], []).append(k)
    groups = [by_shape[s] for s in rng.permutation(sorted(by_shape))]
    groups = groups[: int(rng.integers(1, len(groups) + 1))]
    phrases = []
    for group in groups:
        o = objects[group[0]]
        colour = [(o["colour"], tuple(group))] if all(objects[k]["colour"] == o["colour"] for k in group) \
            and rng.random() < 0.5 else []
        shape = PLURALS[o["shape"]] if len(group) > 1 else o["shape"]
        lead = NUMBER_WORDS[len(group)] if len(group) > 1 else _article((colour or [(shape,)])[0][0])
        phrases.append([(lead, None)] + colour + [(shape, tuple(group))])
    words = _join(phrases)
    if len(groups) == len(by_shape) and rng.random() < 0.6:
        words = _words(f"{NUMBER_WORDS[len(objects)]} {_pick(rng, ('shapes', 'objects'))}") + [(":", None)] + words
    return words


def _join(phrases: list[list[tuple]]) -> list[tuple]:
    """"x", "x and y", "x, y and z"."""
    words = []
    for i, phrase in enumerate(phrases):
        if i:
            words.append(("and", None) if i == len(phrases) - 1 else (",", None))
        words.extend(phrase)
    return words


def _list_caption(scene: dict, rng: np.random.Generator) -> list[tuple]:
    objects = scene["objects"]
    chosen = rng.permutation(len(objects))[: int(rng.integers(2, min(3, len(objects)) + 1))]
    lead = _words(_pick(rng, ("", "there is", "this image shows")))
    return lead + _join([_phrase(objects, [int(k)], rng) for k in chosen])


def _extreme_caption(scene: dict, rng: np.random.Generator) -> list[tuple] | None:
    """"the leftmost object is a small red star", when one object clearly leads along an axis."""
    objects = scene["objects"]
    options = []
    for name, key, sign in (("leftmost", "cx", 1), ("rightmost", "cx", -1), ("highest", "cy", 1), ("lowest", "cy", -1)):
        order = sorted(range(len(objects)), key=lambda k: sign * objects[k][key])
        if sign * (objects[order[1]][key] - objects[order[0]][key]) >= EXTREME_MARGIN:
            options.append((name, order[0]))
    if not options:
        return None
    name, k = options[int(rng.integers(len(options)))]
    return _words(f"the {name} {_pick(rng, ('shape', 'object'))} is") + _phrase(objects, [k], rng)


CAPTION_TEMPLATES = (_single_caption, _relation_caption, _count_caption, _list_caption, _extreme_caption)


def _text(words: list[tuple]) -> str:
    """Join words with spaces, none before punctuation, first letter capitalised, final full stop."""
    text = ""
    for word, _ in words + [(".", None)]:
        text += word if (not text or word in ",.:") else " " + word
    return text[0].upper() + text[1:]


def _captions(scene: dict, rng: np.random.Generator) -> list[list[tuple]]:
    """Five distinct captions, each template used once before any is used twice."""
    captions, texts, order = [], set(), []
    for _ in range(200):
        order = order or list(rng.permutation(len(CAPTION_TEMPLATES)))
        words = CAPTION_TEMPLATES[order.pop()](scene, rng)
        if words is not None and _text(words) not in texts:
            captions.append(words)
            texts.add(_text(words))
            if len(captions) == CAPTIONS_PER_IMAGE:
                return captions
    raise RuntimeError("could not write five distinct captions")  # not reached: single captions vary enough


def _grounding(words: list[tuple], regions: list[dict]) -> list[list]:
    """[token position, [regions of the named objects' own boxes and parts]] per attribute word.

    Token positions are those of ``tokenize(_text(words))``: one token per word, then the full stop.
    """
    entries = []
    for position, (_, objects) in enumerate(words):
        if objects is not None:
            boxes = [r for r, region in enumerate(regions)
                     if region["kind"] in ("object", "part") and region["objects"][0] in objects]
            entries.append([position, boxes])
    return entries


# ---------------------------------------------------------------------------------- rendering

def _outline(obj: dict) -> np.ndarray:
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


def _tight_box(obj: dict) -> list[float]:
    points = _outline(obj)
    return _clip_box(*points.min(axis=0), *points.max(axis=0))


# float64 throughout: a sine's last-bit differences between CPUs cannot move a pixel's rounding.
_GRID_Y, _GRID_X = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float64)


def _background_pixels(background: dict) -> np.ndarray:
    """(S, S, 3) uint8: a tinted grey with blotches, stripes or checks and pixel noise, from its own seed."""
    rng = np.random.default_rng(background["seed"])
    texture = background["texture"]
    if texture == "striped":
        theta = np.radians(background["angle"])
        phase = (_GRID_X * np.cos(theta) + _GRID_Y * np.sin(theta)) * (2 * np.pi / background["period"])
        pattern = 16 * np.sin(phase)
    elif texture == "checkered":
        cell = background["period"] * 1.2
        pattern = 24 * ((np.floor(_GRID_X / cell) + np.floor(_GRID_Y / cell)) % 2) - 12
    else:
        coarse = Image.fromarray(rng.normal(0, 14, size=(8, 8)).astype(np.float32))
        pattern = np.asarray(coarse.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR), dtype=np.float64)
    noise = (rng.random((IMAGE_SIZE, IMAGE_SIZE, 3)) - 0.5) * 24  # uniform, sd 7
    pixels = np.asarray(background["rgb"], np.float64) + pattern[..., None] + noise
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def render_scene(scene: dict) -> Image.Image:
    """The 128 x 128 RGB picture of a scene description, identical every time (pixels hash in ``pixel_hash``)."""
    background = Image.fromarray(_background_pixels(scene["background"]))
    big = IMAGE_SIZE * SUPERSAMPLE
    layer = Image.new("RGBA", (big, big), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    for obj in scene["objects"]:
        points = [tuple(p) for p in (_outline(obj) * SUPERSAMPLE).tolist()]
        dark = tuple(int(c * 0.6) for c in obj["rgb"])
        draw.polygon(points, fill=tuple(obj["rgb"]) + (255,), outline=dark + (255,), width=SUPERSAMPLE)
    layer = layer.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BOX)
    return Image.alpha_composite(background.convert("RGBA"), layer).convert("RGB")


def pixel_hash(image: Image.Image) -> str:
    return hashlib.sha256(image.tobytes()).hexdigest()[:16]


# --------------------------------------------------------------------------------- descriptor

def _hsv(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hue in [0, 1), saturation and value in [0, 1] of float RGB in [0, 1]."""
    value = rgb.max(axis=-1)
    spread = value - rgb.min(axis=-1)
    saturation = np.where(value > 0, spread / np.maximum(value, 1e-6), 0.0)
    r, g, b = np.moveaxis(rgb, -1, 0)
    safe = np.maximum(spread, 1e-6)
    hue = np.where(value == r, (g - b) / safe, np.where(value == g, 2 + (b - r) / safe, 4 + (r - g) / safe))
    return (hue / 6.0) % 1.0, saturation, value


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-6)


def describe_boxes(image: Image.Image, boxes: np.ndarray) -> np.ndarray:
    """(K, FEATURE_DIM) float32 features of K boxes, from the pixels inside each box only.

    Each box is resampled to a PATCH x PATCH crop. Blocks, each L2-normalised:
    1. colour: histogram of hue (HUE_BINS soft bins, each pixel shared between the two nearest
       bin centres; pixels with saturation > 0.3 and value > 0.2) and of value for the other,
       greyish pixels (GREY_BINS bins at GREY_EDGES), square-rooted (Hellinger);
    2. shape: per pixel, the RGB distance to the median colour of the crop's border (the
       background, for a box around an object), as a PATCH x PATCH map;
    then the box geometry x1, y1, x2, y2, w, h, area, normalised by the picture size (unscaled).
    """
    width, height = image.size
    crops = np.stack([np.asarray(image.resize((PATCH, PATCH), Image.BILINEAR, box=tuple(map(float, box))),
                                 dtype=np.float64) / 255.0 for box in boxes])  # (K, P, P, 3)
    hue, saturation, value = _hsv(crops)
    chromatic = (saturation > 0.3) & (value > 0.2)
    position = hue * HUE_BINS
    lower = np.floor(position).astype(int)
    share = position - lower  # of the pixel that goes to the upper bin
    n_bins = HUE_BINS + GREY_BINS
    offset = np.arange(len(boxes))[:, None, None] * n_bins
    first = np.where(chromatic, lower % HUE_BINS, HUE_BINS + np.digitize(value, GREY_EDGES)) + offset
    second = (lower + 1) % HUE_BINS + offset
    histogram = (np.bincount(first.ravel(), np.where(chromatic, 1 - share, 1.0).ravel(), len(boxes) * n_bins)
                 + np.bincount(second.ravel(), np.where(chromatic, share, 0.0).ravel(), len(boxes) * n_bins))
    histogram = histogram.reshape(len(boxes), n_bins)
    colour = np.sqrt(histogram / histogram.sum(axis=1, keepdims=True))
    border = np.concatenate([crops[:, 0], crops[:, -1], crops[:, 1:-1, 0], crops[:, 1:-1, -1]], axis=1)
    background = np.median(border, axis=1)  # (K, 3)
    shape = _unit(np.linalg.norm(crops - background[:, None, None], axis=-1).reshape(len(boxes), -1))
    b = np.asarray(boxes, np.float64) / [width, height, width, height]
    w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    geometry = np.concatenate([b, w[:, None], h[:, None], (w * h)[:, None]], axis=1)
    return np.concatenate([colour, shape, geometry], axis=1).astype(np.float32)


# --------------------------------------------------------------------------------- generation

def _description_words(objects: list[dict], texture: str) -> list[str]:
    """The words of a scene's full description that carry no order: attributes, counts, texture."""
    counts = [len(objects)]
    for key in ("shape", "colour"):
        values = [o[key] for o in objects]
        counts += [values.count(v) for v in set(values)]
    words = {o[key] for o in objects for key in ("shape", "colour", "size")}
    return sorted(words | {NUMBER_WORDS[c] for c in counts if c > 1} | {texture})


def _attributes(scene: dict) -> dict:
    """Per-image facts for colouring plots, and the bag of words of its true description."""
    objects = scene["objects"]
    return {"family": scene["family"], "variant": scene["variant"], "n_objects": len(objects),
            "colours": sorted({o["colour"] for o in objects}), "shapes": sorted({o["shape"] for o in objects}),
            "sizes": sorted({o["size"] for o in objects}), "texture": scene["background"]["texture"],
            "description_words": _description_words(objects, scene["background"]["texture"])}


class _Generated(NamedTuple):
    """One generated image: its scene description, captions, grounding and features."""

    scene: dict
    captions: list[str]
    grounding: list[list]
    regions: np.ndarray  # (K, FEATURE_DIM), K <= MAX_REGIONS
    global_feature: np.ndarray


def _generate_family(seed: int, split: str, family: int) -> list[_Generated]:
    """Everything about one family, from its own random stream: families can be built in any
    order and on any process, and a smaller split is a prefix of a larger one."""
    rng = np.random.default_rng([seed, SPLITS.index(split), family])
    generated = []
    for member, scene in enumerate(_family(rng, family)):
        scene = {"id": f"{split}-{family * FAMILY_SIZE + member:05d}", **scene}
        scene["regions"] = _regions(scene["objects"], rng)
        captions = _captions(scene, rng)
        image = render_scene(scene)
        scene["pixel_hash"] = pixel_hash(image)
        boxes = np.array([r["box"] for r in scene["regions"]] + [[0, 0, IMAGE_SIZE, IMAGE_SIZE]], np.float32)
        features = describe_boxes(image, boxes)
        generated.append(_Generated(scene, [_text(words) for words in captions],
                                    [_grounding(words, scene["regions"]) for words in captions],
                                    features[:-1], features[-1]))
    return generated


def _generate_all(seed: int, sizes: dict[str, int], progress: bool) -> dict[str, list[_Generated]]:
    """Every split, family by family, on two processes when there is enough work to pay for them."""
    jobs = [(split, family) for split in SPLITS for family in range(-(-sizes[split] // FAMILY_SIZE))]
    workers = min(2, os.cpu_count() or 1)
    bar = dict(total=len(jobs), desc="ShapeScenes", unit="family", disable=not progress)
    splits, families = [split for split, _ in jobs], [family for _, family in jobs]
    if workers < 2 or len(jobs) < 100:
        results = list(tqdm(map(_generate_family, [seed] * len(jobs), splits, families), **bar))
    else:
        with ProcessPoolExecutor(workers) as pool:
            results = list(tqdm(pool.map(_generate_family, [seed] * len(jobs), splits, families, chunksize=16), **bar))
    generated: dict[str, list[_Generated]] = {split: [] for split in SPLITS}
    for split, members in zip(splits, results):
        generated[split].extend(members)
    return {split: images[: sizes[split]] for split, images in generated.items()}


def _split_data(name: str, images: list[_Generated]) -> RetrievalSplit:
    n = len(images)
    regions = np.zeros((n, MAX_REGIONS, FEATURE_DIM), np.float32)
    boxes = np.zeros((n, MAX_REGIONS, 4), np.float32)
    mask = np.zeros((n, MAX_REGIONS), bool)
    for i, image in enumerate(images):
        k = len(image.regions)
        regions[i, :k], mask[i, :k] = image.regions, True
        boxes[i, :k] = [r["box"] for r in image.scene["regions"]]
    captions = [c for image in images for c in image.captions]
    return RetrievalSplit(
        name=name, regions=regions, region_mask=mask, global_features=np.stack([g.global_feature for g in images]),
        captions=captions, caption_to_image=np.arange(len(captions)) // CAPTIONS_PER_IMAGE, boxes=boxes,
        image_sizes=np.full((n, 2), IMAGE_SIZE, np.int32), image_ids=[g.scene["id"] for g in images],
        grounding=[entry for image in images for entry in image.grounding],
        image_attributes=[_attributes(g.scene) for g in images])


def _resolve_sizes(sizes: dict | None) -> dict[str, int]:
    resolved = {**DEFAULT_SIZES, **(sizes or {})}
    unknown = set(resolved) - set(SPLITS)
    if unknown:
        raise DataError(f"ShapeScenes sizes: unknown split {sorted(unknown)}; splits are {list(SPLITS)}")
    bad = {k: v for k, v in resolved.items() if not isinstance(v, int) or isinstance(v, bool) or v < 1}
    if bad:
        raise DataError(f"ShapeScenes sizes must be positive numbers of images, got {bad}")
    return {split: resolved[split] for split in SPLITS}


def shapescenes_folder(seed: int = 0, sizes: dict | None = None, cache: str | os.PathLike | None = None) -> Path:
    """Where the dataset of these settings is cached: one folder per version, seed and sizes."""
    sizes = _resolve_sizes(sizes)
    name = f"shapescenes-v{VERSION}-seed{seed}-" + "-".join(f"{s}{n}" for s, n in sizes.items())
    return Path(cache if cache is not None else cache_dir()) / name


def _producer(seed: int, sizes: dict[str, int]) -> dict:
    """What a cache must match to be reused; ``generator`` changes with any edit of this file,
    so that a cache built by code under development is never mistaken for a current one."""
    generator = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]
    return {"name": "shapescenes", "version": VERSION, "generator": generator, "seed": seed, "sizes": sizes}


def _is_current(folder: Path, seed: int, sizes: dict[str, int]) -> bool:
    """The cache was built by this version with these settings, and every file is there."""
    try:
        producer = read_meta(folder).get("producer", {})
    except DataError:
        return False
    expected = _producer(seed, sizes)
    return ({k: producer.get(k) for k in expected} == expected
            and set(SPLITS) <= set(list_splits(folder))
            and all((folder / f"{split}_{suffix}").is_file() for split in SPLITS
                    for suffix in ("caps.txt", "scenes.json", "grounding.json", "attributes.json")))


def build_shapescenes(seed: int = 0, sizes: dict | None = None, cache: str | os.PathLike | None = None,
                      progress: bool = True, force: bool = False) -> Path:
    """Generate every split into the cache unless a current copy is there; return its folder.

    The dataset is built in a temporary folder beside its final place and renamed into place, so
    an interrupted build never leaves a half-written cache.
    """
    sizes = _resolve_sizes(sizes)
    folder = shapescenes_folder(seed, sizes, cache)
    if not force and _is_current(folder, seed, sizes):
        return folder
    started = time.perf_counter()
    folder.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".building", dir=folder.parent))
    try:
        for split, images in _generate_all(seed, sizes, progress).items():
            write_split(building, split, _split_data(split, images))
            write_json_compact(building / f"{split}_scenes.json", [image.scene for image in images])
        meta = {"captions_per_image": CAPTIONS_PER_IMAGE,
                "producer": {**_producer(seed, sizes), "image_size": IMAGE_SIZE, "max_regions": MAX_REGIONS,
                             "feature_dim": FEATURE_DIM, "descriptor": describe_boxes.__doc__.split("\n")[0],
                             "generation_seconds": round(time.perf_counter() - started, 1)}}
        write_json(building / "meta.json", {**read_meta(building), **meta})
        _install(building, folder, seed, sizes)
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return folder


def _install(building: Path, folder: Path, seed: int, sizes: dict[str, int]) -> None:
    """Rename the finished build into place, replacing a stale copy; a concurrent build's current copy wins."""
    stale = folder.with_name(f".{folder.name}.stale-{os.getpid()}")
    if folder.exists():
        os.replace(folder, stale)
    try:
        os.replace(building, folder)
    except OSError:
        if not _is_current(folder, seed, sizes):
            raise
    finally:
        shutil.rmtree(stale, ignore_errors=True)


@dataclass(frozen=True)
class SceneRenderer:
    """Draws image i of a split from its scene description (a class, so that a split pickles)."""

    scenes: list[dict] = field(repr=False)

    def __call__(self, i: int) -> Image.Image:
        return render_scene(self.scenes[i])


def load_shapescenes(split: str, seed: int = 0, sizes: dict | None = None,
                     cache: str | os.PathLike | None = None, progress: bool = True) -> RetrievalSplit:
    """One split of ShapeScenes, built on first use (about a minute at full size), with renderer,
    grounding and image attributes. ``sizes`` (images per split, e.g. {"train": 200, "dev": 50,
    "test": 100}) gives a smaller dataset, cached separately."""
    if split not in SPLITS:
        raise DataError(f"ShapeScenes has no split {split!r}; available: {list(SPLITS)}")
    folder = build_shapescenes(seed, sizes, cache, progress)
    data = read_split(folder, split)
    data.renderer = SceneRenderer(load_json(folder / f"{split}_scenes.json", "scene descriptions"))
    return data


# ---------------------------------------------------------------------------------- baseline

_SINGULAR = {PLURALS[shape]: shape for shape in SHAPES}
_DESCRIPTION_WORDS = sorted(set(SHAPES) | set(COLOURS) | set(SIZES) | set(NUMBER_WORDS) | set(TEXTURES))


def bag_of_words_scores(split: RetrievalSplit | str, seed: int = 0) -> np.ndarray:
    """(N, M) scores of an oracle bag-of-words matcher: how far order- and binding-free matching gets.

    It compares the words of a caption that a scene description can hold (colours, shapes,
    sizes, counts, textures; plurals made singular) with each image's true description words
    (attribute ``description_words``), knowing the truth but not which word goes with which
    object, nor where things are. Pairs are ordered by, in turn:
    1. consistency: the fraction of those caption words that the image has (a true caption has all);
    2. specificity: the number of matched words (a caption that says more is likelier the image's own);
    3. simplicity: fewer description words (a caption is likelier to name what it names when the
       image holds less);
    4. chance, with a fixed seed (the members of a family have the same words).
    The weights below keep each criterion below the smallest step of the one before.
    A string loads that split of ShapeScenes with the default settings.
    """
    if isinstance(split, str):
        split = load_shapescenes(split, progress=False)
    if split.image_attributes is None or "description_words" not in split.image_attributes[0]:
        raise DataError(f"split {split.name!r}: bag_of_words_scores needs ShapeScenes image attributes")
    column = {w: i for i, w in enumerate(_DESCRIPTION_WORDS)}
    images = np.zeros((split.n_images, len(column)))
    for i, attributes in enumerate(split.image_attributes):
        images[i, [column[w] for w in attributes["description_words"]]] = 1
    captions = np.zeros((split.n_captions, len(column)))
    for c, caption in enumerate(split.captions):
        words = {_SINGULAR.get(t, t) for t in tokenize(caption)} & column.keys()
        captions[c, [column[w] for w in words]] = 1
    matched = images @ captions.T  # (N, M), at most len(column) = 25
    consistency = matched / np.maximum(captions.sum(axis=1), 1)[None, :]  # steps of at least 1/25
    return (consistency + 1e-3 * matched - 1e-5 * images.sum(axis=1)[:, None]
            + 1e-7 * np.random.default_rng(seed).random(matched.shape))  # float64 keeps the 1e-7
