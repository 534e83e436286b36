"""`hwnas train`: --width-mult on mobile genotypes, the augmentation, learning, and exact resumption."""

import json
import os
import signal

import pytest
import torch

from hwnas import train as train_module
from hwnas.complexity import count_parameters
from hwnas.errors import Interrupted
from hwnas.run import RunDir
from hwnas.spaces.darts import DARTS_V1, DARTS_V2
from hwnas.train import augment, build_model, run_train
from tests.conftest import StoppedHere, stop_when_metrics_reach, tiny_train_config


def test_width_mult_shapes_mobile_genotypes():
    cfg = tiny_train_config(genotype="PROXYLESS_MOBILE", width_mult=0.25)
    genotype, model = build_model(cfg, 3, 10)
    kept, full = build_model(cfg.replace(width_mult=None), 3, 10)
    assert genotype.width_mult == 0.25 and kept.width_mult == 1.0  # None keeps the genotype's own width
    assert count_parameters(model) < count_parameters(full) / 4


def test_trained_weights_record_the_width(tmp_path):
    cfg = tiny_train_config(genotype="PROXYLESS_MOBILE", width_mult=0.25, epochs=1)
    run_train(cfg, RunDir.create(tmp_path / "run", "train", cfg.to_json()), progress=False)
    record = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    assert record["genotype"]["width_mult"] == 0.25 and record["config"]["width_mult"] == 0.25


def test_a_last_batch_of_one_example_is_left_out(tmp_path):
    """64 examples in batches of 63: the last batch, one example, would fail training-mode BatchNorm on the mobile
    network's 1x1 maps (8x8 images); the epoch is one step."""
    cfg = tiny_train_config(genotype="PROXYLESS_MOBILE", width_mult=0.25, epochs=1, batch_size=63)
    result = run_train(cfg, RunDir.create(tmp_path / "run", "train", cfg.to_json()), progress=False)
    assert 0 <= result.test_acc <= 1


def _shifted(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """x (C, H, W) moved by (dy, dx), zeros shifted in."""
    out = torch.zeros_like(x)
    h, w = x.shape[-2:]
    out[:, max(0, dy) : h + min(0, dy), max(0, dx) : w + min(0, dx)] = x[
        :, max(0, -dy) : h + min(0, -dy), max(0, -dx) : w + min(0, -dx)
    ]
    return out


def test_augment_translates_each_sample_by_at_most_an_eighth():
    x = torch.randn(6, 2, 16, 12)  # (B, C, H, W)
    out = augment(x, 0, torch.Generator().manual_seed(0))
    shifts = []
    for sample, moved in zip(x, out):
        found = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3) if torch.equal(moved, _shifted(sample, dy, dx))]
        assert len(found) == 1
        shifts.append(found[0])
    assert len(set(shifts)) > 1  # drawn per sample


@pytest.mark.parametrize("side", [4, 5])
def test_cutout_zeroes_one_square_per_sample_across_channels(side):
    """A side x side square (fewer pixels where it crosses the border), even sides included (DARTS's Cutout)."""
    x = torch.randn(8, 3, 16, 16) + 10  # nothing zero before cutout
    plain = augment(x, 0, torch.Generator().manual_seed(1))
    cut = augment(x, side, torch.Generator().manual_seed(1))  # the same translations, then the cutout
    sides = []
    for p, c in zip(plain, cut):
        erased = (c == 0) & (p != 0)
        assert torch.equal(erased, erased[:1].expand_as(erased))  # the same pixels in every channel
        rows, cols = erased[0].nonzero(as_tuple=True)
        if len(rows):  # a square centred near the border may fall on the zeros the translation shifted in
            sides.append((int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)))
            assert len(rows) == sides[-1][0] * sides[-1][1]  # one rectangle
        torch.testing.assert_close(c[~erased], p[~erased], rtol=0, atol=0)
    assert all(1 <= h <= side and 1 <= w <= side for h, w in sides) and (side, side) in sides, sides


@pytest.mark.parametrize("world", [2, 3])
def test_a_shard_is_augmented_as_its_samples_are_in_the_global_batch(world):
    """Rank r's shard holds every world-th sample of the global batch from r (`shard_loader`): each of its samples
    gets the translation and cutout it gets in the one-process batch, so the augmentation is the same whatever the
    number of processes."""
    x = torch.randn(4 * world, 3, 16, 16) + 10  # (B, C, H, W), the global batch
    whole = augment(x, 5, torch.Generator().manual_seed(2))
    for rank in range(world):
        shard = augment(x[rank::world], 5, torch.Generator().manual_seed(2), rank, world)
        torch.testing.assert_close(shard, whole[rank::world], rtol=0, atol=0)
    assert not torch.equal(augment(x[1::world], 5, torch.Generator().manual_seed(2), 0, world), whole[1::world])


def test_training_learns_the_fake_classes(tmp_path):
    """The fake classes differ in brightness: a dozen short epochs (0.5 s) beat chance (1/4) on the held-out split
    by far (0.91 seen; 4 epochs fit the training split but not yet BatchNorm's running statistics)."""
    cfg = tiny_train_config(epochs=12)
    result = run_train(cfg, RunDir.create(tmp_path / "run", "train", cfg.to_json()), progress=False)
    assert result.test_acc >= 0.75


def test_training_steps_at_the_schedule_s_rates(tmp_path):
    cfg = tiny_train_config(epochs=3, lr=0.1, lr_schedule="exponential", lr_decay=0.9)
    run_train(cfg, RunDir.create(tmp_path / "run", "train", cfg.to_json()), progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in rows] == pytest.approx([0.1, 0.09, 0.081])


def test_label_smoothing_smooths_both_heads_training_loss():
    """(1 - ε)·CE + ε·(mean over classes of -log p), for the logits and the auxiliary head alike (Szegedy et al.
    2016, Sec. 7), written out here rather than through F.cross_entropy's own label_smoothing."""
    cfg = tiny_train_config(auxiliary_weight=0.4, label_smoothing=0.1, drop_path_prob=0.0)
    _genotype, model = build_model(cfg, 3, 10)
    x, y = torch.randn(8, 3, 8, 8), torch.arange(8) % 10
    with torch.no_grad():
        logits, aux = model(x)

    def smoothed(z: torch.Tensor) -> torch.Tensor:
        log_p = z.log_softmax(1)
        return (0.9 * -log_p.gather(1, y[:, None]).squeeze(1) + 0.1 * -log_p.mean(1)).mean()

    expected = smoothed(logits) + 0.4 * smoothed(aux)
    opt, scaler = train_module.optimiser(model, cfg, torch.device("cpu"))
    loss, _correct = train_module.train_step(model, opt, scaler, (x, y), cfg, None)
    assert loss == pytest.approx(float(expected), rel=1e-5)


@pytest.mark.parametrize("precision,dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_mixed_precision_convolves_in_its_type_keeps_fp32_weights_and_learns(tmp_path, monkeypatch, caplog, precision,
                                                                             dtype):  # fmt: skip
    """--precision bf16 / fp16: every convolution runs in that type, in training and testing, the weights stay
    fp32, and the network learns the fake classes as in fp32 (see above); fp16 on the CPU warns that it is slow."""
    outputs = set()
    build_model = train_module.build_model

    def watched(*args, **kwargs):
        genotype, model = build_model(*args, **kwargs)
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d):
                module.register_forward_hook(lambda _m, _x, y: outputs.add((torch.is_grad_enabled(), y.dtype)))
        return genotype, model

    monkeypatch.setattr(train_module, "build_model", watched)
    monkeypatch.setattr(train_module, "count_macs", lambda model, shape: 0)  # its own fp32 forward: not watched here
    cfg = tiny_train_config(epochs=12, precision=precision)
    result = run_train(cfg, RunDir.create(tmp_path / "run", "train", cfg.to_json()), progress=False)
    assert outputs == {(True, dtype), (False, dtype)}
    weights = torch.load(tmp_path / "run" / "model.pt", weights_only=True)["state_dict"]
    assert {t.dtype for t in weights.values() if t.is_floating_point()} == {torch.float32}
    assert result.test_acc >= 0.75 and result.summary["precision"] == precision
    warned = [r.message for r in caplog.records if r.levelname == "WARNING" and "fp16 on the CPU" in r.message]
    assert len(warned) == (precision == "fp16"), warned


def test_a_run_resumes_in_another_precision(tmp_path):
    """--precision may change on --resume: fp16, then bf16 (the scale dropped), then fp16 again (a fresh scale)."""
    cfg = tiny_train_config(epochs=1, precision="fp16")
    run = RunDir.create(tmp_path / "run", "train", cfg.to_json())
    for epochs, precision in ((1, "fp16"), (2, "bf16"), (3, "fp16")):
        result = run_train(cfg.replace(epochs=epochs, precision=precision), run, progress=False)
        rows = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
        assert result.summary["precision"] == precision and len(rows) == epochs
        assert ("scale" in run.load_checkpoint()["scaler"]) == (precision == "fp16")


def test_loader_processes_change_nothing_but_speed(tmp_path):
    """--workers 2: training sees the same batches (the test split's too) and ends with the same weights, bit for
    bit, and metrics as a run that loads them itself."""
    results = []
    for name, workers in (("straight", 0), ("killed", 2)):  # the names `_assert_same_run` compares
        cfg = tiny_train_config(cutout=3, auxiliary_weight=0.4, drop_path_prob=0.3)
        cfg = cfg.replace(data=cfg.data.replace(workers=workers))
        results.append(run_train(cfg, RunDir.create(tmp_path / name, "train", cfg.to_json()), progress=False))
    _assert_same_run(tmp_path, *results)


class _Killed(Exception):
    pass


def test_training_killed_then_resumed_equals_uninterrupted(tmp_path, monkeypatch):
    """With cutout, the auxiliary head and drop-path (ramped per epoch): a run killed as its second epoch starts
    and resumed ends with the weights and metrics of one that never stopped."""
    cfg = tiny_train_config(epochs=3, cutout=3, auxiliary_weight=0.4, drop_path_prob=0.3)
    straight = run_train(cfg, RunDir.create(tmp_path / "straight", "train", cfg.to_json()), progress=False)
    shard_loader = train_module.shard_loader

    def dies_in_the_second_epoch(dataset, batch_size, seed, epoch, *args, **kwargs):
        if epoch == 1:
            raise _Killed
        return shard_loader(dataset, batch_size, seed, epoch, *args, **kwargs)

    killed = RunDir.create(tmp_path / "killed", "train", cfg.to_json())
    with monkeypatch.context() as patch:
        patch.setattr(train_module, "shard_loader", dies_in_the_second_epoch)
        with pytest.raises(_Killed):
            run_train(cfg, killed, progress=False)
    resumed = run_train(cfg, killed, progress=False)
    _assert_same_run(tmp_path, straight, resumed)


def test_a_run_stopped_before_its_first_checkpoint_keeps_its_own_genotype(tmp_path, monkeypatch):
    """The run's genotype.json is written as it starts: a resume before any checkpoint builds the network from it,
    not from the --genotype file, which has changed since."""
    source = tmp_path / "genotype.json"
    source.write_text(json.dumps(DARTS_V1.to_json()))
    cfg = tiny_train_config(genotype=str(source), epochs=1)
    run = RunDir.create(tmp_path / "run", "train", cfg.to_json())

    def dies_before_the_first_step(*args, **kwargs):
        raise _Killed

    with monkeypatch.context() as patch:
        patch.setattr(train_module, "shard_loader", dies_before_the_first_step)
        with pytest.raises(_Killed):
            run_train(cfg, run, progress=False)
    assert run.load_checkpoint() is None
    source.write_text(json.dumps(DARTS_V2.to_json()))
    result = run_train(cfg, run, progress=False)
    assert result.summary["genotype"] == DARTS_V1.to_json()
    assert json.loads((tmp_path / "run" / "genotype.json").read_text()) == DARTS_V1.to_json()


def test_a_stop_between_the_checkpoint_and_the_metrics_is_mended_by_the_resume(tmp_path, monkeypatch):
    """Ctrl-C can land after an epoch's checkpoint is saved and before metrics.jsonl is rewritten: the resume, even
    one with no epoch left to run, writes the rows the checkpoint holds."""
    cfg = tiny_train_config(epochs=2)
    run = RunDir.create(tmp_path / "run", "train", cfg.to_json())
    with monkeypatch.context() as patch:
        stop_when_metrics_reach(patch, 2)
        with pytest.raises(StoppedHere):
            run_train(cfg, run, progress=False)
    metrics = tmp_path / "run" / "metrics.jsonl"
    assert len(metrics.read_text().splitlines()) == 1
    run_train(cfg, run, progress=False)
    history = run.load_checkpoint()["history"]
    assert len(history) == 2 and [json.loads(row) for row in metrics.read_text().splitlines()] == history


def _assert_same_run(tmp_path, straight, resumed):
    """Runs "straight" and "killed" (resumed) end with bit-identical weights, test figures and per-epoch metrics."""
    weights = [
        torch.load(tmp_path / name / "model.pt", weights_only=True)["state_dict"] for name in ("straight", "killed")
    ]
    assert weights[0].keys() == weights[1].keys() and any("auxiliary_head" in k for k in weights[0])
    for key in weights[0]:
        torch.testing.assert_close(weights[1][key], weights[0][key], rtol=0, atol=0, msg=key)
    assert resumed.test_acc == straight.test_acc and resumed.test_loss == straight.test_loss
    metrics = [[{k: v for k, v in json.loads(line).items() if k != "epoch_s"}
                for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
               for name in ("straight", "killed")]  # fmt: skip
    assert metrics[0] == metrics[1]


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_training_killed_within_an_epoch_resumes_from_its_mid_epoch_checkpoint(tmp_path, monkeypatch, precision):
    """Checkpoints within an epoch (here after every step): a run killed at its second epoch's third step resumes
    after the second step, with the drop-path and augmentation draws (and in fp16 the loss scale) of one that never
    stopped."""
    cfg = tiny_train_config(epochs=2, cutout=3, auxiliary_weight=0.4, drop_path_prob=0.3, precision=precision)
    straight = run_train(cfg, RunDir.create(tmp_path / "straight", "train", cfg.to_json()), progress=False)
    cfg = cfg.replace(checkpoint_minutes=1e-9)
    calls = []

    def dies_at_the_seventh_step(x, *args):
        calls.append(1)
        if len(calls) == 7:
            raise _Killed
        return augment(x, *args)

    killed = RunDir.create(tmp_path / "killed", "train", cfg.to_json())
    with monkeypatch.context() as patch:
        patch.setattr(train_module, "augment", dies_at_the_seventh_step)
        with pytest.raises(_Killed):
            run_train(cfg, killed, progress=False)
    state = killed.load_checkpoint()
    assert state["epoch"] == 0 and (state["epoch_so_far"]["epoch"], state["epoch_so_far"]["steps"]) == (1, 2)
    assert ("scale" in state["scaler"]) == (precision == "fp16")
    calls.clear()
    with monkeypatch.context() as patch:
        patch.setattr(train_module, "augment", dies_at_the_seventh_step)
        resumed = run_train(cfg, killed, progress=False)
    assert len(calls) == 2  # the two steps left, not the epoch again
    _assert_same_run(tmp_path, straight, resumed)


def test_sigterm_stops_training_after_a_checkpoint_at_the_next_step(tmp_path, monkeypatch):
    """SIGTERM at the first epoch's second step: the step finishes, a checkpoint saves it, the run stops (exit code
    143 for the CLI) and its resume ends as the run that never stopped; the handler is gone after the run."""
    cfg = tiny_train_config(epochs=2, cutout=3, auxiliary_weight=0.4, drop_path_prob=0.3)
    straight = run_train(cfg, RunDir.create(tmp_path / "straight", "train", cfg.to_json()), progress=False)
    calls = []

    def sigterm_at_the_second_step(x, *args):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return augment(x, *args)

    killed = RunDir.create(tmp_path / "killed", "train", cfg.to_json())
    with monkeypatch.context() as patch:
        patch.setattr(train_module, "augment", sigterm_at_the_second_step)
        with pytest.raises(Interrupted) as stopped:
            run_train(cfg, killed, progress=False)
    assert stopped.value.exit_code == 143 and "SIGTERM" in stopped.value.reason and len(calls) == 2
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    state = killed.load_checkpoint()
    assert state["epoch"] == -1 and (state["epoch_so_far"]["epoch"], state["epoch_so_far"]["steps"]) == (0, 2)
    resumed = run_train(cfg, killed, progress=False)
    _assert_same_run(tmp_path, straight, resumed)
