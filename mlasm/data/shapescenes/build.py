"""Building ShapeScenes: generate every split, choose captions that can be found, write the cache.

Generation runs family by family, each from its own random stream, on two processes. Captions are
then chosen per split: each image keeps the five captions its templates wrote, except that where
fewer than ``MIN_UNIQUE_CAPTIONS`` of them are true of that image alone within its split, the most
generic ones give way to rich candidates (colours bound to shapes) that are. Every caption is then
checked against every scene of its split (``truth``), which gives the complete positive sets.
The dataset is cached in the precomp-plus-extras format; pictures are re-rendered on demand
from ``{split}_scenes.json``.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from itertools import chain, combinations, product
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from mlasm.data.dataset import RetrievalSplit
from mlasm.data.errors import DataError, load_json
from mlasm.data.positives import PositiveSets
from mlasm.data.precomp import list_splits, read_meta, read_split, write_json_compact, write_split
from mlasm.data.shapescenes.captions import (draw_captions, grounding, list_caption, places_of, relation_caption,
                                             relation_options, single_caption, text_of)
from mlasm.data.shapescenes.descriptors import FEATURE_DIM, describe_boxes
from mlasm.data.shapescenes.render import pixel_hash, render_scene
from mlasm.data.shapescenes.scenes import (CAPTIONS_PER_IMAGE, FAMILY_SIZE, IMAGE_SIZE, MAX_REGIONS, NUMBER_WORDS,
                                           family_scenes, scene_regions)
from mlasm.data.shapescenes.truth import SceneTable, truth
from mlasm.io import write_json
from mlasm.paths import cache_dir

VERSION = 2
SPLITS = ("train", "dev", "test")
DEFAULT_SIZES = {"train": 4000, "dev": 500, "test": 1000}
MIN_UNIQUE_CAPTIONS = 2   # captions per image that are true of that image alone within its split
RICH_CANDIDATES = 80      # most rich captions drawn per image when its own are too generic
PARALLEL_CHOICE_IMAGES = 400  # a split this large has its captions chosen on several processes
_PACKAGE = Path(__file__).parent
# beside the package: they write the cached files, or (vocab.py, the tokenizer) say what its grounding's
# token positions count
_WRITERS = ("positives.py", "precomp.py", "vocab.py")

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
    """One generated image: its scene, caption candidates and features (captions are chosen per split)."""

    scene: dict
    captions: list          # CAPTIONS_PER_IMAGE (words, meaning) pairs, as the templates wrote them
    regions: np.ndarray     # (K, FEATURE_DIM), K <= MAX_REGIONS
    global_feature: np.ndarray


def _generate_family(seed: int, split: str, family: int) -> list[_Generated]:
    """Everything about one family, from its own random stream: families can be built in any
    order and on any process."""
    rng = np.random.default_rng([seed, SPLITS.index(split), family])
    generated = []
    for member, scene in enumerate(family_scenes(rng, family)):
        scene = {"id": f"{split}-{family * FAMILY_SIZE + member:05d}", **scene}
        scene["regions"] = scene_regions(scene["objects"], rng)
        captions = draw_captions(scene, rng, CAPTIONS_PER_IMAGE)
        if len(captions) < CAPTIONS_PER_IMAGE:
            raise RuntimeError(f"could not write {CAPTIONS_PER_IMAGE} distinct captions for {scene['id']}")
        image = render_scene(scene)
        scene["pixel_hash"] = pixel_hash(image)
        boxes = np.array([r["box"] for r in scene["regions"]] + [[0, 0, IMAGE_SIZE, IMAGE_SIZE]], np.float32)
        features = describe_boxes(image, boxes)
        generated.append(_Generated(scene, captions, features[:-1], features[-1]))
    return generated


def _workers() -> int:
    """Processes for generating pictures and choosing captions: one per core, at most two."""
    return min(2, os.cpu_count() or 1)


def _generate_all(seed: int, sizes: dict[str, int], progress: bool) -> dict[str, list[_Generated]]:
    """Every split, family by family, on two processes when there is enough work to pay for them."""
    jobs = [(split, family) for split in SPLITS for family in range(-(-sizes[split] // FAMILY_SIZE))]
    workers = _workers()
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


def _rich_candidates(scene: dict, rng: np.random.Generator, avoid: set[str]):
    """Rich captions of a scene, one at a time, new texts only. First, in random order, every
    relation it holds, every object at every place it is at, and every two or three objects each at a place
    (places and relations tell family members apart); then up to RICH_CANDIDATES drawn freely."""
    objects = scene["objects"]
    options = [(relation_caption, option) for option in relation_options(scene)]
    options += [(single_caption, (k, place)) for k, obj in enumerate(objects) for place in places_of(obj)]
    options += [(list_caption, tuple((k, place) for k, place in zip(ks, chosen)))
                for size in (2, 3) for ks in combinations(range(len(objects)), size)
                for chosen in product(*(places_of(objects[k]) for k in ks))]
    captions = (template(scene, rng, rich=True, option=option) for template, option in
                (options[k] for k in rng.permutation(len(options))))
    free = (caption for _ in range(RICH_CANDIDATES) for caption in draw_captions(scene, rng, 1, rich=True))
    for caption in chain(captions, free):
        if text_of(caption[0]) not in avoid:
            avoid.add(text_of(caption[0]))
            yield caption


def _choose_for(scenes: list[dict], captions: list[list], seed: int, split: str, first: int) -> list[tuple]:
    """``choose_captions`` for the images ``first``, ``first + 1``, ... whose captions are given: each
    image's captions with their positive sets. An image's choice reads only its own captions, its own
    random stream and the split's scenes, so any share of the images can be chosen apart."""
    table = SceneTable(scenes)
    chosen = []
    for i, captions in enumerate(captions, start=first):
        captions = list(captions)
        sets = [np.flatnonzero(truth(meaning, table)) for _, meaning in captions]
        if not all(i in s for s in sets):
            raise RuntimeError(f"{scenes[i]['id']}: a caption is false of its own scene")
        unique = sum(len(s) == 1 for s in sets)
        if unique < MIN_UNIQUE_CAPTIONS:
            rng = np.random.default_rng([seed, SPLITS.index(split), i, 1])
            candidates = _rich_candidates(scenes[i], rng, {text_of(words) for words, _ in captions})
        while unique < MIN_UNIQUE_CAPTIONS:
            found = next(((c, s) for c in candidates
                          for s in [np.flatnonzero(truth(c[1], table))] if s.tolist() == [i]), None)
            if found is None:
                break
            generic = max((k for k in range(len(captions)) if len(sets[k]) > 1), key=lambda k: (len(sets[k]), k))
            captions[generic], sets[generic] = found
            unique += 1
        chosen.append((captions, sets))
    return chosen


def choose_captions(images: list[_Generated], seed: int, split: str,
                    workers: int = 1) -> tuple[list[list], PositiveSets]:
    """Each image's final captions, and the complete positive sets of the split.

    An image whose captions are true of it alone fewer than MIN_UNIQUE_CAPTIONS times swaps its most
    generic ones (largest positive sets, later ones first on ties) for rich captions that are true
    of it alone, drawn from the image's own random stream. Images are never dropped; the few where
    no candidate is unique keep what they have (``positive_set_report`` counts them). With
    ``workers`` > 1 a large split is chosen in pieces on that many processes: the same result.
    """
    scenes, own = [image.scene for image in images], [image.captions for image in images]
    if workers < 2 or len(images) < PARALLEL_CHOICE_IMAGES:
        results = _choose_for(scenes, own, seed, split, 0)
    else:  # pieces of unequal work (rich candidates are searched for some images only): several per process
        bounds = np.linspace(0, len(images), 4 * workers + 1).astype(int).tolist()
        firsts, stops = bounds[:-1], bounds[1:]
        with ProcessPoolExecutor(workers) as pool:
            pieces = pool.map(_choose_for, [scenes] * len(firsts), [own[a:b] for a, b in zip(firsts, stops)],
                              [seed] * len(firsts), [split] * len(firsts), firsts)
            results = [item for piece in pieces for item in piece]
    return [captions for captions, _ in results], \
        PositiveSets.from_lists([s for _, sets in results for s in sets], len(images))


def _split_data(name: str, images: list[_Generated], seed: int,
                workers: int = 1) -> tuple[RetrievalSplit, list[dict]]:
    """The split and its captions' meanings."""
    n = len(images)
    regions = np.zeros((n, MAX_REGIONS, FEATURE_DIM), np.float32)
    boxes = np.zeros((n, MAX_REGIONS, 4), np.float32)
    mask = np.zeros((n, MAX_REGIONS), bool)
    for i, image in enumerate(images):
        k = len(image.regions)
        regions[i, :k], mask[i, :k] = image.regions, True
        boxes[i, :k] = [r["box"] for r in image.scene["regions"]]
    chosen, positives = choose_captions(images, seed, name, workers)
    captions = [(words, meaning, image.scene) for image, own in zip(images, chosen) for words, meaning in own]
    split = RetrievalSplit(
        name=name, regions=regions, region_mask=mask, global_features=np.stack([g.global_feature for g in images]),
        captions=[text_of(words) for words, _, _ in captions],
        caption_to_image=np.arange(len(captions)) // CAPTIONS_PER_IMAGE, boxes=boxes,
        image_sizes=np.full((n, 2), IMAGE_SIZE, np.int32), image_ids=[g.scene["id"] for g in images],
        grounding=[grounding(words, scene["regions"]) for words, _, scene in captions],
        image_attributes=[_attributes(g.scene) for g in images], positives=positives)
    return split, [meaning for _, meaning, _ in captions]


def positive_set_report(split: RetrievalSplit) -> dict:
    """How many images each caption is true of (complete positives), and how findable the images are."""
    sizes = split.positives.sizes()
    unique = np.bincount(split.caption_to_image[sizes == 1], minlength=split.n_images)
    return {"captions": int(sizes.size), "true_of_one_image": int((sizes == 1).sum()),
            "mean_images_per_caption": round(float(sizes.mean()), 2),
            "median_images_per_caption": float(np.median(sizes)),
            "percentiles_images_per_caption": {str(p): float(np.percentile(sizes, p)) for p in (90, 99)},
            "max_images_per_caption": int(sizes.max()),
            "images_with_fewer_than_2_unique_captions": int((unique < MIN_UNIQUE_CAPTIONS).sum()),
            "histogram": {label: int(((sizes >= lo) & (sizes <= hi)).sum()) for label, lo, hi in
                          (("1", 1, 1), ("2-4", 2, 4), ("5-20", 5, 20), ("21-100", 21, 100),
                           (">100", 101, np.inf))}}


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
    """What a cache must match to be reused; ``generator`` changes with any edit of the generator's
    own files (this package, and the modules that write its files), so that a cache built by code
    under development is never mistaken for a current one."""
    digest = hashlib.sha256()
    for path in [*sorted(_PACKAGE.glob("*.py")), *(_PACKAGE.parent / name for name in _WRITERS)]:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    generator = digest.hexdigest()[:12]
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
                    for suffix in ("caps.txt", "scenes.json", "grounding.json", "attributes.json", "positives.txt",
                                   "meanings.json")))


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
    os.chmod(building, _umask_mode())  # mkdtemp makes it drwx------; the cache is the user's, as mkdir would make it
    try:
        reports = {}
        for name, images in _generate_all(seed, sizes, progress).items():
            split, meanings = _split_data(name, images, seed, _workers())
            write_split(building, name, split)
            write_json_compact(building / f"{name}_scenes.json", [image.scene for image in images])
            write_json_compact(building / f"{name}_meanings.json", meanings)
            reports[name] = positive_set_report(split)
        meta = {"captions_per_image": CAPTIONS_PER_IMAGE, "positive_sets": reports,
                "producer": {**_producer(seed, sizes), "image_size": IMAGE_SIZE, "max_regions": MAX_REGIONS,
                             "feature_dim": FEATURE_DIM, "descriptor": describe_boxes.__doc__.split("\n")[0],
                             "generation_seconds": round(time.perf_counter() - started, 1)}}
        write_json(building / "meta.json", {**read_meta(building), **meta})
        _install(building, folder, seed, sizes)
    except OSError as error:  # a full disk: name the cache the user knows, not the hidden folder being built
        raise OSError(error.errno, f"{error.strerror or error} while building the ShapeScenes cache (nothing was "
                                   f"installed; its space was freed)", str(folder)) from None
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return folder


def _umask_mode() -> int:
    """What ``mkdir`` gives a folder under the present umask (os.umask reads it only by setting it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o777 & ~mask


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


def load_meanings(split: str, seed: int = 0, sizes: dict | None = None,
                  cache: str | os.PathLike | None = None) -> list[dict]:
    """The meaning of every caption of a split (``truth`` reads them), in caption order."""
    folder = build_shapescenes(seed, sizes, cache, progress=False)
    return load_json(folder / f"{split}_meanings.json", "caption meanings")
