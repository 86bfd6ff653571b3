"""Attention drawn on a picture never changes what colour a thing appears to be (mlasm.plots.draw_attention).

A ShapeScenes picture is drawn with one object's region attended; the drawn pixels are read back
at the picture's own grid and every object's hue (HSV) is compared with the original's.
"""
import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.colors import rgb_to_hsv  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from PIL import Image, ImageDraw, ImageFilter  # noqa: E402

from cli_support import tiny_splits  # noqa: E402
from mlasm.data.shapescenes.scenes import outline  # noqa: E402
from mlasm.plots import draw_attention, faded_picture  # noqa: E402

SCALE = 4  # the figure draws each picture pixel as SCALE x SCALE screen pixels


@pytest.fixture(scope="module")
def split(tiny_cache):
    return tiny_splits(tiny_cache, ("test",))["test"]


def drawn_pixels(picture: Image.Image, boxes, weights, **options) -> np.ndarray:
    """The picture as draw_attention draws it, read back at the picture's own pixel grid: (H, W, 3) uint8."""
    width, height = picture.size
    fig = Figure(figsize=(width * SCALE / 100, height * SCALE / 100), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_axes([0, 0, 1, 1])
    draw_attention(picture, boxes, weights, ax=ax, top_k=3, **options)
    fig.canvas.draw()
    screen = np.asarray(fig.canvas.buffer_rgba())[..., :3]
    return screen[SCALE // 2::SCALE, SCALE // 2::SCALE]


def object_mask(obj: dict, size: int, inset: int = 3) -> np.ndarray:
    """The object's pixels, ``inset`` pixels in from its edge (its antialiased rim and dark outline left out)."""
    mask = Image.new("L", (size, size), 0)
    ImageDraw.Draw(mask).polygon([tuple(p) for p in outline(obj).tolist()], fill=255)
    return np.asarray(mask.filter(ImageFilter.MinFilter(2 * inset + 1))) > 0


def hue_change(before: np.ndarray, after: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per coloured pixel of the mask, the change of HSV hue as a fraction of the colour circle (0 to 0.5)."""
    a, b = rgb_to_hsv(before[mask] / 255.0), rgb_to_hsv(after[mask] / 255.0)
    coloured = a[:, 1] > 0.25  # grey has no hue
    change = np.abs(a[coloured, 0] - b[coloured, 0])
    return np.minimum(change, 1 - change)


def test_attended_and_unattended_objects_keep_their_hue(split):
    checked = 0
    for image in range(8):
        scene = split.renderer.scenes[image]
        picture = split.get_image(image)
        original = np.asarray(picture)
        objects = [(k, region) for k, region in enumerate(scene["regions"]) if region["kind"] == "object"]
        attended, region = objects[0]
        boxes = np.array([r["box"] for r in scene["regions"]], np.float32)
        weights = np.full(len(boxes), 0.3 / (len(boxes) - 1), np.float32)
        weights[attended] = 0.7
        drawn = drawn_pixels(picture, boxes, weights, labels=[f"r{k}" for k in range(len(boxes))])
        for k, other in objects:
            obj = scene["objects"][other["objects"][0]]
            mask = object_mask(obj, original.shape[0])
            if k != attended:  # an unattended object may lie under the attended box; keep only what lies outside
                x1, y1, x2, y2 = (int(v) for v in region["box"])
                mask[max(0, y1 - 3):y2 + 4, max(0, x1 - 3):x2 + 4] = False
            change = hue_change(original, drawn, mask)
            if change.size < 10:
                continue
            checked += 1
            assert np.median(change) < 0.005 and np.percentile(change, 95) < 0.02, (image, k, obj["colour"])
            # how far toward white the object was washed: attended hardly (other boxes overlapping it
            # elsewhere may hold the peak of the summed attention), unattended well (FADE = 0.6)
            paler = np.median((drawn[mask].astype(float) - original[mask]) / np.maximum(1, 255.0 - original[mask]))
            assert paler < 0.1 if k == attended else paler > 0.4, (image, k, paler)
    assert checked >= 10


def test_fading_keeps_every_hue_and_is_even():
    rng = np.random.default_rng(0)
    colours = rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    heat = np.zeros((64, 64), np.float32)
    faded = faded_picture(colours, heat, fade=0.6)
    # evenly: every channel moves 60 % of the way to white
    np.testing.assert_allclose(faded, np.round(colours + (255.0 - colours) * 0.6), atol=0.51)
    change = hue_change(colours, faded, np.ones((64, 64), bool))
    assert np.percentile(change, 99) < 0.02
    np.testing.assert_array_equal(faded_picture(colours, np.ones((64, 64)), 0.6), colours)


def test_the_marks_have_a_legend_and_nothing_is_filled(split):
    fig = Figure(figsize=(4, 4.6), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    boxes = np.array([r["box"] for r in split.renderer.scenes[0]["regions"]], np.float32)
    draw_attention(split.get_image(0), boxes, np.linspace(1, 0, len(boxes)), ax=ax, top_k=4)
    texts = [text.get_text() for text in ax.get_legend().get_texts()]
    assert any("outline" in text for text in texts) and any("paler" in text for text in texts)
    assert len(ax.patches) == 4 and not any(patch.get_fill() for patch in ax.patches)
    assert len(ax.images) == 1  # the picture alone: no heat layer over it


def test_recall_legend_sits_under_the_bars_and_a_huge_first_loss_gets_a_log_scale():
    import matplotlib.pyplot as plt

    from mlasm.plots import draw_level_recalls, draw_training_log

    levels = {level: {"rsum": 500.0, "i2t": {"r1": 96.0, "r5": 99.0, "r10": 100.0},
                      "t2i": {"r1": 90.0, "r5": 98.0, "r10": 100.0}} for level in ("t2i", "i2t", "local", "global", "final")}
    fig = draw_level_recalls({"levels": levels})
    renderer = fig.canvas.get_renderer()
    legend = fig.axes[0].get_legend().get_window_extent(renderer)
    assert not any(legend.overlaps(bar.get_window_extent(renderer)) for bar in fig.axes[0].patches)
    plt.close(fig)
    rows = [{"epoch": e, "loss": loss, "val_rsum": 100.0 + e} for e, loss in enumerate([5104.0, 60.0, 40.0])]
    fig = draw_training_log(rows)
    assert fig.axes[0].get_yscale() == "log"
    plt.close(fig)
    fig = draw_training_log([{**row, "loss": 60.0 - row["epoch"]} for row in rows])
    assert fig.axes[0].get_yscale() == "linear"
    plt.close(fig)


def _label_boxes(fig):
    renderer = fig.canvas.get_renderer()
    return [t.get_window_extent(renderer) for t in fig.axes[0].texts]


def test_labels_of_regions_that_share_a_corner_do_not_cover_each_other():
    import matplotlib.pyplot as plt

    picture = np.full((120, 160, 3), 200, dtype=np.uint8)
    # four labels in one place, above their boxes; and at the picture's top, where labels go below
    for shared in ([[40, 50, 100, 110]] * 3 + [[40, 52, 90, 100]], [[40, 2, 100, 60]] * 4):
        fig = draw_attention(picture, np.array(shared, dtype=np.float32), np.array([0.4, 0.3, 0.2, 0.1]),
                             labels=list("abcd"), top_k=4)
        boxes = _label_boxes(fig)
        inside = fig.axes[0].get_window_extent(fig.canvas.get_renderer())
        assert len(boxes) == 4
        assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
        assert all(inside.y0 <= box.y0 and box.y1 <= inside.y1 for box in boxes)
        plt.close(fig)

    # far apart, every label stays where it was put: just outside its own box's corner
    apart = np.array([[5, 30, 40, 60], [110, 80, 150, 115]], dtype=np.float32)
    fig = draw_attention(picture, apart, np.array([0.6, 0.4]), labels=["x", "y"], top_k=2)
    assert [tuple(t.get_position()) for t in fig.axes[0].texts] == [(5.0, 29.0), (110.0, 79.0)]
    plt.close(fig)

    # a box as tall as the picture: its label inside its top edge, not past the picture (where the legend is)
    fig = draw_attention(picture, np.array([[20, 0, 60, 120]], dtype=np.float32), np.array([1.0]), labels=["z"])
    (label,) = fig.axes[0].texts
    assert tuple(label.get_position()) == (20.0, 1.0) and label.get_va() == "top"
    plt.close(fig)


def test_box_labels_that_would_overlap_are_moved_or_hidden():
    from widgets.drawing import new_figure

    fig, (ax,) = new_figure((3, 3))
    boxes = np.array([[10, 10, 30, 30], [11, 11, 29, 29], [12, 10, 31, 28], [60, 60, 90, 90]], np.float32)
    weights = np.array([0.4, 0.3, 0.2, 0.1], np.float32)
    draw_attention(np.zeros((100, 100, 3), np.uint8), boxes, weights, ax=ax, top_k=4,
                   labels=["r0 dog", "r1 dog", "r2 cat", "r3 bench"])
    before = [(x, y - 1) for x, y, *_ in boxes]  # where draw_attention puts each label: above its box's corner
    renderer = fig.canvas.get_renderer()
    shown = [text for text in ax.texts if text.get_visible()]
    extents = [text.get_window_extent(renderer) for text in shown]
    assert not any(a.overlaps(b) for n, a in enumerate(extents) for b in extents[n + 1:])
    assert ax.texts[0].get_position() == before[0]  # the strongest box keeps its label in place
    assert ax.texts[3].get_visible() and ax.texts[3].get_position() == before[3]  # an uncrowded box too
    assert ax.texts[1].get_position() != before[1] or not ax.texts[1].get_visible()
