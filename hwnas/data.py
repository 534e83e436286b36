"""Datasets by name -> train/test splits, plus seeded loaders.

`digits` (scikit-learn's bundled 8x8 handwritten digits, resized) is the default because it ships inside a
package: the main job runs offline. `cifar10` and `imagefolder` read the usual on-disk formats through
torchvision (extra `vision`); `fake` is a tiny random set for tests.
"""

from __future__ import annotations

import itertools
import logging
import pickle
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    RandomSampler,
    Sampler,
    SequentialSampler,
    Subset,
    TensorDataset,
)
from torch.utils.data.distributed import DistributedSampler

from hwnas import distributed
from hwnas.config import DataConfig
from hwnas.errors import HwnasError
from hwnas.registry import Registry

log = logging.getLogger(__name__)
DATASETS: Registry[Callable[[DataConfig], Splits]] = Registry("dataset")
_TEST_SPLIT_SEED = 20190101  # fixed, so the test split is the same whatever the run's seed


@dataclass
class Splits:
    train: Dataset
    test: Dataset
    in_channels: int
    num_classes: int


# -- digits ------------------------------------------------------------------------------------------------------
@DATASETS.register("digits")
def digits(cfg: DataConfig) -> Splits:
    """1797 scikit-learn digits; a fixed 20% test split; normalised by the train split's statistics."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8)
    labels = torch.tensor(bunch.target, dtype=torch.long)
    if cfg.image_size != 8:
        images = F.interpolate(images, size=(cfg.image_size, cfg.image_size), mode="bilinear", align_corners=False)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(_TEST_SPLIT_SEED))
    n_test = len(labels) // 5
    test_idx, train_idx = order[:n_test], order[n_test:]
    mean, std = images[train_idx].mean(), images[train_idx].std()
    images = (images - mean) / std
    return Splits(
        TensorDataset(images[train_idx], labels[train_idx]), TensorDataset(images[test_idx], labels[test_idx]), 1, 10
    )


# -- fake --------------------------------------------------------------------------------------------------------
@DATASETS.register("fake")
def fake(cfg: DataConfig) -> Splits:
    """64 train and 32 test random images in 4 classes whose mean brightness depends on the class (learnable)."""
    gen = torch.Generator().manual_seed(cfg.seed)

    def make(n: int) -> TensorDataset:
        labels = torch.randint(0, 4, (n,), generator=gen)
        images = torch.randn(n, 3, cfg.image_size, cfg.image_size, generator=gen) + labels.view(-1, 1, 1, 1) * 0.5
        return TensorDataset(images, labels)

    return Splits(make(64), make(32), 3, 4)


# -- torchvision-backed ------------------------------------------------------------------------------------------
_TORCHVISION_SCHEMAS = None  # keeps the placeholder op library alive for the process


def import_torchvision():
    """Import torchvision, working around a build whose compiled ops do not match this torch.

    PyPI's torchvision 0.28 is a CUDA build; against the CPU torch its C++ ops fail to register and
    `import torchvision` raises "operator torchvision::nms does not exist". Datasets and transforms do not use
    those ops, so we define the two schemas its import checks (nms, qnms), say so, and import again. Detection
    ops stay unusable, which hwnas never calls.
    """
    global _TORCHVISION_SCHEMAS
    try:
        import torchvision
    except ModuleNotFoundError:
        raise HwnasError('this dataset needs torchvision: pip install "hwnas[vision]" -c constraints.txt') from None
    except RuntimeError as err:
        if "torchvision::" not in str(err) or _TORCHVISION_SCHEMAS is not None:
            raise
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        _TORCHVISION_SCHEMAS = torch.library.Library("torchvision", "FRAGMENT")
        for op in ("nms", "qnms"):
            _TORCHVISION_SCHEMAS.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        log.debug(
            "torchvision's compiled ops do not match torch %s (%s); using its datasets and transforms only",
            torch.__version__,
            err,
        )
        import torchvision
    return torchvision


def _transform(cfg: DataConfig, mean, std):
    transforms = import_torchvision().transforms
    return transforms.Compose(
        [transforms.Resize(cfg.image_size), transforms.CenterCrop(cfg.image_size), transforms.ToTensor(),
         transforms.Normalize(mean, std)]
    )  # fmt: skip


def _data_dir(cfg: DataConfig) -> Path:
    if cfg.data_dir is None:
        raise HwnasError(f"dataset {cfg.dataset!r} needs --data-dir")
    path = Path(cfg.data_dir)
    if not path.is_dir():
        raise HwnasError(f"data directory {path} {'is not a directory' if path.exists() else 'does not exist'}")
    return path


CIFAR10_BATCHES = {True: [f"data_batch_{i}" for i in range(1, 6)], False: ["test_batch"]}  # train: 5 files


class Cifar10Batches(Dataset):
    """One CIFAR-10 split read from its python batches as torchvision's CIFAR10 reads them (rows of 3072 bytes:
    the R, G, B planes of a 32x32 image; labels 0-9), as PIL images through `transform`. A module-level class, so
    that `--workers` processes started by spawn (macOS, Windows) can unpickle it."""

    def __init__(self, folder: Path, train: bool, transform: Callable):
        data, labels = [], []
        for name in CIFAR10_BATCHES[train]:
            with open(folder / name, "rb") as f:
                batch = pickle.load(f, encoding="latin1")
            data.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels.extend(int(label) for label in batch["labels"])
        self.images = np.concatenate(data).transpose(0, 2, 3, 1)  # (N, 32, 32, 3)
        self.labels, self.transform = labels, transform
        if len(self.images) != len(labels):
            raise ValueError(f"{len(self.images)} images but {len(labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), self.labels[i]


@DATASETS.register("cifar10")
def cifar10(cfg: DataConfig) -> Splits:
    """CIFAR-10 in its python format (`cifar-10-batches-py/` under --data-dir); never downloaded."""
    root = _data_dir(cfg)
    folder = root / "cifar-10-batches-py"
    if not folder.is_dir():
        raise HwnasError(f"{root} has no cifar-10-batches-py/ folder (the CIFAR-10 python version)")
    tf = _transform(cfg, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
    try:
        train, test = Cifar10Batches(folder, True, tf), Cifar10Batches(folder, False, tf)
    except (OSError, KeyError, ValueError, TypeError, EOFError, pickle.UnpicklingError) as err:
        raise HwnasError(f"cannot read CIFAR-10 from {root}: {type(err).__name__}: {err}") from None
    return Splits(train, test, 3, 10)


def _read_image(path: str):
    """An image file as RGB (torchvision's PIL loader), an unreadable one a user error naming it."""
    from PIL import Image

    try:
        with open(path, "rb") as f:
            return _eight_bits(Image.open(f), path).convert("RGB")
    except OSError as err:  # PIL's UnidentifiedImageError included
        raise HwnasError(f"cannot read image {path}: {err}") from None


def _eight_bits(image, path: str):
    """`image` with 8-bit pixels: PIL's convert("RGB") clips 16- and 32-bit grayscale at 255 (a 16-bit image turns
    white) rather than scaling it. 16-bit modes (I;16*) and 32-bit integers (mode I, in which PIL opens some 16-bit
    files) are scaled from the 16-bit range [0, 65535], an I image outside it refused; float pixels (mode F) have
    no standard range and are refused."""
    from PIL import Image

    if image.mode == "F":
        raise HwnasError(f"image {path} has floating-point pixels (mode F), whose range is unknown: save it with "
                         "8- or 16-bit pixels")  # fmt: skip
    if image.mode != "I" and not image.mode.startswith("I;16"):
        return image
    pixels = np.asarray(image, dtype=np.int64)
    if pixels.size and (pixels.min() < 0 or pixels.max() > 65535):
        raise HwnasError(f"image {path} has 32-bit pixels outside the 16-bit range [0, 65535] (mode {image.mode}): "
                         "save it with 8- or 16-bit pixels")  # fmt: skip
    return Image.fromarray(((pixels * 255 + 65535 // 2) // 65535).astype(np.uint8))  # rounded to the nearest


@DATASETS.register("imagefolder")
def imagefolder(cfg: DataConfig) -> Splits:
    """`--data-dir` with `train/<class>/*.png|jpg` and `val/<class>/...` (or `test/`), as ImageNet is laid out."""
    root = _data_dir(cfg)
    test_dir = next((root / d for d in ("val", "test") if (root / d).is_dir()), None)
    if not (root / "train").is_dir() or test_dir is None:
        raise HwnasError(f"{root} needs train/ and val/ (or test/) folders of class subfolders")
    datasets = import_torchvision().datasets
    tf = _transform(cfg, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    try:
        train = datasets.ImageFolder(str(root / "train"), transform=tf, loader=_read_image)
        test = datasets.ImageFolder(str(test_dir), transform=tf, loader=_read_image)
    except (FileNotFoundError, RuntimeError) as err:
        raise HwnasError(f"cannot read image folders under {root}: {err}") from None
    if train.classes != test.classes:
        raise HwnasError(f"{root}: train/ and {test_dir.name}/ have different classes")
    return Splits(train, test, 3, len(train.classes))


# -- splits and loaders ------------------------------------------------------------------------------------------
def check_data(cfg: DataConfig, batch_size: int | None = None, processes: int = 1, search: bool = False) -> None:
    """Every check of the data that can be made before anything is written: a known dataset, its directory's
    layout and files (by loading its splits, as the run will: an image folder's index of files, no image decoded;
    the arrays of digits and CIFAR-10), and, given the global `batch_size` over `processes`, that the splits
    trained on (a search's two portions when `search`) give each process a step."""
    splits = load_splits(cfg)
    if batch_size is not None:
        check_steps(trained_splits(cfg, len(splits.train), search), batch_size, processes)


def check_batch(batch_size: int, processes: int) -> None:
    """The global `batch_size` divides among `processes` into batches of at least 2: training-mode BatchNorm
    normalises a channel over the batch and the map, and the mobile space's last maps are 1x1 at small images."""
    distributed.check_batch_size(batch_size, processes)
    if batch_size // processes < 2:
        raise HwnasError(f"--batch-size {batch_size} gives each of {processes} process(es) a batch of 1: "
                         "training-mode BatchNorm needs at least 2 examples per process")  # fmt: skip


def check_steps(sizes: dict[str, int], batch_size: int, processes: int) -> None:
    """Each split of `sizes` (name -> examples) gives each process at least one training step of the global
    `batch_size` (`shard_loader` drops a last batch of one example, the whole of a split of one per process)."""
    check_batch(batch_size, processes)
    for name, n in sizes.items():
        if not len(_shard_batches(range(n), batch_size, 0, 0, processes, 0)):
            raise HwnasError(f"the {name} has {n} example(s), too few for one training step of {processes} "
                             "process(es): each needs at least 2 examples a step")  # fmt: skip


def load_splits(cfg: DataConfig) -> Splits:
    cfg.validate()
    return DATASETS.get(cfg.dataset)(cfg)


def _portion_cut(n: int, train_portion: float) -> int:
    """How many of the train split's `n` examples train a search's weights (the rest update α)."""
    cut = int(round(n * train_portion))
    if cut < 1 or cut >= n:
        raise HwnasError(f"train portion {train_portion} leaves an empty split of {n} examples")
    return cut


def trained_splits(cfg: DataConfig, n: int, search: bool) -> dict[str, int]:
    """What a run trains on out of a train split of `n`, by name -> examples (for `check_steps`): a search's two
    portions, or the whole split."""
    if not search:
        return {"train split": n}
    cut = _portion_cut(n, cfg.train_portion)
    portion = f"train split (--train-portion {cfg.train_portion:g})"
    return {f"weights' part of the {portion}": cut, f"α's part of the {portion}": n - cut}


def search_splits(cfg: DataConfig) -> tuple[Splits, Dataset, Dataset]:
    """The train split cut by `train_portion` into (weights, α) halves, seeded by the data seed."""
    splits = load_splits(cfg)
    n = len(splits.train)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed)).tolist()
    cut = _portion_cut(n, cfg.train_portion)
    return splits, Subset(splits.train, order[:cut]), Subset(splits.train, order[cut:])


def _order_seed(seed: int, epoch: int) -> int:
    """The seed of an epoch's example order: (seed, epoch) alone, so a resumed run sees the same batches."""
    return seed * 100_003 + epoch


def shard_loader(dataset: Dataset, batch_size: int, seed: int, epoch: int, num_replicas: int = 1, rank: int = 0,
                 pin_memory: bool = False, skip_batches: int = 0, workers: int = 0) -> DataLoader:  # fmt: skip
    """Rank `rank`'s share of each global batch of `batch_size` (divisible by `num_replicas`), in pinned memory
    when `pin_memory` (for asynchronous copies to a GPU), from batch `skip_batches` on (a run resumed mid-epoch),
    loaded by `workers` processes (0: this one; the batches are the same).

    The global order is a permutation seeded by (seed, epoch) alone, so the union of the ranks' shards of a step is
    the one-process step's batch, whatever the world size, and a resume with another world size sees the same
    batches. When `len(dataset)` is not divisible by `num_replicas`, DistributedSampler pads the last global batch
    with up to `num_replicas - 1` examples from the start of the permutation, so that every rank's shard has the
    same size (and each rank runs the same number of steps).

    A last batch that would give each rank a single example (of a larger shard) is dropped: training-mode
    BatchNorm cannot normalise one example on a 1x1 map (the mobile space's last stages at small images). It is
    dropped here, from the sizes alone, so every rank and a resumed run count the same steps. The loader is for
    training-mode steps (a search's α steps included); evaluation in eval mode keeps every example (`make_loader`).
    """
    batches = SkipBatches(_shard_batches(dataset, batch_size, seed, epoch, num_replicas, rank), skip_batches)
    return DataLoader(dataset, batch_sampler=batches, num_workers=workers, pin_memory=pin_memory)


def _shard_batches(dataset, batch_size: int, seed: int, epoch: int, num_replicas: int, rank: int) -> BatchSampler:
    """`shard_loader`'s batches of indices, a last one of one example dropped."""
    sampler = DistributedSampler(dataset, num_replicas, rank, shuffle=True, seed=_order_seed(seed, epoch))
    shard = batch_size // num_replicas
    return BatchSampler(sampler, shard, drop_last=shard > 1 and len(sampler) % shard == 1)


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, seed: int = 0, epoch: int = 0,
                pin_memory: bool = False, workers: int = 0) -> DataLoader:  # fmt: skip
    """A loader whose order depends only on (seed, epoch) (pinned and loaded by `workers` processes as in
    `shard_loader`): test splits, calibration samples."""
    generator = torch.Generator().manual_seed(_order_seed(seed, epoch)) if shuffle else None
    sampler = RandomSampler(dataset, generator=generator) if shuffle else SequentialSampler(dataset)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, generator=generator, num_workers=workers,
                      pin_memory=pin_memory)  # fmt: skip


class SkipBatches(Sampler[list[int]]):
    """`batches` without their first `skip`: a run resumed mid-epoch goes on with the batch it stopped before,
    and the skipped ones are never loaded. The DataLoader draws from its generator (or torch's) as without it."""

    def __init__(self, batches: BatchSampler, skip: int = 0):
        self.batches, self.skip = batches, skip

    def __iter__(self) -> Iterator[list[int]]:
        return itertools.islice(iter(self.batches), self.skip, None)

    def __len__(self) -> int:
        return max(0, len(self.batches) - self.skip)
