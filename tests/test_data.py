"""Datasets: digits offline, and cifar10 / imagefolder read from small generated files in their real formats."""

import importlib.util
import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from hwnas.config import DataConfig
from hwnas.data import load_splits, make_loader, search_splits, shard_loader
from hwnas.errors import HwnasError

needs_torchvision = pytest.mark.skipif(importlib.util.find_spec("torchvision") is None,
                                       reason="torchvision (extra `vision`) not installed")  # fmt: skip


def test_digits_is_deterministic_resized_and_normalised():
    a = load_splits(DataConfig(image_size=16))
    b = load_splits(DataConfig(image_size=16, seed=5))
    assert a.in_channels == 1 and a.num_classes == 10
    assert len(a.train) + len(a.test) == 1797 and len(a.test) == 1797 // 5
    x, _ = a.train[0]
    assert x.shape == (1, 16, 16)
    assert torch.equal(a.test.tensors[1], b.test.tensors[1])  # the test split ignores the run seed
    assert abs(a.train.tensors[0].mean().item()) < 1e-3


def test_search_split_by_train_portion():
    _, train, val = search_splits(DataConfig(dataset="fake", image_size=8, train_portion=0.25))
    assert len(train) == 16 and len(val) == 48
    assert not set(train.indices) & set(val.indices)


def test_loader_order_depends_only_on_seed_and_epoch():
    splits = load_splits(DataConfig(dataset="fake", image_size=8))
    first = [y.tolist() for _, y in make_loader(splits.train, 8, True, seed=1, epoch=3)]
    again = [y.tolist() for _, y in make_loader(splits.train, 8, True, seed=1, epoch=3)]
    other = [y.tolist() for _, y in make_loader(splits.train, 8, True, seed=1, epoch=4)]
    assert first == again and first != other


@pytest.mark.parametrize(
    "examples,batch,world,sizes",
    [(33, 16, 1, [16, 16]), (34, 16, 1, [16, 16, 2]), (66, 32, 2, [16, 16]), (3, 1, 1, [1, 1, 1])],
)
def test_a_last_batch_of_one_example_per_rank_is_dropped(examples, batch, world, sizes):
    """Training-mode BatchNorm fails on one example of a 1x1 map: a last shard batch of 1 is left out, on every rank
    alike; a batch of 1 by choice is kept."""
    data = TensorDataset(torch.arange(examples))
    for rank in range(world):
        loader = shard_loader(data, batch, seed=0, epoch=0, num_replicas=world, rank=rank)
        assert [len(x) for (x,) in loader] == sizes and len(loader) == len(sizes)


def _write_cifar10(root, n_train=20, n_test=10) -> dict[str, tuple[np.ndarray, list[int]]]:
    """CIFAR-10's python format: per batch file, rows of 3072 bytes (R, G, B planes of 32x32) and labels.
    Returns {"train": (data, labels), "test": ...} as written, the train batches in order."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    written = {"train": ([], []), "test": ([], [])}
    for name, n in [*[(f"data_batch_{i}", n_train // 5) for i in range(1, 6)], ("test_batch", n_test)]:
        batch = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "labels": rng.integers(0, 10, n).tolist()}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
        data, labels = written["test" if name == "test_batch" else "train"]
        data.append(batch["data"])
        labels.extend(batch["labels"])
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
    return {split: (np.concatenate(data), labels) for split, (data, labels) in written.items()}


@needs_torchvision
def test_cifar10_from_its_python_format(tmp_path):
    written = _write_cifar10(tmp_path)
    splits = load_splits(DataConfig(dataset="cifar10", data_dir=str(tmp_path), image_size=32))
    assert len(splits.train) == 20 and len(splits.test) == 10 and splits.num_classes == 10
    mean, std = torch.tensor([0.4914, 0.4822, 0.4465]), torch.tensor([0.2470, 0.2435, 0.2616])
    for split, dataset in (("train", splits.train), ("test", splits.test)):
        data, labels = written[split]
        for i in (0, 3, 9):  # 3 and 9: in the second and fifth train batch files
            x, y = dataset[i]
            pixels = torch.from_numpy(data[i].reshape(3, 32, 32)).float() / 255  # (C, H, W)
            assert y == labels[i]
            torch.testing.assert_close(x, (pixels - mean.view(3, 1, 1)) / std.view(3, 1, 1))
    resized = load_splits(DataConfig(dataset="cifar10", data_dir=str(tmp_path), image_size=16))
    assert resized.train[0][0].shape == (3, 16, 16)
    # --workers processes started by spawn (macOS, Windows) get the dataset pickled: no local class in it
    unpickled = pickle.loads(pickle.dumps(splits.train))
    torch.testing.assert_close(unpickled[3][0], splits.train[3][0])


@needs_torchvision
def test_imagefolder_from_png_files(tmp_path):
    from PIL import Image

    colours = {"cat": (255, 0, 0), "dog": (0, 255, 0), "eel": (0, 0, 255)}  # one solid colour per class
    for split in ("train", "val"):
        for cls, colour in colours.items():
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(3):
                pixels = np.broadcast_to(np.array(colour, dtype=np.uint8), (20, 24, 3)) // (i + 1)
                Image.fromarray(np.ascontiguousarray(pixels)).save(tmp_path / split / cls / f"{i}.png")
    splits = load_splits(DataConfig(dataset="imagefolder", data_dir=str(tmp_path), image_size=12))
    assert splits.num_classes == 3 and len(splits.train) == 9 and len(splits.test) == 9
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    for dataset in (splits.train, splits.test):
        for x, y in dataset:
            assert x.shape == (3, 12, 12)
            rgb = (x * std.view(3, 1, 1) + mean.view(3, 1, 1)).mean(dim=(1, 2))  # the image's colour, in [0, 1]
            assert int(rgb.argmax()) == y  # classes sorted by name: cat red, dog green, eel blue


@needs_torchvision
def test_bad_data_directories(tmp_path):
    with pytest.raises(HwnasError, match="no cifar-10-batches-py"):
        load_splits(DataConfig(dataset="cifar10", data_dir=str(tmp_path)))
    with pytest.raises(HwnasError, match="needs train/ and val/"):
        load_splits(DataConfig(dataset="imagefolder", data_dir=str(tmp_path)))
    (tmp_path / "cifar-10-batches-py").mkdir()
    with pytest.raises(HwnasError, match="cannot read CIFAR-10"):
        load_splits(DataConfig(dataset="cifar10", data_dir=str(tmp_path)))


@needs_torchvision
def test_16_and_32_bit_grayscale_images_are_scaled_to_8_bits(tmp_path):
    """A mid-grey in 16 bits (I;16, I;16B) and in mode I reads as the mid-grey of an 8-bit image, not white (PIL
    clips them at 255); float pixels, of no standard range, are refused."""
    from PIL import Image

    grey16, grey8 = np.full((6, 6), 128 * 257, np.uint16), np.full((6, 6), 128, np.uint8)
    images = {"i16": Image.fromarray(grey16), "i16b": Image.fromarray(grey16.astype(">u2")),
              "i32": Image.fromarray(grey16).convert("I"), "l": Image.fromarray(grey8)}  # fmt: skip
    for split in ("train", "val"):
        for cls, image in images.items():
            (tmp_path / split / cls).mkdir(parents=True)
            image.save(tmp_path / split / cls / ("x.tif" if cls in ("i16b", "i32") else "x.png"))
    splits = load_splits(DataConfig(dataset="imagefolder", data_dir=str(tmp_path), image_size=6))
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    for x, _y in splits.train:
        torch.testing.assert_close(x * std + mean, torch.full_like(x, 128 / 255))
    Image.fromarray(np.full((6, 6), 0.5, np.float32)).save(tmp_path / "train" / "l" / "f.tif")
    splits = load_splits(DataConfig(dataset="imagefolder", data_dir=str(tmp_path), image_size=6))
    with pytest.raises(HwnasError, match=r"f.tif has floating-point pixels \(mode F\)"):
        list(splits.train)


@needs_torchvision
def test_an_unreadable_image_is_named(tmp_path):
    from PIL import Image

    for split in ("train", "val"):
        for cls in ("a", "b"):
            (tmp_path / split / cls).mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(tmp_path / split / cls / "ok.png")
    (tmp_path / "train" / "b" / "bad.jpg").write_text("not an image")
    splits = load_splits(DataConfig(dataset="imagefolder", data_dir=str(tmp_path), image_size=8))
    with pytest.raises(HwnasError, match="cannot read image .*bad.jpg"):
        list(make_loader(splits.train, 2, False))
