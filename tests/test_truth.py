"""ShapeScenes' truth checker: the rules on hand-made scenes, and every generated caption against its own picture."""
from __future__ import annotations

import numpy as np
import pytest

from mlasm.data.shapescenes import load_meanings, load_shapescenes, positive_set_report, text_of
from mlasm.data.shapescenes.captions import CAPTION_TEMPLATES
from mlasm.data.shapescenes.truth import SceneTable, is_true, truth

SMALL = {"train": 40, "dev": 8, "test": 60}


def obj(shape, colour, cx, cy, size="small"):
    return {"shape": shape, "colour": colour, "size": size, "cx": float(cx), "cy": float(cy)}


def scene(*objects, texture="noisy"):
    return {"objects": list(objects), "background": {"texture": texture}}


def desc(shape=None, colour=None, size=None, place=None):
    d = {"shape": shape, "colour": colour, "size": size}
    return {**d, "place": place} if place else d


def single(d, place=None, texture=None):
    return {"kind": "single", "object": d, "place": place, "texture": texture}


def relation(subject, relation_name, target, count=1):
    return {"kind": "relation", "subject": subject, "count": count, "relation": relation_name, "object": target}


def test_single_objects_places_corners_and_textures():
    s = scene(obj("circle", "red", 20, 110), obj("square", "blue", 64, 64, "large"), texture="striped")
    assert is_true(single(desc("circle", "red")), s)
    assert is_true(single(desc(colour="red")), s)            # "a red shape"
    assert not is_true(single(desc("circle", "blue")), s)    # the circle is red, the blue one a square
    assert is_true(single(desc("square", size="large")), s)
    assert not is_true(single(desc("square", size="small")), s)
    assert is_true(single(desc("circle"), place="on the left"), s)
    assert is_true(single(desc("circle"), place="in the bottom left corner"), s)  # x 20 < 44, y 110 > 84
    assert not is_true(single(desc("circle"), place="in the top left corner"), s)
    assert not is_true(single(desc("square"), place="on the left"), s)            # 64 is the middle
    assert is_true(single(desc("square"), texture="striped"), s)
    assert not is_true(single(desc("square"), texture="checkered"), s)


def test_relations_use_a_margin_on_their_own_axis_and_count_exactly_from_two():
    star, circle = desc("star", "red"), desc("circle", "blue")
    far = scene(obj("star", "red", 20, 64), obj("circle", "blue", 80, 64))
    assert is_true(relation(star, "to the left of", circle), far)
    assert is_true(relation(circle, "to the right of", star), far)
    assert not is_true(relation(star, "to the right of", circle), far)
    assert not is_true(relation(star, "above", circle), far)
    near = scene(obj("star", "red", 60, 64), obj("circle", "blue", 70, 64))      # 10 px < 14 px margin
    assert not is_true(relation(star, "to the left of", circle), near)
    diagonal = scene(obj("star", "red", 20, 20), obj("circle", "blue", 50, 100))  # 30 px left, 80 px above
    assert is_true(relation(star, "to the left of", circle), diagonal)
    assert is_true(relation(star, "above", circle), diagonal)
    # a subject that fits the object's description too must be another object
    one_circle = scene(obj("circle", "blue", 20, 64), obj("square", "red", 100, 64))
    assert not is_true(relation(desc("circle"), "to the left of", desc("circle")), one_circle)
    squares, triangle = desc("square"), desc("triangle")
    two_above = scene(obj("square", "red", 20, 20), obj("square", "blue", 100, 20), obj("triangle", "red", 60, 100))
    assert is_true(relation(squares, "above", triangle, count=2), two_above)
    assert not is_true(relation(squares, "above", triangle, count=3), two_above)
    third_above = scene(*two_above["objects"], obj("square", "green", 60, 50))
    assert not is_true(relation(squares, "above", triangle, count=2), third_above)  # three squares are above it
    third_below = scene(*two_above["objects"][:2], obj("triangle", "red", 60, 60), obj("square", "green", 60, 110))
    assert is_true(relation(squares, "above", triangle, count=2), third_below)


def test_counts_are_exact_and_bind_colours():
    s = scene(obj("star", "red", 20, 20), obj("star", "red", 100, 20), obj("star", "blue", 60, 100),
              obj("circle", "green", 20, 100))
    count = {"kind": "count", "total": None, "groups": [{"object": desc("star", "red"), "count": 2}]}
    assert is_true(count, s)
    assert not is_true({**count, "groups": [{"object": desc("star"), "count": 2}]}, s)   # three stars
    assert is_true({**count, "groups": [{"object": desc("star"), "count": 3}]}, s)
    assert is_true({**count, "total": 4}, s)
    assert not is_true({**count, "total": 3}, s)
    assert is_true({**count, "groups": [{"object": desc("star"), "count": 3}, {"object": desc("circle"), "count": 1}]}, s)
    assert not is_true({**count, "groups": [{"object": desc("circle"), "count": 2}]}, s)


def test_lists_need_distinct_objects_with_their_own_attributes_and_places():
    s = scene(obj("circle", "red", 20, 64), obj("square", "blue", 100, 64))
    swapped = scene(obj("circle", "blue", 20, 64), obj("square", "red", 100, 64))
    listing = {"kind": "list", "objects": [desc("circle", "red"), desc("square", "blue")]}
    assert is_true(listing, s) and not is_true(listing, swapped)       # binding, not a bag of words
    twice = {"kind": "list", "objects": [desc("circle", "red"), desc("circle", "red")]}
    assert not is_true(twice, s)
    assert is_true(twice, scene(obj("circle", "red", 20, 64), obj("circle", "red", 100, 64)))
    placed = {"kind": "list", "objects": [desc("circle", place="on the left"), desc("square", place="on the right")]}
    assert is_true(placed, s)
    assert not is_true(placed, scene(obj("circle", "red", 100, 64), obj("square", "blue", 20, 64)))


def test_extremes_need_a_clear_leader():
    leftmost = {"kind": "extreme", "extreme": "leftmost", "object": desc("star")}
    assert is_true(leftmost, scene(obj("star", "red", 10, 64), obj("circle", "red", 40, 64)))
    assert not is_true(leftmost, scene(obj("star", "red", 30, 64), obj("circle", "red", 40, 64)))  # 10 < 12 px
    assert not is_true(leftmost, scene(obj("circle", "red", 10, 64), obj("star", "red", 40, 64)))
    lowest = {"kind": "extreme", "extreme": "lowest", "object": desc("circle", "red")}
    assert is_true(lowest, scene(obj("star", "red", 10, 20), obj("circle", "red", 40, 110)))


def test_unknown_kind_is_an_error():
    with pytest.raises(ValueError, match="unknown meaning kind 'colourful'"):
        is_true({"kind": "colourful"}, scene(obj("star", "red", 10, 20)))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    cache = tmp_path_factory.mktemp("truth-cache")
    return {split: (load_shapescenes(split, sizes=SMALL, cache=cache, progress=False),
                    load_meanings(split, sizes=SMALL, cache=cache)) for split in SMALL}


def test_every_caption_is_true_of_its_own_image_and_its_positives_are_exactly_the_true_ones(data):
    for name, (split, meanings) in data.items():
        scenes = split.renderer.scenes
        assert len(meanings) == split.n_captions
        for c, meaning in enumerate(meanings):
            assert is_true(meaning, scenes[split.caption_to_image[c]]), (name, split.captions[c], meaning)
        # the stored positive sets against a scene-by-scene check (a different path through truth)
        for c in range(0, split.n_captions, 7):
            expected = [i for i, s in enumerate(scenes) if is_true(meanings[c], s)]
            assert split.positives.images_of(c).tolist() == expected, split.captions[c]


def test_the_vectorised_check_equals_the_one_scene_check(data):
    split, meanings = data["test"]
    table = SceneTable(split.renderer.scenes)
    for meaning in meanings[::5]:
        expected = [is_true(meaning, s) for s in split.renderer.scenes]
        assert truth(meaning, table).tolist() == expected


def test_positive_sets_read_the_same_both_ways(data):
    split, _ = data["test"]
    positives = split.positives
    dense = positives.dense()
    for i in range(split.n_images):
        assert positives.captions_of(i).tolist() == np.flatnonzero(dense[i]).tolist()
        assert set(split.image_to_captions(i)) <= set(positives.captions_of(i).tolist())


def test_most_images_have_two_captions_true_of_them_alone(data):
    for name, (split, _) in data.items():
        report = positive_set_report(split)
        assert report["captions"] == split.n_captions
        assert sum(report["histogram"].values()) == split.n_captions
        assert report["images_with_fewer_than_2_unique_captions"] <= 0.15 * split.n_images, (name, report)
        assert report["true_of_one_image"] >= 2 * split.n_images * 0.85


def test_every_template_writes_true_captions_of_random_scenes(data):
    """Each template on its own, 3 draws per scene, rich and plain: the generator only says what truth allows."""
    split, _ = data["train"]
    rng = np.random.default_rng(0)
    for s in split.renderer.scenes:
        for template in CAPTION_TEMPLATES:
            for rich in (False, True):
                caption = template(s, rng, rich)
                if caption is not None:
                    assert is_true(caption[1], s), (text_of(caption[0]), caption[1])


def test_lists_agree_with_a_brute_force_search_for_distinct_objects(data):
    """Hall's condition in truth() against trying every assignment of objects to the descriptions."""
    from itertools import permutations

    split, _ = data["test"]
    rng = np.random.default_rng(1)
    vocabulary = {"shape": ["circle", "square", "star", None], "colour": ["red", "blue", "green", None],
                  "size": ["small", "large", None]}

    def fits(o, d):
        return all(d[k] is None or o[k] == d[k] for k in ("shape", "colour", "size"))

    checked = 0
    for _ in range(300):
        descs = [{k: values[rng.integers(len(values))] for k, values in vocabulary.items()}
                 for _ in range(int(rng.integers(1, 4)))]
        meaning = {"kind": "list", "objects": descs}
        got = truth(meaning, SceneTable(split.renderer.scenes))
        for i, s in enumerate(split.renderer.scenes):
            objects = s["objects"]
            expected = any(all(fits(objects[j], d) for j, d in zip(chosen, descs))
                           for chosen in permutations(range(len(objects)), len(descs)))
            assert got[i] == expected, (descs, i)
            checked += expected
    assert checked > 100  # the cases include true ones, not only false


def test_the_same_text_means_the_same_thing(data):
    """Two templates can write one text ("A circle." as a single object or as a count): one meaning, one set."""
    two_circles = scene(obj("circle", "red", 20, 64), obj("circle", "blue", 100, 64))
    count = {"kind": "count", "total": None, "groups": [{"object": desc("circle"), "count": 1}]}
    assert is_true(count, two_circles) and is_true(single(desc("circle")), two_circles)
    for split, _ in data.values():
        by_text = {}
        for c, caption in enumerate(split.captions):
            by_text.setdefault(caption, []).append(c)
        for cs in (cs for cs in by_text.values() if len(cs) > 1):
            sets = {tuple(split.positives.images_of(c).tolist()) for c in cs}
            assert len(sets) == 1, split.captions[cs[0]]


def test_a_sweep_of_generated_scenes_only_says_what_is_true():
    """Thousands of captions of fresh scenes (no rendering), every template, plain and rich."""
    from mlasm.data.shapescenes.captions import draw_captions
    from mlasm.data.shapescenes.scenes import family_scenes

    rng = np.random.default_rng(7)
    said, false = 0, []
    for family in range(150):
        for s in family_scenes(rng, family):
            for template in CAPTION_TEMPLATES:
                for rich in (False, True):
                    caption = template(s, rng, rich)
                    if caption is not None:
                        said += 1
                        if not is_true(caption[1], s):
                            false.append(text_of(caption[0]))
            assert len(draw_captions(s, rng, 5)) == 5
    assert said > 0.8 * 150 * 4 * 5 * 2 and false == []
