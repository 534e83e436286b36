"""How well do the latency tables predict whole networks? Random mobile architectures, measured end to end.

For each host runtime (ONNX Runtime, LiteRT/XNNPACK, PyTorch eager; 1 thread), ≥300 random architectures of
the mobile space (each non-first block skipped with probability --skip-prob, else a random MBConv candidate)
are exported once (cached), then timed as whole networks in --passes separate processes with the protocol the
runtime's table recorded (warm-up, runs, clock: a network is timed as the table's ops and calibration networks
were), each figure the median over processes of per-process medians. A pass times each network once, in a
window of ~0.3 s; on the shared 2-core VMs the same network's median moved by 6-11% between windows of one
process, as much as between processes (12 networks, 4 windows in each of 3 processes, early in session 10), and
an hour later the passes spread by 2% (ONNX Runtime): the neighbours' load comes and goes, so accuracy at ±5%
needs many windows, 10 passes by default. Each is compared with

(a) the raw table sum Σ_layers F(layer) (ProxylessNAS, Cai et al. 2019, Eq. 4);
(b) the table sum with a per-network correction a·sum + b, fitted on a disjoint set of ≥50 calibration
    architectures (whole networks run slower than the sum of their ops, e.g. memory traffic between layers)
    by `hwnas.latency.calibration.fit_network_correction`, the fit `hwnas profile --calibrate` stores;
(c) the predictor (hwnas.latency.predictor) trained on the table with that architecture's searched blocks'
    configurations held out, summed, with the same correction (the layers every architecture of the space
    shares, stem, first block, feature-mix conv and classifier, stay in: a table of the space always has them);
    `predictor_strict` holds out every layer of the architecture, those shared ones included, but looks up
    those of a layer type no other entry has (`predictor_strict_looked_up`: the stem, feature-mix conv and
    classifier), which the predictor refuses to price;
(d) the table's own network estimate, where `hwnas profile --calibrate` stored a correction in it (fitted on
    the networks `hwnas train` builds when the table was made: it carries that difference from (b) and the
    machine's drift since);

reporting RMSE, MAPE and the share within ±10% and ±5% (the nn-Meter accuracy metric: Zhang et al., MobiSys
2021). `predictor_worst_layer` names the held-out layer config the predictor misses by the most milliseconds
over all networks, with the scores (c) would reach were that one prediction exact. The predictor is also
scored on the real phone tables: leave-one-block-shape-out on the Pixel 1 table, and Note10 at 224 predicted
from 160-208.

    python benchmarks/latency_accuracy.py                      # everything; resumable (cache in --cache)
    python benchmarks/latency_accuracy.py --runtimes onnxruntime --archs 300 --passes 3
    python benchmarks/latency_accuracy.py --rescore            # score the stored timings again, measuring nothing

The JSON keeps every pass's timings (`arch_ids`, `passes_ms`), so that a changed predictor or correction can be
scored on the same measurements (`--rescore`, with the tables they were compared with) on any machine; results
written before that (`latency_accuracy.json`, the EPYC VM's) hold the scores only.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import logging
import os
import random
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from hwnas.latency.calibration import fit_network_correction
from hwnas.latency.catalogue import mobile_blocks, mobile_network_op_configs
from hwnas.latency.features import op_cost
from hwnas.latency.predictor import LatencyPredictor
from hwnas.latency.table import LatencyTable
from hwnas.latency.targets import resolve_target
from hwnas.ops.mbconv import MOBILE_PRIMITIVES
from hwnas.run import write_json_atomic

log = logging.getLogger("latency_accuracy")
ROOT = Path(__file__).resolve().parents[1]
RUNTIMES = ("onnxruntime", "tflite", "cpu")
INPUT_SIZE = 224
SHAPE = (1, 3, INPUT_SIZE, INPUT_SIZE)


# ----------------------------------------------------------------------------------------------------------
# architectures
# ----------------------------------------------------------------------------------------------------------


def sample_archs(n: int, skip_prob: float, seed: int) -> list[list[str]]:
    """`n` distinct random architectures: random MBConvs, non-first blocks skipped w.p. `skip_prob`."""
    rng, candidates = random.Random(seed), [p for p in MOBILE_PRIMITIVES if p != "zero"]
    blocks, archs, seen = mobile_blocks(INPUT_SIZE), [], set()
    while len(archs) < n:
        arch = ["zero" if not b.first and rng.random() < skip_prob else rng.choice(candidates) for b in blocks]
        if tuple(arch) not in seen:
            seen.add(tuple(arch))
            archs.append(arch)
    return archs


def arch_id(arch: list[str]) -> str:
    return hashlib.sha1(",".join(arch).encode()).hexdigest()[:16]


def build_network(arch: list[str]):
    """The whole network as the sequence of the very modules the profilers time one by one."""
    from torch import nn

    from hwnas.profilers.build import build_op

    return nn.Sequential(*(build_op(op) for op in mobile_network_op_configs(arch, INPUT_SIZE))).eval()


# ----------------------------------------------------------------------------------------------------------
# export (cached) and measurement (one process per pass)
# ----------------------------------------------------------------------------------------------------------


def model_path(cache: Path, runtime: str, arch: list[str]) -> Path:
    from hwnas.profilers import PROFILERS

    return Path(cache) / runtime / (arch_id(arch) + PROFILERS.get(runtime).suffix)


def _export_chunk(runtime: str, archs: list[list[str]], cache: str) -> int:
    from hwnas.profilers import get_profiler

    profiler = get_profiler(runtime)
    done = 0
    for arch in archs:
        path = model_path(Path(cache), runtime, arch)
        if path.exists():
            continue
        model = profiler.export(build_network(arch), SHAPE)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(model)
        os.replace(tmp, path)
        done += 1
    return done


def export_all(runtime: str, archs: list[list[str]], cache: Path, jobs: int) -> None:
    if runtime == "cpu":
        return
    (cache / runtime).mkdir(parents=True, exist_ok=True)
    todo = [a for a in archs if not model_path(cache, runtime, a).exists()]
    if not todo:
        return
    log.info("%s: exporting %d whole networks with %d jobs", runtime, len(todo), jobs)
    start = time.time()
    chunks = [todo[i :: jobs * 4] for i in range(jobs * 4)]
    import multiprocessing

    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        exported = sum(pool.map(_export_chunk, [runtime] * len(chunks), chunks, [str(cache)] * len(chunks)))
    log.info("%s: exported %d networks in %.0f s", runtime, exported, time.time() - start)


def table_protocol(table: LatencyTable):
    """The measurement protocol `table` was profiled with (the profilers' default where it recorded none)."""
    from hwnas.profilers import Protocol

    recorded = table.metadata.details.get("protocol")
    return Protocol.from_json(recorded) if recorded else Protocol()


def measure_pass(runtime: str, archs: list[list[str]], cache: Path, pass_index: int) -> dict[str, float]:
    """Median whole-network latency (ms) of every architecture, in this process, in a pass-specific order, by
    the protocol of the runtime's table."""
    from hwnas.profilers import get_profiler
    from hwnas.profilers.protocol import measure

    protocol = table_protocol(resolve_target(runtime, "mobile", INPUT_SIZE))
    profiler = get_profiler(runtime, threads=1, protocol=protocol)
    order = list(archs)
    random.Random(1000 + pass_index).shuffle(order)
    results = {}
    for arch in order:
        key = arch_id(arch)
        if runtime == "cpu":
            run_batch = profiler.prepare(build_network(arch), SHAPE)
        else:
            run_batch = profiler.load(model_path(cache, runtime, arch).read_bytes(), SHAPE)
        results[key] = measure(run_batch, protocol).median_ms
    return results


def pass_path(cache: Path, runtime: str, index: int) -> Path:
    """Where a pass's timings are cached: named by the protocol, so that a table profiled anew is not scored on
    networks timed the old way."""
    protocol = table_protocol(resolve_target(runtime, "mobile", INPUT_SIZE)).to_json()
    tag = hashlib.sha256(json.dumps(protocol, sort_keys=True).encode()).hexdigest()[:8]
    return cache / "measure" / f"{runtime}_{tag}_pass{index}.json"


def run_passes(runtime: str, archs_file: Path, archs: list[list[str]], cache: Path, passes: int) -> list[dict]:
    out = []
    for i in range(passes):
        path = pass_path(cache, runtime, i)
        if not path.exists() or set(json.loads(path.read_text())) != {arch_id(a) for a in archs}:
            log.info("%s: measuring pass %d/%d in a fresh process", runtime, i + 1, passes)
            start = time.time()
            subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--measure-pass",
                    runtime,
                    str(i),
                    "--archs-file",
                    str(archs_file),
                    "--cache",
                    str(cache),
                ],
                check=True,
            )
            log.info("%s: pass %d took %.0f s", runtime, i + 1, time.time() - start)
        out.append(json.loads(path.read_text()))
    return out


# ----------------------------------------------------------------------------------------------------------
# analysis
# ----------------------------------------------------------------------------------------------------------


def scores(predicted: np.ndarray, measured: np.ndarray) -> dict[str, float]:
    rel = np.abs(predicted - measured) / measured
    return {
        "within_10pct": float(np.mean(rel <= 0.10)),
        "within_5pct": float(np.mean(rel <= 0.05)),
        "mape": float(np.mean(rel)),
        "rmse_ms": float(np.sqrt(np.mean((predicted - measured) ** 2))),
    }


def held_out_predictions(
    table: LatencyTable, layers, kept: frozenset[str] = frozenset(), unpredictable: set[str] | None = None
) -> dict[str, float]:
    """Per layer config of the network, the latency (ms) a predictor fitted on the table without those configs
    predicts, but for the ones in `kept` (the layers every architecture shares) and those of a layer type no other
    entry has (the stem, feature-mix and classifier: nothing to predict them from), which it looks up, adding
    the latter to `unpredictable`."""
    held = [op for op in layers if op.key() not in kept]
    held_keys = {op.key() for op in held}
    train = [op for op in table.ops() if op.key() not in held_keys]
    predictor = LatencyPredictor.fit(train, [table.lookup(op) for op in train])
    priced = predictor.can_predict(held) if held else []
    if unpredictable is not None:
        unpredictable.update(op.key() for op, ok in zip(held, priced) if not ok)
    held = [op for op, ok in zip(held, priced) if ok]
    predicted = dict(zip((op.key() for op in held), predictor.predict(held).tolist()))
    return {op.key(): predicted[op.key()] if op.key() in predicted else table.lookup(op) for op in layers}


def network_sum(layers, per_config_ms: dict[str, float]) -> float:
    return float(sum(per_config_ms[op.key()] for op in layers))


def worst_predicted_layer(table: LatencyTable, layers, predictions, corrected, measured) -> dict:
    """The held-out layer config whose predictions miss the table by the most milliseconds summed over the
    networks, and the scores the predictor would reach were that one config's prediction exact: how much of
    the predictor's error one layer carries."""
    truth = {op.key(): table.lookup(op) for ls in layers for op in ls}
    missed = dict.fromkeys(truth, 0.0)
    for ls, pred in zip(layers, predictions):
        for op in ls:
            missed[op.key()] += abs(pred[op.key()] - truth[op.key()])
    key = max(missed, key=missed.get)
    exact = [{**pred, key: truth[key]} if key in pred else pred for pred in predictions]
    fixed = scores(corrected(np.array([network_sum(ls, p) for ls, p in zip(layers, exact)])), measured)
    errors = [pred[key] / truth[key] - 1 for pred in predictions if key in pred]
    return {
        "key": key,
        "networks_with_it": len(errors),
        "mean_error_pct": 100 * float(np.mean(errors)),
        "within_10pct_if_exact": fixed["within_10pct"],
        "within_5pct_if_exact": fixed["within_5pct"],
    }


def analyse(runtime: str, table: LatencyTable, archs: list[list[str]], passes: list[dict], n_cal: int) -> dict:
    ids = [arch_id(a) for a in archs]
    per_pass = np.array([[p[i] for i in ids] for p in passes])  # (passes, archs)
    measured = np.median(per_pass, axis=0)
    layers = [mobile_network_op_configs(a, INPUT_SIZE) for a in archs]
    sums = np.array([table.sum_ms(ls) for ls in layers])
    cal, test = slice(0, n_cal), slice(n_cal, len(archs))
    correction = fit_network_correction(sums[cal], measured[cal])  # what `hwnas profile --calibrate` stores
    a, b = correction.a, correction.b_ms
    shared = frozenset.intersection(*(frozenset(op.key() for op in ls) for ls in layers))
    start = time.time()
    held_out = [held_out_predictions(table, ls, shared) for ls in layers[test]]
    predicted = np.array([network_sum(ls, p) for ls, p in zip(layers[test], held_out)])
    unpredictable: set[str] = set()
    strict = np.array(
        [network_sum(ls, held_out_predictions(table, ls, unpredictable=unpredictable)) for ls in layers[test]]
    )
    log.info("%s: %d held-out predictor fits in %.0f s", runtime, 2 * len(predicted), time.time() - start)
    raw, corrected, pred, pred_strict = (
        scores(x, measured[test]) for x in (sums[test], a * sums[test] + b, a * predicted + b, a * strict + b)
    )
    spread = (per_pass.max(axis=0) - per_pass.min(axis=0)) / measured
    return {
        "n": int(len(measured[test])),
        "n_calibration": n_cal,
        "within_10pct_raw_sum": raw["within_10pct"],
        "within_5pct_raw_sum": raw["within_5pct"],
        "mape_raw_sum": raw["mape"],
        "rmse_raw_sum_ms": raw["rmse_ms"],
        "within_10pct_table": corrected["within_10pct"],
        "within_5pct_table": corrected["within_5pct"],
        "mape_table": corrected["mape"],
        "rmse_table_ms": corrected["rmse_ms"],
        "within_10pct_predictor": pred["within_10pct"],
        "within_5pct_predictor": pred["within_5pct"],
        "mape_predictor": pred["mape"],
        "rmse_predictor_ms": pred["rmse_ms"],
        "predictor_shared_layers": sorted(shared),
        "predictor_worst_layer": worst_predicted_layer(
            table, layers[test], held_out, lambda total: a * total + b, measured[test]
        ),
        "within_10pct_predictor_strict": pred_strict["within_10pct"],
        "within_5pct_predictor_strict": pred_strict["within_5pct"],
        "mape_predictor_strict": pred_strict["mape"],
        "rmse_predictor_strict_ms": pred_strict["rmse_ms"],
        "predictor_strict_looked_up": sorted(unpredictable),  # held out, but of a layer type no other entry has
        "correction": {"a": a, "b_ms": b},
        # the correction stored in the table by `hwnas profile --calibrate` (its own architectures), if any
        "stored_correction": None
        if table.metadata.network_correction is None
        else {
            "fit": table.metadata.network_correction.to_json(),
            **scores(np.array([table.network_ms(s) for s in sums[test]]), measured[test]),
        },
        "whole_over_sum_median": float(np.median(measured / sums)),
        "measured_ms": {
            "min": float(measured.min()),
            "median": float(np.median(measured)),
            "max": float(measured.max()),
        },
        "passes": len(passes),
        "pass_medians_ms": [float(x) for x in np.median(per_pass, axis=1)],  # drifts with the machine's load
        "pass_spread_median": float(np.median(spread)),
        "arch_ids": ids,
        "passes_ms": [[round(float(ms), 5) for ms in row] for row in per_pass],
        "table": {
            "path": str(table.path.relative_to(ROOT)) if table.path else None,
            "device": table.metadata.device,
            "date": table.metadata.date,
            "runtime_version": table.metadata.runtime_version,
            "protocol": table_protocol(table).to_json(),  # the whole networks' too
        },
    }


def phone_table_scores(tables_dir: Path) -> dict:
    """The predictor on held-out entries of the published phone tables, beside a FLOPs-proportional fit."""

    def flops_fit(train, y, test):
        ratio = np.array([op_cost(op).macs for op in train]) / np.asarray(y)
        return ratio.sum() / (ratio**2).sum() * np.array([op_cost(op).macs for op in test])

    def summary(pred, base, actual):
        rel = np.abs(pred - actual) / actual
        return {
            "n": int(len(actual)),
            "mape": float(rel.mean()),
            "within_10pct": float(np.mean(rel <= 0.1)),
            "mape_flops_baseline": float(np.mean(np.abs(base - actual) / actual)),
        }

    pixel1 = LatencyTable.load(tables_dir / "mobile_mobile_224.json")
    ops = pixel1.ops()
    pred, base, actual = [], [], []
    for shape in sorted({(op.input_shape, op.output_shape) for op in ops if op.kind == "expanded_conv"}):
        train = [op for op in ops if (op.input_shape, op.output_shape) != shape]
        test = [op for op in ops if (op.input_shape, op.output_shape) == shape]
        y = [pixel1.lookup(op) for op in train]
        pred += list(LatencyPredictor.fit(train, y).predict(test))
        base += list(flops_fit(train, y, test))
        actual += [pixel1.lookup(op) for op in test]
    result = {"pixel1_leave_one_block_shape_out": summary(np.array(pred), np.array(base), np.array(actual))}
    note10 = {s: LatencyTable.load(tables_dir / f"note10_ofa_{s}.json") for s in (160, 176, 192, 208, 224)}
    train = [op for s in (160, 176, 192, 208) for op in note10[s].ops()]
    y = [note10[s].lookup(op) for s in (160, 176, 192, 208) for op in note10[s].ops()]
    test = note10[224].ops()
    actual = np.array([note10[224].lookup(op) for op in test])
    result["note10_224_from_160_208"] = summary(
        LatencyPredictor.fit(train, y).predict(test), flops_fit(train, y, test), actual
    )
    return result


# ----------------------------------------------------------------------------------------------------------


def rescore(path: Path, tables_dir: Path) -> int:
    """Score the timings stored in `path` again, against the tables they were compared with: no measuring."""
    stored = json.loads(path.read_text())
    for runtime in RUNTIMES:
        old = stored.get(runtime)
        if old is None:
            continue
        if "passes_ms" not in old:
            log.warning("%s: %s keeps no per-pass timings (measured before they were stored); kept", runtime, path)
            continue
        settings = old.get("settings", stored["settings"])  # a runtime's own: runs into one file may differ
        sampled = sample_archs(settings["calibration"] + settings["archs"], settings["skip_prob"], settings["seed"])
        by_id = {arch_id(a): a for a in sampled}
        table = LatencyTable.load(ROOT / old["table"]["path"])
        if table.metadata.date != old["table"]["date"]:
            log.warning("%s: %s was re-profiled (%s) since these timings (%s)", runtime, table.path,
                        table.metadata.date, old["table"]["date"])  # fmt: skip
        archs = [by_id[i] for i in old["arch_ids"]]
        passes = [dict(zip(old["arch_ids"], row)) for row in old["passes_ms"]]
        stored[runtime] = analyse(runtime, table, archs, passes, old["n_calibration"])
        if "settings" in old:
            stored[runtime]["settings"] = settings
        log.info("%s: %s", runtime, json.dumps({k: v for k, v in stored[runtime].items() if "pct" in k}))
    stored["phone_tables"] = phone_table_scores(tables_dir)
    write_json_atomic(path, stored)
    log.info("rescored %s", path)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runtimes", default=",".join(RUNTIMES))
    parser.add_argument("--archs", type=int, default=300, help="evaluated architectures")
    parser.add_argument("--calibration", type=int, default=50, help="disjoint architectures fitting a·sum+b")
    parser.add_argument("--skip-prob", type=float, default=0.3)
    parser.add_argument("--passes", type=int, default=10, help="measurement processes per runtime")
    parser.add_argument("--jobs", type=int, default=2, help="parallel exports")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tables", type=Path, default=ROOT / "latency_tables", help="where the phone tables are")
    parser.add_argument("--cache", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "hwnas_latency_accuracy")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "latency_accuracy.json")
    parser.add_argument("--export-only", action="store_true", help="only export (and cache) the networks")
    parser.add_argument(
        "--exported-only", action="store_true", help="measure only the networks exported so far (no export)"
    )
    parser.add_argument("--rescore", action="store_true", help="score the timings stored in --out again")
    parser.add_argument("--measure-pass", nargs=2, metavar=("RUNTIME", "INDEX"), help=argparse.SUPPRESS)
    parser.add_argument("--archs-file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for name in ("torch", "onnx_ir", "onnxscript", "absl"):
        logging.getLogger(name).setLevel(logging.WARNING)

    if args.rescore:
        return rescore(args.out, args.tables)
    if args.measure_pass:
        runtime, index = args.measure_pass[0], int(args.measure_pass[1])
        archs = json.loads(args.archs_file.read_text())
        write_json_atomic(
            pass_path(args.cache, runtime, index),
            measure_pass(runtime, archs, args.cache, index),
        )
        return 0

    started = time.time()
    archs = sample_archs(args.calibration + args.archs, args.skip_prob, args.seed)
    args.cache.mkdir(parents=True, exist_ok=True)
    runtimes = args.runtimes.split(",")
    for runtime in runtimes:
        if not args.exported_only:
            export_all(runtime, archs, args.cache, args.jobs)
    if args.export_only:
        return 0
    settings = {
        "archs": args.archs,
        "calibration": args.calibration,
        "skip_prob": args.skip_prob,
        "seed": args.seed,
        "passes": args.passes,
        "threads": 1,
        "input_size": INPUT_SIZE,
        "date": datetime.date.today().isoformat(),
        "machine": _machine(),
    }
    results = {}
    for runtime in runtimes:
        table = resolve_target(runtime, "mobile", INPUT_SIZE)  # this machine's table first, as a search takes
        chosen = archs
        if args.exported_only and runtime != "cpu":
            chosen = [a for a in archs if model_path(args.cache, runtime, a).exists()]
            log.info("%s: %d of %d architectures exported so far", runtime, len(chosen), len(archs))
        n_cal = sum(1 for a in archs[: args.calibration] if a in chosen)
        chosen_file = args.cache / f"archs_{runtime}_{len(chosen)}.json"
        write_json_atomic(chosen_file, chosen)
        passes = run_passes(runtime, chosen_file, chosen, args.cache, args.passes)
        # each runtime keeps the settings it was measured with: a later run of other runtimes into the same file
        # replaces the top-level ones, which --rescore would otherwise rebuild these architectures from
        results[runtime] = {**analyse(runtime, table, chosen, passes, n_cal), "settings": settings}
        log.info("%s: %s", runtime, json.dumps({k: v for k, v in results[runtime].items() if "pct" in k}))
    results["phone_tables"] = phone_table_scores(args.tables)
    results["settings"] = {**settings, "wall_s_last_run": round(time.time() - started)}
    merged = json.loads(args.out.read_text()) if args.out.exists() else {}  # other runtimes' earlier results
    write_json_atomic(args.out, {**merged, **results})
    log.info("wrote %s", args.out)
    return 0


def _machine() -> dict:
    from hwnas.profilers.protocol import machine_metadata

    return machine_metadata(1, {})


if __name__ == "__main__":
    sys.exit(main())
