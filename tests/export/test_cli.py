"""`hwnas export` through a subprocess, as a user runs it."""

import json

import pytest


def test_export_a_train_run(cli, train_run, tmp_path):
    out = tmp_path / "out"
    result = cli("export", "--run", str(train_run), "--format", "onnx", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "model.onnx" in result.stdout and f"report: {out / 'export_report.json'}" in result.stdout
    (row,) = json.loads((out / "export_report.json").read_text())
    assert row["format"] == "onnx" and row["input_layout"] == "NCHW" and row["max_abs_error"] <= 1e-4
    assert row["check_informative"] is True  # a trained network's outputs vary with its input
    trained = json.loads((train_run / "summary.json").read_text())
    assert (row["params"], row["macs"]) == (trained["params"], trained["macs"]) and row["macs"] > 0
    assert f"{row['params']} parameters, {row['macs'] / 1e6:.1f}M MACs" in result.stdout


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["--init-channels", "8", "--format", "onnx"], "do not match the architecture"),
        (["--format", "onnx", "--quantize", "int8"], "--quantize applies to TFLite"),
        (["--format", "tflite"], 'pip install "hwnas[export]"'),  # with litert-torch unimportable
    ],
)
def test_bad_input_is_one_line_and_leaves_nothing(cli, train_run, tmp_path, monkeypatch, args, fragment):
    fake = tmp_path / "fake" / "litert_torch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError(\"No module named 'litert_torch'\")\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "fake"))
    out = tmp_path / "exports" / "out"
    result = cli("export", "--run", str(train_run), *args, "--out", str(out))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hwnas: error: ") and fragment in lines[0], result.stderr
    assert not (tmp_path / "exports").exists()
