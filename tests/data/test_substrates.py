import numpy as np
import pytest
import torch

from ccc_ray.data.substrates import (
    SubstratePicture,
    SubstrateSet,
    builtin_substrates,
    colour_shift,
    colour_swap,
    distinct_colours,
    load_substrate_folder,
)
from ccc_ray.errors import CccError


def write_png(path, array):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_builtin_substrates_ship_offline_as_rgb_in_range():
    pictures = builtin_substrates()
    names = [p.name for p in pictures]
    assert {"china.jpg", "flower.jpg", "garment.png"} <= set(names)
    for picture in pictures:
        assert picture.pixels.dtype == torch.float32 and picture.pixels.shape[0] == 3
        assert 0 <= picture.pixels.min() and picture.pixels.max() <= 1


@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 16, 12)])
def test_a_set_meets_the_data_contract_and_repeats_for_a_seed(shape):
    pictures = builtin_substrates()
    first = SubstrateSet(pictures, shape, 12, seed=3)
    images, ids = first.batch(range(12))
    assert images.shape == (12, *shape) and images.dtype == torch.float32
    assert 0 <= images.min() and images.max() <= 1
    assert ids[0].startswith("substrate:") and ids[5].endswith("#5")
    again, again_ids = SubstrateSet(pictures, shape, 12, seed=3).batch(range(12))
    assert torch.equal(images, again) and ids == again_ids
    # Item i depends on (seed, i) only: a shard read alone gives the same image.
    assert torch.equal(SubstrateSet(pictures, shape, 12, seed=3)[7][0], images[7])
    other, _ = SubstrateSet(pictures, shape, 12, seed=4).batch(range(12))
    assert not torch.equal(images, other)


def test_colour_swap_permutes_axes_and_flip_mirrors():
    image = torch.rand(3, 4, 5)
    assert torch.equal(colour_swap(image, [2, 0, 1]), torch.stack([image[2], image[0], image[1]]))
    picture = SubstratePicture("ramp", torch.linspace(0, 1, 16).repeat(3, 16, 1))
    plain = SubstrateSet([picture], (3, 16, 16), 40, 0, min_crop=1.0, colour_swap=False, colour_shift=False, flip=False)
    flipped = SubstrateSet([picture], (3, 16, 16), 40, 0, min_crop=1.0, colour_swap=False, colour_shift=False, flip=True)
    pairs = [(plain[i][0], flipped[i][0]) for i in range(40)]
    assert any(torch.equal(b, a.flip(-1)) and not torch.equal(a, b) for a, b in pairs)
    assert all(torch.equal(a, b) or torch.equal(b, a.flip(-1)) for a, b in pairs)


def test_colour_shift_only_where_no_colour_is_lost():
    # Two colours that differ only in red: setting red to full would merge them, so nothing changes.
    merging = torch.zeros(3, 2, 2)
    merging[0, 0] = 0.2
    assert torch.equal(colour_shift(merging, axis=0), merging)
    # Setting green to full keeps the two colours apart: applied.
    shifted = colour_shift(merging, axis=1)
    assert torch.all(shifted[1] == 1) and distinct_colours(shifted) == distinct_colours(merging) == 2


def test_a_folder_of_images_of_any_size(tmp_path):
    write_png(tmp_path / "a.png", np.full((20, 30, 3), 200, dtype=np.uint8))
    write_png(tmp_path / "nested" / "b.png", np.full((40, 10), 50, dtype=np.uint8))
    (tmp_path / "notes.txt").write_text("not an image")
    pictures = load_substrate_folder(str(tmp_path))
    assert [p.name for p in pictures] == ["a.png", "nested/b.png"]
    assert pictures[1].pixels.shape == (3, 40, 10)
    images, ids = SubstrateSet(pictures, (1, 8, 8), 4, 0).batch(range(4))
    assert images.shape == (4, 1, 8, 8) and all(i.split(":")[1].split("#")[0] in ("a.png", "nested/b.png") for i in ids)


def test_bad_folders_are_one_line_errors(tmp_path):
    with pytest.raises(CccError, match="does not exist"):
        load_substrate_folder(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.md").write_text("no pictures here")
    with pytest.raises(CccError, match="holds no images"):
        load_substrate_folder(str(tmp_path / "empty"))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "photo.jpg").write_bytes(b"this is not a jpeg")
    with pytest.raises(CccError, match="photo.jpg.*not a readable image") as error:
        load_substrate_folder(str(tmp_path / "broken"))
    assert "\n" not in str(error.value)
