"""What to export: the genotype, network shape, input shape and weights, from a run directory or a bare
genotype, and the discrete network built from them with its weights checked against the architecture.

Precedence: explicit flags, then the weights file's own record (a `model.pt` from `hwnas train` stores its
genotype, config, input channels and classes), then the run directory, then the dataset and `TrainConfig`
defaults (what `hwnas train --genotype G` would build).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hwnas.complexity import AUXILIARY_PREFIX  # training-only head: never part of an exported network
from hwnas.config import (
    DataConfig,
    SearchConfig,
    TrainConfig,
    check_all,
    darts_shape_checks,
    shape_fields_check,
    width_mult_check,
)
from hwnas.errors import HwnasError, first_line_error
from hwnas.spaces import Genotype, get_space, load_genotype

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Weights:
    state_dict: dict[str, torch.Tensor]
    origin: str  # the file they came from
    record: dict[str, Any]  # rest of a `model.pt`: genotype, config, in_channels, num_classes ({} if bare)


@dataclass(frozen=True)
class NetworkSpec:
    genotype: Genotype
    cfg: TrainConfig  # network shape (init_channels, layers) and the dataset (calibration, top-1 check)
    in_channels: int
    num_classes: int
    input_size: int
    weights: Weights | None
    dataset_known: bool  # the data config names the network's dataset (run, weights record, --dataset, or used)

    @property
    def space(self) -> str:
        return self.genotype.space


@functools.lru_cache(maxsize=1)
def dataset_splits(cfg: DataConfig):
    """The dataset's splits, loaded once per process for both the input shape and the checks."""
    from hwnas.data import load_splits

    return load_splits(cfg)


def load_weights(path: str | Path) -> Weights:
    """A `model.pt` of `hwnas train`, a training `checkpoint.pt`, or a bare state dict."""
    path = Path(path)
    if not path.is_file():
        raise HwnasError(f"weights file {path} does not exist")
    if not zipfile.is_zipfile(path):
        raise HwnasError(f"weights file {path} is not a PyTorch file (torch.save writes a zip archive)")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means an unusable file
        raise first_line_error(f"cannot read weights {path}", err) from None
    record: dict[str, Any] = {}
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        record = {k: v for k, v in data.items() if k != "state_dict"}
        data = data["state_dict"]
    elif isinstance(data, dict) and isinstance(data.get("model"), dict):
        data = data["model"]
    if not isinstance(data, dict) or not data or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise HwnasError(f"weights file {path} holds no state dict (expected a model.pt of `hwnas train`)")
    return Weights(data, str(path), record)


def _read_run(run: Path) -> tuple[TrainConfig, Genotype, str | None, Weights | None]:
    """(config, genotype, searched space or None, weights or None) of a train or search run directory."""
    config_path = run / "config.json"
    try:
        stored = json.loads(config_path.read_text())
    except FileNotFoundError:
        raise HwnasError(f"{run} is not a run directory: {config_path} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise HwnasError(f"{config_path} is corrupt ({err})") from None
    kind = stored.get("kind") if isinstance(stored, dict) else None
    if kind not in ("train", "search") or not isinstance(stored.get("config"), dict):
        raise HwnasError(f"{run} is neither a train nor a search run directory")
    space = None
    if kind == "train":
        cfg = TrainConfig.from_json(stored["config"])
    else:
        search = SearchConfig.from_json(stored["config"])
        cfg, space = TrainConfig(data=search.data, stem=search.stem), search.space
    weights = load_weights(run / "model.pt") if (run / "model.pt").is_file() else None
    if weights is not None and "genotype" in weights.record:
        genotype = _genotype_from_json(weights.record["genotype"], run / "model.pt")
    elif (run / "genotype.json").is_file():
        genotype = load_genotype(str(run / "genotype.json"))
    elif kind == "train":
        genotype = load_genotype(cfg.genotype)
    else:
        raise HwnasError(f"search run {run} has no genotype.json yet (is the search finished?)")
    return cfg, genotype, space, weights


def _genotype_from_json(data: Any, where: Path | str) -> Genotype:
    if not isinstance(data, dict) or "space" not in data:
        raise HwnasError(f"{where} holds a malformed genotype record")
    return get_space(data["space"]).genotype_from_json(data)


def resolve_spec(
    run: str | None = None,
    genotype: str | None = None,
    weights: str | None = None,
    shape: dict[str, Any] | None = None,
    data: dict[str, Any] | None = None,
    input_size: int | None = None,
    in_channels: int | None = None,
    num_classes: int | None = None,
) -> NetworkSpec:
    """Everything needed to build the network. `shape`: explicit init_channels / layers / width_mult;
    `data`: explicit dataset / data_dir. The dataset is loaded only if channels or classes are unknown."""
    shape, data = dict(shape or {}), dict(data or {})
    if (run is None) == (genotype is None):
        raise HwnasError("give exactly one of --run RUN_DIR and --genotype GENOTYPE")
    cfg, space, run_weights = TrainConfig(), None, None
    if run is not None:
        if not Path(run).is_dir():
            raise HwnasError(f"run directory {run} does not exist")
        cfg, chosen, space, run_weights = _read_run(Path(run))
    else:
        chosen = load_genotype(genotype)
    if space is not None and chosen.space != space:
        raise HwnasError(f"the genotype of run {run} is for space {chosen.space!r}, not the searched {space!r}")
    loaded = load_weights(weights) if weights is not None else run_weights
    record = loaded.record if loaded is not None else {}
    if "config" in record:
        cfg = TrainConfig.from_json(record["config"])
    chosen, cfg = _apply_shape(chosen, cfg, shape)
    if "genotype" in record and _genotype_from_json(record["genotype"], loaded.origin) != chosen:
        raise HwnasError(
            f"weights {loaded.origin} were trained for another architecture than this {chosen.space} "
            "genotype (check --genotype and the network-shape flags)"
        )
    if input_size is not None:
        data["image_size"] = input_size
    known = run is not None or "config" in record or "dataset" in data
    cfg = cfg.replace(data=dataclasses.replace(cfg.data, **data))
    cfg.data.validate()
    in_channels = in_channels if in_channels is not None else record.get("in_channels")
    num_classes = num_classes if num_classes is not None else record.get("num_classes")
    if in_channels is None or num_classes is None:
        splits = dataset_splits(cfg.data)
        in_channels = in_channels if in_channels is not None else splits.in_channels
        num_classes = num_classes if num_classes is not None else splits.num_classes
        known = True
    for name, value in (("input channels", in_channels), ("classes", num_classes)):
        if value < 1:
            raise HwnasError(f"{name} must be >= 1, got {value}")
    return NetworkSpec(chosen, cfg, int(in_channels), int(num_classes), cfg.data.image_size, loaded, known)


def _apply_shape(genotype: Genotype, cfg: TrainConfig, shape: dict[str, Any]) -> tuple[Genotype, TrainConfig]:
    """Network-shape flags; a flag of another space's shape is an error. A mobile network's width lives in its
    genotype, so --width-mult rewrites the genotype."""
    check_all([shape_fields_check(genotype.space, shape)])
    if "width_mult" in shape:
        genotype = dataclasses.replace(genotype, width_mult=float(shape["width_mult"]))
    cfg = cfg.replace(**shape)
    _check_shape(genotype, cfg)
    return genotype, cfg


def _check_shape(genotype: Genotype, cfg: TrainConfig) -> None:
    """The network-shape checks of `TrainConfig.validate`, on the shape the flags, a weights record or a run's
    (possibly hand-edited) config.json left: any of them can give a network that does not build or has no cells."""
    if genotype.space == "mobile":
        check_all([width_mult_check(genotype.width_mult)])
        return
    check_all(darts_shape_checks(cfg.init_channels, cfg.layers, cfg.stem))


def build_network(spec: NetworkSpec) -> nn.Module:
    """The network in eval mode, with the spec's weights (checked against the architecture) or random ones."""
    cfg = spec.cfg.replace(auxiliary_weight=0.0)
    model = get_space(spec.space).build_network(spec.genotype, cfg, spec.in_channels, spec.num_classes)
    if spec.weights is None:
        log.warning("no trained weights given or found: exporting a randomly initialised network")
    else:
        state = {k: v for k, v in spec.weights.state_dict.items() if not k.startswith(AUXILIARY_PREFIX)}
        check_state_dict(model, state, spec.weights.origin)
        model.load_state_dict(state)
    return model.eval()


def check_state_dict(model: nn.Module, state: dict[str, torch.Tensor], origin: str) -> None:
    """One line naming how `state` misfits `model`: missing or unexpected tensors, or a wrong shape."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and own[k].shape != state[k].shape]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing (first {missing[0]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected (first {unexpected[0]})")
    if wrong:
        k = wrong[0]
        shapes = f"{tuple(state[k].shape)}, the network has {tuple(own[k].shape)}"
        problems.append(f"{len(wrong)} of another shape (first {k}: {shapes})")
    if problems:
        raise HwnasError(f"weights {origin} do not match the architecture: tensors {'; '.join(problems)}")
