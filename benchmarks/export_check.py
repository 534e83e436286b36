"""Exports checked the way a user meets them: trained networks' quantised agreement, and latency vs the tables.

- Agreement: DARTS_V2 and PROXYLESS_MOBILE trained on digits (`hwnas train`, --train-epochs), each exported by
  `hwnas export`'s pipeline to ONNX and to TFLite float32, fp16 and int8 (int8 calibrated on 4 training batches
  of 32). Reports max |error| on fresh random inputs and top-1 agreement with PyTorch on the whole digits test
  split (the export issue's goal: int8 ≥ 99%).
- Latency: --archs random mobile architectures at 224x224 (3 channels, 1000 classes: the shape the host tables
  were profiled at) exported to ONNX and TFLite float32 and timed on ONNX Runtime / the LiteRT interpreter with
  the profilers' protocol (1 thread), beside the latency the runtime's table predicts (its per-network
  correction a·Σ + b applied). Goal: measured within ±10% of the prediction.

    python benchmarks/export_check.py [--train-epochs 10] [--archs 12] [--json PATH]

Prints both tables and writes JSON (default benchmarks/results/export_check.json).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hwnas.config import SearchConfig, TrainConfig  # noqa: E402
from hwnas.export import ExportOptions, export_network, resolve_spec  # noqa: E402
from hwnas.profilers.protocol import machine_metadata  # noqa: E402
from hwnas.run import RunDir, write_json_atomic  # noqa: E402
from hwnas.spaces import get_space  # noqa: E402
from hwnas.train import run_train  # noqa: E402

TRAINED = ("DARTS_V2", "PROXYLESS_MOBILE")
VARIANTS = ((("onnx", "tflite"), None), (("tflite",), "fp16"), (("tflite",), "int8"))  # (formats, quantize)
TABLE_SHAPE = {"input_size": 224, "in_channels": 3, "num_classes": 1000}


def agreement_rows(genotype: str, epochs: int, workdir: Path) -> list[dict]:
    """Train `genotype` on digits, then export it in every variant; one row per exported file."""
    cfg = TrainConfig(genotype=genotype, epochs=epochs)
    run = workdir / f"train-{genotype}"
    t0 = time.perf_counter()
    result = run_train(cfg, RunDir.create(run, "train", cfg.to_json()), progress=False)
    train_s = time.perf_counter() - t0
    rows = []
    for formats, quantize in VARIANTS:
        spec = resolve_spec(run=str(run))
        out = workdir / f"export-{genotype}-{quantize or 'float32'}"
        for row in export_network(spec, ExportOptions(formats, out, quantize=quantize)):
            rows.append({"genotype": genotype, "train_epochs": epochs, "test_acc": result.test_acc,
                         "train_s": round(train_s), **row.to_json()})  # fmt: skip
    return rows


def latency_rows(n: int, seed: int, workdir: Path) -> list[dict]:
    """`n` random mobile architectures at the tables' shape: measured vs predicted latency per format."""
    supernet = get_space("mobile").build_supernet(SearchConfig(space="mobile"), 3, 1000)
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        genotype = supernet.sample(generator)
        path = workdir / f"random-{i}.json"
        genotype.save(path)
        spec = resolve_spec(genotype=str(path), **TABLE_SHAPE)
        for row in export_network(spec, ExportOptions(("onnx", "tflite"), workdir / f"export-random-{i}")):
            ratio = row.measured_latency_ms / row.predicted_latency_ms if row.predicted_latency_ms else None
            rows.append({"genotype": genotype.describe(), **row.to_json(), "measured_over_predicted": ratio})
        print(f"  {i + 1}/{n} {genotype.describe()}: " + ", ".join(
            f"{r['format']} {r['measured_latency_ms']:.2f} ms vs {r['predicted_latency_ms'] or float('nan'):.2f}"
            for r in rows[-2:]), flush=True)  # fmt: skip
    return rows


def summarise(rows: list[dict]) -> dict:
    out = {}
    for fmt in sorted({r["format"] for r in rows}):
        ratios = np.array([r["measured_over_predicted"] for r in rows if r["format"] == fmt])
        out[fmt] = {
            "n": int(len(ratios)),
            "within_10pct": float(np.mean(np.abs(ratios - 1) <= 0.10)),
            "within_5pct": float(np.mean(np.abs(ratios - 1) <= 0.05)),
            "ratio_median": float(np.median(ratios)),
            "ratio_min": float(ratios.min()),
            "ratio_max": float(ratios.max()),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-epochs", type=int, default=10, help="digits training before the agreement check")
    parser.add_argument("--archs", type=int, default=12, help="random mobile architectures for the latency check")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "export_check.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)  # the latency measurements use 1 runtime thread; keep training off the other core
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:  # latency first: the training after it may share the machine
        print(f"measured vs table-predicted latency, {args.archs} random mobile architectures at 224x224")
        latency = latency_rows(args.archs, args.seed, Path(tmp))
        print(f"\nagreement of trained networks' exports with PyTorch (digits test split, {args.train_epochs} epochs)")
        print(f"{'genotype':18s} {'acc':>6s} {'file':20s} {'bytes':>9s} {'max |err|':>10s} {'top-1':>7s} {'ms':>7s}")
        agreement = []
        for genotype in TRAINED:
            for row in agreement_rows(genotype, args.train_epochs, Path(tmp)):
                agreement.append(row)
                print(f"{genotype:18s} {row['test_acc']:6.4f} {row['file']:20s} {row['bytes']:9d} "
                      f"{row['max_abs_error']:10.3g} {row['top1_agreement']:7.4f} "
                      f"{row['measured_latency_ms']:7.3f}", flush=True)  # fmt: skip
    summary = summarise(latency)
    print(f"{'format':8s} {'n':>3s} {'±10%':>6s} {'±5%':>6s} {'median':>7s} {'min':>6s} {'max':>6s}"
          "  (measured/predicted)")  # fmt: skip
    for fmt, s in summary.items():
        print(f"{fmt:8s} {s['n']:3d} {s['within_10pct']:6.2f} {s['within_5pct']:6.2f} {s['ratio_median']:7.3f} "
              f"{s['ratio_min']:6.3f} {s['ratio_max']:6.3f}")  # fmt: skip
    write_json_atomic(args.json, {
        "settings": {**{k: str(v) for k, v in vars(args).items()}, "machine": machine_metadata(1, {}),
                     "wall_s": round(time.perf_counter() - started)},
        "agreement": agreement, "latency": latency, "latency_summary": summary})  # fmt: skip
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
