"""The README's "Reproducing the papers" commands: each parses and passes every check `hwnas` makes before it
writes a run (datasets aside: they are not here), and holds the values the README's comments promise."""

import re
import shlex
from pathlib import Path

import pytest

from hwnas import data, search
from hwnas.cli import build_parser
from hwnas.cli import search as search_cli
from hwnas.cli import train as train_cli
from hwnas.spaces import load_genotype

README = Path(__file__).resolve().parents[2] / "README.md"


def _commands() -> list[list[str]]:
    section = README.read_text().split("## Reproducing the papers", 1)[1]
    block = re.search(r"```\n(.*?)```", section, re.S).group(1)
    return [shlex.split(line) for line in block.splitlines() if line.startswith("hwnas ")]


def test_the_section_has_every_paper_s_commands():
    assert [c[1] for c in _commands()] == ["search", "train", "train", "search", "train", "train", "search", "train"]


def test_each_command_passes_the_checks_before_a_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(data, "check_data", lambda *args, **kwargs: None)  # no CIFAR-10 or ImageNet here
    monkeypatch.setattr(search, "check_data", lambda *args, **kwargs: None)
    configs = []
    for argv in _commands():
        args = build_parser().parse_args(argv[1:])
        searched = re.fullmatch(r"runs/(\w+)/genotype.json", str(getattr(args, "genotype", None)))
        if searched:  # the search above wrote it; a published one stands in
            Path(searched.group(0)).parent.mkdir(parents=True, exist_ok=True)
            name = "PROXYLESS_MOBILE" if searched.group(1) == "proxyless" else "DARTS_V2"
            load_genotype(name).save(searched.group(0))
        module = search_cli if argv[1] == "search" else train_cli
        cfg, _run_dir = module._config(args, 1)
        configs.append(cfg)
    darts, darts_eval, darts_imagenet, pcdarts, _pc_eval, pc_imagenet, proxyless, _ = configs
    assert darts.unrolled and (darts.epochs, darts.init_channels, darts.layers) == (50, 16, 8)
    assert (darts_eval.init_channels, darts_eval.layers, darts_eval.cutout) == (36, 20, 16)
    assert darts_imagenet.stem == pc_imagenet.stem == "imagenet" and darts_imagenet.lr_schedule == "exponential"
    assert (pcdarts.strategy, pcdarts.pc_k, pcdarts.w_lr_min, pcdarts.arch_warmup_epochs) == ("pcdarts", 4, 0, 15)
    assert pc_imagenet.lr_schedule == "linear" and pc_imagenet.warmup_epochs == 5
    assert (proxyless.space, proxyless.strategy, proxyless.latency_ms) == ("mobile", "proxyless", pytest.approx(78))
