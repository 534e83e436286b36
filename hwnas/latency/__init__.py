"""Latency lookup tables: the op catalogue of each space, the table format, discovery, conversion of the
published phone tables, a predictor for configurations a table lacks, and the per-network correction."""

from hwnas.latency.catalogue import (
    mobile_blocks,
    mobile_network_op_configs,
    mobile_op_configs,
    space_op_configs,
)
from hwnas.latency.predictor import LatencyPredictor, NetworkEstimate, estimate, estimate_network, predictor_for
from hwnas.latency.table import LatencyTable, NetworkCorrection, TableEntry, TableMetadata
from hwnas.latency.targets import TableInfo, list_tables, resolve_target, user_table_dir

__all__ = [
    "LatencyPredictor",
    "LatencyTable",
    "NetworkCorrection",
    "NetworkEstimate",
    "TableEntry",
    "TableInfo",
    "TableMetadata",
    "estimate",
    "estimate_network",
    "list_tables",
    "mobile_blocks",
    "mobile_network_op_configs",
    "mobile_op_configs",
    "predictor_for",
    "resolve_target",
    "space_op_configs",
    "user_table_dir",
]
