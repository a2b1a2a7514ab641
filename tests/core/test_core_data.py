"""ccc_ray/data/: the data contract for every source, the seeded split, and the errors for bad sources."""

import numpy as np
import pytest
import torch
from PIL import Image

from ccc_ray.data import DataConfig, load_dataset, seeded_split
from ccc_ray.data.digits import load_digits_arrays
from ccc_ray.data.image_folder import load_image_folder
from ccc_ray.data.parquet_images import load_parquet_images
from ccc_ray.errors import CccError
from ccc_ray.store import CounterfeitWriter, counterfeit_batch

torch.set_num_threads(1)


def assert_contract(images, labels, num_classes):
    assert images.dtype == torch.float32 and images.ndim == 4
    assert float(images.min()) >= 0 and float(images.max()) <= 1
    assert labels.dtype == torch.int64 and labels.shape == (len(images),)
    assert int(labels.min()) >= 0 and int(labels.max()) < num_classes


# ---------------------------------------------------------------- digits and the split

def test_digits_meet_the_contract():
    dataset = load_dataset(DataConfig())
    assert dataset.name == "digits"
    assert dataset.class_names == [str(i) for i in range(10)]
    assert dataset.image_shape == (1, 8, 8)
    assert len(dataset.train_images) + len(dataset.test_images) == 1797
    for images, labels in ((dataset.train_images, dataset.train_labels), (dataset.test_images, dataset.test_labels)):
        assert_contract(images, labels, 10)
    # The raw values are 0..16: the brightest pixel must map to exactly 1.
    assert float(dataset.train_images.max()) == 1.0


def test_seeded_split_is_stratified_disjoint_and_reproducible():
    _, labels, _ = load_digits_arrays()
    index = torch.arange(len(labels))
    train, train_labels, test, test_labels = seeded_split(index, labels, 0.2, seed=3)
    assert set(train.tolist()).isdisjoint(test.tolist())
    assert sorted(train.tolist() + test.tolist()) == index.tolist()
    assert torch.equal(labels[train], train_labels) and torch.equal(labels[test], test_labels)
    for k in range(10):
        assert int((test_labels == k).sum()) == round(int((labels == k).sum()) * 0.2)

    again = seeded_split(index, labels, 0.2, seed=3)
    assert torch.equal(again[0], train) and torch.equal(again[2], test)
    other = seeded_split(index, labels, 0.2, seed=4)
    assert not torch.equal(other[2], test)


def test_same_config_gives_the_same_tensors():
    first, second = load_dataset(DataConfig(split_seed=5)), load_dataset(DataConfig(split_seed=5))
    assert torch.equal(first.train_images, second.train_images)
    assert torch.equal(first.test_labels, second.test_labels)
    assert not torch.equal(first.test_images, load_dataset(DataConfig(split_seed=6)).test_images)


def test_unknown_data_set_name_is_an_error():
    with pytest.raises(CccError, match="data.name: unknown data set 'imagenet'"):
        load_dataset(DataConfig(name="imagenet"))


# ---------------------------------------------------------------- torchvision sets from raw idx files

def write_idx(path, array):
    """The uncompressed MNIST idx format: big-endian magic (0, 0, type 0x08 = uint8, ndim), then dims."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.tobytes())


def fake_mnist(root, folder, rng, n_train=20, n_test=10, height=6, width=5):
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    splits = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, height, width), dtype=np.uint8)
        images[0, 0, 0], images[0, 0, 1] = 0, 255
        labels = (np.arange(n) % 10).astype(np.uint8)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
        splits[prefix] = (images, labels)
    return splits


@pytest.mark.parametrize("name, folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_torchvision_set_loads_from_raw_idx_files(tmp_path, name, folder):
    splits = fake_mnist(tmp_path, folder, np.random.default_rng(0))
    dataset = load_dataset(DataConfig(name=name, root=str(tmp_path)))
    assert dataset.image_shape == (1, 6, 5)
    assert len(dataset.class_names) == 10
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images, labels = getattr(dataset, f"{split}_images"), getattr(dataset, f"{split}_labels")
        assert_contract(images, labels, 10)
        raw_images, raw_labels = splits[prefix]
        assert torch.equal(images, torch.from_numpy(raw_images).float().div(255).unsqueeze(1))
        assert labels.tolist() == raw_labels.tolist()


def test_missing_torchvision_set_is_an_error_without_download(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    def no_download(*_args, **_kwargs):
        raise AssertionError("nothing may be downloaded unless data.download is true")

    monkeypatch.setattr(tvd.MNIST, "download", no_download)
    monkeypatch.setattr(tvd.utils, "download_url", no_download)
    root = tmp_path / "nowhere"
    with pytest.raises(CccError, match="--data.root") as info:
        load_dataset(DataConfig(name="mnist", root=str(root)))
    assert "mnist was not found" in str(info.value) and "--data.download true" in str(info.value)
    assert not root.exists()


def test_torchvision_set_without_root_is_an_error():
    with pytest.raises(CccError, match="data.root: data set 'mnist' needs a local root"):
        load_dataset(DataConfig(name="mnist"))


# ---------------------------------------------------------------- ImageFolder

def write_png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_image_folder_loads_exact_pixels_with_sorted_classes(tmp_path):
    rng = np.random.default_rng(1)
    arrays = {}
    for cls, count in (("zebra", 2), ("ant", 3)):
        for i in range(count):
            arrays[(cls, i)] = rng.integers(0, 256, size=(5, 6, 3), dtype=np.uint8)
            write_png(tmp_path / cls / f"img{i}.png", arrays[(cls, i)])
    (tmp_path / "ant" / "notes.txt").write_text("not an image")

    images, labels, names = load_image_folder(str(tmp_path), None, None)
    assert names == ["ant", "zebra"]
    assert labels.tolist() == [0, 0, 0, 1, 1]
    assert_contract(images, labels, 2)
    assert images.shape == (5, 3, 5, 6)
    expected = [arrays[("ant", i)] for i in range(3)] + [arrays[("zebra", i)] for i in range(2)]
    assert torch.equal(images, torch.from_numpy(np.stack(expected)).permute(0, 3, 1, 2).float().div(255))


def test_image_folder_channels_and_resize(tmp_path):
    grey = np.full((6, 6), 200, dtype=np.uint8)
    for cls in ("a", "b"):
        for i in range(5):
            write_png(tmp_path / cls / f"{i}.png", grey)
    images, _, _ = load_image_folder(str(tmp_path), None, None)
    assert images.shape == (10, 1, 6, 6)
    dataset = load_dataset(DataConfig(name="image_folder", root=str(tmp_path), image_size=4, channels=3))
    assert dataset.image_shape == (3, 4, 4)
    assert dataset.class_names == ["a", "b"]
    assert len(dataset.train_images) == 8 and len(dataset.test_images) == 2
    assert torch.allclose(dataset.train_images, torch.full_like(dataset.train_images, 200 / 255))


def test_image_folder_errors(tmp_path):
    with pytest.raises(CccError, match="does not exist"):
        load_image_folder(str(tmp_path / "missing"), None, None)
    with pytest.raises(CccError, match="no class sub-folders"):
        load_image_folder(str(tmp_path), None, None)
    write_png(tmp_path / "a" / "0.png", np.zeros((4, 4), np.uint8))
    write_png(tmp_path / "a" / "1.png", np.zeros((5, 5), np.uint8))
    with pytest.raises(CccError, match="--data.image_size"):
        load_image_folder(str(tmp_path), None, None)
    (tmp_path / "a" / "2.png").write_bytes(b"not a png")
    with pytest.raises(CccError, match="2.png is not a readable image"):
        load_image_folder(str(tmp_path), 4, None)


# ---------------------------------------------------------------- the project's Parquet stores

def test_parquet_store_is_a_data_set(tmp_path):
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, size=(15, 4, 4, 1), dtype=np.uint8)
    targets = np.arange(15) % 3
    batch = counterfeit_batch(images, targets, targets, np.full(15, 0.99), np.zeros(15), np.arange(15),
                              run_id="r1", method="inversion", classifier_sha256="ab" * 32, seed=7)
    with CounterfeitWriter(tmp_path, "inversion", "r1", {}, ["cat", "dog", "emu"]) as writer:
        writer.write(batch)

    loaded, labels, names = load_parquet_images(str(tmp_path))
    assert names == ["cat", "dog", "emu"]
    assert labels.tolist() == targets.tolist()
    assert torch.equal(loaded, torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255))

    dataset = load_dataset(DataConfig(name="parquet", root=str(tmp_path)))
    assert dataset.class_names == ["cat", "dog", "emu"] and dataset.image_shape == (1, 4, 4)
    assert len(dataset.train_images) == 12 and len(dataset.test_images) == 3
    assert_contract(dataset.train_images, dataset.train_labels, 3)
