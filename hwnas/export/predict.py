"""The latency a runtime's lookup table predicts for an exported network: the sum of its layers' entries
(ProxylessNAS, Cai et al. 2019, Eq. 4), layers the table lacks filled in by the table's fitted predictor.

Layers: mobile networks, `MobileSpace.network_op_configs` (stem, MBConvs, head; the catalogue's shapes);
DARTS networks, the stem, every cell's chosen ops and the classifier, keyed as the DARTS tables are (the
cells' 1x1 preprocessing convolutions and concatenations have no entries, so this sum leaves them out, as
the search's latency term does).
"""

from __future__ import annotations

import logging

from hwnas.errors import HwnasError
from hwnas.export.build import NetworkSpec
from hwnas.ops.opconfig import OpConfig
from hwnas.spaces import get_space
from hwnas.spaces.darts import DartsGenotype, darts_op_config, reduction_layers

log = logging.getLogger(__name__)
TARGETS = {"onnx": "onnxruntime", "tflite": "tflite"}  # export format -> the table target of its runtime
DARTS_STEM_MULTIPLIER = 3  # DartsNetwork's default


def darts_network_op_configs(
    genotype: DartsGenotype,
    init_channels: int,
    layers: int,
    input_size: int,
    in_channels: int,
    num_classes: int,
) -> list[OpConfig]:
    """The table-keyed layers of a derived DARTS network: stem ``Conv``, each cell's ops, ``Logits``."""
    c_stem = DARTS_STEM_MULTIPLIER * init_channels
    configs = [OpConfig("Conv", (input_size, input_size, in_channels), (input_size, input_size, c_stem))]
    hw, c, c_out = input_size, init_channels, c_stem
    for i in range(layers):
        reduction = i in reduction_layers(layers)
        c = 2 * c if reduction else c
        edges, concat = (
            (genotype.reduce, genotype.reduce_concat) if reduction else (genotype.normal, genotype.normal_concat)
        )
        hw_out = (hw + 1) // 2 if reduction else hw
        for op, src in edges:
            stride = 2 if reduction and src < 2 else 1
            configs.append(darts_op_config(op, hw if src < 2 else hw_out, hw_out, c, stride))
        hw, c_out = hw_out, len(concat) * c
    return configs + [OpConfig("Logits", (hw, hw, c_out), (num_classes,))]


def network_op_configs(spec: NetworkSpec) -> list[OpConfig]:
    if isinstance(spec.genotype, DartsGenotype):
        cfg = spec.cfg
        return darts_network_op_configs(
            spec.genotype, cfg.init_channels, cfg.layers, spec.input_size, spec.in_channels, spec.num_classes
        )
    return get_space(spec.space).network_op_configs(spec.genotype, spec.input_size, spec.num_classes)


def predicted_latency_ms(fmt: str, spec: NetworkSpec, threads: int) -> float | None:
    """The table prediction for `spec` exported to `fmt` (float32, batch 1, `threads` threads), or None when
    the runtime has no table for the space at this input size and thread count."""
    from hwnas.latency.predictor import estimate
    from hwnas.latency.targets import resolve_target

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
        rows = estimate([table], network_op_configs(spec))
    except HwnasError as err:
        log.info("no latency prediction for %s: %s", fmt, err)
        return None
    lacking = sum(not measured for _op, _ms, measured in rows)
    if lacking:
        log.info("%d of %d layers are not in %s; the table's predictor estimates them", lacking, len(rows),
                 table.path)  # fmt: skip
    return float(sum(ms for _op, ms, _measured in rows))
