"""Plots for the claims report: PNG files drawn with matplotlib's Agg backend (no display needed).

Each function takes plain data (runs as dicts with their metric histories) and a path, and
returns the path, or None when the grid produced nothing to draw.
"""

from __future__ import annotations

import math
from pathlib import Path


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _short(config: str, width: int = 48) -> str:
    return config if len(config) <= width else config[: width - 1] + "…"


def _by_config(runs: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in runs:
        out.setdefault(r["config"], []).append(r)
    return out


def learning_curves(runs: list[dict], path: Path) -> Path | None:
    """Validation accuracy and training loss per epoch: mean over seeds per configuration, seeds faint."""
    import numpy as np

    plt = _plt()
    configs = _by_config(runs)
    if not any(r["history"].get("val_accuracy") for r in runs):
        return None
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for i, (config, rs) in enumerate(sorted(configs.items())):
        color = f"C{i % 10}"
        for ax, key in zip(axes, ("val_accuracy", "loss")):
            curves = [[v for _, v in r["history"].get(key, [])] for r in rs]
            curves = [c for c in curves if c]
            for c in curves:
                ax.plot(range(1, len(c) + 1), c, color=color, alpha=0.25, lw=0.8)
            n = min((len(c) for c in curves), default=0)
            if n:
                ax.plot(range(1, n + 1), np.mean([c[:n] for c in curves], axis=0), color=color, lw=2,
                        label=_short(config) if key == "val_accuracy" else None)  # fmt: skip
    axes[0].set(title="validation accuracy", xlabel="epoch")
    axes[1].set(title="training loss", xlabel="epoch", yscale="log")
    fig.legend(loc="lower center", ncol=2, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.06 + 0.035 * math.ceil(len(configs) / 2), 1, 1))
    return _save(plt, fig, path)


def grad_norms(runs: list[dict], path: Path, max_panels: int = 8) -> Path | None:
    """Gradient norm per Dense layer over training steps, one panel per configuration (its first seed)."""
    plt = _plt()
    firsts = _first_seeds(runs, lambda h: any(k.startswith("grad_norm/") for k in h), max_panels)
    if not firsts:
        return None
    cols = min(2, len(firsts))
    rows = math.ceil(len(firsts) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.5 * cols, 3.2 * rows), squeeze=False)
    for ax, r in zip(axes.flat, firsts):
        layers = [k for k in r["history"] if k.startswith("grad_norm/")]
        layers.sort(key=lambda k: (k == "grad_norm/output", int(k.rsplit("_", 1)[-1]) if k[-1].isdigit() else 0))
        cmap = plt.get_cmap("viridis")
        for j, k in enumerate(layers):
            pts = [(s, v) for s, v in r["history"][k] if v > 0]
            if pts:
                ax.plot(*zip(*pts), color=cmap(j / max(1, len(layers) - 1)), lw=1.2, label=k.split("/", 1)[1])
        ax.set(yscale="log", xlabel="training step", ylabel="gradient norm", title=_short(r["config"], 60))
        ax.title.set_fontsize(8)
        ax.legend(fontsize=6, ncol=2)
    for ax in list(axes.flat)[len(firsts) :]:
        ax.axis("off")
    fig.tight_layout()
    return _save(plt, fig, path)


def final_metric(configs: list[dict], runs: list[dict], metric: str, path: Path) -> Path | None:
    """The final ``metric`` per configuration: mean with its 95% interval, and each seed as a dot."""
    plt = _plt()
    configs = [c for c in configs if c.get(metric) is not None and math.isfinite(c[metric])]
    if not configs:
        return None
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(configs) + 1.2))
    for y, c in enumerate(configs):
        lo, hi = c.get(f"{metric}_lo"), c.get(f"{metric}_hi")
        if lo is not None and math.isfinite(lo):
            ax.errorbar(c[metric], y, xerr=[[c[metric] - lo], [hi - c[metric]]], fmt="o", color="C0", capsize=4)
        else:
            ax.plot(c[metric], y, "o", color="C0")
        seeds = [r["metrics"].get(metric) for r in runs if r["config"] == c["config"] and r["status"] == "ok"]
        ax.plot([s for s in seeds if s is not None], [y] * len([s for s in seeds if s is not None]), ".",
                color="k", alpha=0.5)  # fmt: skip
    ax.set_yticks(range(len(configs)), [_short(c["config"], 60) for c in configs], fontsize=7)
    ax.invert_yaxis()
    ax.set(xlabel=f"final {metric} (mean, 95% t-interval over seeds; dots: seeds)")
    fig.tight_layout()
    return _save(plt, fig, path)


def bn_stats(runs: list[dict], path: Path, max_configs: int = 6) -> Path | None:
    """The first BN layer's moving mean and variance against the true statistics of its input, over steps."""
    plt = _plt()
    firsts = _first_seeds(runs, lambda h: h.get("bn_first/moving_mean"), max_configs)
    if not firsts:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for i, r in enumerate(firsts):
        color = f"C{i % 10}"
        for ax, stat in zip(axes, ("mean", "var")):
            moving = r["history"].get(f"bn_first/moving_{stat}", [])
            true = r["history"].get(f"bn_first/true_{stat}", [])
            if moving:
                ax.plot(*zip(*moving), color=color, lw=1.5, label=_short(r["config"]) + " moving")
            if true:
                ax.plot(*zip(*true), color=color, lw=1, ls="--", label=_short(r["config"]) + " true")
    axes[0].set(title="first BN layer: mean (averaged over features)", xlabel="training step")
    axes[1].set(title="first BN layer: variance (averaged over features)", xlabel="training step", yscale="log")
    axes[0].legend(fontsize=6)
    fig.tight_layout()
    return _save(plt, fig, path)


def _first_seeds(runs: list[dict], shows, limit: int) -> list[dict]:
    """Each configuration's first run whose history ``shows(history)`` something, at most ``limit``."""
    firsts = [rs[0] for _, rs in sorted(_by_config(runs).items())]
    return [r for r in firsts if shows(r["history"])][:limit]


def _save(plt, fig, path: Path) -> Path:
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
