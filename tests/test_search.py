import json
import os

import pytest
import torch

from hwnas.errors import HwnasError
from hwnas.run import RunDir
from hwnas.schedule import cosine_lr
from hwnas.search import check_search_config, run_search
from tests.conftest import StoppedHere, stop_when_metrics_reach, tiny_search_config


def _search(tmp_path, name="run", on_step=None, plots=False, **changes):
    cfg = tiny_search_config(**changes)
    run = RunDir.create(tmp_path / name, "search", cfg.to_json())
    return run_search(cfg, run, progress=False, on_step=on_step, plots=plots)


def test_one_search_epoch_writes_the_run_directory(tmp_path):
    result = _search(tmp_path, epochs=1, plots=True)
    run = tmp_path / "run"
    for name in ("config.json", "genotype.json", "metrics.jsonl", "alphas.json", "checkpoint.pt", "summary.json",
                 "log.txt", "cell_normal.png", "cell_reduce.png", "alphas.png", "metrics.png"):  # fmt: skip
        assert (run / name).is_file(), name
    assert json.loads((run / "genotype.json").read_text()) == result.genotype.to_json()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["genotype"] == result.genotype.to_json() and summary["wall_s"] > 0
    umask = os.umask(0)
    os.umask(umask)
    for name in ("config.json", "checkpoint.pt", "metrics.jsonl"):  # written atomically, yet as open() would
        assert (run / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


def test_metric_plots_draw_a_latency_panel_for_hardware_aware_runs(tmp_path):
    """Loss and accuracy per epoch always; E[LAT], the argmax architecture's latency and the budget when a search
    has them (a third panel of the same size)."""
    from PIL import Image

    from hwnas.plots import plot_metrics

    rows = [{"epoch": e, "train_loss": 2.0 / (e + 1), "val_loss": 2.1 / (e + 1), "train_acc": 0.3 * e,
             "val_acc": 0.25 * e} for e in range(3)]  # fmt: skip
    plain = Image.open(plot_metrics(rows, tmp_path / "plain.png", budget_ms=80.0)).size
    timed = [{**r, "expected_latency_ms": 90.0 - e, "argmax_latency_ms": 85.0 - 2 * e} for e, r in enumerate(rows)]
    aware = Image.open(plot_metrics(timed, tmp_path / "aware.png", 80.0, {"derived": 78.0})).size
    assert aware[1] == plain[1] and aware[0] == pytest.approx(1.5 * plain[0], abs=2)


def _alphas(run) -> list[torch.Tensor]:
    """The normal cell's α probabilities after each epoch of a search."""
    return [torch.tensor(e["normal"]) for e in json.loads((run / "alphas.json").read_text())["epochs"]]


def _searched_alphas(tmp_path, name, **changes) -> list[torch.Tensor]:
    _search(tmp_path, name, **changes)
    return _alphas(tmp_path / name)


def test_alpha_stays_in_warmup_epochs_and_moves_after(tmp_path):
    """--arch-warmup-epochs trains the weights alone: α after a warm-up epoch is its seeded initial value whatever
    its learning rate, and differs from the α a search epoch leaves."""
    searched = _searched_alphas(tmp_path, "searched")
    warm = _searched_alphas(tmp_path, "warm", arch_warmup_epochs=1)
    warm_fast = _searched_alphas(tmp_path, "warm_fast", arch_warmup_epochs=1, a_lr=0.1)
    assert torch.equal(warm[0], warm_fast[0])
    assert not torch.equal(searched[0], warm[0])
    assert not torch.equal(warm[1], warm[0]) and not torch.equal(warm_fast[1], warm[1])


def test_same_seed_same_genotype_and_alpha(tmp_path):
    a = _search(tmp_path, "a", epochs=2)
    b = _search(tmp_path, "b", epochs=2)
    assert a.genotype == b.genotype
    assert json.loads((tmp_path / "a" / "alphas.json").read_text()) == json.loads(
        (tmp_path / "b" / "alphas.json").read_text()
    )


@pytest.mark.parametrize("strategy", ["darts", "pcdarts"])
def test_fused_search_runs_the_fused_op_and_finds_the_same_architecture(tmp_path, monkeypatch, strategy):
    """--fused changes memory, not the search: the fused op runs on every edge, and α and the genotype are the
    unfused run's."""
    from hwnas.kernels import mixed_op

    plain = _search(tmp_path, "plain", strategy=strategy)
    calls = []
    original = mixed_op.fused_mixed_op
    monkeypatch.setattr(mixed_op, "fused_mixed_op", lambda *args: calls.append(1) or original(*args))
    fused = _search(tmp_path, "fused", strategy=strategy, fused=True)
    assert calls
    assert fused.genotype == plain.genotype
    for got, want in zip(_alphas(tmp_path / "fused"), _alphas(tmp_path / "plain"), strict=True):
        torch.testing.assert_close(got, want)


def test_extending_a_finished_run_follows_the_longer_cosine_schedule(tmp_path):
    """`--resume RUN --epochs 2` after a 1-epoch run: epoch 2 steps at the 2-epoch schedule's rate (~0.013),
    not back at 0.025, where a restored stateful scheduler would have wrapped around."""
    cfg = tiny_search_config(epochs=1)
    _search(tmp_path, epochs=1)
    run_search(cfg.replace(epochs=2), RunDir(tmp_path / "run", "search"), progress=False, plots=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["w_lr"] for r in rows] == [cfg.w_lr, pytest.approx(cosine_lr(1, 2, cfg.w_lr, cfg.w_lr_min))]


class _Killed(Exception):
    pass


def test_loader_processes_change_nothing_but_speed(tmp_path, monkeypatch):
    """--workers 2 loads the train and val batches in two processes each: the search sees the same batches, in the
    same order, and ends with the same α, genotype and metrics as one that loads them itself."""
    import hwnas.search

    started = []
    shard_loader = hwnas.search.shard_loader

    def counting_loader(*args, **kwargs):
        loader = shard_loader(*args, **kwargs)
        started.append(loader.num_workers)
        return loader

    monkeypatch.setattr(hwnas.search, "shard_loader", counting_loader)
    results = {}
    for workers in (0, 2):
        cfg = tiny_search_config()
        cfg = cfg.replace(data=cfg.data.replace(workers=workers))
        results[workers] = run_search(cfg, RunDir.create(tmp_path / f"w{workers}", "search", cfg.to_json()),
                                      progress=False, plots=False)  # fmt: skip
    assert started == [0] * 4 + [2] * 4  # 2 epochs, train and val
    assert results[2].genotype == results[0].genotype
    assert all(torch.equal(a, b) for a, b in zip(_alphas(tmp_path / "w2"), _alphas(tmp_path / "w0"), strict=True))
    for a, b in zip(results[0].history, results[2].history, strict=True):
        assert {k: v for k, v in a.items() if k != "epoch_s"} == {k: v for k, v in b.items() if k != "epoch_s"}


@pytest.mark.parametrize("strategy", ["darts", "proxyless"])
def test_killed_mid_epoch_then_resumed_equals_uninterrupted(tmp_path, strategy):
    reference = _search(tmp_path, "reference", epochs=3, strategy=strategy)

    def die_in_second_epoch(epoch, step):
        if epoch == 1 and step == 0:
            raise _Killed

    with pytest.raises(_Killed):
        _search(tmp_path, "killed", on_step=die_in_second_epoch, epochs=3, strategy=strategy)
    run, stored = RunDir.open(tmp_path / "killed", "search")
    assert len((tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()) == 1
    cfg = tiny_search_config().from_json(stored)
    resumed = run_search(cfg, run, progress=False, plots=False)
    assert resumed.genotype == reference.genotype
    assert json.loads((tmp_path / "killed" / "alphas.json").read_text()) == json.loads(
        (tmp_path / "reference" / "alphas.json").read_text()
    )
    assert len(resumed.history) == 3


def test_a_stop_between_the_checkpoint_and_the_metrics_is_mended_by_the_resume(tmp_path, monkeypatch):
    """Ctrl-C can land after an epoch's checkpoint is saved and before metrics.jsonl is rewritten: the resume, even
    one with no epoch left to run, writes the rows the checkpoint holds."""
    with monkeypatch.context() as patch:
        stop_when_metrics_reach(patch, 2)
        with pytest.raises(StoppedHere):
            _search(tmp_path, epochs=2)
    metrics = tmp_path / "run" / "metrics.jsonl"
    assert len(metrics.read_text().splitlines()) == 1
    run, stored = RunDir.open(tmp_path / "run", "search")
    resumed = run_search(tiny_search_config().from_json(stored), run, progress=False, plots=False)
    rows = [json.loads(row) for row in metrics.read_text().splitlines()]
    assert len(resumed.history) == 2 and rows == resumed.history


@pytest.mark.parametrize("strategy", ["darts", "gdas", "random"])
def test_killed_within_an_epoch_resumes_from_its_mid_epoch_checkpoint(tmp_path, strategy):
    """Checkpoints within an epoch (here after every step): a run killed at its second epoch's third step resumes
    after the second step, not from the epoch's start, and ends as one that never stopped (α, genotype, every
    metric; random search's per-candidate counts too)."""
    reference = _search(tmp_path, "reference", strategy=strategy, batch_size=8)  # 4 steps per epoch
    stops = []

    def die_at_the_third_step(epoch, step):
        stops.append((epoch, step))
        if (epoch, step) == (1, 2):
            raise _Killed

    with pytest.raises(_Killed):
        _search(
            tmp_path, "killed", on_step=die_at_the_third_step, strategy=strategy, batch_size=8, checkpoint_minutes=1e-9
        )
    state = RunDir(tmp_path / "killed", "search").load_checkpoint()
    assert state["epoch"] == 0 and state["epoch_so_far"]["epoch"] == 1 and state["epoch_so_far"]["steps"] == 2
    run, stored = RunDir.open(tmp_path / "killed", "search")
    stops.clear()
    resumed = run_search(
        tiny_search_config().from_json(stored),
        run,
        progress=False,
        on_step=lambda e, s: stops.append((e, s)),
        plots=False,
    )
    assert stops[0] == (1, 2)  # the steps it had done are not done again
    assert resumed.genotype == reference.genotype
    for name in ("alphas.json",):
        assert json.loads((tmp_path / "killed" / name).read_text()) == json.loads(
            (tmp_path / "reference" / name).read_text()
        )
    drop = ("epoch_s",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in resumed.history] == [
        {k: v for k, v in r.items() if k not in drop} for r in reference.history
    ]


@pytest.mark.parametrize(
    "changes,message",
    [({"init_channels": 6}, "init channels 6 are not divisible by pc-k 4"),
     ({"space": "mobile", "pc_k": 5}, "block 1 has 24 channels, not divisible by pc-k 5")],
)  # fmt: skip
def test_pc_k_that_does_not_divide_the_channels_is_rejected_before_a_run(changes, message):
    with pytest.raises(HwnasError, match=message):
        check_search_config(tiny_search_config(strategy="pcdarts", **changes))


def test_corrupt_or_mismatched_checkpoint_is_a_user_error(tmp_path):
    _search(tmp_path, epochs=1)
    run = RunDir(tmp_path / "run", "search")
    other = tiny_search_config(init_channels=8)
    with pytest.raises(HwnasError, match="does not match"):
        run_search(other, run, progress=False, plots=False)
    (tmp_path / "run" / "checkpoint.pt").write_bytes(b"garbage")
    with pytest.raises(HwnasError, match="corrupt checkpoint"):
        run_search(tiny_search_config(epochs=1), run, progress=False, plots=False)
    with pytest.raises(HwnasError, match="not a train"):
        RunDir.open(tmp_path / "run", "train")
