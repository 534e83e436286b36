"""The one search loop: every strategy runs through `run_search`.

Per epoch: fresh loaders whose order depends only on (seed, epoch), `strategy.step` on zipped train/val
batches, then derive, record and checkpoint atomically; within an epoch, a checkpoint every
`cfg.checkpoint_minutes` too. A run stopped at any point resumes from the last checkpoint with identical results,
since the model, optimisers, RNG state, step counter and the epoch's running metrics are restored.

Under torchrun (`hwnas.distributed`) every rank runs this loop on its shard of each global batch (`shard_loader`)
and the strategies average their gradients over the ranks; only rank 0 writes the run directory and shows
progress. The checkpoint holds no per-rank state, so any world size can resume it.

The supernet, and whatever a strategy builds, lives on the config's device (`hwnas.device`: a GPU when there is
one), batches are copied there from pinned memory, and a checkpoint saved on one device resumes on any other.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from tqdm import tqdm

from hwnas import distributed
from hwnas.complexity import count_macs, count_parameters
from hwnas.config import SearchConfig
from hwnas.data import check_data, check_steps, search_splits, shard_loader, trained_splits
from hwnas.device import memory_format, placement
from hwnas.errors import HwnasError
from hwnas.run import CheckpointClock, EpochSoFar, RunDir, rng_state, seed_everything, set_rng_state
from hwnas.spaces import get_space
from hwnas.strategies import STRATEGIES

log = logging.getLogger(__name__)


@dataclass
class SearchResult:
    genotype: Any
    history: list[dict[str, Any]]
    summary: dict[str, Any]


def _add_row(totals: dict[str, dict[str, float]], row: dict[str, float]) -> None:
    """Count one step's metrics into the epoch's running sums (a metric may be missing from some steps)."""
    for k, v in row.items():
        totals["sum"][k] = totals["sum"].get(k, 0.0) + v
        totals["count"][k] = totals["count"].get(k, 0) + 1


def _means(totals: dict[str, dict[str, float]]) -> dict[str, float]:
    return {k: totals["sum"][k] / totals["count"][k] for k in sorted(totals["sum"])}


def check_search_config(cfg: SearchConfig, processes: int = 1) -> None:
    """Everything about `cfg` that can be checked before a run directory is written, for `processes`."""
    cfg.validate()
    check_data(cfg.data, cfg.batch_size, processes, search=True)
    space = get_space(cfg.space)
    strategy = STRATEGIES.get(cfg.strategy)(cfg)
    space.check_search(cfg, strategy.supernet_options().get("partial_channels", 1))
    if cfg.fused:
        from hwnas.kernels.backend import requested

        requested()  # a bad $HWNAS_KERNELS, before the run directory is written
    if cfg.target is not None:
        supernet = space.build_supernet(cfg, 3, 10, **strategy.supernet_options())
        latency_model(cfg, space, supernet)


def latency_input_size(cfg: SearchConfig) -> int:
    if cfg.latency_input_size is not None:
        return cfg.latency_input_size
    return 224 if cfg.space == "mobile" else cfg.data.image_size


def latency_model(cfg: SearchConfig, space, supernet):
    """The target's LatencyModel for this supernet; rejects a budget below the space's fastest architecture."""
    from hwnas.latency.expected import LatencyModel
    from hwnas.latency.targets import resolve_target

    table = resolve_target(cfg.target, cfg.space, latency_input_size(cfg))
    model = LatencyModel(space, cfg.latency_network(), table, supernet)
    fastest = model.min_ms(supernet)
    if cfg.latency_ms < fastest:
        raise HwnasError(f"latency budget {cfg.latency_ms:g} ms is below the fastest architecture of the "
                         f"{cfg.space} space on target {cfg.target!r} ({fastest:.1f} ms)")  # fmt: skip
    return model


def run_search(
    cfg: SearchConfig,
    run: RunDir,
    progress: bool = True,
    on_step: Callable[[int, int], None] | None = None,
    plots: bool = True,
) -> SearchResult:
    """Search per `cfg` into `run`, continuing from its checkpoint when there is one (only rank 0 writes `run`);
    `plots`: draw the derived cells, α and the metrics into PNGs at the end."""
    cfg.validate()
    world, rank = distributed.world_size(), distributed.rank()
    distributed.check_batch_size(cfg.batch_size, world)
    place = placement(cfg.device, cfg.sync_bn, world)
    main = rank == 0
    seed_everything(cfg.seed)
    space = get_space(cfg.space)
    strategy = STRATEGIES.get(cfg.strategy)(cfg)
    strategy.placement = place
    splits, train_set, val_set = search_splits(cfg.data)
    check_steps(trained_splits(cfg.data, len(splits.train), search=True), cfg.batch_size, world)
    supernet = space.build_supernet(cfg, splits.in_channels, splits.num_classes, **strategy.supernet_options())
    supernet = place.module(supernet)  # built on the CPU from the seed, so it starts alike on every device
    strategy.prepare(supernet)
    latency = None
    if cfg.target is not None:
        from hwnas.latency.loss import LatencyObjective

        latency = latency_model(cfg, space, supernet)
        if main and latency.predicted_keys:
            log.warning("table %s lacks %d op configuration(s); predicted: %s", latency.table.name,
                        len(latency.predicted_keys), ", ".join(latency.predicted_keys))  # fmt: skip
        if main and cfg.latency_ms > latency.max_ms(supernet):
            log.warning("latency budget %g ms is above the slowest architecture on %s (%.1f ms): the constraint "
                        "is inactive", cfg.latency_ms, cfg.target, latency.max_ms(supernet))  # fmt: skip
        strategy.latency_objective = LatencyObjective(latency, cfg.latency_ms, cfg.latency_loss, cfg.latency_lambda,
                                                      cfg.latency_beta)  # fmt: skip
    history: list[dict[str, Any]] = []
    alpha_history: list[dict[str, Any]] = []
    start_epoch, wall_s = 0, 0.0
    state = run.load_checkpoint()
    so_far = EpochSoFar.from_checkpoint(state)
    if state is not None:
        try:
            supernet.load_state_dict(state["supernet"])
            strategy.load_state_dict(state["strategy"])
        except (KeyError, RuntimeError, ValueError) as err:
            raise HwnasError(f"checkpoint in {run.path} does not match this search config: {err}") from None
        if so_far is None:  # else once the epoch's loaders exist, as when it was saved
            set_rng_state(state["rng"], place.device)
        start_epoch, history, alpha_history = state["epoch"] + 1, state["history"], state["alpha_history"]
        if main:  # from the checkpoint: a stop between its save and the metrics' write may have left them a row behind
            run.write_metrics(history)
        wall_s = state["wall_s"]
        log.info("resuming %s after epoch %d%s", run.path, state["epoch"] + 1,
                 f" and {so_far.steps} steps of the next" if so_far else "")  # fmt: skip
    log.info("search: space=%s strategy=%s dataset=%s (%d train / %d val), %d epochs, %d supernet weights, "
             "%d process(es) on %s%s%s", cfg.space, cfg.strategy, cfg.data.dataset, len(train_set), len(val_set),
             cfg.epochs, sum(p.numel() for p in supernet.weights()), world, place.device,
             " (channels_last)" if memory_format(place.device) == torch.channels_last else "",
             " with SyncBatchNorm" if place.sync_bn else "")  # fmt: skip
    if cfg.fused:
        from hwnas.kernels.backend import backend_report

        log.info("fused mixed op backends: %s", backend_report())

    def checkpoint(epoch: int, so_far: EpochSoFar | None = None) -> None:
        """Rank 0 saves the search after `epoch` (and, mid-epoch, how far the next one got)."""
        if main:
            run.save_checkpoint({"epoch": epoch, "supernet": supernet.state_dict(), "strategy": strategy.state_dict(),
                                 "rng": rng_state(place.device), "history": history, "alpha_history": alpha_history,
                                 "wall_s": wall_s, "config": cfg.to_json(),
                                 "epoch_so_far": so_far and so_far.to_json()})  # fmt: skip
        clock.reset()

    clock = CheckpointClock(cfg.checkpoint_minutes)
    with clock:
        for epoch in range(start_epoch, cfg.epochs):
            t0 = time.perf_counter()
            strategy.start_epoch(epoch)
            supernet.train()
            done, totals = 0, {"sum": {}, "count": {}}
            if so_far is not None:
                done, totals, t0 = so_far.steps, so_far.totals, t0 - so_far.elapsed_s
                strategy.load_epoch_state(so_far.extra)
            loaders = [shard_loader(data, cfg.batch_size, cfg.seed + i, epoch, world, rank, place.pin_memory, done,
                                    cfg.data.workers) for i, data in enumerate((train_set, val_set))]  # fmt: skip
            steps = done + min(len(loader) for loader in loaders)
            bar = tqdm(zip(*loaders), total=steps, initial=done, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                       disable=not (progress and main), leave=False)  # fmt: skip
            if so_far is not None:  # the loaders' iterators have drawn, as they had when the checkpoint was saved
                set_rng_state(state["rng"], place.device)
                so_far = None
            for step, (train_batch, val_batch) in enumerate(bar, start=done):
                row = strategy.step(place.batch(train_batch), place.batch(val_batch))
                _add_row(totals, row)
                bar.set_postfix(loss=f"{row['train_loss']:.3f}", acc=f"{row['train_acc']:.3f}")
                if on_step is not None:
                    on_step(epoch, step)
                save, stop = clock.poll() if step + 1 < steps else (False, False)  # else the epoch's end saves
                if save:
                    averaged = {"sum": distributed.average_metrics(totals["sum"]), "count": totals["count"]}
                    elapsed_s = time.perf_counter() - t0
                    checkpoint(epoch - 1, EpochSoFar(epoch, step + 1, elapsed_s, averaged, strategy.epoch_state()))
                if stop:
                    raise clock.stopped()
            strategy.end_epoch(epoch)
            genotype = strategy.derive()
            wall_s += time.perf_counter() - t0
            row = {"epoch": epoch, **distributed.average_metrics(_means(totals)), **strategy.epoch_metrics(),
                   "epoch_s": time.perf_counter() - t0, "genotype": genotype.to_json()}  # fmt: skip
            history.append(row)
            alpha_history.append({g: p.detach().cpu().tolist() for g, p in supernet.probabilities().items()})
            checkpoint(epoch)
            if main:
                run.write_metrics(history)
                run.write_json("alphas.json", {"groups": _group_labels(supernet), "epochs": alpha_history})
            log.info("epoch %d/%d: %s", epoch + 1, cfg.epochs,
                     ", ".join(f"{k}={v:.4g}" for k, v in row.items() if isinstance(v, float)))  # fmt: skip
            if epoch + 1 < cfg.epochs and clock.poll()[1]:
                raise clock.stopped()

    genotype = strategy.derive()
    summary = {"final": history[-1] if history else {}, "wall_s": wall_s, "epochs": cfg.epochs, "space": cfg.space,
               "strategy": cfg.strategy, "dataset": cfg.data.dataset, "seed": cfg.seed,
               "world_size": world, "device": str(place.device)}  # fmt: skip
    summary["final"] = {k: v for k, v in summary["final"].items() if k != "genotype"}
    if latency is not None:
        genotype = _within_budget(cfg, latency, supernet, genotype, summary)
        if main:
            genotype = _measured_on_host(cfg, latency, supernet, genotype, summary)
    summary["genotype"] = genotype.to_json()
    if cfg.space == "mobile":
        summary["derived_size"] = deployed_size(cfg, space, genotype)
    if main:
        genotype.save(run.path / "genotype.json")
        run.write_json("summary.json", summary)
        if plots:
            _plots(run, genotype, history, alpha_history, supernet, summary)
    return SearchResult(genotype, history, summary)


def deployed_size(cfg: SearchConfig, space, genotype) -> dict[str, int]:
    """Parameters and MACs of a mobile genotype's network as deployed and as its latency table sees it: RGB at the
    latency resolution, the table's classes (ImageNet's 1000 for the mobile space), as papers report them."""
    size = latency_input_size(cfg)
    network = space.build_network(genotype, cfg, 3, space.table_classes)
    return {"input_size": size, "num_classes": space.table_classes, "params": count_parameters(network),
            "macs": count_macs(network, (3, size, size))}  # fmt: skip


def _within_budget(cfg: SearchConfig, latency, supernet, genotype, summary: dict[str, Any]):
    """Repair the derived architecture into the budget and record the latency fields of the summary."""
    from hwnas.latency.predictor import table_digest

    before_ms = latency.architecture_ms(supernet, genotype)
    genotype, changes = latency.repair(supernet, genotype, cfg.latency_ms)
    for change in changes:
        names = supernet.primitives
        moved = f" -> row {change['to_row']}" if "to_row" in change else ""
        log.info("budget repair: %s row %d: %s -> %s%s (%+.2f ms)", change["group"], change["row"],
                 names[change["from"]], names[change["to"]], moved, change["delta_ms"])  # fmt: skip
    table = latency.table
    summary.update({
        "target": cfg.target, "latency_budget_ms": cfg.latency_ms,
        "predicted_latency_ms": latency.architecture_ms(supernet, genotype), "argmax_latency_ms": before_ms,
        "repairs": changes, "latency_input_size": latency.input_size, "predicted_keys": latency.predicted_keys,
        "table": {"name": table.name, "target": table.metadata.target, "device": table.metadata.device,
                  "runtime": table.metadata.runtime, "source": table.metadata.source,
                  "sha256": table_digest(table), "path": str(table.path) if table.path else None},
    })  # fmt: skip
    if cfg.space == "darts":  # the network the budget is for
        priced = cfg.latency_network()
        summary["latency_network"] = {"init_channels": priced.init_channels, "layers": priced.layers,
                                      "stem": priced.stem}  # fmt: skip
    log.info("derived architecture: %.2f ms on %s (budget %.2f ms)", summary["predicted_latency_ms"], cfg.target,
             cfg.latency_ms)  # fmt: skip
    return genotype


TABLE_BAND = (0.90, 1.00)  # the search's constraint: the derived network's table estimate in [0.9 T, T]
MEASURED_TOLERANCE = 0.10  # a network timed end to end may differ from its table sum by this (issue 6's goal: ±10% T)
MEASURED_BAND = (0.90, 1.00)  # where the measured latency should land within that tolerance: under the budget
MEASURED_AIMS = ((0.92, 0.98), (0.92, 1.08))  # a re-derivation aims the measured latency here: in the band, else
# in the tolerance (margins of 0.02 T absorb the next measurement's noise)
AIM_MARGIN = 0.02  # where no aim is reachable inside the table band: the band's last 0.02 T towards it


def _band_miss(value_ms: float, budget_ms: float, band: tuple[float, float]) -> float:
    """How far `value_ms` lies outside band·T, as a fraction of T (0 inside)."""
    low, high = (f * budget_ms for f in band)
    return max(low - value_ms, value_ms - high, 0.0) / budget_ms


def _measured_rank(estimate_ms: float, measured_ms: float, budget_ms: float) -> tuple[float, float, float]:
    """Lower is better: the miss outside the table band, then outside the measured tolerance, then outside the
    measured band. The table band is never traded for a measurement: one network timed on a shared machine
    drifts by more than the tolerance within minutes (16% seen here), the table is a median over rounds with a
    correction fitted on many networks."""
    tolerance = (1.0 - MEASURED_TOLERANCE, 1.0 + MEASURED_TOLERANCE)
    return (_band_miss(estimate_ms, budget_ms, TABLE_BAND), _band_miss(measured_ms, budget_ms, tolerance),
            _band_miss(measured_ms, budget_ms, MEASURED_BAND))  # fmt: skip


def _rederive_aim(ratio: float) -> tuple[float, float]:
    """The table estimate to aim a re-derivation at, as fractions (low, high) of T, for networks measuring `ratio`
    x their estimate: the first measured aim whose image under 1/ratio meets the table band (both goals held),
    else the end of the table band nearest that image."""
    for low, high in MEASURED_AIMS:
        both = (max(low / ratio, TABLE_BAND[0]), min(high / ratio, TABLE_BAND[1]))
        if both[0] < both[1]:
            return both
    if MEASURED_AIMS[0][0] / ratio > TABLE_BAND[1]:  # the table overestimates: as slow as the band allows
        return TABLE_BAND[1] - AIM_MARGIN, TABLE_BAND[1]
    return TABLE_BAND[0], TABLE_BAND[0] + AIM_MARGIN


def _time_derived(options: dict[str, Any], rounds: int, cfg: SearchConfig, genotype, input_size: int) -> float:
    """The derived network, shaped as the latency term prices it, timed end to end by a host profiler, built as
    the table's calibration networks are and measured as they were: the median over `rounds` fresh processes."""
    from hwnas.latency.calibration import CalibrationNetwork, measure_in_fresh_processes

    network = CalibrationNetwork(cfg.space, genotype.to_json(), cfg.latency_network().to_json(), input_size)
    return measure_in_fresh_processes(network, options, rounds).median_ms


def _measured_on_host(cfg: SearchConfig, latency, supernet, genotype, summary: dict[str, Any]):
    """For a table measured by a host profiler: time the derived network end to end with that profiler (the
    table's batch, threads, protocol and rounds) and record it in `summary`; returns the genotype to keep.

    Where the table was measured on this machine and the network lands outside [0.9·T, T], re-derive up to
    `cfg.measured_repairs` times: the budget repair of `_within_budget`, aimed by `_rederive_aim` at the ratio
    measured / estimated over the tries so far (the table's error on this search's networks, e.g. after the
    machine's timings drifted since the table was made), then time the result. The try kept is the best by
    `_measured_rank`. A measurement that cannot run here is a warning: it must not fail a finished search.
    """
    from hwnas.latency.targets import HOST_DEVICES, is_shipped, machine_match, other_machine, profile_command
    from hwnas.profilers import Protocol, get_profiler

    meta = latency.table.metadata
    if meta.target not in HOST_DEVICES:  # tables whose profiler can time a network on this machine
        return genotype
    budget = cfg.latency_ms
    protocol = Protocol.from_json(meta.details.get("protocol", {}))
    options = {"device": meta.target, "threads": meta.threads or 1, "batch": meta.batch, "protocol": protocol}
    rounds = int(meta.details.get("rounds", 1))
    tried = []  # (genotype, table estimate, measured, the repair's changes that made it)

    def best():
        return min(tried, key=lambda t: _measured_rank(t[1], t[2], budget))

    try:
        with get_profiler(**options) as profiler:
            here = profiler.device_name()
        tried.append((genotype, summary["predicted_latency_ms"],
                      _time_derived(options, rounds, cfg, genotype, latency.input_size), []))  # fmt: skip
        log.info("derived architecture measured on %s (median of %d process(es)): %.2f ms (the table estimates "
                 "%.2f ms)", meta.target, rounds, tried[0][2], tried[0][1])  # fmt: skip
        mine = machine_match(latency.table) > 0
        if not mine:
            this_machine = profile_command(meta.target, cfg.space, latency.input_size, "--calibrate 60")
            log.warning("the %s table was %s: the derived network is not re-derived from measurements here "
                        "(measure this machine's table with `%s`)", meta.target, other_machine(latency.table, here),
                        this_machine)  # fmt: skip
        rederivations = cfg.measured_repairs if mine else 0
        while len(tried) <= rederivations and any(_measured_rank(*best()[1:3], budget)):
            ratio = sum(measured / estimate for _g, estimate, measured, _c in tried) / len(tried)
            low, high = _rederive_aim(ratio)
            candidate, changes = latency.repair(supernet, best()[0], high * budget, floor=low / high)
            if not changes:
                break
            estimate_ms = latency.architecture_ms(supernet, candidate)
            measured = _time_derived(options, rounds, cfg, candidate, latency.input_size)
            tried.append((candidate, estimate_ms, measured, changes))
            log.info("re-derived from the measurements (%.3fx the table's estimates), %d change(s): table %.2f ms, "
                     "measured %.2f ms", ratio, len(changes), estimate_ms, measured)  # fmt: skip
    except (HwnasError, ImportError, RuntimeError) as err:
        log.warning("could not time the derived network on %s: %s", meta.target, str(err).splitlines()[0])
        if not tried:
            summary["measured_latency_ms"] = None
            return genotype
    genotype, estimate_ms, measured, _changes = best()
    summary.update({
        "measured_latency_ms": measured, "measured_on": here, "measured_rounds": rounds,
        "predicted_latency_ms": estimate_ms,
        "measured_rederivations": [{"predicted_latency_ms": e, "measured_latency_ms": m, "changes": c}
                                   for _g, e, m, c in tried[1:]],
    })  # fmt: skip
    if budget <= latency.max_ms(supernet) and _band_miss(measured, budget, MEASURED_BAND) > 0:
        correction = meta.network_correction
        flags = [f"--calibrate {correction.architectures if correction else 50}", "--recalibrate"]
        if latency.table.path and not is_shipped(latency.table):  # a shipped table is refitted as a user copy
            flags.append(f"--out {latency.table.path}")
        refit = profile_command(meta.target, cfg.space, latency.input_size, *flags)
        log.warning("measured %.2f ms is %.2fx the %.2f ms budget, %+.0f%% off the table's %.2f ms; timings drift "
                    "with the machine's state: refit the table's network correction with `%s`", measured,
                    measured / budget, budget, 100 * (measured / estimate_ms - 1), estimate_ms, refit)  # fmt: skip
    return genotype


def _group_labels(supernet) -> dict[str, list[str]]:
    return {g: list(supernet.group_edges(g)[0].names) for g in supernet.alpha_groups() if supernet.group_edges(g)}


def _plots(run: RunDir, genotype, history, alpha_history, supernet, summary: dict[str, Any]) -> None:
    from hwnas import plots

    derived = {label: summary[key] for label, key in (("derived", "predicted_latency_ms"),
               ("derived, measured", "measured_latency_ms")) if summary.get(key) is not None}  # fmt: skip
    with plots.best_effort():
        plots.plot_genotype(genotype, run.path)
        plots.plot_alpha_history(alpha_history, _group_labels(supernet), run.path / "alphas.png")
        plots.plot_metrics(history, run.path / "metrics.png", summary.get("latency_budget_ms"), derived)
