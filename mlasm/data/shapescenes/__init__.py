"""ShapeScenes: a generated image-text retrieval dataset that plays Flickr30K on a laptop, and knows its truth.

Each 128 x 128 picture holds 2 to 5 coloured shapes on a textured background and has five
captions (attributes, counts, spatial relations). Scenes come in families of four: a base scene
and variants with colours, shapes or sizes swapped between two objects, two objects' places
swapped, or the layout mirrored. Members of a family contain the same words, so a bag of words
cannot tell them apart (``bag_of_words_scores``); a model has to bind attributes to objects and
read relations.

Every caption carries its meaning, and ``truth`` decides it against any scene, so each split knows
its complete positive sets (every picture a caption is true of, ``split.positives``); at least
two captions of nearly every image are true of it alone.

Region features imitate a detector's output: a jittered box per object plus distractor boxes
(object parts, pairs of objects, background patches), each described only from the pixels inside
the box. Modules: ``scenes`` (objects, families, regions), ``captions`` (templates and meanings),
``truth`` (the rules), ``render`` (pictures), ``descriptors`` (region features), ``build``
(generation, caption choice, cache), ``baseline`` (the bag-of-words oracle). data/README.md
documents the design and measured figures.
"""
from mlasm.data.shapescenes.baseline import bag_of_words_scores
from mlasm.data.shapescenes.build import (DEFAULT_SIZES, MIN_UNIQUE_CAPTIONS, SPLITS, VERSION, SceneRenderer,
                                          build_shapescenes, load_meanings, load_shapescenes,
                                          positive_set_report, shapescenes_folder)
from mlasm.data.shapescenes.captions import CAPTION_TEMPLATES, text_of
from mlasm.data.shapescenes.descriptors import FEATURE_DIM, PATCH, describe_boxes
from mlasm.data.shapescenes.render import pixel_hash, render_scene
from mlasm.data.shapescenes.scenes import (CAPTIONS_PER_IMAGE, COLOURS, FAMILY_SIZE, IMAGE_SIZE, MAX_REGIONS,
                                           NUMBER_WORDS, PLURALS, SHAPES, SIZES, TEXTURES, VARIANTS)
from mlasm.data.shapescenes.truth import SceneTable, is_true, truth

__all__ = [
    "CAPTIONS_PER_IMAGE", "CAPTION_TEMPLATES", "COLOURS", "DEFAULT_SIZES", "FAMILY_SIZE", "FEATURE_DIM",
    "IMAGE_SIZE", "MAX_REGIONS", "MIN_UNIQUE_CAPTIONS", "NUMBER_WORDS", "PATCH", "PLURALS", "SHAPES", "SIZES",
    "SPLITS", "SceneRenderer", "SceneTable", "TEXTURES", "VARIANTS", "VERSION", "bag_of_words_scores",
    "build_shapescenes", "describe_boxes", "is_true", "load_meanings", "load_shapescenes", "pixel_hash",
    "positive_set_report", "render_scene", "shapescenes_folder", "text_of", "truth",
]
