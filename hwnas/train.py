"""Training a derived network from scratch (DARTS, Sec. 3.3): SGD, cosine lr, drop-path ramped linearly,
optional auxiliary head and cutout; checkpoint per epoch (and every `cfg.checkpoint_minutes` within one),
resumable; test accuracy and parameter count."""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from hwnas.config import TrainConfig, grad_clip_for
from hwnas.data import load_splits, make_loader
from hwnas.device import placement
from hwnas.errors import HwnasError
from hwnas.run import CheckpointClock, EpochSoFar, RunDir, rng_state, save_torch_atomic, seed_everything, set_rng_state
from hwnas.schedule import cosine_lr, set_lr
from hwnas.search import evaluate
from hwnas.spaces import get_space, load_genotype
from hwnas.spaces.mobile import MobileGenotype

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    test_acc: float
    test_loss: float
    params: int
    summary: dict[str, Any]


def count_parameters(model: torch.nn.Module) -> int:
    """Parameters of the network as deployed: the auxiliary head, used only in training, is not counted."""
    return sum(p.numel() for n, p in model.named_parameters() if not n.startswith("auxiliary_head"))


def augment(x: torch.Tensor, cutout: int, generator: torch.Generator) -> torch.Tensor:
    """Random translation (zero-padded crop, pad = H/8) and optional cutout, per sample."""
    b, _c, h, w = x.shape
    pad = max(1, h // 8)
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    out = torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(b)])
    if cutout > 0:
        cy = torch.randint(0, h, (b,), generator=generator)
        cx = torch.randint(0, w, (b,), generator=generator)
        ys, xs = torch.arange(h).view(1, h, 1), torch.arange(w).view(1, 1, w)
        inside = ((ys - cy.view(b, 1, 1)).abs() <= cutout // 2) & ((xs - cx.view(b, 1, 1)).abs() <= cutout // 2)
        out = out * (~inside).unsqueeze(1).to(out.dtype)
    return out


def build_model(cfg: TrainConfig, in_channels: int, num_classes: int, genotype_source: str | None = None):
    """The genotype the network is built from (`cfg.genotype`, or `genotype_source` instead; a mobile one at
    `cfg.width_mult` when set) and the network."""
    genotype = load_genotype(genotype_source or cfg.genotype)
    if cfg.width_mult is not None and isinstance(genotype, MobileGenotype):  # its width lives in its genotype
        genotype = dataclasses.replace(genotype, width_mult=cfg.width_mult)
    model = get_space(genotype.space).build_network(genotype, cfg, in_channels, num_classes)
    return genotype, model


def run_train(cfg: TrainConfig, run: RunDir, progress: bool = True) -> TrainResult:
    cfg.validate()
    place = placement(cfg.device, processes=1)
    seed_everything(cfg.seed)
    splits = load_splits(cfg.data)
    state = run.load_checkpoint()
    so_far = EpochSoFar.from_checkpoint(state)
    kept = run.path / "genotype.json"  # written when the run starts: a resume never re-reads cfg.genotype's file
    source = str(kept) if state is not None and kept.is_file() else None
    genotype, model = build_model(cfg, splits.in_channels, splits.num_classes, source)
    genotype.save(kept)
    model = place.module(model)  # built on the CPU from the seed, so it starts alike on every device
    params = count_parameters(model)
    grad_clip = grad_clip_for(genotype.space, cfg.grad_clip)
    log.info("train: %s genotype %s, %d parameters, %d train / %d test examples, on %s", genotype.space,
             cfg.genotype, params, len(splits.train), len(splits.test), place.device)  # fmt: skip
    opt = torch.optim.SGD(model.parameters(), cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    history: list[dict[str, Any]] = []
    start_epoch, wall_s = 0, 0.0
    if state is not None:
        try:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["opt"])
        except (KeyError, RuntimeError, ValueError) as err:
            raise HwnasError(f"checkpoint in {run.path} does not match this network: {err}") from None
        if so_far is None:  # else once the epoch's loader exists, as when it was saved
            set_rng_state(state["rng"], place.device)
        start_epoch, history, wall_s = state["epoch"] + 1, state["history"], state["wall_s"]
        log.info("resuming %s after epoch %d%s", run.path, state["epoch"] + 1,
                 f" and {so_far.steps} steps of the next" if so_far else "")  # fmt: skip

    clock = CheckpointClock(cfg.checkpoint_minutes)

    def checkpoint(epoch: int, so_far: EpochSoFar | None = None) -> None:
        """Save the run after `epoch` (and, mid-epoch, how far the next one got)."""
        run.save_checkpoint({"epoch": epoch, "model": model.state_dict(), "opt": opt.state_dict(),
                             "rng": rng_state(place.device), "history": history, "wall_s": wall_s,
                             "epoch_so_far": so_far and so_far.to_json()})  # fmt: skip
        clock.reset()

    test_loader = make_loader(splits.test, 256, False, pin_memory=place.pin_memory)
    aug_gen = torch.Generator()
    with clock:
        for epoch in range(start_epoch, cfg.epochs):
            t0 = time.perf_counter()
            model.train()
            set_lr(opt, cosine_lr(epoch, cfg.epochs, cfg.lr, cfg.lr_min))
            if hasattr(model, "drop_path_prob"):
                model.drop_path_prob = cfg.drop_path_prob * epoch / cfg.epochs
            done, totals = 0, {"loss": 0.0, "correct": 0, "n": 0}  # the epoch's summed loss, correct answers, examples
            if so_far is not None:
                done, totals, t0 = so_far.steps, so_far.totals, t0 - so_far.elapsed_s
            # not pinned: augment copies
            loader = make_loader(splits.train, cfg.batch_size, True, cfg.seed, epoch, skip_batches=done)
            steps, batches = done + len(loader), iter(loader)
            if so_far is not None:  # the loader's iterator has drawn, as it had when the checkpoint was saved
                set_rng_state(state["rng"], place.device)
                so_far = None
            bar = tqdm(batches, total=steps, initial=done, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress,
                       leave=False)  # fmt: skip
            for step, (x, y) in enumerate(bar, start=done):
                aug_gen.manual_seed(cfg.seed * 1_000_003 + epoch * 10_007 + step)
                x, y = place.batch((augment(x, cfg.cutout, aug_gen), y))  # augmented on the host: alike on any device
                opt.zero_grad(set_to_none=True)
                out = model(x)
                logits, aux = out if isinstance(out, tuple) else (out, None)
                loss = F.cross_entropy(logits, y)
                if aux is not None:
                    loss = loss + cfg.auxiliary_weight * F.cross_entropy(aux, y)
                loss.backward()
                if grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
                opt.step()
                totals["loss"] += loss.item() * len(y)
                totals["correct"] += (logits.argmax(1) == y).sum().item()
                totals["n"] += len(y)
                train_loss, train_acc = totals["loss"] / totals["n"], totals["correct"] / totals["n"]
                bar.set_postfix(loss=f"{train_loss:.3f}", acc=f"{train_acc:.3f}")
                save, stop = clock.poll() if step + 1 < steps else (False, False)  # else the epoch's end saves
                if save:
                    checkpoint(epoch - 1, EpochSoFar(epoch, step + 1, time.perf_counter() - t0, dict(totals)))
                if stop:
                    raise clock.stopped()
            test_loss, test_acc = evaluate(model, test_loader)
            wall_s += time.perf_counter() - t0
            row = {"epoch": epoch, "train_loss": train_loss, "train_acc": train_acc, "test_loss": test_loss,
                   "test_acc": test_acc, "lr": opt.param_groups[0]["lr"],
                   "epoch_s": time.perf_counter() - t0}  # fmt: skip
            history.append(row)
            checkpoint(epoch)
            run.write_metrics(history)
            log.info("epoch %d/%d: train_loss=%.4f train_acc=%.4f test_acc=%.4f", epoch + 1, cfg.epochs,
                     row["train_loss"], row["train_acc"], test_acc)  # fmt: skip
            if epoch + 1 < cfg.epochs and clock.poll()[1]:
                raise clock.stopped()

    test_loss, test_acc = evaluate(model, test_loader)
    save_torch_atomic(run.path / "model.pt", {"genotype": genotype.to_json(), "config": cfg.to_json(),
                                              "in_channels": splits.in_channels, "num_classes": splits.num_classes,
                                              "state_dict": model.state_dict()})  # fmt: skip
    summary = {"genotype": genotype.to_json(), "test_acc": test_acc, "test_loss": test_loss, "params": params,
               "wall_s": wall_s, "epochs": cfg.epochs, "dataset": cfg.data.dataset, "seed": cfg.seed,
               "device": str(place.device)}  # fmt: skip
    run.write_json("summary.json", summary)
    from hwnas import plots

    with plots.best_effort():
        plots.plot_metrics(history, run.path / "metrics.png")
    log.info("test accuracy %.4f (%d parameters), weights in %s", test_acc, params, run.path / "model.pt")
    return TrainResult(test_acc, test_loss, params, summary)
