"""Where search and training run: `--device` resolution (torch.cuda mocked: the resolution logic only), CPU runs end
to end, checkpoints that load on any device, and — on a machine with a GPU — search and training on CUDA."""

import json

import pytest
import torch
from torch import nn

from hwnas.config import SearchConfig, TrainConfig
from hwnas.device import Placement, placement, resolve_device
from hwnas.errors import HwnasError
from hwnas.run import RunDir
from hwnas.search import run_search
from hwnas.spaces import get_space, load_genotype
from hwnas.train import run_train
from tests.cli.test_cli import TINY, _one_line_error
from tests.conftest import tiny_search_config, tiny_train_config

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CPU, CUDA0, CUDA1 = torch.device("cpu"), torch.device("cuda", 0), torch.device("cuda", 1)


@pytest.fixture
def gpus(monkeypatch):
    """`gpus(n)`: torch sees n CUDA devices (mocked), outside torchrun unless LOCAL_RANK/WORLD_SIZE are set."""
    for name in ("WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)

    def set_gpus(n: int) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)

    return set_gpus


def test_without_cuda_auto_is_the_cpu_and_cuda_is_an_error(gpus):
    gpus(0)
    assert resolve_device("auto") == resolve_device("cpu") == CPU
    for name in ("cuda", "cuda:0"):
        with pytest.raises(HwnasError, match=f"device {name} needs CUDA.*use --device cpu or auto"):
            resolve_device(name)


def test_auto_and_cuda_take_this_processes_gpu(gpus, monkeypatch):
    gpus(2)
    assert resolve_device("auto") == resolve_device("cuda") == CUDA0 and resolve_device("cuda:1") == CUDA1
    assert resolve_device("cpu") == CPU
    with pytest.raises(HwnasError, match="no CUDA device 2; this machine has 2"):
        resolve_device("cuda:2")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert resolve_device("auto") == resolve_device("cuda") == CUDA1
    with pytest.raises(HwnasError, match="all 2 processes on one GPU; use cuda or auto"):
        resolve_device("cuda:0")
    assert resolve_device("auto", processes=3, local_rank=1) == CUDA1  # the launcher's check of its last process
    with pytest.raises(HwnasError, match="process 2 on this host has no GPU of its own.*--device cpu"):
        resolve_device("auto", processes=3, local_rank=2)


@pytest.mark.parametrize("name", ["gpu", "CUDA", "cuda:", "cuda:x", "cpu:0", "", "mps"])
def test_unknown_device_names(gpus, name):
    gpus(1)
    with pytest.raises(HwnasError, match="device must be auto, cpu, cuda or cuda:N"):
        resolve_device(name)
    for cfg in (SearchConfig(device=name), TrainConfig(device=name)):
        with pytest.raises(HwnasError, match="device must be"):
            cfg.validate()


def test_sync_bn_defaults_on_for_several_cuda_processes_only(gpus):
    gpus(2)
    assert placement("auto", None, processes=2, local_rank=0) == Placement(CUDA0, sync_bn=True)
    assert placement("auto", None, processes=1) == Placement(CUDA0, sync_bn=False)
    assert placement("cuda", False, processes=2, local_rank=1) == Placement(CUDA1, sync_bn=False)
    assert placement("cpu", None, processes=2, local_rank=0) == Placement(CPU, sync_bn=False)
    assert placement("cuda", True, processes=1).sync_bn
    gpus(0)
    assert placement("auto", None, processes=2, local_rank=1) == Placement(CPU, sync_bn=False)
    with pytest.raises(HwnasError, match="--sync-bn needs CUDA"):
        placement("cpu", True, processes=2, local_rank=0)


def test_sync_bn_keeps_the_parameters_and_the_checkpoint_keys():
    def supernet():
        torch.manual_seed(0)
        return get_space("darts").build_supernet(tiny_search_config(), 3, 4)

    plain = supernet()
    params = list(plain.parameters())
    synced = Placement(CPU, sync_bn=True).module(plain)
    assert any(isinstance(m, nn.SyncBatchNorm) for m in synced.modules())
    assert not any(type(m) is nn.BatchNorm2d for m in synced.modules())
    assert list(synced.parameters()) == params  # the same Parameter objects: optimisers built later see them
    reference = supernet().state_dict()
    assert list(synced.state_dict()) == list(reference)
    supernet().load_state_dict(synced.state_dict())  # a SyncBatchNorm checkpoint loads into plain BatchNorm


def test_batches_move_to_the_placement():
    x, y = Placement(CPU).batch((torch.ones(2, 3), torch.tensor([0, 1])))
    assert x.device == y.device == CPU and not Placement(CPU).pin_memory and Placement(CUDA0).pin_memory


def test_cpu_runs_channels_last():
    """On the CPU, networks and image batches are NHWC (hwnas.device.memory_format); labels and vectors stay."""
    place = Placement(CPU)
    net = place.module(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)))
    conv = net[0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    x, y = place.batch((torch.randn(2, 3, 5, 5), torch.tensor([0, 1])))
    assert x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous() and y.is_contiguous()
    loaded = nn.Conv2d(3, 4, 3)
    loaded.load_state_dict({"weight": conv, "bias": net[0].bias})  # checkpoints load into NCHW modules
    torch.testing.assert_close(loaded(x), net[0](x))


def test_device_fields_round_trip_through_json():
    for cfg in (SearchConfig(), SearchConfig(device="cuda:1", sync_bn=False), TrainConfig(device="cpu")):
        assert type(cfg).from_json(json.loads(json.dumps(cfg.to_json()))) == cfg
    assert SearchConfig().device == TrainConfig().device == "auto" and SearchConfig().sync_bn is None


def test_checkpoint_tensors_load_onto_the_cpu_and_resume(tmp_path):
    cfg = tiny_search_config(epochs=1)
    run = RunDir.create(tmp_path / "run", "search", cfg.to_json())
    first = run_search(cfg, run, progress=False, plots=False)
    state = run.load_checkpoint()  # torch.load(map_location="cpu")
    assert {t.device for t in state["supernet"].values()} == {CPU}
    assert first.summary["device"] == "cpu"
    resumed = run_search(cfg.replace(device="auto", epochs=2), run, progress=False, plots=False)  # on another device
    assert len(resumed.history) == 2 and resumed.history[0] == first.history[0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_without_cuda_is_one_line_and_writes_nothing(cli, tmp_path):
    run = tmp_path / "run"
    _one_line_error(cli("search", *TINY, "--device", "cuda", "--run-dir", str(run)), "device cuda needs CUDA")
    _one_line_error(cli("train", *TINY, "--device", "cuda:0", "--run-dir", str(run)), "device cuda:0 needs CUDA")
    _one_line_error(cli("search", *TINY, "--device", "gpu", "--run-dir", str(run)), "device must be")
    _one_line_error(cli("search", *TINY, "--sync-bn", "--run-dir", str(run)), "--sync-bn needs CUDA")
    assert not run.exists()
    # a GPU run's directory (device cuda) resumes here only with --device cpu or auto
    assert cli("search", *TINY, "--epochs", "1", "--run-dir", str(run)).returncode == 0
    stored = json.loads((run / "config.json").read_text())
    stored["config"]["device"] = "cuda"
    (run / "config.json").write_text(json.dumps(stored))
    _one_line_error(cli("search", "--resume", str(run), "--epochs", "2"), "device cuda needs CUDA")
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1
    assert cli("search", "--resume", str(run), "--epochs", "2", "--device", "cpu").returncode == 0


# -- on a GPU ----------------------------------------------------------------------------------------------------
SEARCHES_ON_CUDA = {
    "darts": {}, "darts_unrolled": {"unrolled": True}, "pcdarts": {"strategy": "pcdarts"},
    "gdas": {"strategy": "gdas"}, "proxyless": {"strategy": "proxyless"},
    "random": {"strategy": "random", "random_samples": 2},
}  # fmt: skip


@needs_cuda
@pytest.mark.parametrize("name", SEARCHES_ON_CUDA)
def test_search_epoch_on_cuda_derives_a_valid_genotype_and_resumes_on_the_cpu(tmp_path, name):
    cfg = tiny_search_config(device="cuda", epochs=1, **SEARCHES_ON_CUDA[name])
    run = RunDir.create(tmp_path / "run", "search", cfg.to_json())
    result = run_search(cfg, run, progress=False, plots=False)
    assert result.summary["device"] == str(CUDA0)
    assert {t.device for t in run.load_checkpoint()["supernet"].values()} == {CPU}
    genotype = load_genotype(str(tmp_path / "run" / "genotype.json"))
    assert genotype == result.genotype
    get_space("darts").build_network(genotype, cfg, 3, 4)
    resumed = run_search(cfg.replace(device="cpu", epochs=2), run, progress=False, plots=False)
    assert len(resumed.history) == 2 and resumed.summary["device"] == "cpu"


@needs_cuda
def test_hardware_aware_search_on_cuda(tmp_path):
    from hwnas.latency.catalogue import mobile_op_configs
    from tests.latency.helpers import make_table
    from tests.search_hw.conftest import SIZE, WIDTH, mobile_config

    table = make_table(mobile_op_configs(SIZE, WIDTH), target="synthetic", space="mobile", input_size=SIZE)
    table.save(tmp_path / "synthetic_mobile_32.json")
    for strategy in ("proxyless", "random"):
        cfg = mobile_config(strategy=strategy, target=str(table.path), latency_ms=1e9, epochs=1, random_samples=2,
                            device="cuda")  # fmt: skip
        result = run_search(cfg, RunDir.create(tmp_path / strategy, "search", cfg.to_json()), progress=False)
        assert result.summary["device"] == str(CUDA0) and result.summary["predicted_latency_ms"] > 0


@needs_cuda
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_train_epoch_on_cuda_then_resume_on_the_cpu(tmp_path, precision):
    cfg = tiny_train_config(device="cuda", epochs=1, cutout=2, auxiliary_weight=0.4, drop_path_prob=0.2,
                            precision=precision)  # fmt: skip
    run = RunDir.create(tmp_path / "run", "train", cfg.to_json())
    result = run_train(cfg, run, progress=False)
    assert result.summary["device"] == str(CUDA0) and 0.0 <= result.test_acc <= 1.0
    assert ("scale" in run.load_checkpoint()["scaler"]) == (precision == "fp16")
    record = torch.load(tmp_path / "run" / "model.pt", map_location="cpu", weights_only=True)
    assert {t.device for t in record["state_dict"].values()} == {CPU}
    resumed = run_train(cfg.replace(device="cpu", epochs=2), run, progress=False)
    assert resumed.summary["device"] == "cpu" and resumed.summary["epochs"] == 2


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
@pytest.mark.parametrize("command", ["search", "train"])
def test_two_processes_on_two_gpus_with_sync_bn(cli, tmp_path, command):
    run = tmp_path / "run"
    result = cli(command, *TINY, "--device", "auto", "--epochs", "1", "--nproc", "2", "--run-dir", str(run))
    assert result.returncode == 0, result.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["device"] == str(CUDA0)
    assert "with SyncBatchNorm" in (run / "log.txt").read_text()
