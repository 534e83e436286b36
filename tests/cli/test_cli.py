"""The CLI through a subprocess, as a user runs it: smoke runs and every bad input (one line, exit code 2)."""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from hwnas.spaces.darts import DARTS_V1, DARTS_V2
from tests.conftest import ROOT

# on the CPU even where there is a GPU, as tests/conftest.py's tiny configs
PLOTTED = ["--dataset", "fake", "--image-size", "8", "--init-channels", "4", "--layers", "3", "--batch-size", "16",
           "--no-progress", "--device", "cpu"]  # fmt: skip
TINY = [*PLOTTED, "--no-plots"]  # the PNGs take a tiny search 3 s
needs_torchvision = pytest.mark.skipif(importlib.util.find_spec("torchvision") is None,
                                       reason="torchvision (extra `vision`) not installed")  # fmt: skip


def _one_line_error(result, *fragments):
    """Exit code 2, no traceback, and one `hwnas: error:` line (log lines may precede it) naming the problem."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("hwnas: error: ")]
    assert len(errors) == 1 and result.stderr.strip().endswith(errors[0]), result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def test_search_train_resume_smoke(cli, tmp_path):
    run = tmp_path / "search"
    result = cli("search", *TINY, "--epochs", "1", "--run-dir", str(run))  # TINY has --device cpu
    assert result.returncode == 0, result.stderr
    assert "genotype:" in result.stdout and (run / "genotype.json").is_file() and not list(run.glob("*.png"))
    assert json.loads((run / "summary.json").read_text())["device"] == "cpu"
    # resume extends the finished run by one epoch, loading its batches in a process of its own, on another device
    result = cli("search", "--resume", str(run), "--epochs", "2", "--workers", "1", "--device", "auto",
                 "--no-progress")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    config = json.loads((run / "config.json").read_text())["config"]
    assert config["data"]["workers"] == 1 and config["device"] == "auto"
    train_run = tmp_path / "train"
    result = cli("train", *PLOTTED, "--genotype", str(run / "genotype.json"), "--epochs", "1", "--run-dir",
                 str(train_run))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "test accuracy:" in result.stdout and "parameters:" in result.stdout
    assert (train_run / "model.pt").is_file() and (train_run / "metrics.png").is_file()
    summary = json.loads((train_run / "summary.json").read_text())
    assert summary["params"] > 0 and summary["device"] == "cpu"


def _sigint_default():
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # a shell starts background jobs with SIGINT ignored


@pytest.mark.parametrize(
    "command,how,nproc",
    [("search", "ctrl_c", None), ("search", "sigterm", None), ("search", "ctrl_c", 2), ("search", "sigterm", 2),
     ("train", "ctrl_c", 2), ("train", "sigterm", 2)],
)  # fmt: skip
def test_a_stopped_run_says_once_how_to_continue(cli, tmp_path, command, how, nproc):
    """Mid-run, Ctrl-C (SIGINT to the whole process group, as a terminal sends it) or SIGTERM (to the process
    started, as `kill` or a cluster's preemption sends it): one line naming the command that continues the run,
    exit code 128 + the signal, and that command finishes it (the same one after either signal: run once per launch).
    SIGTERM stops at the next step after a checkpoint."""
    run = tmp_path / "run"
    launch = ["--nproc", str(nproc)] if nproc else []
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    with (tmp_path / "stderr").open("w") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "hwnas", command, *TINY, "--epochs", "100", *launch,
                                    "--run-dir", str(run)], stderr=stderr, stdout=subprocess.DEVNULL, env=env,
                                   start_new_session=True, preexec_fn=_sigint_default)  # fmt: skip
        deadline = time.monotonic() + 120
        while not (run / "metrics.jsonl").is_file() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        signalled = time.time()
        if how == "ctrl_c":
            os.killpg(process.pid, signal.SIGINT)
        else:
            process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=60)
    lines = (tmp_path / "stderr").read_text().splitlines()
    resume = f"hwnas {command} --resume {run}{f' --nproc {nproc}' if nproc else ''}"
    reason = {"ctrl_c": "interrupted", "sigterm": "stopped by SIGTERM"}[how]
    if how == "sigterm" and not nproc:  # the process itself says it checkpointed (a launcher cannot know)
        reason += " after a checkpoint"
    stopped = [line for line in lines if line.startswith("hwnas: ")]
    assert stopped == [f"hwnas: {reason}; continue with: {resume}"] and lines[-1] == stopped[0], lines
    assert code == {"ctrl_c": 130, "sigterm": 143}[how], lines
    assert not any("Traceback" in line or "death signal" in line for line in lines), lines
    if how == "sigterm":  # saved when told to stop, not only at the last epoch's end (mtimes lag a clock tick)
        assert (run / "checkpoint.pt").stat().st_mtime >= signalled - 0.05, lines
    if how == "sigterm" and nproc:  # its resume is the ctrl_c case's
        return
    done = len((run / "metrics.jsonl").read_text().splitlines())
    result = cli(*resume.split()[1:], "--epochs", str(done + 1), "--no-progress")
    assert result.returncode == 0, result.stderr
    assert len((run / "metrics.jsonl").read_text().splitlines()) == done + 1


def test_info_lists_versions_and_backends(cli):
    result = cli("info", "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["versions"]["torch"] != "not installed"
    assert (info["backends"]["cuda"] == "not available") == (not torch.cuda.is_available())
    assert info["backends"]["kernels_cpu"] in ("native", "reference")
    pixel1 = [t for t in info["latency_tables"] if t["name"] == "mobile"]
    assert [(t["device"], t["space"], t["input_size"], t["taken_by_target"]) for t in pixel1] == [
        ("Google Pixel 1", "mobile", 224, True)
    ]
    assert pixel1[0]["path"].endswith("mobile_mobile_224.json")


def test_published_genotype_by_name(cli, tmp_path):
    result = cli("train", *TINY, "--genotype", "DARTS_V1", "--epochs", "1", "--run-dir", str(tmp_path / "t"))
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "t" / "genotype.json").read_text()) == DARTS_V1.to_json()


@pytest.mark.parametrize(
    "args,fragments",
    [
        (["search", "--dataset", "mnist"], ["unknown dataset 'mnist'", "digits"]),
        (["search", "--space", "nas-bench"], ["unknown search space 'nas-bench'"]),
        (["search", "--strategy", "evolution"], ["unknown strategy 'evolution'"]),
        (["search", "--primitives", "sep_conv_3x3,conv_9x9"], ["unknown op 'conv_9x9'"]),
        (["search", "--steps", "0"], ["steps must be >= 1"]),
        (["search", "--train-portion", "1.0"], ["train portion must lie in (0, 1)"]),
        (["search", "--train-portion", "0"], ["train portion"]),
        (["search", "--dataset", "cifar10"], ["needs --data-dir"]),
        (["search", "--dataset", "cifar10", "--data-dir", "/no/such/dir"], ["/no/such/dir does not exist"]),
        (["search", "--target", "mobile", "--latency", "fast"], ["malformed latency 'fast'"]),
        (["search", "--target", "mobile", "--latency", "-5ms"], ["latency budget must be positive and finite, got"]),
        (["search", "--target", "mobile", "--latency", "1e999ms"], ["latency budget must be positive and finite"]),
        (
            ["search", "--target", "tflite", "--latency", "50ms", "--measured-repairs", "-1"],
            ["measured repairs must be >= 0, got -1"],
        ),
        (["search", "--resume", "/no/such/run"], ["does not exist"]),
        (["train", "--genotype", "DARTS_V9"], ["DARTS_V9", "neither a file nor a published genotype"]),
        (["train", "--genotype", "DARTS_V2", "--width-mult", "0.5"], ["--width-mult shapes mobile networks"]),
        (["search", "--epochs", "many"], ["--epochs", "invalid int value"]),
        (["search", "--latency-loss", "quadratic"], ["invalid choice: 'quadratic'"]),
        (["search", "--layers", "2"], ["a DARTS search needs --layers >= 3"]),
        (["search", "--strategy", "proxyless", "--fused"], ["--fused applies to the darts and pcdarts strategies"]),
        (["search", "--strategy", "gdas", "--unrolled"], ["--unrolled applies to the darts and pcdarts strategies"]),
        (["search", "--w-lr", "-1"], ["weight learning rate must be positive"]),
        (["search", "--seed", "-1"], ["seed must lie in [0, 2**32)"]),
        (["train", "--checkpoint-minutes", "-1"], ["checkpoint minutes must be >= 0, got -1.0"]),
        (["search", "--strategy", "random", "--random-samples", "0"], ["random samples must be >= 1"]),
        (["search", "--bogus"], ["unrecognized arguments: --bogus", "hwnas search --help"]),
        (["train", "--init-channels", "0"], ["init channels must be >= 2"]),
        (["train", "--lr", "nan"], ["learning rate must be positive"]),
        (["train", "--cutout", "-5"], ["cutout must lie in [0, image size 32]"]),
        (["train", "--precision", "fp8"], ["--precision", "invalid choice: 'fp8'"]),
        (["train", "--label-smoothing", "1"], ["label smoothing must lie in [0, 1), got 1.0"]),
        (["train", "--lr-decay", "0"], ["learning-rate decay must lie in (0, 1], got 0.0"]),
        (["train", "--weight-decay", "-1"], ["weight decay must be >= 0, got -1.0"]),
        (["train", "--warmup-epochs", "30"], ["warm-up epochs must lie in [0, epochs 30), got 30"]),
        (["train", "--lr-schedule", "step"], ["--lr-schedule", "invalid choice: 'step'"]),
        (["search", "--workers", "-1"], ["workers must be >= 0, got -1"]),
        (["search", "--width-mult", "0.5"], ["--width-mult shapes the mobile space"]),
        (["train", "--train-portion", "0.3"], ["--train-portion splits a search's data"]),
        (
            ["train", "--genotype", "PROXYLESS_MOBILE", "--auxiliary-weight", "0.4"],
            ["--auxiliary-weight shapes DARTS networks", "space 'mobile'"],
        ),
        (["train", "--genotype", "PROXYLESS_MOBILE", "--layers", "8"], ["--layers shapes DARTS networks"]),
        (["train", "--genotype", "PROXYLESS_MOBILE", "--stem", "imagenet"], ["--stem shapes DARTS networks"]),
        (["train", "--stem", "tiny"], ["--stem", "invalid choice: 'tiny'"]),
        (["search", "--space", "mobile", "--stem", "imagenet"], ["--stem shapes the DARTS space"]),
        (["search", "--space", "mobile", "--init-channels", "16"], ["--init-channels shapes the DARTS space"]),
        (["search", "--space", "mobile", "--layers", "8"], ["--layers shapes the DARTS space"]),
        (["search", "--target", "mobile", "--latency", "80ms", "--steps", "3"], ["--steps shapes the DARTS space"]),
        (["search", "--stem", "imagenet", "--init-channels", "5"], ["init channels must be even with the imagenet"]),
        (
            ["train", "--genotype", "DARTS_V2", "--stem", "imagenet", "--init-channels", "5"],
            ["init channels must be even with the imagenet stem, got 5"],
        ),
        (
            ["search", "--strategy", "pcdarts", "--pc-k", "4", "--init-channels", "6"],
            ["init channels 6 are not divisible by pc-k 4"],
        ),
        (
            ["search", "--space", "mobile", "--strategy", "pcdarts", "--pc-k", "5"],
            ["has 24 channels, not divisible by pc-k 5"],
        ),
        (["search", "--latency-layers", "20"], ["--latency-layers goes with --target and --latency"]),
        (
            ["search", "--target", "mobile", "--latency", "80ms", "--latency-init-channels", "36"],
            ["--latency-init-channels shapes the DARTS network the budget is for"],
        ),
        (
            ["search", "--target", "cpu", "--latency", "9ms", "--space", "darts", "--latency-layers", "0"],
            ["latency layers must be >= 1, got 0"],
        ),
        (["search", "--pc-k", "2"], ["--pc-k applies to --strategy pcdarts"]),
        (["search", "--latency-lambda", "0.5"], ["--latency-lambda goes with --target and --latency"]),
        (["search", "--dataset", "digits", "--data-dir", "/tmp"], ["--data-dir applies to the cifar10 and"]),
        (["search", "--resume", "/no/such/run", "--run-dir", "elsewhere"], ["leave out --run-dir"]),
    ],
)
def test_bad_input_is_one_line_and_exit_2(cli, tmp_path, args, fragments):
    result = cli(*args, "--run-dir", str(tmp_path / "run")) if "--resume" not in args else cli(*args)
    _one_line_error(result, *fragments)
    assert not (tmp_path / "run").exists()  # nothing written for a rejected command


@pytest.mark.parametrize("steps,multiplier", [(2, 2), (3, 3), (6, 4)])
def test_a_cell_concatenates_its_last_four_nodes_or_all_of_fewer(steps, multiplier):
    """DARTS's cells concatenate their 4 nodes (multiplier = steps = 4); --steps below 4 concatenates every node."""
    from hwnas.cli import build_parser
    from hwnas.cli import search as search_cli

    cfg, _run_dir = search_cli._config(build_parser().parse_args(["search", "--steps", str(steps)]), 1)
    assert (cfg.steps, cfg.multiplier) == (steps, multiplier)


@pytest.mark.parametrize(
    "args,fragments",
    [
        (["predict", "--table", "mobile", "--space", "foo"], ["unknown search space 'foo'"]),
        (["predict", "--table", "mobile", "--space", "darts", "--layers", "0"], ["layers must be >= 1"]),
        (["predict", "--table", "mobile", "--key", "Logits-input:0x0x8-output:10"], ["dimensions must be positive"]),
        (["profile", "--device", "cpu", "--space", "darts", "--layers", "0"], ["layers must be >= 1"]),
        (["profile", "--device", "cpu", "--cpu-mask", "f0"], ["--cpu-mask applies to --device android"]),
        (["targets", "--space", "foo"], ["no latency tables for space 'foo'", "mobile"]),
    ],
)
def test_bad_latency_input_is_one_line_and_exit_2(cli, args, fragments):
    _one_line_error(cli(*args), *fragments)


@pytest.mark.parametrize("kind", ["file", "inside_a_file", "not_empty"])
def test_a_run_directory_that_cannot_be_one(cli, tmp_path, kind):
    (tmp_path / "afile").write_text("mine")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    run_dir = {"file": "afile", "inside_a_file": "afile/run", "not_empty": "full"}[kind]
    result = cli("search", *TINY, "--epochs", "1", "--run-dir", str(tmp_path / run_dir))
    message = "is not empty" if kind == "not_empty" else "cannot write run directory"
    _one_line_error(result, message)
    assert (tmp_path / "afile").read_text() == "mine" and os.listdir(tmp_path / "full") == ["notes.txt"]


def test_malformed_genotype_file(cli, tmp_path):
    bad = tmp_path / "g.json"
    bad.write_text('{"space": "darts", "normal": [["sep_conv_3x3"]]}')
    _one_line_error(cli("train", "--genotype", str(bad), "--run-dir", str(tmp_path / "r")), "malformed DARTS genotype")
    assert not (tmp_path / "r").exists()


def test_resume_errors(cli, tmp_path):
    run = tmp_path / "run"
    assert cli("search", *TINY, "--epochs", "1", "--run-dir", str(run)).returncode == 0
    _one_line_error(cli("search", *TINY, "--run-dir", str(run)), "already holds a run", "--resume")
    _one_line_error(cli("search", "--resume", str(run), "--layers", "5"), "cannot change layers when resuming")
    assert cli("search", "--resume", str(run), "--epochs", "2", "--no-progress").returncode == 0
    _one_line_error(cli("search", "--resume", str(run), "--epochs", "1"), "--epochs 1 is fewer than the 2 epochs")
    assert json.loads((run / "config.json").read_text())["config"]["epochs"] == 2  # left as it was
    _one_line_error(cli("train", "--resume", str(run)), "not a train run directory")
    (run / "checkpoint.pt").write_bytes(b"\x00not a checkpoint")
    _one_line_error(cli("search", "--resume", str(run), "--no-progress"), "corrupt checkpoint")
    (run / "config.json").write_text("{truncated")
    _one_line_error(cli("search", "--resume", str(run)), "config.json is corrupt")


def _image_folder(root, per_class: dict[str, tuple[int, int]]) -> None:
    """train/<class>/ and val/<class>/ holding (train, val) 8x8 PNGs per class (no folder for 0)."""
    from PIL import Image

    for cls, counts in per_class.items():
        for split, n in zip(("train", "val"), counts):
            if n:
                (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(root / split / cls / f"{i}.png")


@needs_torchvision
def test_an_error_in_a_loader_process_is_one_line(cli, tmp_path):
    """An unreadable image met by a --workers process: its own one-line error, not torch's re-raised traceback."""
    _image_folder(tmp_path / "images", {"a": (3, 2), "b": (3, 2)})
    (tmp_path / "images" / "train" / "a" / "zz.jpg").write_text("notanimage")
    result = cli("train", *TINY, "--dataset", "imagefolder", "--data-dir", str(tmp_path / "images"),
                 "--genotype", "DARTS_V1", "--epochs", "1", "--batch-size", "8", "--workers", "1", "--run-dir",
                 str(tmp_path / "run"))  # fmt: skip
    _one_line_error(result, "cannot read image", "zz.jpg: cannot identify image file")
    assert "DataLoader worker" not in result.stderr


@needs_torchvision
@pytest.mark.parametrize(
    "command,layout,args,fragments",
    [
        ("search", "empty", [], ["needs train/ and val/"]),
        ("train", "empty", [], ["needs train/ and val/"]),
        ("search", "empty", ["--dataset", "cifar10"], ["has no cifar-10-batches-py/ folder"]),
        ("train", "empty_class", [], ["Found no valid file for the classes c"]),
        ("search", "other_classes", [], ["train/ and val/ have different classes"]),
        ("search", "one_per_class", [], ["the weights' part of the train split (--train-portion 0.5) has 1 example",
                                         "too few for one training step"]),
        ("train", "one_example", [], ["the train split has 1 example(s), too few for one training step"]),
        ("search", "digits", ["--dataset", "digits", "--train-portion", "0.001"], ["has 1 example(s), too few"]),
        ("train", "fake", ["--batch-size", "1"], ["--batch-size 1 gives each of 1 process(es) a batch of 1",
                                                  "BatchNorm needs at least 2"]),
    ],
)  # fmt: skip
def test_data_a_run_cannot_use_is_refused_before_its_directory(cli, tmp_path, command, layout, args, fragments):
    """A data directory of the wrong layout, a split too small for one training step, a batch of 1 per process:
    one line, and no run directory."""
    images = tmp_path / "images"
    images.mkdir()
    per_class = {"empty_class": {"a": (2, 1), "c": (0, 1)}, "other_classes": {"a": (2, 1), "c": (0, 1)},
                 "one_per_class": {"a": (1, 1), "b": (1, 1)}, "one_example": {"a": (1, 1)}}.get(layout, {})  # fmt: skip
    _image_folder(images, per_class)
    if layout == "empty_class":
        (images / "train" / "c").mkdir()
    data = [] if layout in ("digits", "fake") else ["--dataset", "imagefolder", "--data-dir", str(images)]
    genotype = ["--genotype", "DARTS_V1"] if command == "train" else []
    result = cli(command, *TINY, *data, *genotype, *args, "--run-dir", str(tmp_path / "run"))
    _one_line_error(result, *fragments)
    assert not (tmp_path / "run").exists()


def test_runs_resume_from_any_directory_and_keep_their_genotype(cli, tmp_path):
    """Relative paths (a genotype file, a data directory) are stored absolute; a train run keeps its own copy of
    the genotype, so that the file changing afterwards (its search extended, say) cannot break the resume."""
    (tmp_path / "work").mkdir()
    DARTS_V1.save(tmp_path / "work" / "g.json")
    done = cli("train", *TINY, "--genotype", "g.json", "--epochs", "1", "--run-dir", "run", cwd=tmp_path / "work")
    assert done.returncode == 0, done.stderr
    stored = json.loads((tmp_path / "work" / "run" / "config.json").read_text())["config"]
    assert stored["genotype"] == str(tmp_path / "work" / "g.json")
    DARTS_V2.save(tmp_path / "work" / "g.json")  # the source changes
    done = cli("train", "--resume", str(tmp_path / "work" / "run"), "--epochs", "2", "--no-progress", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "work" / "run" / "genotype.json").read_text()) == DARTS_V1.to_json()


@pytest.mark.parametrize(
    "args,fragments",
    [
        (["--target", "pixel9", "--latency", "80ms"], ["unknown target 'pixel9'"]),
        (["--target", "mobile", "--latency", "10ms"], ["below the fastest architecture", "ms)"]),
        (["--target", "mobile"], ["--target and --latency go together"]),
        (["--target", "gpu", "--latency", "5ms"], ["hwnas profile --device gpu"]),
        (["--target", "mobile", "--latency", "80ms", "--space", "darts"], ["no table for space 'darts'"]),
    ],
)
def test_target_bad_input(cli, tmp_path, args, fragments):
    result = cli("search", *args, "--run-dir", str(tmp_path / "run"))
    _one_line_error(result, *fragments)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("text,expected", [("80ms", 80.0), ("80", 80.0), ("0.08s", 80.0), ("1500us", 1.5)])
def test_latency_strings(text, expected):
    from hwnas.cli.common import parse_latency_ms

    assert parse_latency_ms(text) == pytest.approx(expected)
