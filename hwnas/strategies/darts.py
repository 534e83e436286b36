"""DARTS (Liu, Simonyan, Yang, ICLR 2019): first order (ξ = 0) and second order (`unrolled`, Eq. 6-8)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.func import functional_call

from hwnas import distributed
from hwnas.strategies.base import STRATEGIES, Strategy, accuracy


@STRATEGIES.register("darts")
class Darts(Strategy):
    name = "darts"
    mixes_every_candidate = True
    second_order = True

    def arch_step(self, train_batch, val_batch) -> dict[str, float]:
        if not self.cfg.unrolled:
            return super().arch_step(train_batch, val_batch)
        self.a_opt.zero_grad(set_to_none=True)
        grads, metrics = self.unrolled_arch_gradient(train_batch, val_batch)
        for alpha, grad in zip(self.supernet.arch_parameters(), grads):
            alpha.grad = grad
        self.a_opt.step()
        return metrics

    def unrolled_arch_gradient(self, train_batch, val_batch) -> tuple[list[torch.Tensor], dict[str, float]]:
        """∇_α L_val(w', α) − ξ ∇²_{α,w} L_train(w, α) · ∇_{w'} L_val(w', α), with w' one SGD step ahead.

        w' = w − ξ (m·buf + ∇_w L_train + λ_wd·w) as the weight optimiser would step (ξ = its current lr);
        the Hessian-vector product by central finite differences at w± = w ± ε ∇_{w'} L_val,
        ε = 0.01 / ‖∇_{w'} L_val‖ (DARTS Eq. 8).

        Across ranks, ∇_w L_train (it sets w') and ∇_{w'} L_val (it sets ε and w±) are averaged where they are
        computed; the result is linear in the remaining per-rank terms (∇_α L_val, the two ∇_α L_train(w±)), so it
        is averaged once at the end.
        """
        net, cfg = self.supernet, self.cfg
        names, weights = zip(*net.named_weights())
        alphas = net.arch_parameters()
        (xt, yt), (xv, yv) = train_batch, val_batch
        xi = self.w_opt.param_groups[0]["lr"]

        train_grads = torch.autograd.grad(F.cross_entropy(net(xt), yt), weights, allow_unused=True)
        distributed.average_([g for g in train_grads if g is not None])
        w_prime = []
        for w, g in zip(weights, train_grads):
            step = (torch.zeros_like(w) if g is None else g) + cfg.w_weight_decay * w
            buf = self.w_opt.state.get(w, {}).get("momentum_buffer")
            if buf is not None:
                step = step + cfg.w_momentum * buf
            w_prime.append((w - xi * step).detach().requires_grad_())

        logits = functional_call(net, dict(zip(names, w_prime)), (xv,))
        task = F.cross_entropy(logits, yv)
        loss = self.arch_objective(task)
        grads = torch.autograd.grad(loss, [*alphas, *w_prime], allow_unused=True)
        d_alpha = [torch.zeros_like(a) if g is None else g for a, g in zip(alphas, grads[: len(alphas)])]
        d_w = [torch.zeros_like(w) if g is None else g for w, g in zip(w_prime, grads[len(alphas) :])]
        distributed.average_(d_w)

        eps = 0.01 / torch.cat([v.flatten() for v in d_w]).norm().clamp_min(1e-12)

        def alpha_grad_at(sign: float) -> list[torch.Tensor]:
            shifted = {n: (w + sign * eps * v).detach() for n, w, v in zip(names, weights, d_w)}
            train_loss = F.cross_entropy(functional_call(net, shifted, (xt,)), yt)
            g = torch.autograd.grad(train_loss, alphas, allow_unused=True)
            return [torch.zeros_like(a) if gi is None else gi for a, gi in zip(alphas, g)]

        g_plus, g_minus = alpha_grad_at(1.0), alpha_grad_at(-1.0)
        result = [da - xi * (gp - gm) / (2 * eps) for da, gp, gm in zip(d_alpha, g_plus, g_minus)]
        distributed.average_(result)
        metrics = {"val_loss": task.item(), "val_acc": accuracy(logits, yv), "arch_loss": loss.item()}
        return result, metrics
