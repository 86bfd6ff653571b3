"""ShapeScenes: layout, determinism, faithful re-rendering, grounding, features that see, hard for bags of words."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest

from mlasm.data import DataError, bag_of_words_scores, build_shapescenes, load_shapescenes, render_scene, tokenize
from mlasm.data import shapescenes as ss
from mlasm.data.positives import PositiveSets
from mlasm.data.shapescenes.baseline import _SINGULAR as SINGULAR
from mlasm.data.shapescenes.truth import SceneTable, is_true, truth

SMALL = {"train": 80, "dev": 8, "test": 24}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("shapescenes-cache")


@pytest.fixture(scope="module")
def splits(cache):
    return {split: load_shapescenes(split, sizes=SMALL, cache=cache, progress=False) for split in ss.SPLITS}


def test_layout_of_every_split(splits):
    for name, split in splits.items():
        n = SMALL[name]
        assert (split.n_images, split.n_captions) == (n, 5 * n)
        assert split.regions.shape == (n, ss.MAX_REGIONS, ss.FEATURE_DIM)
        assert split.global_features.shape == (n, ss.FEATURE_DIM)
        assert split.caption_to_image.tolist() == [k // 5 for k in range(5 * n)]
        assert split.boxes.shape == (n, ss.MAX_REGIONS, 4) and split.image_sizes.tolist() == [[128, 128]] * n
        for i, scene in enumerate(split.renderer.scenes):
            k = len(scene["regions"])
            assert 2 <= len(scene["objects"]) <= 5 and len(scene["objects"]) + 2 <= k <= ss.MAX_REGIONS
            assert split.region_mask[i].tolist() == [True] * k + [False] * (ss.MAX_REGIONS - k)
            assert not split.regions[i, k:].any()
            assert split.image_attributes[i]["n_objects"] == len(scene["objects"])
            assert len(set(split.captions[5 * i: 5 * i + 5])) == 5
        assert split.image_ids[0] == f"{name}-00000"
    assert {a["variant"] for a in splits["train"].image_attributes} == {"base", *ss.VARIANTS}


def test_rerendering_gives_the_pixels_the_features_came_from(splits):
    split = splits["test"]
    for i, scene in enumerate(split.renderer.scenes):
        image = split.get_image(i)
        assert image.size == (128, 128) and image.mode == "RGB"
        assert ss.pixel_hash(image) == scene["pixel_hash"]
    features = ss.describe_boxes(render_scene(split.renderer.scenes[3]), split.boxes[3][split.region_mask[3]])
    np.testing.assert_array_equal(features, split.regions[3][split.region_mask[3]])
    assert ss.pixel_hash(split.subset([3]).get_image(0)) == split.renderer.scenes[3]["pixel_hash"]


def test_grounding_points_attribute_words_at_their_objects_boxes(splits):
    split = splits["train"]
    attribute_words = set(ss.COLOURS) | set(ss.SIZES) | set(ss.SHAPES) | {ss.PLURALS[s] for s in ss.SHAPES}
    grounded = 0
    for c, entries in enumerate(split.grounding):
        scene = split.renderer.scenes[split.caption_to_image[c]]
        tokens = tokenize(split.captions[c])
        for position, regions in entries:
            assert tokens[position] in attribute_words
            objects = {o for r in regions for o in scene["regions"][r]["objects"]}
            kinds = {scene["regions"][r]["kind"] for r in regions}
            assert "object" in kinds and kinds <= {"object", "part"}
            word = SINGULAR.get(tokens[position], tokens[position])
            assert all(word in scene["objects"][o].values() for o in objects), (split.captions[c], word)
            grounded += 1
    assert grounded > 3 * split.n_captions


def test_features_tell_colours_and_shapes_apart(splits):
    """1-nearest neighbour (cosine) of object-region features recovers colour and shape far above chance."""
    split = splits["train"]
    features, colours, shapes = [], [], []
    for i, scene in enumerate(split.renderer.scenes):
        for r, region in enumerate(scene["regions"]):
            if region["kind"] == "object":
                obj = scene["objects"][region["objects"][0]]
                features.append(split.regions[i, r])
                colours.append(obj["colour"])
                shapes.append(obj["shape"])
    x = np.array(features) / np.linalg.norm(features, axis=1, keepdims=True)
    similarity = x @ x.T
    np.fill_diagonal(similarity, -np.inf)
    nearest = similarity.argmax(axis=1)
    colour_accuracy = np.mean(np.array(colours)[nearest] == colours)
    shape_accuracy = np.mean(np.array(shapes)[nearest] == shapes)
    assert len(features) > 200
    assert colour_accuracy > 0.8, colour_accuracy  # chance 1/8
    assert shape_accuracy > 0.5, shape_accuracy   # chance 1/6


def test_family_members_share_their_bag_of_words(splits):
    """What makes the dataset hard: a family's images hold the same words, so the oracle ties on them."""
    split = splits["test"]
    families = [a["family"] for a in split.image_attributes]
    for i in range(0, split.n_images, ss.FAMILY_SIZE):
        assert len({tuple(split.image_attributes[j]["description_words"]) for j in range(i, i + 4)}) == 1
        assert families[i: i + 4] == [families[i]] * 4
    scores = bag_of_words_scores(split)
    assert scores.shape == (split.n_images, split.n_captions)
    consistency = np.floor(scores + 1e-9)  # 1 where every description word of the caption is in the image
    for c, image in enumerate(split.caption_to_image):
        family = np.flatnonzero(np.array(families) == families[image])
        assert consistency[family, c].tolist() == [1.0] * ss.FAMILY_SIZE


def test_generation_is_deterministic(splits, tmp_path):
    again = load_shapescenes("test", sizes=SMALL, cache=tmp_path, progress=False)
    test = splits["test"]
    np.testing.assert_array_equal(again.regions, test.regions)
    assert again.captions == test.captions and again.grounding == test.grounding
    assert again.positives == test.positives
    other_seed = load_shapescenes("test", seed=1, sizes=SMALL, cache=tmp_path, progress=False)
    assert other_seed.captions != test.captions


def test_captions_chosen_on_several_processes_are_those_one_process_chooses(monkeypatch):
    from mlasm.data.shapescenes import build

    images = build._generate_all(0, SMALL, progress=False)["train"]
    alone, alone_positives = build.choose_captions(images, 0, "train", workers=1)
    assert any(chosen != list(image.captions) for chosen, image in zip(alone, images))  # rich captions were drawn
    monkeypatch.setattr(build, "PARALLEL_CHOICE_IMAGES", 2)
    together, together_positives = build.choose_captions(images, 0, "train", workers=2)
    assert together == alone and together_positives == alone_positives


def test_cache_is_reused_rebuilt_when_stale_and_keyed_by_settings(cache, splits):
    folder = ss.shapescenes_folder(sizes=SMALL, cache=cache)
    assert folder.name == "shapescenes-v2-seed0-train80-dev8-test24"
    assert ss.shapescenes_folder(sizes={"test": 100}, cache=cache) != folder
    stamp = (folder / "test_ims.npy").stat().st_mtime_ns
    assert build_shapescenes(sizes=SMALL, cache=cache, progress=False) == folder
    assert (folder / "test_ims.npy").stat().st_mtime_ns == stamp
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["producer"]["sizes"] == SMALL and meta["producer"]["generation_seconds"] >= 0
    meta["producer"]["version"] = 0
    (folder / "meta.json").write_text(json.dumps(meta))
    build_shapescenes(sizes=SMALL, cache=cache, progress=False)
    assert json.loads((folder / "meta.json").read_text())["producer"]["version"] == ss.VERSION
    assert sorted(p.name for p in cache.iterdir()) == [folder.name]  # no temporary or stale folder left
    reloaded = load_shapescenes("dev", sizes=SMALL, cache=cache, progress=False)
    np.testing.assert_array_equal(reloaded.regions, splits["dev"].regions)


def test_bad_arguments():
    with pytest.raises(DataError, match=r"no split 'val'; available: \['train', 'dev', 'test'\]"):
        load_shapescenes("val")
    with pytest.raises(DataError, match=r"unknown split \['val'\]"):
        ss.shapescenes_folder(sizes={"val": 3})
    with pytest.raises(DataError, match="positive numbers of images"):
        ss.shapescenes_folder(sizes={"test": 0})


@pytest.mark.slow
def test_full_size_builds(tmp_path):
    started = time.perf_counter()
    folder = build_shapescenes(cache=tmp_path, progress=False)
    seconds = time.perf_counter() - started
    test = load_shapescenes("test", cache=tmp_path, progress=False)
    assert (test.n_images, test.n_captions) == (1000, 5000)
    train = load_shapescenes("train", cache=tmp_path, progress=False)
    assert (train.n_images, train.n_captions) == (4000, 20000)
    assert folder.name == "shapescenes-v2-seed0-train4000-dev500-test1000"
    print(f"full ShapeScenes build: {seconds:.0f} s")
    report = ss.positive_set_report(test)
    # measured: 1,911 captions true of one image, 58 images with fewer than 2 such captions
    assert report["true_of_one_image"] >= 1800 and report["images_with_fewer_than_2_unique_captions"] <= 80


def test_a_first_build_says_what_it_makes_and_about_how_long_before_it_starts(tmp_path, capsys):
    from mlasm.sources import announce_generation, generation_notice

    sizes = {"train": 8, "dev": 4, "test": 4}
    assert announce_generation(sizes, cache=tmp_path)
    line = capsys.readouterr().out.strip()
    assert line.startswith("ShapeScenes is not in the cache yet: generating 16 pictures") and "train 8, dev 4" in line
    assert str(tmp_path) in line and "about 1 s" in line and "\n" not in line
    build_shapescenes(sizes=sizes, cache=tmp_path, progress=False)
    assert not announce_generation(sizes, cache=tmp_path) and capsys.readouterr().out == ""
    # the full dataset on two processes: 5,500 x 0.009 s / 2
    full = generation_notice({"train": 4000, "dev": 500, "test": 1000}, tmp_path)
    assert "5,500 pictures" in full and ("about 25 s" in full or "about 50 s" in full)  # two CPUs or one
