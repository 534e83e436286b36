"""Training a derived network from scratch (DARTS, Sec. 3.3): SGD, cosine lr, drop-path ramped linearly,
optional auxiliary head and cutout, optionally in mixed precision (bf16 or fp16 autocast); checkpoint per epoch
(and every `cfg.checkpoint_minutes` within one), resumable; test accuracy, parameter count and MACs.

Under torchrun (`hwnas.distributed`) every rank trains on its shard of each global batch (`shard_loader`), the
gradients and BatchNorm's running statistics averaged over the ranks at each step, and tests on its share of the
test split; rank 0 writes the run, and its checkpoint resumes with any number of processes. A sample's
augmentation does not depend on the number of processes; drop-path masks are drawn per process.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Subset
from tqdm import tqdm

from hwnas import distributed
from hwnas.complexity import count_macs, count_parameters
from hwnas.config import TrainConfig, grad_clip_for
from hwnas.data import check_steps, load_splits, make_loader, shard_loader, trained_splits
from hwnas.device import placement, to_device
from hwnas.errors import HwnasError
from hwnas.run import CheckpointClock, EpochSoFar, RunDir, save_torch_atomic, seed_everything
from hwnas.schedule import set_lr, train_lr
from hwnas.spaces import get_space, load_genotype
from hwnas.spaces.mobile import MobileGenotype

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    test_acc: float
    test_loss: float
    params: int
    macs: int  # multiply-accumulates of one example's inference
    summary: dict[str, Any]


def augment(x: torch.Tensor, cutout: int, generator: torch.Generator, rank: int = 0, world: int = 1) -> torch.Tensor:
    """Random translation (zero-padded crop, pad = H/8) and optional cutout, per sample.

    `x` is rank `rank`'s shard of a global batch of `world` shards, which holds every `world`-th sample from
    `rank` (`shard_loader`'s): the draws are made sample by sample for the global batch and the shard takes its
    own, so a sample is augmented alike whatever the number of processes.
    """
    b, _c, h, w = x.shape  # (B, C, H, W), B = the global batch / world
    pad = max(1, h // 8)
    draws = torch.rand(b * world, 4, generator=generator)[rank::world]  # (B, 4): a row per sample
    dy, dx = (draws[:, :2] * (2 * pad + 1)).long().unbind(1)
    padded = F.pad(x, (pad, pad, pad, pad))
    out = torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(b)])
    if cutout > 0:
        # a cutout x cutout square from (cy, cx) - cutout // 2, clipped at the borders: the DARTS code's
        # utils.Cutout for even sides ([y - L/2, y + L/2)), and exactly L for odd ones too
        top, left = (draws[:, 2] * h).long() - cutout // 2, (draws[:, 3] * w).long() - cutout // 2
        ys = torch.arange(h).view(1, h, 1) - top.view(b, 1, 1)  # (B, H, 1): rows from the square's top
        xs = torch.arange(w).view(1, 1, w) - left.view(b, 1, 1)  # (B, 1, W)
        inside = (ys >= 0) & (ys < cutout) & (xs >= 0) & (xs < cutout)
        out = out * (~inside).unsqueeze(1).to(out.dtype)
    return out


AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, precision: str):
    """`precision`'s mixed-precision context on `device` (none for fp32): ops that gain from it run in that type,
    the others (losses, reductions, BatchNorm statistics) in fp32, as torch.autocast chooses."""
    dtype = AUTOCAST_DTYPES[precision]
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def step_seed(*keys: int) -> int:
    """A seed of its own for each tuple of keys (NumPy's SeedSequence mixes them): a step's random draws depend
    on (seed, epoch, step) alone, so a resumed run draws as one that never stopped without storing RNG state."""
    return int(np.random.SeedSequence(keys).generate_state(1)[0])


def evaluate(model: torch.nn.Module, loader, precision: str = "fp32") -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of `model` in eval mode, in `precision`, over the examples of every rank's
    `loader` (each holds its share of them), on the device of its parameters."""
    model.eval()
    device = next(model.parameters()).device
    sums = torch.zeros(3, dtype=torch.float64)  # summed loss, correct answers, examples
    with torch.no_grad(), autocast(device, precision):
        for x, y in loader:
            x, y = to_device(x, device, non_blocking=True), y.to(device, non_blocking=True)
            logits = model(x)
            loss = F.cross_entropy(logits, y, reduction="sum").item()
            sums += torch.tensor([loss, (logits.argmax(1) == y).sum().item(), len(y)], dtype=torch.float64)
    distributed.sum_([sums], "the test all-reduce")
    loss, correct, n = sums.tolist()
    return loss / max(n, 1), correct / max(n, 1)


def optimiser(model: torch.nn.Module, cfg: TrainConfig, device: torch.device):
    """SGD with momentum and weight decay, as DARTS trains, and the gradient scaler of `cfg.precision`: fp16's
    narrow range needs the loss scaled up before backward and the gradients down before the step (in the other
    precisions the scaler passes everything through)."""
    opt = torch.optim.SGD(model.parameters(), cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return opt, torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")


def train_step(
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    batch: tuple[torch.Tensor, torch.Tensor],
    cfg: TrainConfig,
    grad_clip: float | None,
) -> tuple[float, int]:
    """One optimiser step on this rank's (augmented) batch: the loss (label-smoothed by `cfg.label_smoothing`), with
    the auxiliary head's, in `cfg.precision`; the gradients averaged over the ranks, clipped to `grad_clip` in norm,
    stepped. Returns (loss, correct answers).

    BatchNorm's running statistics are averaged over the ranks with the gradients, in the same all-reduce: every
    rank tests with the same ones (their mean over the shards), and rank 0's checkpoint holds every rank's state.
    """
    x, y = batch  # (B, C, H, W), (B,)
    opt.zero_grad(set_to_none=True)
    with autocast(x.device, cfg.precision):
        out = model(x)
        logits, aux = out if isinstance(out, tuple) else (out, None)
        loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
        if aux is not None:
            loss = loss + cfg.auxiliary_weight * F.cross_entropy(aux, y, label_smoothing=cfg.label_smoothing)
    scaler.scale(loss).backward()
    running_stats = [b for b in model.buffers() if b.is_floating_point()]
    distributed.average_([*(p.grad for p in model.parameters() if p.grad is not None), *running_stats])
    scaler.unscale_(opt)  # the clip sees the true gradients
    if grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(opt)  # skipped (and the scale lowered) where fp16 gradients overflowed
    scaler.update()
    return loss.item(), int((logits.argmax(1) == y).sum().item())


def build_model(cfg: TrainConfig, in_channels: int, num_classes: int, genotype_source: str | None = None):
    """The genotype the network is built from (`cfg.genotype`, or `genotype_source` instead; a mobile one at
    `cfg.width_mult` when set) and the network."""
    genotype = load_genotype(genotype_source or cfg.genotype)
    if cfg.width_mult is not None and isinstance(genotype, MobileGenotype):  # its width lives in its genotype
        genotype = dataclasses.replace(genotype, width_mult=cfg.width_mult)
    model = get_space(genotype.space).build_network(genotype, cfg, in_channels, num_classes)
    return genotype, model


def run_train(cfg: TrainConfig, run: RunDir, progress: bool = True, plots: bool = True) -> TrainResult:
    """Train per `cfg` into `run`, continuing from its checkpoint when there is one (only rank 0 writes `run`);
    `plots`: draw the metrics into metrics.png at the end."""
    cfg.validate()
    world, rank = distributed.world_size(), distributed.rank()
    distributed.check_batch_size(cfg.batch_size, world)
    place = placement(cfg.device, cfg.sync_bn, world)
    main = rank == 0
    seed_everything(cfg.seed)
    splits = load_splits(cfg.data)
    check_steps(trained_splits(cfg.data, len(splits.train), search=False), cfg.batch_size, world)
    state = run.load_checkpoint()
    so_far = EpochSoFar.from_checkpoint(state)
    # written when the run starts, so a resume, even one before the first checkpoint, never re-reads
    # cfg.genotype's file (which may have changed since)
    kept = run.path / "genotype.json"
    source = str(kept) if kept.is_file() else None
    genotype, model = build_model(cfg, splits.in_channels, splits.num_classes, source)
    if main and source is None:
        genotype.save(kept)
    params = count_parameters(model)
    macs = count_macs(model, (splits.in_channels, cfg.data.image_size, cfg.data.image_size))
    model = place.module(model)  # built on the CPU from the seed, so it starts alike on every device
    grad_clip = grad_clip_for(genotype.space, cfg.grad_clip)
    log.info("train: %s genotype %s, %d parameters, %.1fM MACs, %d train / %d test examples, %d process(es) on %s "
             "in %s%s", genotype.space, cfg.genotype, params, macs / 1e6, len(splits.train), len(splits.test), world,
             place.device, cfg.precision, " with SyncBatchNorm" if place.sync_bn else "")  # fmt: skip
    if main and cfg.precision == "fp16" and place.device.type == "cpu":
        log.warning("fp16 on the CPU: torch %s runs fp16 convolutions there many times slower than fp32 (a 3x3 "
                    "convolution 50x slower on this project's VM); bf16 is the CPU's mixed precision",
                    torch.__version__)  # fmt: skip
    opt, scaler = optimiser(model, cfg, place.device)
    history: list[dict[str, Any]] = []
    start_epoch, wall_s = 0, 0.0
    if state is not None:
        try:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["opt"])
            if scaler.is_enabled() and state.get("scaler"):  # else saved in another precision: a fresh scale
                scaler.load_state_dict(state["scaler"])
        except (KeyError, RuntimeError, ValueError) as err:
            raise HwnasError(f"checkpoint in {run.path} does not match this network: {err}") from None
        start_epoch, history, wall_s = state["epoch"] + 1, state["history"], state["wall_s"]
        if main:  # from the checkpoint: a stop between its save and the metrics' write may have left them a row behind
            run.write_metrics(history)
        log.info("resuming %s after epoch %d%s", run.path, state["epoch"] + 1,
                 f" and {so_far.steps} steps of the next" if so_far else "")  # fmt: skip

    clock = CheckpointClock(cfg.checkpoint_minutes)

    def checkpoint(epoch: int, so_far: EpochSoFar | None = None) -> None:
        """Rank 0 saves the run after `epoch` (and, mid-epoch, how far the next one got)."""
        if main:
            run.save_checkpoint({"epoch": epoch, "model": model.state_dict(), "opt": opt.state_dict(),
                                 "scaler": scaler.state_dict(), "history": history, "wall_s": wall_s,
                                 "epoch_so_far": so_far and so_far.to_json()})  # fmt: skip
        clock.reset()

    test_share = Subset(splits.test, range(rank, len(splits.test), world))
    test_loader = make_loader(test_share, 256, False, pin_memory=place.pin_memory, workers=cfg.data.workers)
    aug_gen = torch.Generator()
    with clock:
        for epoch in range(start_epoch, cfg.epochs):
            t0 = time.perf_counter()
            model.train()
            set_lr(opt, train_lr(epoch, cfg))
            if hasattr(model, "drop_path_prob"):
                model.drop_path_prob = cfg.drop_path_prob * epoch / cfg.epochs
            # the epoch's summed loss, correct answers and examples (in a resumed epoch, the ranks' mean so far)
            done, totals = 0, {"loss": 0.0, "correct": 0, "n": 0}
            if so_far is not None:
                done, totals, t0 = so_far.steps, so_far.totals, t0 - so_far.elapsed_s
                so_far = None
            # not pinned: augment copies
            loader = shard_loader(splits.train, cfg.batch_size, cfg.seed, epoch, world, rank, skip_batches=done,
                                  workers=cfg.data.workers)  # fmt: skip
            steps = done + len(loader)
            bar = tqdm(loader, total=steps, initial=done, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                       disable=not (progress and main), leave=False)  # fmt: skip
            for step, (x, y) in enumerate(bar, start=done):
                aug_gen.manual_seed(step_seed(cfg.seed, epoch, step, 0))
                torch.manual_seed(step_seed(cfg.seed, epoch, step, 1, rank))  # drop-path masks, per process
                batch = place.batch((augment(x, cfg.cutout, aug_gen, rank, world), y))  # on the host: alike anywhere
                loss, correct = train_step(model, opt, scaler, batch, cfg, grad_clip)
                totals["loss"] += loss * len(y)
                totals["correct"] += correct
                totals["n"] += len(y)
                n = totals["n"]
                bar.set_postfix(loss=f"{totals['loss'] / n:.3f}", acc=f"{totals['correct'] / n:.3f}")
                save, stop = clock.poll() if step + 1 < steps else (False, False)  # else the epoch's end saves
                if save:
                    elapsed_s = time.perf_counter() - t0
                    checkpoint(epoch - 1, EpochSoFar(epoch, step + 1, elapsed_s, distributed.average_metrics(totals)))
                if stop:
                    raise clock.stopped()
            totals = distributed.average_metrics(totals)
            test_loss, test_acc = evaluate(model, test_loader, cfg.precision)
            wall_s += time.perf_counter() - t0
            row = {"epoch": epoch, "train_loss": totals["loss"] / totals["n"],
                   "train_acc": totals["correct"] / totals["n"], "test_loss": test_loss, "test_acc": test_acc,
                   "lr": opt.param_groups[0]["lr"], "epoch_s": time.perf_counter() - t0}  # fmt: skip
            history.append(row)
            checkpoint(epoch)
            if main:
                run.write_metrics(history)
            log.info("epoch %d/%d: train_loss=%.4f train_acc=%.4f test_acc=%.4f", epoch + 1, cfg.epochs,
                     row["train_loss"], row["train_acc"], test_acc)  # fmt: skip
            if epoch + 1 < cfg.epochs and clock.poll()[1]:
                raise clock.stopped()

    test_loss, test_acc = history[-1]["test_loss"], history[-1]["test_acc"]  # the last epoch's: the weights kept
    summary = {"genotype": genotype.to_json(), "test_acc": test_acc, "test_loss": test_loss, "params": params,
               "macs": macs, "wall_s": wall_s, "epochs": cfg.epochs, "dataset": cfg.data.dataset, "seed": cfg.seed,
               "world_size": world, "device": str(place.device), "precision": cfg.precision}  # fmt: skip
    if main:
        save_torch_atomic(run.path / "model.pt", {"genotype": genotype.to_json(), "config": cfg.to_json(),
                                                  "in_channels": splits.in_channels,
                                                  "num_classes": splits.num_classes,
                                                  "state_dict": model.state_dict()})  # fmt: skip
        run.write_json("summary.json", summary)
        if plots:
            from hwnas.plots import best_effort, plot_metrics

            with best_effort():
                plot_metrics(history, run.path / "metrics.png")
        log.info("test accuracy %.4f (%d parameters), weights in %s", test_acc, params, run.path / "model.pt")
    return TrainResult(test_acc, test_loss, params, macs, summary)
