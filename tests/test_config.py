"""Configs: typed JSON round trip (a hand-edited config.json is a clear error) and range checks of every field a
user sets; the cosine schedule a resumed, extended run follows."""

import math

import pytest

from hwnas.config import DataConfig, SearchConfig, TrainConfig
from hwnas.errors import HwnasError
from hwnas.schedule import cosine_lr, train_lr
from hwnas.spaces import get_space
from hwnas.strategies import STRATEGIES


def test_json_round_trip():
    cfg = SearchConfig(primitives=("none", "skip_connect"), a_betas=(0.4, 0.9), target="mobile", latency_ms=80.0)
    assert SearchConfig.from_json(cfg.to_json()) == cfg
    train = TrainConfig(width_mult=0.5, data=DataConfig(dataset="cifar10", data_dir="/data"))
    assert TrainConfig.from_json(train.to_json()) == train


def test_configs_written_by_earlier_versions_still_load():
    """A run directory of an earlier hwnas (its `log_every` field, gone since) still resumes; mid-epoch checkpoints
    came later, so such a run takes the default."""
    for cls in (SearchConfig, TrainConfig):
        old = {k: v for k, v in cls().to_json().items() if k != "checkpoint_minutes"}
        assert cls.from_json({**old, "log_every": 10}) == cls()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"layers": "five"}, "field 'layers' must be an integer, got \"five\""),
        ({"epochs": 2.5}, "field 'epochs' must be an integer"),
        ({"fused": 1}, "field 'fused' must be true or false"),
        ({"latency_ms": "80"}, "field 'latency_ms' must be a number or null"),
        ({"a_betas": [0.5]}, "field 'a_betas' must be a list of 2 values"),
        ({"primitives": [1, 2]}, "field 'primitives' must be a list of str values or null"),
        ({"data": "digits"}, "field 'data' must be DataConfig"),
        ({"data": {"image_size": "32"}}, "DataConfig: field 'image_size' must be an integer"),
        ({"colour": "red"}, "unknown field(s) colour"),
    ],
)
def test_hand_edited_json_is_a_clear_error(data, message):
    with pytest.raises(HwnasError) as info:
        SearchConfig.from_json(data)
    assert message in str(info.value)


def test_a_json_list_is_not_a_config():
    with pytest.raises(HwnasError, match="expected a JSON object, got list"):
        TrainConfig.from_json([1, 2])


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"w_lr": -1.0}, "weight learning rate must be positive"),
        ({"w_lr": math.nan}, "weight learning rate must be positive"),
        ({"a_lr": 0.0}, "architecture learning rate must be positive"),
        ({"w_lr_min": -0.5}, "minimum weight learning rate must be >= 0"),
        ({"w_momentum": 1.0}, "momentum must lie in [0, 1)"),
        ({"seed": -1}, "seed must lie in [0, 2**32)"),
        ({"seed": 2**32}, "seed must lie in [0, 2**32)"),
        ({"random_samples": 0}, "random samples must be >= 1"),
        ({"arch_warmup_epochs": -3}, "arch warm-up epochs must be >= 0"),
        ({"latency_lambda": -1.0}, "latency lambda must be >= 0"),
        ({"width_mult": math.inf}, "width multiplier must lie in (0, 4]"),
        ({"width_mult": 1e6}, "width multiplier must lie in (0, 4]"),
        ({"primitives": ("sep_conv_3x3", "sep_conv_3x3")}, "primitives list an op twice"),
        ({"data": DataConfig(image_size=100_000)}, "image size must lie in [4, 2048]"),
        ({"data": DataConfig(seed=-2)}, "seed must lie in [0, 2**32)"),
        ({"stem_multiplier": 0}, "stem multiplier must be >= 1, got 0"),
        ({"target": "mobile"}, "--target and --latency go together"),
        ({"latency_ms": 80.0}, "--target and --latency go together"),
        ({"target": "mobile", "latency_ms": math.inf}, "the latency budget must be positive and finite"),
        ({"target": "mobile", "latency_ms": 80.0, "latency_loss": "quadratic"},
         "latency loss must be one of target, additive, multiplicative, got 'quadratic'"),
        ({"stem": "imagenet", "init_channels": 5}, "init channels must be even with the imagenet stem, got 5"),
        ({"target": "cpu", "latency_ms": 9.0, "latency_stem": "imagenet", "latency_init_channels": 9},
         "init channels must be even with the imagenet stem, got 9"),
    ],
)  # fmt: skip
def test_search_values_out_of_range(changes, message):
    with pytest.raises(HwnasError) as info:
        SearchConfig(**changes).validate()
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"lr": -1.0}, "learning rate must be positive"),
        ({"init_channels": 0}, "init channels must be >= 2"),
        ({"layers": 0}, "layers must be >= 1"),
        ({"cutout": -5}, "cutout must lie in [0, image size 32]"),
        ({"cutout": 1000}, "cutout must lie in [0, image size 32]"),
        ({"auxiliary_weight": -1.0}, "auxiliary weight must be >= 0"),
        ({"width_mult": math.nan}, "width multiplier must lie in (0, 4]"),
        ({"seed": 99_999_999_999}, "seed must lie in [0, 2**32)"),
        ({"weight_decay": -1e-4}, "weight decay must be >= 0"),
        ({"stem": "imagenet", "init_channels": 5}, "init channels must be even with the imagenet stem, got 5"),
    ],
)
def test_train_values_out_of_range(changes, message):
    with pytest.raises(HwnasError) as info:
        TrainConfig(**changes).validate()
    assert message in str(info.value)


def test_darts_search_needs_both_cell_types():
    """Reduction cells sit at 1/3 and 2/3 of the depth: below 3 layers α_reduce would never be trained."""
    with pytest.raises(HwnasError, match="needs --layers >= 3"):
        get_space("darts").check_search(SearchConfig(layers=2))
    get_space("darts").check_search(SearchConfig(layers=3))


@pytest.mark.parametrize("strategy", ["gdas", "proxyless", "random"])
def test_fused_and_unrolled_only_where_they_apply(strategy):
    for flag, changes in (("--fused", {"fused": True}), ("--unrolled", {"unrolled": True})):
        with pytest.raises(HwnasError, match=f"{flag} applies to the darts and pcdarts strategies, not {strategy}"):
            STRATEGIES.get(strategy)(SearchConfig(strategy=strategy, **changes))


@pytest.mark.parametrize(
    "changes,rates",
    [
        ({}, [cosine_lr(e, 6, 0.1, 0.0) for e in range(6)]),  # the default: DARTS's cosine, as before
        ({"lr_schedule": "linear", "warmup_epochs": 2}, [0.05, 0.1, 0.1, 0.075, 0.05, 0.025]),
        ({"lr_schedule": "exponential", "lr_decay": 0.5, "lr_min": 0.02}, [0.1, 0.05, 0.025, 0.02, 0.02, 0.02]),
        ({"warmup_epochs": 3, "lr_min": 0.01}, [0.1 / 3, 0.2 / 3, 0.1, 0.1, 0.0775, 0.0325]),
    ],
)
def test_training_schedules(changes, rates):
    """Warm-up lr·(e+1)/W, then cosine or linear to lr_min over the epochs left, or ×decay an epoch down to it."""
    cfg = TrainConfig(epochs=6, lr=0.1, **changes)
    cfg.validate()
    assert [train_lr(e, cfg) for e in range(6)] == pytest.approx(rates)


def test_cosine_lr_extends_without_climbing_back():
    """Epoch e of E: lr_min + (lr_max - lr_min)(1 + cos(πe/E))/2. A run extended from 4 to 8 epochs continues
    on the 8-epoch curve, below where it stood."""
    four = [cosine_lr(e, 4, 0.025, 0.001) for e in range(4)]
    assert four[0] == 0.025 and four[2] == pytest.approx(0.013)
    eight = [cosine_lr(e, 8, 0.025, 0.001) for e in range(8)]
    assert all(a > b for a, b in zip(eight, eight[1:]))
    assert eight[4] < eight[3] and eight[4] == pytest.approx(0.013)
