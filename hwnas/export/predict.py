"""The latency a runtime's lookup table predicts for an exported network: the table's network estimate, the
per-network correction a · Σ + b (when the table has one) of the sum of its layers' entries (ProxylessNAS, Cai
et al. 2019, Eq. 4), layers the table lacks filled in by the table's fitted predictor. The layers are the
space's `network_op_configs`."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from hwnas.errors import HwnasError
from hwnas.export.build import NetworkSpec
from hwnas.ops.opconfig import OpConfig
from hwnas.spaces import get_space

log = logging.getLogger(__name__)
TARGETS = {"onnx": "onnxruntime", "tflite": "tflite"}  # export format -> the table target of its runtime


@dataclass(frozen=True)
class Prediction:
    latency_ms: float
    table: str  # the table's file
    device: str  # what the table was measured on (its metadata.device)


def network_op_configs(spec: NetworkSpec) -> list[OpConfig]:
    return get_space(spec.space).network_op_configs(
        spec.genotype, spec.cfg, spec.input_size, spec.in_channels, spec.num_classes
    )


def predicted_latency(fmt: str, spec: NetworkSpec, threads: int) -> Prediction | None:
    """The table prediction for `spec` exported to `fmt` (float32, batch 1, `threads` threads) and the table it
    came from, or None when the runtime has no table for the space at this input size and thread count. A table
    measured on another machine is taken (none may exist for this one), with a warning."""
    from hwnas.latency.predictor import estimate_network
    from hwnas.latency.targets import machine_match, other_machine, profile_command, resolve_target, this_machine

    target = TARGETS[fmt]
    try:
        table = resolve_target(target, spec.space, spec.input_size)
    except HwnasError as err:
        log.info("no latency prediction for %s: %s", fmt, err)
        return None
    if table.metadata.threads not in (None, threads) or table.metadata.batch != 1:
        log.info("no latency prediction for %s: table %s is for %s thread(s), batch %d", fmt, table.path,
                 table.metadata.threads, table.metadata.batch)  # fmt: skip
        return None
    try:
        network = estimate_network([table], network_op_configs(spec), table)
    except HwnasError as err:
        log.info("no latency prediction for %s: %s", fmt, err)
        return None
    if network.predicted_layers:
        log.info("%d of %d layers are not in %s; the table's predictor estimates them", network.predicted_layers,
                 len(network.rows), table.path)  # fmt: skip
    if table.metadata.network_correction is None:
        log.info("%s has no network correction (hwnas profile --calibrate): predicting the plain sum", table.path)
    if machine_match(table) == 0:  # as a search warns: a VM's CPU name can hide other hardware (machine_match)
        log.warning("the %s latency prediction comes from %s, %s: it may not hold here (measure this machine's "
                    "table with `%s`)", fmt, table.path, other_machine(table, this_machine(target)),
                    profile_command(target, spec.space, spec.input_size))  # fmt: skip
    return Prediction(network.latency_ms, str(table.path), table.metadata.device)
