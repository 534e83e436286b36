"""PNG plots for a run directory: derived cells, α and the metrics over epochs (matplotlib, headless)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch  # noqa: E402

log = logging.getLogger(__name__)
_OP_COLOURS = {
    "skip_connect": "tab:gray", "max_pool_3x3": "tab:blue", "avg_pool_3x3": "tab:cyan",
    "sep_conv_3x3": "tab:orange", "sep_conv_5x5": "tab:red", "dil_conv_3x3": "tab:green",
    "dil_conv_5x5": "tab:olive",
}  # fmt: skip


def plot_genotype(genotype, out_dir: str | Path) -> list[Path]:
    """Draw a genotype into `out_dir`; returns the files written."""
    out_dir = Path(out_dir)
    if genotype.space == "darts":
        return [
            plot_cell(genotype.normal, genotype.normal_concat, "normal cell", out_dir / "cell_normal.png"),
            plot_cell(genotype.reduce, genotype.reduce_concat, "reduction cell", out_dir / "cell_reduce.png"),
        ]
    from hwnas.spaces import get_space

    return [get_space(genotype.space).plot_genotype(genotype, out_dir / "architecture.png")]


def plot_cell(edges, concat, title: str, path: Path) -> Path:
    """A cell as a DAG: inputs c_{k-2}, c_{k-1} on the left, intermediate nodes, output c_k on the right."""
    steps = len(edges) // 2
    pos = {0: (0.0, 1.0), 1: (0.0, -1.0)}
    for i in range(steps):
        pos[2 + i] = (1.5 + 1.3 * i, 0.9 * (1 if i % 2 == 0 else -1))
    out = (1.5 + 1.3 * steps, 0.0)
    fig, ax = plt.subplots(figsize=(2.2 + 1.4 * steps, 3.6))
    names = {0: "c_{k-2}", 1: "c_{k-1}", **{2 + i: str(i) for i in range(steps)}}
    for k, (op, src) in enumerate(edges):
        dst = 2 + k // 2
        arrow = FancyArrowPatch(pos[src], pos[dst], arrowstyle="-|>", mutation_scale=12, shrinkA=14, shrinkB=14,
                                connectionstyle=f"arc3,rad={0.15 if k % 2 else -0.15}",
                                color=_OP_COLOURS.get(op, "black"), lw=1.6)  # fmt: skip
        ax.add_patch(arrow)
        mx, my = (pos[src][0] + pos[dst][0]) / 2, (pos[src][1] + pos[dst][1]) / 2 + (0.12 if k % 2 else -0.12)
        ax.text(mx, my, op, fontsize=7, ha="center", va="center", color=_OP_COLOURS.get(op, "black"),
                bbox=dict(boxstyle="round,pad=0.1", fc="white", ec="none", alpha=0.8))  # fmt: skip
    for node in concat:
        ax.add_patch(FancyArrowPatch(pos[node], out, arrowstyle="-|>", mutation_scale=10, shrinkA=14, shrinkB=14,
                                     color="lightgray", lw=1.0))  # fmt: skip
    for node, (x, y) in pos.items():
        colour = "lightblue" if node < 2 else "lightyellow"
        ax.text(x, y, names[node], ha="center", va="center", fontsize=9,
                bbox=dict(boxstyle="round", fc=colour, ec="black"))  # fmt: skip
    ax.text(*out, "c_{k}", ha="center", va="center", fontsize=9,
            bbox=dict(boxstyle="round", fc="lightgreen", ec="black"))  # fmt: skip
    ax.set_xlim(-0.6, out[0] + 0.6)
    ax.set_ylim(-1.6, 1.6)
    ax.set_title(title)
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_alpha_history(alpha_history: list[dict], labels: dict[str, list[str]], path: str | Path) -> Path:
    """Per group, the mean over edges of each op's probability, per epoch."""
    groups = list(labels)
    fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 3.5), squeeze=False)
    epochs = range(1, len(alpha_history) + 1)
    for ax, group in zip(axes[0], groups):
        for k, op in enumerate(labels[group]):
            series = [sum(row[k] for row in epoch[group]) / len(epoch[group]) for epoch in alpha_history]
            ax.plot(epochs, series, marker="o", ms=3, label=op, color=_OP_COLOURS.get(op))
        ax.set_title(f"{group}: mean op probability over edges")
        ax.set_xlabel("epoch")
        ax.set_ylabel("probability")
        ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


_METRIC_PANELS = (  # title, y label, the history's keys drawn (those a run has)
    ("loss", "cross-entropy", ("train_loss", "val_loss", "test_loss")),
    ("accuracy", "accuracy", ("train_acc", "val_acc", "test_acc", "best_candidate_val_acc")),
    ("latency", "ms", ("expected_latency_ms", "argmax_latency_ms")),
)


def plot_metrics(history: list[dict], path: str | Path, budget_ms: float | None = None,
                 derived: dict[str, float] | None = None) -> Path:  # fmt: skip
    """Per epoch of a search or training run: its losses, accuracies and, in a hardware-aware search, the expected
    latency E[LAT] and the argmax architecture's against the budget, with the derived architecture's latencies
    (`derived`: label -> ms, e.g. after the budget repair, and measured) at the last epoch."""
    panels = [(title, unit, [k for k in keys if any(k in row for row in history)])
              for title, unit, keys in _METRIC_PANELS]  # fmt: skip
    panels = [panel for panel in panels if panel[2]]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.4), squeeze=False)
    for ax, (title, unit, keys) in zip(axes[0], panels):
        for key in keys:
            epochs, values = zip(*[(row["epoch"] + 1, row[key]) for row in history if key in row])
            ax.plot(epochs, values, marker="o", ms=3, label=key)
        if title == "latency" and budget_ms is not None:
            ax.axhline(budget_ms, color="black", ls="--", lw=1, label=f"budget {budget_ms:g} ms")
        for (label, ms), marker in zip((derived or {}).items() if title == "latency" else (), "*Ds"):
            ax.plot([history[-1]["epoch"] + 1], [ms], marker=marker, ms=9, ls="none", label=f"{label} {ms:.1f} ms")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.set_ylabel(unit)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


@contextmanager
def best_effort() -> Iterator[None]:
    """Plots drawn at the end of a run: one that fails is a warning, never a failed run."""
    try:
        yield
    except Exception as err:  # noqa: BLE001 - whatever matplotlib raises
        log.warning("could not draw plots: %s", err)


_KERNEL_COLOURS = {3: "#8dd3c7", 5: "#fdb462", 7: "#fb8072"}


def plot_mobile_genotype(genotype, path: str | Path, title: str | None = None, ax=None) -> Path | None:
    """A mobile architecture as in the ProxylessNAS paper's Fig. 4: one box per block, height by kernel size,
    colour by kernel, label MB<expand> <k>x<k>; skipped blocks drawn as a thin gap."""
    from hwnas.ops.mbconv import parse_mbconv

    own = ax is None
    if own:
        fig, ax = plt.subplots(figsize=(12, 2.4))
    x = 0.0
    for op in genotype.blocks:
        if op == "zero":
            ax.plot([x + 0.1, x + 0.3], [0, 0], color="lightgray", lw=2)
            x += 0.4
            continue
        kernel, expand = parse_mbconv(op)
        height = kernel / 7
        ax.add_patch(plt.Rectangle((x, -height / 2), 0.8, height, fc=_KERNEL_COLOURS.get(kernel, "white"), ec="black"))
        ax.text(x + 0.4, 0, f"MB{expand}\n{kernel}x{kernel}", ha="center", va="center", fontsize=6)
        x += 1.0
    ax.set_xlim(-0.2, x + 0.2)
    ax.set_ylim(-0.7, 0.7)
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=9)
    if not own:
        return None
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
