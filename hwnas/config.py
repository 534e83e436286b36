"""Typed, frozen configs with a JSON round trip. CLI flags map one-to-one onto fields."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

from hwnas.errors import HwnasError

C = TypeVar("C", bound="JsonConfig")


class JsonConfig:
    """Mixin: to_json / from_json for a dataclass; unknown keys are an error, missing keys take defaults, and keys
    of fields an earlier hwnas had (`RETIRED`) are dropped, so the runs it wrote still resume."""

    RETIRED: typing.ClassVar[frozenset[str]] = frozenset()

    def to_json(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_json(cls: type[C], data: dict[str, Any]) -> C:
        if not isinstance(data, dict):
            raise HwnasError(f"{cls.__name__}: expected a JSON object, got {type(data).__name__}")
        data = {k: v for k, v in data.items() if k not in cls.RETIRED}
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise HwnasError(f"{cls.__name__}: unknown field(s) {', '.join(unknown)}")
        hints = typing.get_type_hints(cls)
        values = {}
        for name, value in data.items():
            if isinstance(value, list):
                value = tuple(value)
            elif isinstance(value, dict) and isinstance(hints[name], type) and issubclass(hints[name], JsonConfig):
                value = hints[name].from_json(value)  # a nested config (`data`)
            if not fits_json_type(value, hints[name]):
                shown = json.dumps(value) if not isinstance(value, JsonConfig) else repr(value)
                raise HwnasError(f"{cls.__name__}: field {name!r} must be {_type_name(hints[name])}, got {shown}")
            values[name] = value
        return cls(**values)

    def replace(self: C, **changes: Any) -> C:
        return dataclasses.replace(self, **changes)


def fits_json_type(value: Any, hint: Any) -> bool:
    """Whether a JSON value (lists already tuples) is of type `hint` (a config field's, a genotype's): an int is a
    float too, a bool is neither."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(fits_json_type(value, a) for a in args)
    if hint is type(None):
        return value is None
    if origin is tuple:
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(fits_json_type(v, args[0]) for v in value)
        return len(value) == len(args) and all(fits_json_type(v, a) for v, a in zip(value, args))
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(hint))
    if typing.get_origin(hint) is tuple:
        args = typing.get_args(hint)
        return f"a list of {args[0].__name__} values" if args[-1] is Ellipsis else f"a list of {len(args)} values"
    names = {type(None): "null", float: "a number", int: "an integer", str: "a string", bool: "true or false"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def check_all(checks: list[tuple[bool, str]]) -> None:
    """Raise the message of the first failed (ok, message) check."""
    for ok, message in checks:
        if not ok:
            raise HwnasError(message)


def positive(x: float) -> bool:
    return math.isfinite(x) and x > 0


def non_negative(x: float) -> bool:
    return math.isfinite(x) and x >= 0


SEED_LIMIT = 2**32  # NumPy's seeds are 32-bit
MAX_IMAGE_SIZE = 2048  # beyond this a typo, not an image: a batch of 100000x100000 images allocates terabytes
MAX_WIDTH_MULT = 4.0
FOLDER_DATASETS = ("cifar10", "imagefolder")  # the datasets read from --data-dir


def seed_check(seed: int) -> tuple[bool, str]:
    return 0 <= seed < SEED_LIMIT, f"seed must lie in [0, 2**32), got {seed}"


def width_mult_check(width_mult: float) -> tuple[bool, str]:
    return (positive(width_mult) and width_mult <= MAX_WIDTH_MULT,
            f"width multiplier must lie in (0, {MAX_WIDTH_MULT:g}], got {width_mult}")  # fmt: skip


# the flags/fields that shape a network of each space (its genotype gives the rest; a mobile network's width
# lives in its genotype, which the width flag rewrites)
SHAPE_FIELDS = {"darts": ("init_channels", "layers", "stem"), "mobile": ("width_mult",)}
ALL_SHAPE_FIELDS = tuple(sorted({f for fields in SHAPE_FIELDS.values() for f in fields}))


def darts_shape_checks(init_channels: int, layers: int, stem: str) -> list[tuple[bool, str]]:
    """A DARTS network's shape: what builds (channels, cells, stem), wherever the shape came from."""
    return [
        (init_channels >= 2, f"init channels must be >= 2, got {init_channels}"),
        (layers >= 1, f"layers must be >= 1, got {layers}"),
        stem_check(stem),
        stem_channels_check(stem, init_channels),
    ]


def shape_fields_check(space: str, given) -> tuple[bool, str]:
    """Whether every field in `given` shapes a network of `space` (a flag of another space's shape is an error)."""
    foreign = sorted(k for k in given if k not in SHAPE_FIELDS.get(space, ()))
    flags = ", ".join("--" + k.replace("_", "-") for k in foreign)
    return not foreign, f"{flags} do(es) not shape a network of space {space!r}"


def checkpoint_minutes_check(minutes: float) -> tuple[bool, str]:
    return non_negative(minutes), f"checkpoint minutes must be >= 0, got {minutes}"


DEVICE_NAME = re.compile(r"auto|cpu|cuda(:[0-9]+)?")  # the `device` fields; resolved by hwnas.device.resolve_device


def check_device_name(device: str) -> None:
    if not isinstance(device, str) or not DEVICE_NAME.fullmatch(device):
        raise HwnasError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}")


def grad_clip_for(space: str, grad_clip: float | None) -> float | None:
    """The gradient-norm clip of weight steps, None for none. By default 5 on the DARTS space (the DARTS reference
    code) and off on the mobile space, which ProxylessNAS and MobileNetV2 train unclipped: the MBConv chain's
    gradient norm is 20-180 at initialisation, and clipping it to 5 stalls learning (digits: 24% vs 61% train
    accuracy after 22 steps of the derived network)."""
    if grad_clip is None:
        return 5.0 if space == "darts" else None
    return grad_clip if grad_clip > 0 else None


@dataclass(frozen=True)
class DataConfig(JsonConfig):
    dataset: str = "digits"  # digits ships inside scikit-learn, so the default job runs offline
    data_dir: str | None = None  # for cifar10 / imagefolder
    image_size: int = 32  # digits are 8x8; resized so the DARTS reduction cells have room
    train_portion: float = 0.5  # search: share of the train split for weights, the rest updates α
    seed: int = 0
    # processes that load batches beside each training process (DataLoader num_workers; 0: in that process):
    # decoding image files keeps a GPU waiting without them. Batches and results are the same for any number, so it
    # may change on resume
    workers: int = 0

    def validate(self) -> None:
        check_all([
            (0.0 < self.train_portion < 1.0, f"train portion must lie in (0, 1), got {self.train_portion}"),
            (self.workers >= 0, f"workers must be >= 0, got {self.workers}"),
            (4 <= self.image_size <= MAX_IMAGE_SIZE,
             f"image size must lie in [4, {MAX_IMAGE_SIZE}], got {self.image_size}"),
            seed_check(self.seed),
            (self.data_dir is None or self.dataset in FOLDER_DATASETS,
             f"--data-dir applies to the {' and '.join(FOLDER_DATASETS)} datasets, not {self.dataset}"),
        ])  # fmt: skip


# DARTS networks' stems: "cifar", one 3x3 convolution at full resolution (the DARTS code's NetworkCIFAR);
# "imagenet", three stride-2 3x3 convolutions before the first cell (its NetworkImageNet, 224 -> 28)
STEMS = ("cifar", "imagenet")


def stem_check(stem: str) -> tuple[bool, str]:
    return stem in STEMS, f"stem must be one of {', '.join(STEMS)}, got {stem!r}"


def stem_channels_check(stem: str, init_channels: int) -> tuple[bool, str]:
    """The imagenet stem's first cell reduces its first input with FactorizedReduce, two stride-2 convolutions of
    half the init channels each (the DARTS code's NetworkImageNet), so they must be even."""
    return (stem != "imagenet" or init_channels % 2 == 0,
            f"init channels must be even with the imagenet stem, got {init_channels}")  # fmt: skip


LATENCY_LOSSES = ("target", "additive", "multiplicative")  # the forms of hwnas.latency.loss.LatencyObjective


@dataclass(frozen=True)
class SearchConfig(JsonConfig):
    space: str = "darts"
    strategy: str = "darts"
    data: DataConfig = field(default_factory=DataConfig)
    epochs: int = 8
    batch_size: int = 64
    # network shape (DARTS space): small defaults so a digits search finishes in minutes on 2 CPU cores
    init_channels: int = 8
    layers: int = 5
    steps: int = 4  # intermediate nodes per cell
    multiplier: int = 4  # nodes concatenated into the cell output (`hwnas search --steps S`: min(4, S))
    stem_multiplier: int = 3  # CIFAR stem: its channels per init channel
    stem: str = "cifar"  # DARTS space: "cifar" or "imagenet" (three stride-2 convolutions first), see STEMS
    primitives: tuple[str, ...] | None = None  # None: the space's full op set
    width_mult: float = 1.0  # mobile space
    seed: int = 0
    # weight optimiser (DARTS, Sec. 3)
    w_lr: float = 0.025
    w_lr_min: float = 0.001
    w_momentum: float = 0.9
    w_weight_decay: float = 3e-4
    grad_clip: float | None = None  # None: the space's default (see `grad_clip_for`); 0: off
    # architecture optimiser (DARTS, Sec. 3)
    # None: 3e-4 on the DARTS space (DARTS); 3e-2 on the mobile space, whose default digits job makes ~100 α steps:
    # ProxylessNAS's 1e-3 (for ~10^5 steps) left E[LAT] within 1% of uniform there, 3e-2 moved it 15% (measured)
    a_lr: float | None = None
    a_betas: tuple[float, float] = (0.5, 0.999)
    a_weight_decay: float = 1e-3
    arch_warmup_epochs: int = 0  # epochs of weight-only training before α moves (PC-DARTS uses 15)
    unrolled: bool = False  # DARTS second order
    pc_k: int = 4  # PC-DARTS channel fraction 1/K
    fused: bool = False  # memory-saving fused mixed op (hwnas.kernels)
    tau_max: float = 10.0  # GDAS temperature, annealed linearly to tau_min
    tau_min: float = 0.1
    # hardware-aware search
    target: str | None = None  # latency table name or path
    latency_ms: float | None = None
    latency_loss: str = "target"  # target | additive | multiplicative
    latency_lambda: float = 0.1  # additive weight / initial λ of the target mode
    latency_beta: float = 0.6  # exponent of the multiplicative (MnasNet) form
    latency_input_size: int | None = None  # resolution latency is evaluated at; None: 224 mobile, image size darts
    # DARTS space: the shape of the network the budget is for, the one `hwnas train` will build from the searched
    # cells (the DARTS paper's 36 channels and 20 cells on CIFAR-10, not the 16 and 8 it searched with); None: the
    # search network's own init channels, layers, stem
    latency_init_channels: int | None = None
    latency_layers: int | None = None
    latency_stem: str | None = None
    random_samples: int = 8  # random search: architectures sampled and trained
    # host tables measured on this machine: re-derivations from the derived network's own measured latency when
    # it lands outside [0.9·T, T] (timings drift from the table's); 0: measure only
    measured_repairs: int = 2
    # where the search runs, so one config serves a laptop and a GPU node: "auto" = cuda:LOCAL_RANK when CUDA is
    # available, else cpu; "cpu", "cuda" (this process's GPU), "cuda:N". May change on resume: checkpoints load anywhere
    device: str = "auto"
    sync_bn: bool | None = None  # SyncBatchNorm across processes; None: on for multi-process CUDA runs (CUDA only)
    # also checkpoint within an epoch this long after the last checkpoint, so a kill loses at most this much of a
    # long epoch (a DARTS epoch on CIFAR-10 takes hours on a CPU); 0: at epoch ends only. May change on resume
    checkpoint_minutes: float = 10.0

    RETIRED = frozenset({"log_every"})  # never read by any version

    @property
    def arch_lr(self) -> float:
        if self.a_lr is not None:
            return self.a_lr
        return 3e-2 if self.space == "mobile" else 3e-4

    def latency_network(self) -> SearchConfig:
        """This config with the network shape the latency term prices (`latency_init_channels`, ...)."""
        return self.replace(
            init_channels=self.latency_init_channels or self.init_channels,
            layers=self.latency_layers or self.layers,
            stem=self.latency_stem or self.stem,
        )

    @property
    def weight_grad_clip(self) -> float | None:
        return grad_clip_for(self.space, self.grad_clip)

    def validate(self) -> None:
        self.data.validate()
        check_device_name(self.device)
        checks = [
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 1, f"batch size must be >= 1, got {self.batch_size}"),
            (self.steps >= 1, f"steps must be >= 1, got {self.steps}"),
            (1 <= self.multiplier <= self.steps, f"multiplier must lie in [1, steps], got {self.multiplier}"),
            (self.init_channels >= 2, f"init channels must be >= 2, got {self.init_channels}"),
            (self.stem_multiplier >= 1, f"stem multiplier must be >= 1, got {self.stem_multiplier}"),
            (self.layers >= 1, f"layers must be >= 1, got {self.layers}"),
            (self.pc_k >= 1, f"pc-k must be >= 1, got {self.pc_k}"),
            stem_check(self.stem),
            stem_channels_check(self.stem, self.init_channels) if self.space == "darts" else (True, ""),
            (self.tau_max >= self.tau_min > 0, "GDAS temperatures need tau_max >= tau_min > 0"),
            ((self.target is None) == (self.latency_ms is None), "--target and --latency go together"),
            (self.latency_ms is None or positive(self.latency_ms), "the latency budget must be positive and finite"),
            (self.latency_loss in LATENCY_LOSSES,
             f"latency loss must be one of {', '.join(LATENCY_LOSSES)}, got {self.latency_loss!r}"),
            (self.grad_clip is None or self.grad_clip >= 0, f"grad clip must be >= 0, got {self.grad_clip}"),
            (self.measured_repairs >= 0, f"measured repairs must be >= 0, got {self.measured_repairs}"),
            checkpoint_minutes_check(self.checkpoint_minutes),
            (self.latency_input_size is None or self.latency_input_size >= 1,
             f"latency input size must be >= 1, got {self.latency_input_size}"),
            (self.latency_init_channels is None or self.latency_init_channels >= 2,
             f"latency init channels must be >= 2, got {self.latency_init_channels}"),
            (self.latency_layers is None or self.latency_layers >= 1,
             f"latency layers must be >= 1, got {self.latency_layers}"),
            stem_check(self.latency_stem) if self.latency_stem is not None else (True, ""),
            (stem_channels_check(self.latency_stem or self.stem, self.latency_init_channels or self.init_channels)
             if self.space == "darts" else (True, "")),
            (positive(self.w_lr), f"weight learning rate must be positive, got {self.w_lr}"),
            (non_negative(self.w_lr_min), f"minimum weight learning rate must be >= 0, got {self.w_lr_min}"),
            (self.a_lr is None or positive(self.a_lr), f"architecture learning rate must be positive, got {self.a_lr}"),
            (0 <= self.w_momentum < 1, f"momentum must lie in [0, 1), got {self.w_momentum}"),
            (non_negative(self.w_weight_decay) and non_negative(self.a_weight_decay), "weight decay must be >= 0"),
            (all(0 <= b < 1 for b in self.a_betas), f"Adam betas must lie in [0, 1), got {self.a_betas}"),
            (self.arch_warmup_epochs >= 0, f"arch warm-up epochs must be >= 0, got {self.arch_warmup_epochs}"),
            (self.random_samples >= 1, f"random samples must be >= 1, got {self.random_samples}"),
            (non_negative(self.latency_lambda), f"latency lambda must be >= 0, got {self.latency_lambda}"),
            (positive(self.latency_beta), f"latency beta must be positive, got {self.latency_beta}"),
            width_mult_check(self.width_mult),
            seed_check(self.seed),
            (self.primitives is None or len(set(self.primitives)) == len(self.primitives),
             f"primitives list an op twice: {','.join(self.primitives or ())}"),
        ]  # fmt: skip
        check_all(checks)


PRECISIONS = ("fp32", "bf16", "fp16")  # what `hwnas train --precision` takes
LR_SCHEDULES = ("cosine", "linear", "exponential")  # what `hwnas train --lr-schedule` takes (hwnas.schedule)


@dataclass(frozen=True)
class TrainConfig(JsonConfig):
    genotype: str = "DARTS_V2"  # a published genotype name, or a genotype JSON file
    data: DataConfig = field(default_factory=DataConfig)
    epochs: int = 30
    batch_size: int = 64
    init_channels: int = 16
    layers: int = 8
    stem: str = "cifar"  # DARTS genotypes: "cifar" or "imagenet", see STEMS
    width_mult: float | None = None  # mobile space: the network's width, overriding the genotype's (None: keep it)
    lr: float = 0.025
    lr_min: float = 0.0
    lr_schedule: str = "cosine"  # cosine | linear | exponential, after the warm-up (see hwnas.schedule.train_lr)
    lr_decay: float = 0.97  # exponential: per-epoch factor (DARTS on ImageNet)
    warmup_epochs: int = 0  # linear warm-up to lr (PC-DARTS on ImageNet: 5)
    momentum: float = 0.9
    weight_decay: float = 3e-4
    grad_clip: float | None = None  # None: the space's default (see `grad_clip_for`); 0: off
    drop_path_prob: float = 0.1  # scheduled linearly from 0 over training, as in DARTS
    auxiliary_weight: float = 0.0  # > 0 adds the auxiliary head at 2/3 depth
    label_smoothing: float = 0.0  # of the training loss (DARTS and PC-DARTS trained on ImageNet with 0.1)
    cutout: int = 0  # cutout side in pixels, 0 = off
    seed: int = 0
    device: str = "auto"  # as SearchConfig.device: cuda:LOCAL_RANK when CUDA is available, else cpu
    sync_bn: bool | None = None  # as SearchConfig.sync_bn
    checkpoint_minutes: float = 10.0  # as SearchConfig.checkpoint_minutes
    # "bf16" or "fp16": forward and backward under torch.autocast (fp16 with a gradient scaler), weights and optimiser
    # state in fp32: fast where the hardware has the type (GPUs; CPUs with AMX or AVX-512 BF16). May change on resume
    precision: str = "fp32"

    RETIRED = frozenset({"log_every"})  # never read by any version

    def validate(self) -> None:
        self.data.validate()
        check_device_name(self.device)
        check_all([
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 1, f"batch size must be >= 1, got {self.batch_size}"),
            *darts_shape_checks(self.init_channels, self.layers, self.stem),
            (0.0 <= self.drop_path_prob < 1.0, f"drop path probability must lie in [0, 1), got {self.drop_path_prob}"),
            (self.grad_clip is None or self.grad_clip >= 0, f"grad clip must be >= 0, got {self.grad_clip}"),
            width_mult_check(self.width_mult) if self.width_mult is not None else (True, ""),
            (positive(self.lr), f"learning rate must be positive, got {self.lr}"),
            (non_negative(self.lr_min), f"minimum learning rate must be >= 0, got {self.lr_min}"),
            (self.lr_schedule in LR_SCHEDULES,
             f"learning-rate schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}"),
            (0 < self.lr_decay <= 1, f"learning-rate decay must lie in (0, 1], got {self.lr_decay}"),
            (0 <= self.warmup_epochs < self.epochs,
             f"warm-up epochs must lie in [0, epochs {self.epochs}), got {self.warmup_epochs}"),
            (0 <= self.momentum < 1, f"momentum must lie in [0, 1), got {self.momentum}"),
            (non_negative(self.weight_decay), f"weight decay must be >= 0, got {self.weight_decay}"),
            (non_negative(self.auxiliary_weight), f"auxiliary weight must be >= 0, got {self.auxiliary_weight}"),
            (0.0 <= self.label_smoothing < 1.0, f"label smoothing must lie in [0, 1), got {self.label_smoothing}"),
            checkpoint_minutes_check(self.checkpoint_minutes),
            (self.precision in PRECISIONS, f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}"),
            (0 <= self.cutout <= self.data.image_size,
             f"cutout must lie in [0, image size {self.data.image_size}], got {self.cutout}"),
            seed_check(self.seed),
        ])  # fmt: skip
