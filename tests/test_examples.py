"""The example photos of notebook 07: scikit-image's bundled images, copied into the cache."""
from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from mlasm.extract.captions import read_caption_csv
from mlasm.extract.examples import CAPTIONS_FILE, EXAMPLE_PHOTOS, example_photos, package_data_dir

skimage_data = pytest.importorskip("skimage.data", reason="scikit-image (the [extract] extra) is not installed")


@pytest.fixture(scope="module")
def examples(tmp_path_factory):
    return example_photos(tmp_path_factory.mktemp("examples"))


def test_every_caption_names_an_example_photo_and_every_photo_has_three_to_five(examples):
    folder, captions = examples
    assert captions == CAPTIONS_FILE
    pictures = read_caption_csv(captions)
    assert [picture.file_name for picture in pictures] == list(EXAMPLE_PHOTOS)
    for picture in pictures:
        assert (folder / picture.file_name).is_file()
        assert 3 <= len(picture.captions) <= 5, picture.file_name
        assert len(set(picture.captions)) == len(picture.captions), picture.file_name
    assert sorted(path.name for path in folder.iterdir()) == sorted(EXAMPLE_PHOTOS)


def test_the_photos_are_the_packages_files_and_its_images_pixel_for_pixel(examples):
    folder, _ = examples
    for name, loader in EXAMPLE_PHOTOS.items():
        assert (folder / name).read_bytes() == (package_data_dir() / name).read_bytes(), name
        expected = getattr(skimage_data, loader)()  # what skimage.data itself returns
        with Image.open(folder / name) as image:
            pixels = np.asarray(image)
        if name == "horse.png":  # horse() is the picture as grey, thresholded to a bool mask
            assert pixels.shape == expected.shape + (4,) and expected.dtype == bool
            assert np.array_equal(pixels[..., :3].mean(axis=2) > 127, expected)
        else:
            assert pixels.dtype == expected.dtype == np.uint8, name
            assert np.array_equal(pixels, expected), name


def test_a_second_call_keeps_the_files_and_a_damaged_copy_is_replaced(examples):
    folder, _ = examples
    kept = folder / "chelsea.png"
    damaged = folder / "rocket.jpg"
    before = kept.stat().st_mtime_ns
    damaged.write_bytes(b"not a picture")
    assert example_photos(folder) == examples
    assert kept.stat().st_mtime_ns == before
    assert damaged.read_bytes() == (package_data_dir() / "rocket.jpg").read_bytes()
    assert not [path for path in folder.iterdir() if path.name.endswith(".tmp")]


def test_the_default_folder_is_in_the_cache_named_after_the_version(tmp_path, monkeypatch):
    import importlib.metadata

    monkeypatch.setenv("MLASM_CACHE_DIR", str(tmp_path))
    folder, _ = example_photos()
    version = importlib.metadata.version("scikit-image")
    assert folder == tmp_path / "examples" / f"scikit-image-{version}"
    assert sorted(os.listdir(folder)) == sorted(EXAMPLE_PHOTOS)


def test_missing_captions_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.csv"):
        example_photos(tmp_path / "photos", captions=tmp_path / "nowhere.csv")
    assert not (tmp_path / "photos").exists()
