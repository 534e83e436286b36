"""Random search, the baseline every comparison includes (Li & Talwalkar, "Random Search and Reproducibility
for Neural Architecture Search", UAI 2019; Yu et al., "Evaluating the Search Phase of NAS", ICLR 2020).

`random_samples` architectures are drawn uniformly from the space — under the latency budget when there is one
(rejection sampling, then budget repair) — and trained side by side on the same batches with the same optimiser
settings the supernet's weights get. The one with the best accuracy on the val split in the last epoch wins.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from hwnas import distributed
from hwnas.schedule import set_lr
from hwnas.spaces import get_space
from hwnas.strategies.base import STRATEGIES, Strategy, accuracy

log = logging.getLogger(__name__)
_REJECTION_TRIES = 200


@STRATEGIES.register("random")
class RandomSearch(Strategy):
    name = "random"

    def prepare(self, supernet) -> None:
        super().prepare(supernet)
        self.candidates: list = []
        self.models = nn.ModuleList()
        self.val_correct: list[int] = []
        self.val_seen = 0

    def _sample(self, generator: torch.Generator):
        model = self.latency_objective.model if self.latency_objective is not None else None
        if model is None:
            return self.supernet.sample(generator)
        budget = self.latency_objective.budget_ms
        for _ in range(_REJECTION_TRIES):
            genotype = self.supernet.sample(generator)
            if model.architecture_ms(self.supernet, genotype) <= budget:
                return genotype
        return model.repair(self.supernet, genotype, budget)[0]

    def _build(self) -> None:
        """Draw and build the candidates (once the latency objective, if any, is known)."""
        cfg = self.cfg
        generator = torch.Generator().manual_seed(cfg.seed)
        space = get_space(cfg.space)
        in_channels = next(m for m in self.supernet.modules() if isinstance(m, nn.Conv2d)).in_channels
        num_classes = self.supernet.classifier.out_features
        for _ in range(cfg.random_samples):
            genotype = self._sample(generator)
            self.candidates.append(genotype)
            self.models.append(self.placement.module(space.build_network(genotype, cfg, in_channels, num_classes)))
        self.val_correct = [0] * len(self.candidates)
        self.opts = [torch.optim.SGD(m.parameters(), cfg.w_lr, momentum=cfg.w_momentum,
                                     weight_decay=cfg.w_weight_decay) for m in self.models]  # fmt: skip
        self.best = 0

    def start_epoch(self, epoch: int) -> None:
        super().start_epoch(epoch)
        if not self.candidates:
            self._build()
        for opt in self.opts:
            set_lr(opt, self.weight_lr(epoch))
        self.val_correct = [0] * len(self.candidates)
        self.val_seen = 0

    def _summed_counts(self) -> tuple[list[int], int]:
        """(correct per candidate, examples seen) of the epoch so far, summed over the ranks."""
        counts = torch.tensor([*self.val_correct, self.val_seen], dtype=torch.float64)
        distributed.sum_([counts], "the val-accuracy all-reduce")
        totals = [int(c) for c in counts.tolist()]
        return totals[:-1], totals[-1]

    def end_epoch(self, epoch: int) -> None:
        self.val_correct, self.val_seen = self._summed_counts()  # every rank picks the same best candidate
        self.best = max(range(len(self.candidates)), key=lambda i: (self.val_correct[i], -i))

    def epoch_state(self) -> dict:
        correct, seen = self._summed_counts()
        return {"val_correct": correct, "val_seen": seen}

    def load_epoch_state(self, state: dict) -> None:
        if distributed.rank() == 0:  # the others count from zero: the end-of-epoch sum adds them up
            self.val_correct, self.val_seen = list(state["val_correct"]), state["val_seen"]

    def step(self, train_batch, val_batch) -> dict[str, float]:
        (xt, yt), (xv, yv) = train_batch, val_batch
        losses, accs = [], []
        for i, (model, opt) in enumerate(zip(self.models, self.opts)):
            model.train()
            opt.zero_grad(set_to_none=True)
            logits = model(xt)
            loss = F.cross_entropy(logits, yt)
            loss.backward()
            self.sync_and_clip_weights(model.parameters())
            opt.step()
            losses.append(loss.item())
            accs.append(accuracy(logits, yt))
            model.eval()
            with torch.no_grad():
                correct = (model(xv).argmax(1) == yv).sum().item()
            self.val_correct[i] += correct
        self.val_seen += len(yv)
        # no per-step val_acc: the mean of each batch's best candidate is no architecture's accuracy (biased
        # upwards); the epoch's val_acc is the chosen candidate's, from `epoch_metrics`
        return {"train_loss": sum(losses) / len(losses), "train_acc": sum(accs) / len(accs)}

    def derive(self):
        return self.candidates[self.best] if self.candidates else self.supernet.derive()

    def epoch_metrics(self) -> dict[str, float]:
        metrics = {"w_lr": self.opts[0].param_groups[0]["lr"] if self.candidates else self.cfg.w_lr}
        if self.val_seen:  # after `end_epoch`: the counts summed over the ranks, `best` picked from them
            metrics["val_acc"] = metrics["best_candidate_val_acc"] = self.val_correct[self.best] / self.val_seen
        return metrics

    def state_dict(self):
        return {"candidates": [g.to_json() for g in self.candidates], "models": self.models.state_dict(),
                "opts": [o.state_dict() for o in self.opts], "best": self.best,
                "step_index": self.step_index}  # fmt: skip

    def load_state_dict(self, state) -> None:
        self._build()
        if [g.to_json() for g in self.candidates] != state["candidates"]:
            raise ValueError("the random candidates differ from the checkpoint's")
        self.models.load_state_dict(state["models"])
        for opt, s in zip(self.opts, state["opts"]):
            opt.load_state_dict(s)
        self.best, self.step_index = state["best"], state["step_index"]
