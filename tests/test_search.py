import json

import pytest
import torch

from hwnas.errors import HwnasError
from hwnas.run import RunDir
from hwnas.search import run_search
from tests.conftest import tiny_search_config


def _search(tmp_path, name="run", on_step=None, **changes):
    cfg = tiny_search_config(**changes)
    return run_search(cfg, RunDir.create(tmp_path / name, "search", cfg.to_json()), progress=False, on_step=on_step)


def test_one_search_epoch_moves_alpha_and_writes_the_run_directory(tmp_path):
    result = _search(tmp_path, epochs=1)
    run = tmp_path / "run"
    for name in ("config.json", "genotype.json", "metrics.jsonl", "alphas.json", "checkpoint.pt", "summary.json",
                 "log.txt", "cell_normal.png", "cell_reduce.png", "alphas.png"):  # fmt: skip
        assert (run / name).is_file(), name
    alphas = json.loads((run / "alphas.json").read_text())
    probs = torch.tensor(alphas["epochs"][0]["normal"])
    assert not torch.allclose(probs, torch.full_like(probs, 1 / probs.shape[1]), atol=1e-4)
    assert json.loads((run / "genotype.json").read_text()) == result.genotype.to_json()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["genotype"] == result.genotype.to_json() and summary["wall_s"] > 0


def test_same_seed_same_genotype_and_alpha(tmp_path):
    a = _search(tmp_path, "a", epochs=2)
    b = _search(tmp_path, "b", epochs=2)
    assert a.genotype == b.genotype
    assert json.loads((tmp_path / "a" / "alphas.json").read_text()) == json.loads(
        (tmp_path / "b" / "alphas.json").read_text()
    )


class _Killed(Exception):
    pass


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
    resumed = run_search(cfg, run, progress=False)
    assert resumed.genotype == reference.genotype
    assert json.loads((tmp_path / "killed" / "alphas.json").read_text()) == json.loads(
        (tmp_path / "reference" / "alphas.json").read_text()
    )
    assert len(resumed.history) == 3


def test_corrupt_or_mismatched_checkpoint_is_a_user_error(tmp_path):
    _search(tmp_path, epochs=1)
    run = RunDir(tmp_path / "run", "search")
    other = tiny_search_config(init_channels=8)
    with pytest.raises(HwnasError, match="does not match"):
        run_search(other, run, progress=False)
    (tmp_path / "run" / "checkpoint.pt").write_bytes(b"garbage")
    with pytest.raises(HwnasError, match="corrupt checkpoint"):
        run_search(tiny_search_config(epochs=1), run, progress=False)
    with pytest.raises(HwnasError, match="not a train"):
        RunDir.open(tmp_path / "run", "train")
