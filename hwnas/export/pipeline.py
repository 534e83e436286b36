"""`export_network`: convert a network to each requested format, check each file against PyTorch, time it on
its host runtime beside the lookup table's prediction, and write `export_report.json`.

Everything is written into a temporary directory on the output directory's filesystem (beside it, or inside it
when it exists) and moved into place only when every file has passed, so a failure (bad input, unsupported op,
missing converter, a numerical mismatch) leaves nothing behind.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import secrets
import shutil
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch
from torch import nn

from hwnas.complexity import count_macs, count_parameters
from hwnas.errors import HwnasError
from hwnas.export.build import NetworkSpec, build_network, dataset_splits
from hwnas.export.predict import predicted_latency
from hwnas.export.report import (
    REPORT_NAME,
    ExportRow,
    check_informative,
    error_bound,
    max_abs_error,
    output_spread,
    top1_agreement,
)
from hwnas.export.runner import ExportedModel
from hwnas.profilers.base import example_input, missing_extra
from hwnas.profilers.protocol import Protocol

log = logging.getLogger(__name__)
FORMATS = ("onnx", "tflite")
LAYOUTS = ("nchw", "nhwc")
QUANTIZATIONS = ("fp16", "int8")
REQUIRED = {  # import name -> distribution, per format (and for quantisation)
    "onnx": {"onnx": "onnx", "onnxscript": "onnxscript", "onnxruntime": "onnxruntime"},
    "tflite": {"litert_torch": "litert-torch", "ai_edge_litert": "ai-edge-litert"},
    "quantize": {"ai_edge_quantizer": "ai-edge-quantizer"},
}
CHECK_SAMPLES, CHECK_SEED = 8, 1  # fresh random inputs for the error check (the trace example uses seed 0)
CALIBRATION_BATCH = 32
QUANTIZED_AGREEMENT = 0.99  # below this top-1 agreement with float32, a quantised export is flagged


@dataclass(frozen=True)
class ExportOptions:
    formats: tuple[str, ...]
    out: Path
    quantize: str | None = None  # TFLite only: "fp16" or "int8"
    layout: str = "nchw"  # input layout of the exported models
    dynamic_batch: bool = False  # ONNX only; TFLite models keep batch 1
    threads: int = 1  # runtime threads for the latency measurement (the host tables use 1)
    calibration_batches: int = 4  # int8: training batches of CALIBRATION_BATCH examples
    test_samples: int | None = None  # test-split examples for the top-1 agreement (None: all)
    protocol: Protocol = field(default_factory=Protocol)

    def validate(self) -> None:
        checks = [
            (bool(self.formats) and set(self.formats) <= set(FORMATS),
             f"formats must be among {', '.join(FORMATS)}, got {', '.join(self.formats) or 'none'}"),
            (self.layout in LAYOUTS, f"unknown layout {self.layout!r}; known: {', '.join(LAYOUTS)}"),
            (self.quantize in (None, *QUANTIZATIONS),
             f"unknown quantisation {self.quantize!r}; known: {', '.join(QUANTIZATIONS)}"),
            (self.quantize is None or "tflite" in self.formats,
             "--quantize applies to TFLite; use --format tflite or all"),
            (not self.dynamic_batch or "onnx" in self.formats,
             "--dynamic-batch applies to ONNX (TFLite models keep batch 1); use --format onnx or all"),
            (self.threads >= 1, f"threads must be >= 1, got {self.threads}"),
            (self.calibration_batches >= 1,
             f"calibration batches must be >= 1, got {self.calibration_batches}"),
            (self.test_samples is None or self.test_samples >= 1,
             f"test samples must be >= 1, got {self.test_samples}"),
            (not self.out.exists() or self.out.is_dir(), f"--out {self.out} exists and is not a directory"),
        ]  # fmt: skip
        for ok, message in checks:
            if not ok:
                raise HwnasError(message)


def require_runtimes(options: ExportOptions) -> None:
    """A missing converter or runtime, named with the extra that installs it, before any work is done."""
    needed = [REQUIRED[f] for f in options.formats] + ([REQUIRED["quantize"]] if options.quantize else [])
    for modules in needed:
        for module, distribution in modules.items():
            if importlib.util.find_spec(module) is None:
                raise missing_extra(distribution, ImportError(f"no module named {module!r}"))


class NhwcInput(nn.Module):
    """Takes NHWC input, as mobile camera pipelines hand it over, and feeds the NCHW network."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, H, W, C) -> (B, classes)
        return self.net(x.permute(0, 3, 1, 2))


class Checks:
    """The inputs every exported file is checked on, with PyTorch's outputs for them (NCHW; `to_layout`
    turns an NCHW batch into the exported models' layout), and the PyTorch network's parameters and MACs."""

    def __init__(self, module: nn.Module, spec: NetworkSpec, options: ExportOptions, use_dataset: bool):
        self.layout = options.layout
        shape = (spec.in_channels, spec.input_size, spec.input_size)
        self.params, self.macs = count_parameters(module), count_macs(module, shape)
        generator = torch.Generator().manual_seed(CHECK_SEED)
        self.random = torch.randn(CHECK_SAMPLES, *shape, generator=generator).numpy()
        self.random_ref = _finite(_forward(module, self.random), module)
        self.bound, self.informative = error_bound(self.random_ref), check_informative(self.random_ref)
        if not self.informative:
            log.warning("the network's outputs vary across the check inputs by only %.3g (error bound %.3g): the "
                        "numerical check cannot tell an export that ignores its input from a good one (random or "
                        "barely trained weights?)", output_spread(self.random_ref), self.bound)  # fmt: skip
        self.test, self.test_ref, self.calibration = None, None, []
        splits = dataset_splits(spec.cfg.data) if use_dataset else None
        fits = splits is not None and tuple(splits.test[0][0].shape) == shape
        if splits is not None and not fits:
            message = (f"dataset {spec.cfg.data.dataset!r} gives inputs {tuple(splits.test[0][0].shape)}, "
                       f"the network takes {shape}")  # fmt: skip
            if options.quantize == "int8":
                raise HwnasError(
                    f"int8 calibration needs training data shaped like the input: {message} "
                    "(name a dataset with --dataset)"
                )
            log.info("no top-1 agreement: %s", message)
        if not fits:
            return
        self.test = _inputs(splits.test, options.test_samples, shuffle=False)
        self.test_ref = _finite(_forward(module, self.test), module)
        if options.quantize == "int8":
            n = options.calibration_batches * CALIBRATION_BATCH
            self.calibration = list(_inputs(splits.train, n, shuffle=True, seed=spec.cfg.seed)[:, None])

    def to_layout(self, x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(x.transpose(0, 2, 3, 1) if self.layout == "nhwc" else x)


def _forward(module: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return torch.cat([module(torch.from_numpy(b)) for b in np.array_split(x, max(1, len(x) // 256))]).numpy()


def _finite(outputs: np.ndarray, module: nn.Module) -> np.ndarray:
    """`outputs`, unless PyTorch's outputs hold NaN or infinity: nothing to check an export against."""
    if np.all(np.isfinite(outputs)):
        return outputs
    bad = next((name for name, t in module.state_dict().items() if t.is_floating_point() and not t.isfinite().all()),
               None)  # fmt: skip
    cause = f"its weights hold NaN or infinity (first {bad})" if bad else "they overflow"
    raise HwnasError(f"the network's PyTorch outputs are not finite: {cause}")


def _inputs(dataset, limit: int | None, shuffle: bool, seed: int = 0) -> np.ndarray:
    """Up to `limit` inputs of `dataset` as one float32 array."""
    from hwnas.data import make_loader

    batches, n = [], 0
    for x, _y in make_loader(dataset, CALIBRATION_BATCH, shuffle, seed):
        batches.append(x.numpy().astype(np.float32))
        n += len(x)
        if limit is not None and n >= limit:
            break
    return np.concatenate(batches)[:limit]


def export_network(spec: NetworkSpec, options: ExportOptions) -> list[ExportRow]:
    """Export `spec`'s network in each of `options.formats` into `options.out`; returns the report's rows.
    Top-1 agreement is checked on the test split of the network's dataset when the spec knows it."""
    options.validate()
    require_runtimes(options)
    module = build_network(spec)
    checks = Checks(module, spec, options, spec.dataset_known or options.quantize == "int8")
    exported = NhwcInput(module).eval() if options.layout == "nhwc" else module
    out = options.out
    created = [p for p in (out.parent, *out.parent.parents) if not p.exists()]
    # on the final files' filesystem, so that publishing is renames: inside an existing --out, which may be a
    # symlink to or a mount of another filesystem than its parent's; else beside it, where it is renamed to --out
    tmp = (out if out.exists() else out.parent) / f".{out.name}.{secrets.token_hex(4)}.tmp"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
    except OSError as err:
        for path in created:
            _rmdir_if_empty(path)
        raise HwnasError(f"cannot write the export into {out}: {err.strerror or err}") from None
    try:
        rows = []
        if "onnx" in options.formats:
            rows.append(_export_onnx(exported, spec, options, checks, tmp))
        if "tflite" in options.formats:
            rows.append(_export_tflite(exported, spec, options, checks, tmp))
        report = _earlier_rows(out, {row.file for row in rows}) + [row.to_json() for row in rows]
        (tmp / REPORT_NAME).write_text(json.dumps(report, indent=2) + "\n")
        try:
            _publish(tmp, out)
        except OSError as err:
            raise HwnasError(f"cannot move the export into {out}: {err.strerror or err}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for path in created:  # innermost first: the directories made for --out's parent
            _rmdir_if_empty(path)
        raise
    return rows


def _earlier_rows(out: Path, replaced: set[str]) -> list[dict]:
    """The rows of an earlier export into `out` whose files this one leaves in place (exporting ONNX, then TFLite
    into one directory reports both)."""
    try:
        earlier = json.loads((out / REPORT_NAME).read_text())
    except (OSError, json.JSONDecodeError):
        return []
    if not isinstance(earlier, list):
        return []
    return [row for row in earlier if isinstance(row, dict) and row.get("file") not in replaced
            and (out / str(row.get("file"))).is_file()]  # fmt: skip


def _rmdir_if_empty(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass


def _publish(tmp: Path, out: Path) -> None:
    """Move the checked files into `out` (renaming the whole directory when `out` does not exist yet)."""
    if not out.exists():
        os.replace(tmp, out)
        return
    for path in tmp.iterdir():
        os.replace(path, out / path.name)
    tmp.rmdir()


def _example(spec: NetworkSpec, options: ExportOptions, batch: int) -> torch.Tensor:
    c, s = spec.in_channels, spec.input_size
    return example_input((batch, s, s, c) if options.layout == "nhwc" else (batch, c, s, s))


def _export_onnx(module, spec, options, checks, tmp: Path) -> ExportRow:
    from hwnas.export.onnx import OnnxModel, export_onnx

    path = tmp / "model.onnx"
    opset = export_onnx(module, _example(spec, options, 2 if options.dynamic_batch else 1), path,
                        options.dynamic_batch)  # fmt: skip
    size = sum(p.stat().st_size for p in tmp.glob("model.onnx*"))  # with external data, if any
    return _row("onnx", path.name, size, opset, OnnxModel(path, options.threads), spec, options, checks)


def _export_tflite(module, spec, options, checks, tmp: Path) -> ExportRow:
    from hwnas.export.tflite import TfliteModel, convert_tflite, quantize_tflite, with_quantizable_pools

    if options.quantize == "int8":
        module = with_quantizable_pools(module)
    flatbuffer = convert_tflite(module, _example(spec, options, 1))
    converter = f"litert-torch {version('litert-torch')}"
    name = "model.tflite"
    if options.quantize:
        calibration = [checks.to_layout(x) for x in checks.calibration]
        flatbuffer = quantize_tflite(flatbuffer, options.quantize, calibration)
        converter += f" + ai-edge-quantizer {version('ai-edge-quantizer')} ({options.quantize})"
        name = f"model_{options.quantize}.tflite"
    (tmp / name).write_bytes(flatbuffer)
    model = TfliteModel(flatbuffer, options.threads)
    return _row("tflite", name, len(flatbuffer), converter, model, spec, options, checks)


def _row(fmt, name, size, converter, model: ExportedModel, spec, options, checks: Checks) -> ExportRow:
    quantized = fmt == "tflite" and options.quantize is not None
    error = max_abs_error(checks.random_ref, model(checks.to_layout(checks.random)))
    if not np.isfinite(error):  # PyTorch's are finite (`_finite`); NaN passes `error > bound`, and quantised too
        raise HwnasError(f"the {fmt} model's outputs hold NaN or infinity where PyTorch's are finite")
    if not quantized and error > checks.bound:
        raise HwnasError(f"the {fmt} model's outputs differ from PyTorch's by {error:.3g} (bound {checks.bound:.3g})")
    top1 = None
    if checks.test is not None:
        top1 = top1_agreement(checks.test_ref, model(checks.to_layout(checks.test)))
        if quantized and top1 < QUANTIZED_AGREEMENT:
            log.warning("%s agrees with PyTorch on the top-1 class of only %.1f%% of the test split", name,
                        100 * top1)  # fmt: skip
    measured = model.measure(checks.to_layout(checks.random[:1]), options.protocol).median_ms
    prediction = None if quantized else predicted_latency(fmt, spec, options.threads)
    predicted, table, device = (
        (None, None, None) if prediction is None else (prediction.latency_ms, prediction.table, prediction.device)
    )
    shape = [d if isinstance(d, int) else "batch" for d in model.input_shape]
    log.info("%s: max |error| %.3g, top-1 agreement %s, %.3f ms measured, %s predicted", name, error, top1,
             measured, f"{predicted:.3f} ms" if predicted is not None else "none")  # fmt: skip
    return ExportRow(fmt, name, size, converter, shape, options.layout.upper(), error, checks.informative, top1,
                     measured, predicted, table, device, checks.params, checks.macs)  # fmt: skip
