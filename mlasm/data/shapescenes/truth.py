"""Truth: is a caption's meaning true of a scene? The geometric rules, written down once.

Every caption the generator writes carries its meaning as a JSON-able dict, and ``truth`` decides
it against any number of scenes at once (a ``SceneTable``: the objects of N scenes as arrays), so
that a split's complete positive sets cost one vectorised check per caption. ``is_true`` checks
one scene through the same code. The generator asks these same rules what it may say, so a
caption is true of its own picture (the generator also checks each one, and the tests check
every caption of a split against its own scene).

Meanings. An object description ``desc`` is {"shape", "colour", "size"}, each a word or None
(None: not said; "a red shape" has no shape), and may add a "place" where the object is ("a red
star on the left"). An article means at least one, a number exactly that many, in every kind,
so that two templates that write the same text mean the same thing. The kinds:
    single    {"object": desc, "place": PLACE | None, "texture": TEXTURE | None}
              some object fits desc (and is at that place); the background has that texture
    relation  {"subject": desc, "count": k, "relation": RELATION, "object": desc}
              some object b fits the object desc and, among the other objects, those that fit
              the subject desc and stand in the relation to b number: at least one (k = 1,
              "a red star left of ..."), exactly k (k >= 2, "two stars left of ...")
    count     {"total": n | None, "groups": [{"object": desc, "count": k}, ...]}
              objects fit each group's desc: at least one (k = 1, "a circle"), exactly k
              (k >= 2, "two stars"); the scene holds n objects in all
    list      {"objects": [desc, ...]}  distinct objects fit the descs, one each
    extreme   {"extreme": EXTREME, "object": desc}
              one object clearly leads along the axis, and it fits desc

The rules (pixels, y down, centres of objects):
    "on the left" / "on the right" / "at the top" / "at the bottom": the centre lies within
        PLACE_EDGE of that edge of the picture; "in the top left corner": at the top and on the left;
    "a left of b" (likewise right of, above, below): a's centre lies at least RELATION_MARGIN
        towards that side of b's, whatever the offset along the other axis;
    "the leftmost" (likewise rightmost, highest, lowest): the object furthest that way, leading
        the next one by at least EXTREME_MARGIN; with no clear leader the caption is false;
    "large" / "small": the object's size class (radius 14-17 px / 8-10 px, no overlap).
"""
from __future__ import annotations

from functools import cached_property
from itertools import combinations
from typing import Mapping, Sequence

import numpy as np

from mlasm.data.shapescenes.scenes import COLOURS, IMAGE_SIZE, SHAPES, SIZES, TEXTURES

PLACE_EDGE = 44.0        # "on the left": centre within this many pixels of the left edge
RELATION_MARGIN = 14.0   # centre offset along an axis from which "left of" / "above" is true
EXTREME_MARGIN = 12.0    # lead of the leftmost (etc.) object over the next one

PLACES = ("on the left", "on the right", "at the top", "at the bottom", "in the top left corner",
          "in the top right corner", "in the bottom left corner", "in the bottom right corner")
RELATIONS = ("to the left of", "to the right of", "above", "below")
EXTREMES = ("leftmost", "rightmost", "highest", "lowest")
KINDS = ("single", "relation", "count", "list", "extreme")
ATTRIBUTES = {"shape": SHAPES, "colour": tuple(COLOURS), "size": tuple(SIZES)}

# (axis, sign): a position is further "that way" the larger sign * coordinate is
_DIRECTION = {"to the left of": ("cx", -1), "to the right of": ("cx", 1), "above": ("cy", -1), "below": ("cy", 1),
              "leftmost": ("cx", -1), "rightmost": ("cx", 1), "highest": ("cy", -1), "lowest": ("cy", 1),
              "on the left": ("cx", -1), "on the right": ("cx", 1), "at the top": ("cy", -1),
              "at the bottom": ("cy", 1)}


def at_place(cx, cy, place: str):
    """Is a centre at ``place``? Works on numbers and on arrays alike."""
    if place.endswith("corner"):  # "in the top left corner": at the top and on the left
        _, _, vertical, horizontal, _ = place.split()
        return at_place(cx, cy, f"at the {vertical}") & at_place(cx, cy, f"on the {horizontal}")
    axis, sign = _DIRECTION[place]
    value = cx if axis == "cx" else cy
    return value < PLACE_EDGE if sign < 0 else value > IMAGE_SIZE - PLACE_EDGE


def offset(a_cx, a_cy, b_cx, b_cy, relation: str):
    """How far a lies towards ``relation``'s side of b (positive: that way), in pixels."""
    axis, sign = _DIRECTION[relation]
    return sign * ((a_cx - b_cx) if axis == "cx" else (a_cy - b_cy))


def related(a_cx, a_cy, b_cx, b_cy, relation: str):
    """Is a ``relation`` b ("a to the left of b")? Works on numbers and on arrays alike."""
    return offset(a_cx, a_cy, b_cx, b_cy, relation) >= RELATION_MARGIN


class SceneTable:
    """The objects of N scenes as (N, K) arrays (K = most objects in a scene), for checking meanings."""

    def __init__(self, scenes: Sequence[Mapping]):
        n = len(scenes)
        k = max((len(s["objects"]) for s in scenes), default=1)
        self.n_scenes, self.max_objects = n, k
        self.valid = np.zeros((n, k), bool)
        self.codes = {key: np.full((n, k), -1, np.int16) for key in ATTRIBUTES}
        self.cx, self.cy = np.zeros((n, k)), np.zeros((n, k))
        self.texture = np.array([TEXTURES.index(s["background"]["texture"]) for s in scenes], np.int16)
        for i, scene in enumerate(scenes):
            for j, obj in enumerate(scene["objects"]):
                self.valid[i, j] = True
                for key, values in ATTRIBUTES.items():
                    self.codes[key][i, j] = values.index(obj[key])
                self.cx[i, j], self.cy[i, j] = obj["cx"], obj["cy"]
        self.n_objects = self.valid.sum(axis=1)

    def fits(self, desc: Mapping) -> np.ndarray:
        """(N, K) bool: which objects fit a description (attributes, and a place if it names one)."""
        result = self.valid.copy()
        for key, values in ATTRIBUTES.items():
            if desc.get(key) is not None:
                result &= self.codes[key] == values.index(desc[key])
        if desc.get("place"):
            result &= at_place(self.cx, self.cy, desc["place"])
        return result

    def at(self, place: str) -> np.ndarray:
        return self.valid & at_place(self.cx, self.cy, place)

    @cached_property
    def _relations(self) -> dict[str, np.ndarray]:
        both = self.valid[:, :, None] & self.valid[:, None, :] & ~np.eye(self.max_objects, dtype=bool)
        return {relation: both & related(self.cx[:, :, None], self.cy[:, :, None], self.cx[:, None, :],
                                         self.cy[:, None, :], relation)
                for relation in RELATIONS}

    def related(self, relation: str) -> np.ndarray:
        """(N, K, K) bool: [n, a, b] is True when object a of scene n is ``relation`` object b."""
        return self._relations[relation]

    def leader(self, extreme: str) -> np.ndarray:
        """(N,) the index of the object that clearly leads that way, or -1 where none does."""
        axis, sign = _DIRECTION[extreme]
        values = np.where(self.valid, sign * (self.cx if axis == "cx" else self.cy), -np.inf)
        order = np.argsort(-values, axis=1, kind="stable")
        first = np.take_along_axis(values, order[:, :1], 1)[:, 0]
        second = np.take_along_axis(values, order[:, 1:2], 1)[:, 0] if self.max_objects > 1 else -np.inf
        return np.where(first - second >= EXTREME_MARGIN, order[:, 0], -1)


def truth(meaning: Mapping, table: SceneTable) -> np.ndarray:
    """(N,) bool: is the meaning true of each scene of the table? (the rules of the module docstring)"""
    kind = meaning["kind"]
    if kind == "single":
        objects = table.fits(meaning["object"])
        if meaning.get("place"):
            objects &= table.at(meaning["place"])
        result = objects.any(axis=1)
        if meaning.get("texture"):
            result &= table.texture == TEXTURES.index(meaning["texture"])
        return result
    if kind == "relation":
        subjects = table.fits(meaning["subject"])                                  # (N, K) a
        related = table.related(meaning["relation"]) & subjects[:, :, None]      # (N, K, K) [a, b]
        number = related.sum(axis=1)                                             # (N, K) per b
        count = meaning["count"]
        enough = number >= 1 if count == 1 else number == count
        return (enough & table.fits(meaning["object"])).any(axis=1)
    if kind == "count":
        result = np.ones(table.n_scenes, bool)
        if meaning.get("total") is not None:
            result &= table.n_objects == meaning["total"]
        for group in meaning["groups"]:
            number = table.fits(group["object"]).sum(axis=1)
            result &= number >= 1 if group["count"] == 1 else number == group["count"]
        return result
    if kind == "list":
        # distinct objects, one per desc, exist iff every group of descs is fitted by at least as
        # many objects as it has descs (Hall's marriage theorem): 2^n - 1 checks, not K!/(K-n)!
        fits = [table.fits(desc) for desc in meaning["objects"]]
        result = np.ones(table.n_scenes, bool)
        for size in range(1, len(fits) + 1):
            for group in combinations(fits, size):
                result &= np.logical_or.reduce(group).sum(axis=1) >= size
        return result
    if kind == "extreme":
        leader = table.leader(meaning["extreme"])
        fits = table.fits(meaning["object"])
        return (leader >= 0) & fits[np.arange(table.n_scenes), np.maximum(leader, 0)]
    raise ValueError(f"unknown meaning kind {kind!r}; expected one of {KINDS}")


def is_true(meaning: Mapping, scene: Mapping) -> bool:
    """Is the meaning true of one scene? The same rules as ``truth``."""
    return bool(truth(meaning, SceneTable([scene]))[0])
