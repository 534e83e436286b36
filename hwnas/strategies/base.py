"""The Strategy interface and the bilevel gradient machinery the gradient-based strategies share.

One search loop (`hwnas.search`) calls `prepare`, then per step `step(train_batch, val_batch)`, per epoch
`start_epoch`/`end_epoch`, and finally `derive`. No strategy owns a training loop.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from hwnas import distributed
from hwnas.config import SearchConfig
from hwnas.device import Placement
from hwnas.errors import HwnasError
from hwnas.registry import Registry
from hwnas.schedule import cosine_lr, set_lr
from hwnas.supernet.base import Supernet
from hwnas.supernet.mixed import Mixing, WeightedSum

STRATEGIES: Registry[type[Strategy]] = Registry("strategy")


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return (logits.argmax(dim=1) == labels).float().mean().item()


class Strategy:
    """Bilevel search over a supernet: weights on the train split, α on the val split (DARTS, Eq. 3-4).

    The default `step` is first-order DARTS: one α step on a val batch (Adam), then one weight step on a train
    batch (SGD with momentum, cosine lr, gradient clipping). Subclasses change how edges mix (`mixing`), what
    the α step computes (`arch_step`), or what happens after it.

    Data-parallel search (`hwnas.distributed`): each rank steps on its shard of the global batch, and every
    gradient an optimiser step or the unrolled formula uses goes through `sync_gradients` (or
    `distributed.average_`) first, so all ranks step with the global batch's gradient and stay one model. Paths
    are sampled from `generator`, seeded per step by (seed, step) alone, so every rank draws the same path.
    """

    name: ClassVar[str]
    mixes_every_candidate: ClassVar[bool] = False  # what --fused saves memory on; GDAS and ProxylessNAS sample paths
    second_order: ClassVar[bool] = False  # whether --unrolled applies

    def __init__(self, cfg: SearchConfig):
        for flag, applies, given in (("--fused", "mixes_every_candidate", cfg.fused),
                                     ("--unrolled", "second_order", cfg.unrolled)):  # fmt: skip
            if given and not getattr(self, applies):
                which = " and ".join(n for n in STRATEGIES.names() if getattr(STRATEGIES.get(n), applies))
                raise HwnasError(f"{flag} applies to the {which} strategies, not {self.name}")
        self.cfg = cfg
        self.latency_objective = None  # hwnas.latency.loss objective: (task loss, supernet) -> loss, set by search
        self.epoch = 0
        self.step_index = 0
        self.generator = torch.Generator()  # path sampling: seeded per step, so every rank and a resume agree
        self.placement = Placement()  # the search's device (set by the loop): models a strategy builds go there

    # -- set-up ------------------------------------------------------------------------------------------------
    def supernet_options(self) -> dict[str, Any]:
        """Keyword arguments for `SearchSpace.build_supernet` (e.g. PC-DARTS's partial channels)."""
        return {}

    def mixing(self) -> Mixing:
        return WeightedSum(fused=self.cfg.fused)

    def prepare(self, supernet: Supernet) -> None:
        cfg = self.cfg
        self.supernet = supernet
        supernet.set_mixing(self.mixing())
        self.w_opt = torch.optim.SGD(
            supernet.weights(), cfg.w_lr, momentum=cfg.w_momentum, weight_decay=cfg.w_weight_decay
        )
        self.a_opt = torch.optim.Adam(
            supernet.arch_parameters(), cfg.arch_lr, betas=tuple(cfg.a_betas), weight_decay=cfg.a_weight_decay
        )

    # -- the loop's calls --------------------------------------------------------------------------------------
    def start_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        set_lr(self.w_opt, self.weight_lr(epoch))

    def weight_lr(self, epoch: int) -> float:
        """The weight optimiser's learning rate in `epoch`: cosine from w_lr to w_lr_min over the search."""
        return cosine_lr(epoch, self.cfg.epochs, self.cfg.w_lr, self.cfg.w_lr_min)

    def end_epoch(self, epoch: int) -> None:
        """After an epoch's last step (random search picks its best candidate here)."""

    def epoch_state(self) -> dict[str, Any]:
        """What the strategy has gathered within the epoch so far, for a mid-epoch checkpoint: called on every
        rank (it may all-reduce), and the same on each."""
        return {}

    def load_epoch_state(self, state: dict[str, Any]) -> None:
        """Restore `epoch_state` after `start_epoch`, when resuming mid-epoch."""

    def step(self, train_batch, val_batch) -> dict[str, float]:
        self.generator.manual_seed(self.cfg.seed * 1_000_003 + self.step_index)
        self.step_index += 1
        metrics: dict[str, float] = {}
        if self.epoch >= self.cfg.arch_warmup_epochs:
            metrics.update(self.arch_step(train_batch, val_batch))
        metrics.update(self.weight_step(train_batch))
        return metrics

    def derive(self):
        return self.supernet.derive()

    def epoch_metrics(self) -> dict[str, float]:
        """Per-epoch values worth logging besides loss and accuracy (temperature, λ, ...)."""
        metrics = {"w_lr": self.w_opt.param_groups[0]["lr"]}
        if self.latency_objective is not None:
            metrics.update(self.latency_objective.metrics(self.supernet))
        return metrics

    # -- the two steps -----------------------------------------------------------------------------------------
    @staticmethod
    def sync_gradients(params) -> None:
        """Average the gradients of `params` over the ranks before an optimiser uses them (no-op in one process)."""
        distributed.average_gradients(list(params))

    def sync_and_clip_weights(self, params) -> None:
        """Before a weight step: the gradients of `params` averaged over the ranks, then clipped to
        `cfg.weight_grad_clip` in norm when the config clips."""
        params = list(params)
        self.sync_gradients(params)
        if self.cfg.weight_grad_clip is not None:
            nn.utils.clip_grad_norm_(params, self.cfg.weight_grad_clip)

    def task_loss(self, batch) -> tuple[torch.Tensor, float]:
        x, y = batch
        logits = self.supernet(x)
        return F.cross_entropy(logits, y), accuracy(logits, y)

    def arch_objective(self, task_loss: torch.Tensor) -> torch.Tensor:
        """The α step's loss: the task loss, with the latency term when searching for a target."""
        if self.latency_objective is None:
            return task_loss
        return self.latency_objective(task_loss, self.supernet)

    def weight_step(self, batch) -> dict[str, float]:
        self.w_opt.zero_grad(set_to_none=True)
        with self.supernet.architecture_fixed():
            loss, acc = self.task_loss(batch)
            loss.backward()
        self.sync_and_clip_weights(self.supernet.weights())
        self.w_opt.step()
        return {"train_loss": loss.item(), "train_acc": acc}

    def arch_step(self, train_batch, val_batch) -> dict[str, float]:
        self.a_opt.zero_grad(set_to_none=True)
        # no weight gradients, which an α step would discard: on the CPU they were most of its time (2.3x faster on
        # the mobile supernet, 1.6x on DARTS's: depthwise convolutions' weight gradients) and a quarter of its bytes
        with self.supernet.weights_fixed():
            task, acc = self.task_loss(val_batch)
            loss = self.arch_objective(task)
            loss.backward()
        self.sync_gradients(self.supernet.arch_parameters())
        self.a_opt.step()
        return {"val_loss": task.item(), "val_acc": acc, "arch_loss": loss.item()}

    # -- checkpoints -------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = {
            "w_opt": self.w_opt.state_dict(),
            "a_opt": self.a_opt.state_dict(),
            "step_index": self.step_index,
        }
        if self.latency_objective is not None:
            state["latency_objective"] = self.latency_objective.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.w_opt.load_state_dict(state["w_opt"])
        self.a_opt.load_state_dict(state["a_opt"])
        self.step_index = state["step_index"]
        if self.latency_objective is not None and "latency_objective" in state:
            self.latency_objective.load_state_dict(state["latency_objective"])
