"""`hwnas profile`, `hwnas targets` and `hwnas predict` through the command line."""

import dataclasses
import json

import pytest
import torch

from hwnas.cli import main
from hwnas.config import SearchConfig
from hwnas.errors import HwnasError
from hwnas.latency.calibration import combine_rounds, load_measurements
from hwnas.latency.catalogue import space_op_configs
from hwnas.latency.table import LatencyTable, NetworkCorrection, TableEntry
from hwnas.profilers import Measurement, Protocol
from hwnas.profilers.protocol import cpu_signature
from hwnas.spaces.darts import DartsGenotype
from tests.latency.helpers import SHIPPED, make_table, of_this_machine

CORRECTION = NetworkCorrection(a=1.1, b_ms=0.2, architectures=3, fitted="2026-01-02", rmse_ms=0.1)
TINY = "--space darts --input-size 8 --init-channels 4 --layers 3 --runs 3 --warmup 1".split()


def test_profile_resumes_and_feeds_targets_and_predict(cli, user_tables, capsys):
    done = cli("profile", "--device", "cpu", *TINY, "--rounds", "2", "--primitives", "skip_connect,avg_pool_3x3")
    assert done.returncode == 0, done.stderr
    assert not (user_tables / "cpu_darts_8.json.rounds").exists()  # round files are merged and removed
    path = user_tables / "cpu_darts_8.json"
    first = LatencyTable.load(path, space="darts", input_size=8)
    assert first.metadata.threads == 1 and first.metadata.runtime == "pytorch"
    assert first.metadata.details["machine"]["threads"] == 1 and first.metadata.details["rounds"] == 2
    assert all(e.runs > 3 for e in first.entries.values())  # two rounds (processes) of up to 3 runs
    assert (user_tables / "cpu_darts_8.predictor.pkl").is_file()

    primitives = "skip_connect,avg_pool_3x3,max_pool_3x3"
    done = cli("profile", "--device", "cpu", *TINY, "--rounds", "1", "--primitives", primitives, "--no-progress")
    assert done.returncode == 0, done.stderr
    assert "job/s" not in done.stderr and "it/s" not in done.stderr  # no progress bar
    second = LatencyTable.load(path)
    new = set(second.entries) - set(first.entries)
    assert new and all(k.startswith("max_pool_3x3") for k in new)
    assert all(second.entries[k] == first.entries[k] for k in first.entries)  # kept, not re-measured
    assert f"({len(new)} measured now)" in done.stdout

    capsys.readouterr()
    assert main(["targets"]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert any(line.split()[:3] == ["cpu", "darts", "8"] and "user" in line for line in listing)

    key = "sep_conv_3x3-input:8x8x4-output:8x8x4-stride:1"
    assert main(["predict", "--table", "cpu", "--key", key, "--key", next(iter(first.entries)), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["measured"] for r in rows] == [False, True] and rows[0]["latency_ms"] > 0


def test_combine_rounds():
    rounds = [Measurement(1.0, 0.1, 30), Measurement(3.0, 0.3, 28), Measurement(1.2, 0.2, 29)]
    assert combine_rounds(rounds) == TableEntry(1.2, 0.2, 87)


def test_profile_refuses_a_table_of_another_device(cli, user_tables, tmp_path):
    out = tmp_path / "t.json"
    foreign = make_table(
        space_op_configs("darts", 8, SearchConfig(init_channels=4, layers=3)), space="darts", input_size=8
    )
    foreign.metadata = dataclasses.replace(foreign.metadata, runtime="onnxruntime")
    foreign.save(out)
    done = cli("profile", "--device", "cpu", *TINY, "--primitives", "skip_connect,none", "--out", str(out))
    assert done.returncode == 2
    assert "holds runtime 'onnxruntime', not 'pytorch'" in done.stderr


def test_profile_tflite_builtin_kernels_is_a_table_of_its_own(cli, user_tables):
    pytest.importorskip("ai_edge_litert")
    pytest.importorskip("litert_torch")
    args = ("profile", "--device", "tflite", *TINY, "--rounds", "1", "--primitives", "skip_connect")
    done = cli(*args, "--delegate", "cpu")
    assert done.returncode == 0, done.stderr
    table = LatencyTable.load(user_tables / "tflite_cpu_darts_8.json")  # answers to --target tflite_cpu
    assert table.metadata.target == "tflite_cpu" and table.metadata.details["delegate"] == "cpu"
    assert not (user_tables / "tflite_darts_8.json").exists()
    done = cli(*args, "--name", "tflite_cpu")  # XNNPACK's timings do not go into the builtin kernels' table
    assert done.returncode == 2
    assert "was measured with delegate cpu, not xnnpack; choose another --out" in done.stderr


def test_delegate_errors(user_tables, capsys):
    assert main(["profile", "--device", "cpu", "--space", "darts", "--delegate", "cpu"]) == 2
    assert main(["profile", "--device", "tflite", "--space", "darts", "--delegate", "gpu"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "hwnas: error: --delegate applies to --device tflite and android"
    assert err[1].startswith("hwnas: error: delegate 'gpu': the LiteRT interpreter here runs xnnpack or cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_gpu_without_cuda_exits_2_with_one_line(cli, user_tables):
    done = cli("profile", "--device", "gpu", "--space", "darts")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hwnas: error: --device gpu needs CUDA")


def test_predict_phone_table_at_another_resolution(cli, user_tables):
    done = cli("predict", "--table", "mobile", "--space", "mobile", "--input-size", "192", "--missing-only")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 70 and all(" predicted " in line for line in lines)


def test_predict_genotype_estimates_the_network_train_builds(user_tables, capsys):
    def layers(*flags):
        assert main(["predict", "--table", "cpu", "--genotype", "DARTS_V2", "--json", *flags]) == 0
        return [row["key"] for row in json.loads(capsys.readouterr().out)["layers"]]

    trained = layers()  # hwnas train's default shape: 16 channels, 8 cells (8 edges each)
    assert len(trained) == 2 + 8 * 8 and trained[0] == "Conv-input:32x32x3-output:32x32x48"
    searched = layers("--init-channels", "8", "--layers", "5")
    assert len(searched) == 2 + 5 * 8 and searched[0] == "Conv-input:32x32x3-output:32x32x24"


def test_predict_genotype_takes_the_shape_flags_of_its_space_only(user_tables, capsys):
    def stem(genotype, *flags):
        assert main(["predict", "--table", "mobile", "--genotype", genotype, "--json", *flags]) == 0
        return json.loads(capsys.readouterr().out)["layers"][0]["key"]

    assert stem("PROXYLESS_MOBILE") == "Conv-input:224x224x3-output:112x112x32"
    assert stem("PROXYLESS_MOBILE", "--width-mult", "0.5") == "Conv-input:224x224x3-output:112x112x16"
    for genotype, flag, value, space in (("PROXYLESS_MOBILE", "--layers", "3", "mobile"),
                                         ("PROXYLESS_MOBILE", "--stem", "imagenet", "mobile"),
                                         ("DARTS_V2", "--width-mult", "0.5", "darts")):  # fmt: skip
        assert main(["predict", "--table", "cpu", "--genotype", genotype, flag, value]) == 2
        assert capsys.readouterr().err.strip() == f"hwnas: error: {flag} do(es) not shape a network of space '{space}'"


def test_predict_refuses_tables_of_another_space(user_tables, capsys):
    """The Pixel 1 table holds MBConv blocks: it does not price a DARTS network (its predictor would)."""
    assert main(["predict", "--table", "mobile", "--genotype", "DARTS_V2"]) == 2
    assert (
        capsys.readouterr().err.strip() == "hwnas: error: target 'mobile' has no table for space 'darts' (only mobile)"
    )
    shipped = str(SHIPPED / "mobile_mobile_224.json")
    assert main(["predict", "--table", shipped, "--space", "darts"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hwnas: error: latency table ") and "darts" in err and len(err.splitlines()) == 1


def test_predict_errors(user_tables, capsys):
    assert main(["predict", "--table", "mobile"]) == 2
    assert main(["predict", "--table", "pixel9", "--space", "mobile"]) == 2
    assert main(["profile", "--device", "cpu", "--space", "nasbench"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "hwnas: error: nothing to predict: give --key KEY, --space SPACE or --genotype GENOTYPE"
    assert "no latency table for target 'pixel9'" in err[1]
    assert "unknown search space 'nasbench'; known: darts, mobile" in err[2]


def test_profile_calibrates_the_network_correction(cli, user_tables, capsys, tmp_path):
    args = ("profile", "--device", "cpu", *TINY, "--primitives", "skip_connect,sep_conv_5x5")  # sums far apart
    assert main([*args, "--rounds", "1", "--calibrate", "3"]) == 0  # ops, then 3 networks, in this process
    path = user_tables / "cpu_darts_8.json"
    first = LatencyTable.load(path)
    assert first.metadata.network_correction.architectures == 3
    assert "network correction a=" in capsys.readouterr().out

    done = cli(*args, "--rounds", "2", "--calibrate", "4")  # more networks: refitted over rounds in fresh processes
    assert done.returncode == 0, done.stderr
    table = LatencyTable.load(path)
    correction = table.metadata.network_correction
    assert correction.architectures == 4 and correction.a > 0 and correction.rmse_ms >= 0
    assert table.entries == first.entries  # only the correction changed
    assert sorted(p.name for p in user_tables.iterdir()) == ["cpu_darts_8.json", "cpu_darts_8.predictor.pkl"]
    assert main([*args, "--calibrate", "4"]) == 0  # already fitted on 4: nothing to measure
    assert "network correction" not in capsys.readouterr().out
    assert LatencyTable.load(path).metadata.network_correction == correction
    assert main([*args, "--recalibrate"]) == 2
    assert capsys.readouterr().err.strip() == "hwnas: error: --recalibrate goes with --calibrate N"
    assert main([*args, "--rounds", "1", "--calibrate", "4", "--recalibrate"]) == 0  # measured again, refitted
    assert "network correction a=" in capsys.readouterr().out
    refitted = LatencyTable.load(path)
    assert refitted.metadata.network_correction.architectures == 4 and refitted.entries == first.entries
    assert sorted(p.name for p in user_tables.iterdir()) == ["cpu_darts_8.json", "cpu_darts_8.predictor.pkl"]
    correction = refitted.metadata.network_correction

    capsys.readouterr()
    network_args = ["--input-size", "8", "--init-channels", "4", "--layers", "3", "--json"]
    assert main(["predict", "--table", str(path), "--genotype", "DARTS_V2", *network_args]) == 2
    assert capsys.readouterr().err.strip() == (  # its sep_conv_3x3 and dil_conv_3x3: no 3x3 depthwise measured
        "hwnas: error: cannot predict the latency of 'sep_conv_3x3-input:8x8x4-output:8x8x4-stride:1': "
        "its table measured no 3x3 depthwise convolution to learn that cost from"
    )
    table_ops = [(op, node) for op in ("sep_conv_5x5", "skip_connect") for node in (0, 1)]
    genotype = tmp_path / "genotype.json"
    DartsGenotype(table_ops * 2, (2, 3, 4, 5), table_ops * 2, (2, 3, 4, 5)).save(genotype)
    assert main(["predict", "--table", str(path), "--genotype", str(genotype), *network_args]) == 0
    network = json.loads(capsys.readouterr().out)
    assert network["latency_ms"] == pytest.approx(correction.a * network["sum_ms"] + correction.b_ms)
    assert network["sum_ms"] == pytest.approx(sum(row["latency_ms"] for row in network["layers"]))
    assert len(network["layers"]) == 2 + 3 * 8 and network["network_correction"]["architectures"] == 4


def _darts_table(**metadata) -> LatencyTable:
    """A TINY darts table as `hwnas profile --device cpu` measures it here, but for `metadata`."""
    table = of_this_machine(make_table(space_op_configs("darts", 8, SearchConfig(init_channels=4, layers=3)),
                                       space="darts", input_size=8))  # fmt: skip
    details = {**table.metadata.details, "protocol": {**Protocol(warmup_runs=1, runs=3).to_json(), "clock": "thread"}}
    table.metadata = dataclasses.replace(table.metadata, details=details, **metadata)
    return table


@pytest.mark.parametrize(
    ("metadata", "details", "message"),
    [
        ({"device": "Pixel 7"}, {}, "holds device 'Pixel 7', not "),  # another phone model's table at the default --out
        ({}, {"machine": {"cpu_signature": "family 6 model 1 stepping 1"}},
         "was measured on a CPU of signature 'family 6 model 1 stepping 1', not "),
        ({}, {"protocol": {**Protocol().to_json(), "clock": "thread"}},
         "was measured with runs 30, warmup_runs 10, not runs 3, warmup_runs 1"),
    ],
)  # fmt: skip
def test_profile_refuses_to_resume_a_table_measured_otherwise(user_tables, capsys, metadata, details, message):
    if "machine" in details and not cpu_signature():
        pytest.skip("this machine's CPU has no signature")
    table = _darts_table(**metadata)
    table.metadata.details.update(details)
    out = table.save(user_tables / "cpu_darts_8.json")
    before = out.read_text()
    assert main(["profile", "--device", "cpu", *TINY, "--primitives", "skip_connect,none"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"hwnas: error: {out} {message}") and err.endswith("; choose another --out")
    assert out.read_text() == before


def test_profile_refuses_to_resume_rounds_measured_otherwise(user_tables, capsys):
    """A run stopped before the table existed leaves only its rounds: another protocol does not add to them."""
    rounds = user_tables / "cpu_darts_8.json.rounds"
    _darts_table(threads=2).save(rounds / "round1.json")
    assert main(["profile", "--device", "cpu", *TINY, "--primitives", "skip_connect,none", "--rounds", "2"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"hwnas: error: {rounds / 'round1.json'} holds threads 2, not 1; re-run with the options it was measured "
        f"with, or delete {rounds}"
    )
    assert sorted(p.name for p in user_tables.rglob("*")) == ["cpu_darts_8.json.rounds", "round1.json"]


def test_profile_keeps_the_networks_of_rounds_when_the_fit_fails(user_tables, capsys, monkeypatch):
    from hwnas.cli import profile

    def noisy(sums, measured):
        raise HwnasError("the fitted network correction has slope -0.1 <= 0: the measurements are too noisy")

    monkeypatch.setattr(profile, "fit_network_correction", noisy)
    args = ["profile", "--device", "cpu", *TINY, "--primitives", "skip_connect,none", "--calibrate", "3"]
    assert main([*args, "--rounds", "2", "--no-progress"]) == 2
    saved = user_tables / "cpu_darts_8.json.calibration.json"
    assert capsys.readouterr().err.strip().endswith(f"too noisy; delete {saved} to measure the networks again")
    assert not (user_tables / "cpu_darts_8.json.rounds").exists()
    measured = load_measurements(saved)
    assert len(measured) == 3 and all(e.runs > 3 for e in measured.values())  # the median of 2 rounds

    fitted = []
    monkeypatch.setattr(profile, "fit_network_correction", lambda sums, ms: fitted.append(ms) or CORRECTION)
    monkeypatch.setattr(profile, "in_fresh_process", lambda *_: pytest.fail("measured the networks again"))
    assert main([*args, "--rounds", "2"]) == 0
    assert sorted(fitted[0]) == sorted(e.median_ms for e in measured.values())
    assert LatencyTable.load(user_tables / "cpu_darts_8.json").metadata.network_correction == CORRECTION
    assert not saved.exists()


def test_profile_name_is_not_a_path(user_tables, capsys):
    assert main(["profile", "--device", "cpu", *TINY, "--name", "lab/cpu"]) == 2
    assert capsys.readouterr().err.strip() == (
        "hwnas: error: --name is the target's name, not a path: no path separator, got 'lab/cpu'"
    )
    assert not any(user_tables.rglob("*"))
