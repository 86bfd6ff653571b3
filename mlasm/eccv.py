"""ECCV Caption and CxC on the COCO 5K test, through the ``eccv-caption`` package (optional: ``pip install -e ".[eccv]"``).

ECCV Caption (Chun et al., ECCV 2022) re-annotated COCO's Karpathy 5K test with machine- and
human-verified positives: 1,332 caption queries (t2i) and 1,261 image queries (i2t), about 8 and
18 positives each, scored by mAP@R, R-Precision and R@1. CxC (Parekh et al., EACL 2021) adds
human-rated image-caption pairs; the package's CxC lists (COCO pairs included) cover 24,972
caption queries and all 5,000 image queries, scored by R@K. The package ships both, with the
original COCO pairs, as JSON maps between COCO ids (its data folder, ~2 MB), and computes the
metrics itself from ranked lists of ids, only from the queries its lists name.
Nothing is downloaded at run time (only its optional PMRP metric needs files from Google Drive;
it is not used here).

Ids and order. The package ships ``coco_test_ids.npy``: the 25,000 COCO caption annotation ids of
the Karpathy 5K test, in the order of VSE++'s id files, five consecutive captions per image,
images in Karpathy's test order (391895, 60623, 483108, ...), captions within an image as in
Karpathy's ``dataset_coco.json`` (its ``sentids`` are the COCO caption ids; the first image's
five match). VSE++ and SCAN's ``testall`` precomp split follow this order, so a (5000, 25000)
score matrix in it needs no ids; the image ids are each fifth caption's COCO image (the
package's own COCO pairs then equal ``PositiveSets.strict(np.repeat(np.arange(5000), 5))``). A matrix in another order passes its own
``image_ids`` (COCO image ids of the rows) and/or ``caption_ids`` (COCO caption ids of the
columns); they must be exactly the 5,000 / 25,000 ids of the 5K test.

Two quirks of the data, kept visible here rather than hidden:

- ECCV's two directions were annotated separately, so the captions an image query counts as
  positive are not the transpose of the images its caption queries count: ``eccv_positive_sets``
  returns both directions (``complete_positive_metrics(scores, p.t2i, i2t_positives=p.i2t)``).
- ECCV's i2t lists name 2 caption ids that are not among the package's 25,000 test captions
  (image 575916 -> caption 144675, image 421999 -> caption 467259). They can never be
  retrieved, yet the package counts them in R for those two image queries. ``PositiveSets``
  over the 5K indices cannot hold them (``CocoPositives.dropped`` counts them), so ECCV i2t
  mAP@R and R-Precision from ``complete_positive_metrics`` are higher than the package's by at
  most 100 * 2/1261 = 0.16 points; everything else agrees exactly (tests/test_eccv.py).

Ties: the package sees ranked lists, not scores. The lists built here break ties against the
query, as the rest of the project does (among equal scores, the negatives of that ground truth
come first), separately for each ground truth (COCO, CxC, ECCV).
"""
from __future__ import annotations

import contextlib
import functools
import io
import warnings
from dataclasses import dataclass

import numpy as np

from mlasm.data.errors import DataError
from mlasm.data.positives import PositiveSets
from mlasm.metrics import RECALL_KS, _as_numpy, check_finite

N_IMAGES = 5000
N_CAPTIONS = 25000
GROUND_TRUTHS = ("eccv", "cxc", "coco")
INSTALL_HINT = 'pip install -e ".[eccv]"  (or: pip install eccv-caption)'


class EccvCaptionMissing(DataError, ImportError):
    """The optional ``eccv-caption`` package is not installed."""


@functools.lru_cache(maxsize=1)
def _metrics_object():
    """The package's ``Metrics`` (reads its bundled JSON once, ~2 MB)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "failed to import `ujson`. use `json` instead."
            from eccv_caption import Metrics
    except ImportError as e:
        raise EccvCaptionMissing(f"ECCV Caption metrics need the eccv-caption package ({e}); "
                                 f"install it with: {INSTALL_HINT}") from None
    return Metrics()


def _ground_truth(which: str) -> dict:
    """The package's {'i2t': {image id: [caption ids]}, 't2i': {caption id: [image ids]}} for one ground truth."""
    if which not in GROUND_TRUTHS:
        raise ValueError(f"unknown ground truth {which!r}; expected one of {GROUND_TRUTHS}")
    metrics = _metrics_object()
    return {"eccv": metrics.eccv_gts, "cxc": metrics.cxc_gts, "coco": metrics.coco_gts}[which]


def coco_5k_test_ids() -> tuple[np.ndarray, np.ndarray]:
    """(image_ids (5000,), caption_ids (25000,)): COCO ids of the 5K test in SCAN's ``testall`` order, from the package."""
    metrics = _metrics_object()
    caption_ids = np.asarray(metrics.coco_ids, dtype=np.int64)
    coco_t2i = metrics.coco_gts["t2i"]
    image_ids = np.array([coco_t2i[int(c)][0] for c in caption_ids[::5]], dtype=np.int64)
    return image_ids, caption_ids


def _check_ids(given, expected: np.ndarray, what: str) -> np.ndarray:
    ids = np.asarray(given, dtype=np.int64).reshape(-1)
    if ids.size != expected.size:
        raise DataError(f"{what}: expected the {expected.size} ids of the COCO 5K test, got {ids.size}")
    if np.unique(ids).size != ids.size:
        raise DataError(f"{what}: ids repeat")
    unknown = np.setdiff1d(ids, expected)
    if unknown.size:
        raise DataError(f"{what}: {unknown.size} ids are not in the COCO 5K test, e.g. {int(unknown[0])}")
    return ids


def _resolve_ids(image_ids=None, caption_ids=None) -> tuple[np.ndarray, np.ndarray]:
    """Rows' COCO image ids and columns' COCO caption ids, checked; defaults from the package's order."""
    package_images, package_captions = coco_5k_test_ids()
    images = package_images if image_ids is None else _check_ids(image_ids, package_images, "image_ids")
    if caption_ids is not None:
        captions = _check_ids(caption_ids, package_captions, "caption_ids")
    elif image_ids is None:
        captions = package_captions
    else:  # the package's five captions of each image, images in the given order
        by_image = {int(i): package_captions[5 * k:5 * k + 5] for k, i in enumerate(package_images)}
        captions = np.concatenate([by_image[int(i)] for i in images])
    return images, captions


@dataclass(frozen=True)
class CocoPositives:
    """One ground truth over the 5K test's indices (rows = images, columns = captions of the score matrix)."""

    t2i: PositiveSets  # per caption, the images it is true of; empty for a caption that is not a query
    i2t: PositiveSets  # per image, the captions true of it (laid out as PositiveSets.transpose()); empty if not a query
    dropped: int       # listed positives outside the 5K test: never retrievable, still counted in R by the package


def eccv_positive_sets(which: str = "eccv", image_ids=None, caption_ids=None) -> CocoPositives:
    """The package's positives (``which``: 'eccv', 'cxc' or 'coco') as PositiveSets over our 5000 x 25000 indices.

    Only the package's queries get positives (ECCV: 1,332 captions, 1,261 images), so metrics
    over them average over exactly the package's queries.
    """
    gts = _ground_truth(which)
    images, captions = _resolve_ids(image_ids, caption_ids)
    image_index = {int(i): k for k, i in enumerate(images)}
    caption_index = {int(c): k for k, c in enumerate(captions)}
    dropped = 0

    def sets(queries: np.ndarray, table: dict, targets: dict) -> PositiveSets:
        nonlocal dropped
        query_of, target_of = [], []
        for q, query in enumerate(queries.tolist()):
            for target in table.get(query, ()):
                if target in targets:
                    query_of.append(q)
                    target_of.append(targets[target])
                else:
                    dropped += 1
        query_of, target_of = np.asarray(query_of, np.int64), np.asarray(target_of, np.int64)
        order = np.lexsort((target_of, query_of))  # CSR: by query, targets ascending
        indptr = np.zeros(queries.size + 1, np.int64)
        indptr[1:] = np.cumsum(np.bincount(query_of, minlength=queries.size))
        return PositiveSets(indptr, target_of[order], len(targets))

    t2i = sets(captions, gts["t2i"], image_index)
    i2t = sets(images, gts["i2t"], caption_index)
    return CocoPositives(t2i=t2i, i2t=i2t, dropped=dropped)


_BLOCK_ELEMENTS = 1 << 24


def _ranked_lists(query_block, n_queries: int, n_items: int, length: int,
                  positive_sets: list[PositiveSets]) -> list[np.ndarray]:
    """Per ground truth, (n_queries, length) item indices best first; ties put that ground truth's negatives first.

    The ``length`` best items of a row all score at least its ``length``-th largest score; those
    candidates (a few more where scores tie at that threshold) are sorted by (score descending,
    positive last, index), once per ground truth.
    """
    length = min(length, n_items)
    results = [np.empty((n_queries, length), np.int64) for _ in positive_sets]
    pair_keys = [np.repeat(np.arange(p.n_captions, dtype=np.int64), p.sizes()) * n_items + p.indices
                 for p in positive_sets]  # sorted: CSR rows in order, indices ascending
    block = max(1, _BLOCK_ELEMENTS // n_items)
    for q0 in range(0, n_queries, block):
        q1 = min(n_queries, q0 + block)
        scores = np.asarray(query_block(q0, q1))
        threshold = np.partition(scores, n_items - length, axis=1)[:, n_items - length]
        rows, cols = np.nonzero(scores >= threshold[:, None])
        values = scores[rows, cols]
        keys = (rows + q0) * n_items + cols
        for result, sorted_keys in zip(results, pair_keys):
            at = np.minimum(np.searchsorted(sorted_keys, keys), max(sorted_keys.size - 1, 0))
            positive = sorted_keys[at] == keys if sorted_keys.size else np.zeros(keys.size, bool)
            order = np.lexsort((cols, positive, -values, rows))
            row_sorted = rows[order]
            row_start = np.searchsorted(row_sorted, np.arange(q1 - q0))
            place = np.arange(row_sorted.size) - row_start[row_sorted]
            keep = place < length
            result[q0:q1] = cols[order][keep].reshape(q1 - q0, length)
    return results


def eccv_caption_metrics(scores, image_ids=None, caption_ids=None, *, verbose: bool = False) -> dict:
    """ECCV Caption, CxC and COCO 5K metrics of a (5000, 25000) score matrix, computed by the eccv-caption package.

    ``scores``: images x captions of the COCO 5K test (numpy or torch), higher = better, in SCAN's
    ``testall`` order unless ``image_ids`` / ``caption_ids`` (COCO ids of rows / columns) say
    otherwise. Returns, in percent (the package gives fractions):

    ``{"eccv": {"i2t": {"map_at_r", "r_precision", "r1"}, "t2i": {...}},
       "cxc": {"i2t": {"r1", "r5", "r10"}, "t2i": {...}},
       "coco_5k": {"i2t": {"r1", "r5", "r10"}, "t2i": {...}}}``

    ``coco_5k`` is the standard protocol again, computed by the package: it must equal
    ``retrieval_metrics``'s recalls, a check that the ids match the matrix.
    """
    metrics = _metrics_object()
    scores = _as_numpy(scores)
    if scores.shape != (N_IMAGES, N_CAPTIONS):
        raise DataError(f"ECCV Caption needs the COCO 5K test score matrix ({N_IMAGES}, {N_CAPTIONS}), "
                        f"got {tuple(scores.shape)}")
    if scores.dtype.kind not in "fi":
        scores = scores.astype(np.float64)
    check_finite(scores, "ECCV Caption")
    images, captions = _resolve_ids(image_ids, caption_ids)
    sets = {which: eccv_positive_sets(which, images, captions) for which in GROUND_TRUTHS}
    longest = {direction: max(len(v) for gts in (metrics.eccv_gts, metrics.cxc_gts, metrics.coco_gts)
                              for v in gts[direction].values()) for direction in ("i2t", "t2i")}
    i2t_lists = _ranked_lists(lambda a, b: scores[a:b], N_IMAGES, N_CAPTIONS, max(max(RECALL_KS), longest["i2t"]),
                              [sets[w].i2t for w in GROUND_TRUTHS])
    t2i_lists = _ranked_lists(lambda a, b: np.ascontiguousarray(scores[:, a:b].T), N_CAPTIONS, N_IMAGES,
                              max(max(RECALL_KS), longest["t2i"]), [sets[w].t2i for w in GROUND_TRUTHS])
    retrieved = {which: {"i2t": dict(zip(images.tolist(), captions[i2t].tolist())),
                         "t2i": dict(zip(captions.tolist(), images[t2i].tolist()))}
                 for which, i2t, t2i in zip(GROUND_TRUTHS, i2t_lists, t2i_lists)}
    previous, metrics.verbose = metrics.verbose, verbose
    # compute_eccv_metrics draws a tqdm bar whatever verbose says: silence it unless asked for
    quiet = contextlib.nullcontext() if verbose else contextlib.redirect_stderr(io.StringIO())
    try:
        with quiet:
            eccv = metrics.eccv_metrics(retrieved["eccv"], "all")
            cxc = {k: metrics.cxc_recalls(retrieved["cxc"], "all", K=k) for k in RECALL_KS}
            coco = {k: metrics.coco_5k_recalls(retrieved["coco"], "all", K=k) for k in RECALL_KS}
    finally:
        metrics.verbose = previous
    result = {"eccv": {}, "cxc": {}, "coco_5k": {}}
    for direction in ("i2t", "t2i"):
        result["eccv"][direction] = {
            "map_at_r": 100.0 * float(eccv["eccv_map_at_r"][direction]),
            "r_precision": 100.0 * float(eccv["eccv_rprecision"][direction]),
            "r1": 100.0 * float(eccv["eccv_r1"][direction]),
        }
        result["cxc"][direction] = {f"r{k}": 100.0 * float(cxc[k][direction]) for k in RECALL_KS}
        result["coco_5k"][direction] = {f"r{k}": 100.0 * float(coco[k][direction]) for k in RECALL_KS}
    return result
