"""Predict latency for op configurations a table lacks (other resolutions, widths, kernels, devices' gaps).

Two stages, fitted on a table's entries:

1. an additive cost model, latency ≈ Σ_t w_t · cost_t + b with w ≥ 0 over per-layer-type costs (1x1 MACs,
   depthwise MACs per kernel size, dense MACs, bytes moved by 1x1 and depthwise layers, ... see
   `hwnas.latency.features`), fitted for relative error; it extrapolates to unseen shapes;
2. a gradient-boosted correction of its log residual from the op's raw features (input/output shapes, kernel,
   expansion, stride, op type, FLOPs, params, bytes), the nn-Meter idea of learning what the cost model misses
   (Zhang et al., "nn-Meter", MobiSys 2021), kept shallow and shrunk because tables hold ~50–100 entries;
3. for an op whose siblings (the same layer but for its expansion ratio) are in the table, their mean log
   residual instead, shrunk towards the booster's by a pseudo-count (`SIBLING_PRIOR`): a random effect per layer
   geometry. It carries what only that layer shows, e.g. LiteRT/XNNPACK's 7x7 depthwise on the 112x112 input
   (about 2x its per-MAC cost on every other shape on the Xeon VMs: benchmarks/litert_depthwise.py), which no
   cost term shared across shapes can.

A layer type the table never measured (a cost term that is zero in every entry) gets no fitted cost at all, so an
op that has one is refused, not priced as if that layer were free (a DARTS table has no 7x7 depthwise
convolution; a table without its one classifier entry would price the classifier at 0 ms).

A fitted predictor is saved beside its table (``<table>.predictor.pkl``) with a digest of the entries it saw.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hwnas.errors import HwnasError
from hwnas.latency.features import COST_TERMS, TERM_LAYERS, cost_matrix
from hwnas.latency.table import LatencyTable
from hwnas.ops.opconfig import OpConfig

log = logging.getLogger(__name__)
MIN_ENTRIES = 8
MIN_LATENCY_MS = 1e-4  # floor for relative weights: ops that cost nothing (identity) would get infinite weight
PREDICTOR_VERSION = (*COST_TERMS, "siblings", "measured_terms")  # a saved predictor of another version is refitted
SIBLING_PRIOR = 0.25  # the booster's residual counts as this many siblings (latency_accuracy.py; see the README)


class LatencyPredictor:
    """Fitted by `fit`; `predict` gives milliseconds per op."""

    def __init__(self, weights: np.ndarray, kinds: tuple[str, ...], booster):
        self.weights, self.kinds, self.booster = weights, kinds, booster
        self.siblings: dict[tuple, list[float]] = {}  # layer geometry -> its entries' log residuals
        self.measured_terms = np.ones(len(COST_TERMS), dtype=bool)  # per cost term: some entry has it

    @classmethod
    def fit(cls, ops: list[OpConfig], latencies_ms, boost: bool = True) -> LatencyPredictor:
        from sklearn.ensemble import GradientBoostingRegressor
        from sklearn.linear_model import LinearRegression

        y = np.asarray(latencies_ms, dtype=float)
        if len(ops) < MIN_ENTRIES:
            raise HwnasError(f"a latency predictor needs at least {MIN_ENTRIES} measured ops, got {len(ops)}")
        terms, raw = cost_matrix(ops)
        design = np.c_[terms, np.ones(len(ops))]
        scale = 1.0 / np.maximum(y, MIN_LATENCY_MS)  # least squares on relative error
        linear = LinearRegression(positive=True, fit_intercept=False).fit(design * scale[:, None], y * scale)
        predictor = cls(linear.coef_, tuple(sorted({op.kind for op in ops})), None)
        predictor.measured_terms = (terms > 0).any(axis=0)
        if boost:
            base = predictor._linear(terms)
            residual = np.log(np.maximum(y, MIN_LATENCY_MS) / np.maximum(base, MIN_LATENCY_MS))
            booster = GradientBoostingRegressor(
                n_estimators=100, max_depth=2, learning_rate=0.05, subsample=0.8, random_state=0
            )
            predictor.booster = booster.fit(predictor._booster_features(ops, raw), residual)
            for op, r in zip(ops, residual):
                predictor.siblings.setdefault(_geometry(op), []).append(float(r))
        return predictor

    @classmethod
    def fit_table(cls, table: LatencyTable) -> LatencyPredictor:
        ops = table.ops()
        return cls.fit(ops, [table.lookup(op) for op in ops])

    def _linear(self, terms: np.ndarray) -> np.ndarray:
        return np.c_[terms, np.ones(len(terms))] @ self.weights

    def _booster_features(self, ops: list[OpConfig], raw: np.ndarray) -> np.ndarray:
        kinds = np.array([[op.kind == k for k in self.kinds] for op in ops], dtype=float).reshape(len(ops), -1)
        return np.c_[np.log1p(raw), kinds]

    def predict(self, ops: list[OpConfig]) -> np.ndarray:
        """Predicted latency (ms) of each op."""
        if not ops:
            return np.zeros(0)
        terms, raw = cost_matrix(ops)
        self._check_measured(ops, terms)
        latency = np.maximum(self._linear(terms), 0.0)
        if self.booster is not None:
            boosted = self.booster.predict(self._booster_features(ops, raw))
            siblings = [self.siblings.get(_geometry(op), []) for op in ops]
            residual = [(sum(s) + SIBLING_PRIOR * b) / (len(s) + SIBLING_PRIOR) for s, b in zip(siblings, boosted)]
            latency = latency * np.exp(residual)
        return latency

    def can_predict(self, ops: list[OpConfig]) -> np.ndarray:
        """Per op, whether every layer type it has was measured in the table this predictor was fitted on."""
        terms, _raw = cost_matrix(ops)
        return ~self._unmeasured(terms).any(axis=1)

    def _unmeasured(self, terms: np.ndarray) -> np.ndarray:
        return (terms > 0) & ~self.measured_terms  # (ops, terms)

    def _check_measured(self, ops: list[OpConfig], terms: np.ndarray) -> None:
        unmeasured = self._unmeasured(terms)
        if unmeasured.any():
            i, t = np.argwhere(unmeasured)[0]
            raise HwnasError(
                f"cannot predict the latency of {ops[i].key()!r}: its table measured no "
                f"{TERM_LAYERS[COST_TERMS[t]]} to learn that cost from"
            )

    def predict_one(self, op: OpConfig) -> float:
        return float(self.predict([op])[0])

    def save(self, path: str | Path, table: LatencyTable) -> Path:
        import sklearn

        from hwnas.run import _write_atomic

        payload = {"sklearn": sklearn.__version__, "version": PREDICTOR_VERSION, "digest": table_digest(table),
                   "predictor": self}  # fmt: skip
        _write_atomic(path, lambda f: pickle.dump(payload, f))
        return Path(path)


def _geometry(op: OpConfig) -> tuple:
    """What `op` shares with its siblings: everything but the expansion ratio."""
    return op.kind, op.input_shape, op.output_shape, tuple(a for a in op.attrs if a[0] != "expand")


def table_digest(table: LatencyTable) -> str:
    entries = {key: table.entries[key].median_ms for key in sorted(table.entries)}
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()


def predictor_path(table: LatencyTable) -> Path | None:
    return table.path.with_suffix(".predictor.pkl") if table.path is not None else None


def predictor_for(table: LatencyTable) -> LatencyPredictor:
    """The predictor saved beside `table` if fitted on these entries by this scikit-learn, else a new fit."""
    import sklearn

    path = predictor_path(table)
    if path is not None and path.is_file():
        try:
            with path.open("rb") as f:
                payload = pickle.load(f)
            fresh = (payload.get("sklearn"), payload.get("version"), payload.get("digest"))
            if fresh == (sklearn.__version__, PREDICTOR_VERSION, table_digest(table)):
                return payload["predictor"]
            log.info("%s is stale (other entries, predictor version or scikit-learn version); refitting", path)
        except (OSError, pickle.UnpicklingError, AttributeError, EOFError, TypeError) as err:
            log.warning("cannot read %s (%s); refitting", path, err)
    return LatencyPredictor.fit_table(table)


def estimate(tables: list[LatencyTable], configs: list[OpConfig]) -> list[tuple[OpConfig, float, bool]]:
    """(op, latency ms, measured?) per config: the tables' entry where one has it, else the prediction of a
    predictor fitted on all their entries (e.g. a target's tables at other input sizes)."""
    measured = {key: entry.median_ms for table in tables for key, entry in table.entries.items()}
    lacking = [op for op in configs if op.key() not in measured]
    predicted = {}
    if lacking:
        predictor = (
            predictor_for(tables[0])
            if len(tables) == 1
            else LatencyPredictor.fit([OpConfig.from_key(k) for k in measured], list(measured.values()))
        )
        predicted = dict(zip((op.key() for op in lacking), predictor.predict(lacking)))
    return [(op, measured.get(op.key(), predicted.get(op.key())), op.key() in measured) for op in configs]


@dataclass(frozen=True)
class NetworkEstimate:
    rows: list[tuple[OpConfig, float, bool]]  # per layer: (op, latency ms, measured?)
    sum_ms: float  # Σ over the layers
    latency_ms: float  # the table's network estimate: its per-network correction applied to the sum

    @property
    def predicted_layers(self) -> int:
        return sum(not measured for _op, _ms, measured in self.rows)


def estimate_network(
    tables: list[LatencyTable], layers: list[OpConfig], corrected_by: LatencyTable | None
) -> NetworkEstimate:
    """The latency of one network from its layers: entries (or predictions, see `estimate`) summed, then the
    per-network correction of `corrected_by` (the table for the network's space and input size; None: none)."""
    rows = estimate(tables, layers)
    total = float(sum(ms for _op, ms, _measured in rows))
    return NetworkEstimate(rows, total, float(corrected_by.network_ms(total)) if corrected_by else total)
