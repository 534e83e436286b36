"""The latency predictor on held-out entries of the real phone tables, against a FLOPs-proportional fit."""

import numpy as np
import pytest

from hwnas.errors import HwnasError
from hwnas.latency import predictor as predictor_module
from hwnas.latency.features import op_cost
from hwnas.latency.predictor import LatencyPredictor, estimate, predictor_for, predictor_path
from hwnas.latency.table import LatencyTable
from hwnas.ops.opconfig import OpConfig
from tests.latency.helpers import SHIPPED, make_table


def flops_baseline(train_ops, train_ms, test_ops):
    """latency = a · MACs, a fitted for relative error."""
    ratio = np.array([op_cost(op).macs for op in train_ops]) / np.asarray(train_ms)
    a = ratio.sum() / (ratio**2).sum()
    return a * np.array([op_cost(op).macs for op in test_ops])


def mape(predicted, actual):
    return float(np.mean(np.abs(np.asarray(predicted) - actual) / actual))


def test_pixel1_leave_one_block_shape_out():
    table = LatencyTable.load(SHIPPED / "mobile_mobile_224.json")
    ops = table.ops()
    shapes = {(op.input_shape, op.output_shape) for op in ops if op.kind == "expanded_conv"}
    errors, baseline = [], []
    for shape in shapes:
        train = [op for op in ops if (op.input_shape, op.output_shape) != shape]
        test = [op for op in ops if (op.input_shape, op.output_shape) == shape]
        train_ms, actual = [table.lookup(op) for op in train], np.array([table.lookup(op) for op in test])
        errors += list(np.abs(LatencyPredictor.fit(train, train_ms).predict(test) - actual) / actual)
        baseline += list(np.abs(flops_baseline(train, train_ms, test) - actual) / actual)
    assert np.mean(errors) <= 0.10
    assert np.mean(errors) < 0.5 * np.mean(baseline)


def test_note10_224_from_160_to_208():
    tables = {s: LatencyTable.load(SHIPPED / f"note10_ofa_{s}.json") for s in (160, 176, 192, 208, 224)}
    train = [(op, t.lookup(op)) for s, t in tables.items() if s != 224 for op in t.ops()]
    test = tables[224].ops()
    actual = np.array([tables[224].lookup(op) for op in test])
    train_ops, train_ms = [op for op, _ in train], [ms for _, ms in train]
    predicted = LatencyPredictor.fit(train_ops, train_ms).predict(test)
    assert mape(predicted, actual) <= 0.05
    assert mape(predicted, actual) < 0.5 * mape(flops_baseline(train_ops, train_ms, test), actual)


@pytest.mark.parametrize("expand", [3, 6])
def test_held_out_op_learns_from_its_siblings(monkeypatch, expand):
    """LiteRT's 7x7 depthwise at 112x112 (input beyond the L2 cache) costs ~2x per MAC what it does at any other
    shape: no shared cost term sees it, the other expansion ratio of the same layer does."""
    table = LatencyTable.load(SHIPPED / "tflite_mobile_224_xeon.json")
    key = f"expanded_conv-input:112x112x16-output:56x56x24-expand:{expand}-kernel:7-stride:2-idskip:0"
    train = [op for op in table.ops() if op.key() != key]
    train_ms, actual = [table.lookup(op) for op in train], table.entries[key].median_ms

    def error():
        return abs(LatencyPredictor.fit(train, train_ms).predict_one(OpConfig.from_key(key)) / actual - 1)

    with_siblings = error()
    monkeypatch.setattr(predictor_module, "SIBLING_PRIOR", 1e9)  # the booster alone
    assert with_siblings < 0.6 * error()


def test_save_load_and_staleness(tmp_path):
    table = LatencyTable.load(SHIPPED / "mobile_mobile_224.json")
    table = make_table(table.ops())
    table.save(tmp_path / "t.json")
    predictor = LatencyPredictor.fit_table(table)
    path = predictor.save(predictor_path(table), table)
    assert path == tmp_path / "t.predictor.pkl"
    assert predictor_for(table) is not predictor  # a fresh unpickled copy ...
    np.testing.assert_allclose(predictor_for(table).predict(table.ops()), predictor.predict(table.ops()))
    table.entries.pop(next(iter(table.entries)))  # ... refitted once the entries change
    assert predictor_for(table).predict(table.ops()).shape == (len(table),)
    path.write_bytes(b"not a pickle")
    assert predictor_for(table).predict(table.ops()[:1]).shape == (1,)


def test_estimate_marks_measured_and_predicted():
    pixel1 = LatencyTable.load(SHIPPED / "mobile_mobile_224.json")
    known = pixel1.ops()[0]
    other = OpConfig.from_key("expanded_conv-input:14x14x80-output:14x14x80-expand:4-kernel:3-stride:1-idskip:1")
    (op1, ms1, measured1), (op2, ms2, measured2) = estimate([pixel1], [known, other])
    assert (op1, ms1, measured1) == (known, pixel1.lookup(known), True)
    e3 = pixel1.lookup(OpConfig.from_key(other.key().replace("expand:4", "expand:3")))
    e6 = pixel1.lookup(OpConfig.from_key(other.key().replace("expand:4", "expand:6")))
    assert not measured2 and e3 < ms2 < e6


def test_too_few_entries():
    ops = LatencyTable.load(SHIPPED / "mobile_mobile_224.json").ops()[:3]
    with pytest.raises(HwnasError, match="at least 8 measured ops"):
        LatencyPredictor.fit(ops, [1.0, 2.0, 3.0])


def test_a_layer_type_the_table_never_measured_is_refused_not_priced_free():
    """Fitted without the one classifier entry, the classifier's terms (fully connected MACs, pooling) have no
    fitted cost: the predictor priced it at 0 ms. A DARTS table has no 7x7 depthwise: it priced mobile's k7
    blocks below its k5 ones."""
    table = LatencyTable.load(SHIPPED / "tflite_mobile_224_epyc.json")
    logits = next(op for op in table.ops() if op.kind == "Logits")
    train = [op for op in table.ops() if op.kind != "Logits"]
    predictor = LatencyPredictor.fit(train, [table.lookup(op) for op in train])
    block = train[-1]
    assert predictor.can_predict([block, logits]).tolist() == [True, False]
    with pytest.raises(HwnasError, match=r"Logits-input:7x7x1280-output:1000'.* no fully connected layer"):
        predictor.predict([block, logits])
    darts = LatencyTable.load(SHIPPED / "onnxruntime_darts_32_epyc.json")
    k5, k7 = (
        OpConfig.from_key(f"expanded_conv-input:28x28x40-output:14x14x80-expand:3-kernel:{k}-stride:2-idskip:0")
        for k in (5, 7)
    )
    darts_predictor = LatencyPredictor.fit_table(darts)
    assert darts_predictor.can_predict([k5, k7]).tolist() == [True, False]
    with pytest.raises(HwnasError, match="no 7x7 depthwise convolution"):
        darts_predictor.predict_one(k7)
