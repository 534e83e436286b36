"""hwnas export: write a derived network as ONNX and/or TFLite, check it against PyTorch, time it, report."""

from __future__ import annotations

import argparse
from pathlib import Path

from hwnas.cli.common import explicit, quiet_exporters
from hwnas.cli.train import add_network_arguments
from hwnas.config import ALL_SHAPE_FIELDS

DATA_FLAGS = ("dataset", "data_dir")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--run",
        dest="run_path",
        metavar="RUN_DIR",
        help="a train run (model.pt) or a search run (genotype.json)",
    )
    add_network_arguments(parser)
    parser.add_argument("--weights", help="trained weights: a model.pt of `hwnas train` or a state dict "
                        "(default: the run's model.pt, else random weights with a warning)")  # fmt: skip
    parser.add_argument("--format", required=True, choices=("onnx", "tflite", "all"))
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory")
    shape = parser.add_argument_group("input")
    shape.add_argument("--input-size", type=int, help="input resolution (default: the run's dataset's, else 32)")
    shape.add_argument("--in-channels", type=int, help="input channels (default: the weights' or the dataset's)")
    shape.add_argument("--num-classes", type=int, help="classes (default: the weights' or the dataset's)")
    shape.add_argument("--dataset", help="for int8 calibration and the top-1 check (default: the run's, else digits)")
    shape.add_argument("--data-dir", help="folder of cifar10 or imagefolder data")
    out = parser.add_argument_group("output")
    out.add_argument("--quantize", choices=("fp16", "int8"), help="TFLite: fp16 weights, or int8 (calibrated)")
    out.add_argument("--layout", choices=("nchw", "nhwc"), default="nchw",
                     help="input layout (default nchw, as PyTorch; nhwc for mobile apps)")  # fmt: skip
    out.add_argument("--dynamic-batch", action="store_true", help="ONNX: a dynamic batch dimension")
    check = parser.add_argument_group("checks")
    check.add_argument("--threads", type=int, default=1, help="runtime threads for the latency (default 1)")
    check.add_argument("--calibration-batches", type=int, default=4,
                       help="int8: training batches of 32 to calibrate on (default 4)")  # fmt: skip
    check.add_argument("--test-samples", type=int,
                       help="test-split examples for the top-1 agreement (default: all)")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from hwnas.export import ExportOptions, export_network, resolve_spec

    quiet_exporters()
    spec = resolve_spec(
        run=args.run_path,
        genotype=args.genotype,
        weights=args.weights,
        shape=explicit(args, ALL_SHAPE_FIELDS),
        data=explicit(args, DATA_FLAGS),
        input_size=args.input_size,
        in_channels=args.in_channels,
        num_classes=args.num_classes,
    )
    options = ExportOptions(
        formats=("onnx", "tflite") if args.format == "all" else (args.format,),
        out=Path(args.out),
        quantize=args.quantize,
        layout=args.layout,
        dynamic_batch=args.dynamic_batch,
        threads=args.threads,
        calibration_batches=args.calibration_batches,
        test_samples=args.test_samples,
    )
    rows = export_network(spec, options)
    weights = spec.weights.origin if spec.weights is not None else "random (untrained)"
    print(f"network: {spec.space}, {spec.in_channels}x{spec.input_size}x{spec.input_size} input, "
          f"{spec.num_classes} classes, {rows[0].params} parameters, {rows[0].macs / 1e6:.1f}M MACs; "
          f"weights: {weights}")  # fmt: skip
    print(f"{'file':<20} {'input':<24} {'bytes':>10} {'max |err|':>10} {'top-1':>7} {'measured':>11} "
          f"{'predicted':>11}  converter")  # fmt: skip
    for row in rows:
        shape = f"{row.input_layout} {row.input_shape}"
        top1 = f"{row.top1_agreement:.4f}" if row.top1_agreement is not None else "-"
        predicted = f"{row.predicted_latency_ms:.3f} ms" if row.predicted_latency_ms is not None else "-"
        print(f"{row.file:<20} {shape:<24} {row.bytes:>10} {row.max_abs_error:>10.2e} {top1:>7} "
              f"{row.measured_latency_ms:>8.3f} ms {predicted:>11}  {row.opset_or_converter}")  # fmt: skip
    print(f"report: {Path(args.out) / 'export_report.json'}")
    return 0
