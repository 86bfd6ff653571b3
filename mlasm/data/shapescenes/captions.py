"""Captions: five templates that say what a scene holds, each caption with its meaning.

A caption is built as a list of (word, objects): ``objects`` is the tuple of object indices that
an attribute word (colour, shape, size) names, None for every other word; its meaning (see
``truth``) is built beside it. Templates ask ``truth`` what is clear enough to say, and every
caption drawn is checked against its own scene. ``rich`` phrases name every attribute (size, colour, shape):
they are what the generator adds when an image's captions are true of other pictures too.
"""
from __future__ import annotations

import numpy as np

from mlasm.data.shapescenes.scenes import NUMBER_WORDS, PLURALS, pick
from mlasm.data.shapescenes.truth import EXTREMES, PLACES, RELATIONS, SceneTable, at_place, is_true, related

Words = list  # [(word, objects tuple | None), ...]
Caption = tuple  # (words, meaning)

_DETAILS = {"full": ("size", "colour", "shape"), "colour shape": ("colour", "shape"), "size shape": ("size", "shape"),
            "colour": ("colour",), "shape": ("shape",)}


def _article(next_word: str) -> str:
    return "an" if next_word[0] in "aeiou" else "a"


def _words(text: str) -> Words:
    return [(w, None) for w in text.split()]


def _phrase(objects: list[dict], group: list[int], rng: np.random.Generator, rich: bool = False,
            ) -> tuple[Words, dict]:
    """A noun phrase for one object ("a small red star") or a group sharing the words ("two red stars"),
    and the description it gives (the attributes it names)."""
    first = objects[group[0]]

    def shared(key: str) -> bool:
        return all(objects[k][key] == first[key] for k in group)

    detail = "full" if rich else pick(rng, tuple(_DETAILS), (0.3, 0.45, 0.1, 0.07, 0.08))
    keys = [k for k in _DETAILS[detail] if shared(k)] or ["shape" if shared("shape") else "colour"]
    if len(group) > 1 and shared("shape") and "shape" not in keys:
        keys.append("shape")  # a group is all the objects of one shape: "two green shapes" could count others
    ids = tuple(group)
    words = [(first[k], ids) for k in ("size", "colour") if k in keys]
    plural = len(group) > 1
    if "shape" in keys:
        words.append((PLURALS[first["shape"]] if plural else first["shape"], ids))
    else:
        noun = pick(rng, ("shape", "object"))
        words.append((PLURALS[noun] if plural else noun, None))
    lead = NUMBER_WORDS[len(group)] if plural else _article(words[0][0])
    desc = {key: (first[key] if key in keys else None) for key in ("shape", "colour", "size")}
    return [(lead, None)] + words, desc


def _join(phrases: list[Words]) -> Words:
    """"x", "x and y", "x, y and z"."""
    words = []
    for i, phrase in enumerate(phrases):
        if i:
            words.append(("and", None) if i == len(phrases) - 1 else (",", None))
        words.extend(phrase)
    return words


def _relations(a: dict, b: dict) -> list[str]:
    """Every relation of a to b that is true by truth's rule (above and to the left, say)."""
    return [r for r in RELATIONS if related(a["cx"], a["cy"], b["cx"], b["cy"], r)]


def places_of(obj: dict) -> list[str]:
    """Every place (``truth.PLACES``) an object is at."""
    return [p for p in PLACES if at_place(obj["cx"], obj["cy"], p)]


def single_caption(scene: dict, rng: np.random.Generator, rich: bool = False,
                   option: tuple[int, str] | None = None) -> Caption:
    """"there is a small red star on the left", "a blue circle on a striped background".

    ``option`` (object index, place) says which object and where instead of drawing them."""
    objects = scene["objects"]
    k = int(rng.integers(len(objects))) if option is None else option[0]
    lead = _words(pick(rng, ("", "there is", "a picture of", "an image with")))
    places = places_of(objects[k])
    phrase, desc = _phrase(objects, [k], rng, rich)
    meaning = {"kind": "single", "object": desc, "place": None, "texture": None}
    choice = rng.random()
    where = []
    if option is not None or (places and choice < 0.5):
        meaning["place"] = option[1] if option is not None else pick(rng, places)
        where = _words(meaning["place"])
    elif choice < 0.75:
        meaning["texture"] = scene["background"]["texture"]
        where = _words(f"on a {meaning['texture']} background")
    return lead + phrase + where, meaning


def relation_options(scene: dict) -> list[tuple[list[int], int, str]]:
    """Every (subject objects, object, relation) a relation caption may say of a scene: one object,
    or all the other objects of one shape when the relation holds for each of them."""
    objects = scene["objects"]
    options = []
    for b in range(len(objects)):
        others = [a for a in range(len(objects)) if a != b]
        options += [([a], b, relation) for a in others for relation in _relations(objects[a], objects[b])]
        for shape in sorted({objects[a]["shape"] for a in others}):
            group = [a for a in others if objects[a]["shape"] == shape]
            if len(group) > 1:
                shared = set.intersection(*(set(_relations(objects[a], objects[b])) for a in group))
                options += [(group, b, relation) for relation in RELATIONS if relation in shared]
    return options


def relation_caption(scene: dict, rng: np.random.Generator, rich: bool = False,
                     option: tuple | None = None) -> Caption | None:
    """"a small red star to the left of a blue circle", or "two green squares above a yellow triangle"."""
    objects = scene["objects"]
    if option is None:
        options = relation_options(scene)
        if not options:
            return None
        option = options[int(rng.integers(len(options)))]
    group, b, relation = option
    verb = "are" if len(group) > 1 else "is"
    link = _words(pick(rng, ("", verb)))
    subject, subject_desc = _phrase(objects, group, rng, rich)
    target, target_desc = _phrase(objects, [b], rng, rich)
    meaning = {"kind": "relation", "subject": subject_desc, "count": len(group), "relation": relation,
               "object": target_desc}
    return subject + link + _words(relation) + target, meaning


def count_caption(scene: dict, rng: np.random.Generator, rich: bool = False) -> Caption:
    """"three shapes: two stars and a circle", or a count of some of the shapes by kind."""
    objects = scene["objects"]
    by_shape: dict[str, list[int]] = {}
    for k, o in enumerate(objects):
        by_shape.setdefault(o["shape"], []).append(k)
    groups = [by_shape[s] for s in rng.permutation(sorted(by_shape))]
    groups = groups[: int(rng.integers(1, len(groups) + 1))]
    phrases, meaning_groups = [], []
    for group in groups:
        o = objects[group[0]]
        one_colour = all(objects[k]["colour"] == o["colour"] for k in group)
        colour = [(o["colour"], tuple(group))] if one_colour and (rich or rng.random() < 0.5) else []
        shape = PLURALS[o["shape"]] if len(group) > 1 else o["shape"]
        lead = NUMBER_WORDS[len(group)] if len(group) > 1 else _article((colour or [(shape,)])[0][0])
        phrases.append([(lead, None)] + colour + [(shape, tuple(group))])
        meaning_groups.append({"object": {"shape": o["shape"], "colour": o["colour"] if colour else None,
                                          "size": None}, "count": len(group)})
    words = _join(phrases)
    meaning = {"kind": "count", "total": None, "groups": meaning_groups}
    if len(groups) == len(by_shape) and rng.random() < 0.6:
        meaning["total"] = len(objects)
        words = _words(f"{NUMBER_WORDS[len(objects)]} {pick(rng, ('shapes', 'objects'))}") + [(":", None)] + words
    return words, meaning


def list_caption(scene: dict, rng: np.random.Generator, rich: bool = False,
                 option: tuple | None = None) -> Caption:
    """"there is a red star and a small blue circle", "a red star on the left and a blue circle at the top".

    ``option`` gives the objects and their places, ((object index, place or None), ...)."""
    objects = scene["objects"]
    if option is None:
        chosen = rng.permutation(len(objects))[: int(rng.integers(2, min(3, len(objects)) + 1))]
        option = tuple((int(k), None) for k in chosen)
    lead = _words(pick(rng, ("", "there is", "this image shows")))
    phrases, descs = [], []
    for k, place in option:
        words, desc = _phrase(objects, [k], rng, rich)
        if place:
            words, desc = words + _words(place), {**desc, "place": place}
        phrases.append(words)
        descs.append(desc)
    return lead + _join(phrases), {"kind": "list", "objects": descs}


def extreme_caption(scene: dict, rng: np.random.Generator, rich: bool = False) -> Caption | None:
    """"the leftmost object is a small red star", when one object clearly leads along an axis."""
    table = SceneTable([scene])
    leaders = [(name, int(table.leader(name)[0])) for name in EXTREMES]
    options = [(name, k) for name, k in leaders if k >= 0]
    if not options:
        return None
    name, k = options[int(rng.integers(len(options)))]
    phrase, desc = _phrase(scene["objects"], [k], rng, rich)
    words = _words(f"the {name} {pick(rng, ('shape', 'object'))} is") + phrase
    return words, {"kind": "extreme", "extreme": name, "object": desc}


CAPTION_TEMPLATES = (single_caption, relation_caption, count_caption, list_caption, extreme_caption)


def text_of(words: Words) -> str:
    """Join words with spaces, none before punctuation, first letter capitalised, final full stop."""
    text = ""
    for word, _ in words + [(".", None)]:
        text += word if (not text or word in ",.:") else " " + word
    return text[0].upper() + text[1:]


def draw_captions(scene: dict, rng: np.random.Generator, count: int, rich: bool = False,
                  avoid: set[str] = frozenset()) -> list[Caption]:
    """``count`` distinct captions (texts not in ``avoid``), each template used once before any twice.

    A caption that ``truth`` finds false of its own scene is drawn again: the templates aim to say
    only what is true, and this makes sure of it."""
    captions, texts, order = [], set(avoid), []
    for _ in range(40 * count):
        order = order or list(rng.permutation(len(CAPTION_TEMPLATES)))
        caption = CAPTION_TEMPLATES[order.pop()](scene, rng, rich)
        if caption is not None and text_of(caption[0]) not in texts and is_true(caption[1], scene):
            captions.append(caption)
            texts.add(text_of(caption[0]))
            if len(captions) == count:
                break
    return captions


def grounding(words: Words, regions: list[dict]) -> list[list]:
    """[token position, [regions of the named objects' own boxes and parts]] per attribute word.

    Token positions are those of ``tokenize(text_of(words))``: one token per word, then the full stop.
    """
    return [[position, [r for r, region in enumerate(regions)
                        if region["kind"] in ("object", "part") and region["objects"][0] in objects]]
            for position, (_, objects) in enumerate(words) if objects is not None]
