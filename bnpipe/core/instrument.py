"""Instrument: cheap measurements of what the design notes' claims are about, taken while a variant trains.

Pure functions compute each quantity from a model and a fixed sample; ``callback`` wraps them in
a Keras callback that buffers rows and hands them to a sink (``train`` sends them to MLflow).

Metrics and their step axis:
- ``grad_norm/<dense layer>`` (whole-layer L2 norm, for plots), ``grad_rms/<dense layer>`` (the
  per-parameter RMS gradient: the norm over the square root of the layer's parameter count, so
  a 784x300 layer and a 100x10 one are comparable), ``grad_log10_rms_ratio`` (log10 of the first /
  last Dense layer's RMS gradient: far below 0 means vanishing, far above exploding): training
  step; at step 0, every epoch's end and, optionally, every ``grad_every_steps`` steps. Computed
  with a separate ``tf.GradientTape`` on one fixed training batch, in train mode; BN moving
  statistics are restored.
- ``bn_first/{moving,true}_{mean,var}`` (averaged over features), ``bn_first/mean_err_std`` (RMS
  error of the moving mean in units of the true std) and ``bn_first/var_ratio`` (moving / true
  variance): training step; every execution during the first ``bn_warmup_steps`` steps, then per epoch.
- ``train_infer_accuracy`` (accuracy on a fixed training sample in inference mode, as validation
  accuracy is measured), ``gen_gap_accuracy`` (that minus validation accuracy: both in inference
  mode, so BN's train/inference difference does not leak into it), ``gen_gap_loss`` (Keras' val -
  train loss), ``dead_fraction[/<layer>]`` (ReLU-family units that are dead on the fixed sample:
  the activation's derivative is below 1e-6 on every row, so no gradient passes; plain ReLU units
  with pre-activation <= 0 everywhere, ELU/SELU units saturated at their negative limit; a leaky
  ReLU unit is never dead), ``train_mode_accuracy``, ``infer_mode_accuracy``,
  ``mode_gap_accuracy`` (train-mode - inference-mode accuracy on a fixed validation sample of
  ``mode_sample_rows`` rows, batch by batch as in training), ``instrument_seconds`` (the wall time
  of all of the above in that epoch, so its cost is visible next to ``epoch_seconds``): epoch.
- At the end: ``val_accuracy_epoch1``, ``loss_epoch1`` (mean training loss over the first epoch),
  ``grad_log10_rms_ratio_initial`` (step 0), ``grad_abs_log10_rms_ratio_mean`` (mean of its
  absolute value over all measurements), ``grad_log10_ratio_initial`` / ``_mean`` (the same for
  whole-layer norms), ``steps_per_epoch``.

All of it runs at epoch ends (or every few executions), never per step, on a few hundred rows.
"""

from __future__ import annotations

import math

from bnpipe.core.model import compiled, layer_input, scores

RELU_FAMILY = ("relu", "leaky_relu", "elu", "selu")
GRAD_ROWS = 256  # rows of the fixed training batch for gradient norms and dead units
TRAIN_ROWS = 2048  # rows of the fixed training sample for the inference-mode training accuracy
DEAD_SLOPE = 1e-6  # a unit whose activation derivative stays below this on every row is dead
MODE_BATCHES = 8  # validation batches for the train- vs. inference-mode accuracy
BN_WARMUP_STEPS = 1024


def dense_layers(model) -> list:
    import keras

    return [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]


def first_bn(model):
    """The model's first BatchNormalization layer, or None."""
    import keras

    return next((layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)), None)


class _KeepState:
    """Restores the model's non-trainable variables (BN moving statistics) on exit."""

    def __init__(self, model):
        self.vars = list(model.non_trainable_variables)

    def __enter__(self):
        self.saved = [v.numpy() for v in self.vars]
        return self

    def __exit__(self, *exc):
        for v, value in zip(self.vars, self.saved):
            v.assign(value)
        return False


def layer_grad_norms(model, x, y) -> dict[str, float]:
    """L2 norm of the loss gradient w.r.t. each Dense layer's weights (kernel and bias), in train mode.

    The loss is the mean sparse categorical cross-entropy, as compiled. The forward pass would
    update BN moving statistics; they are restored, so measuring does not change training.
    """
    import keras
    import numpy as np
    import tensorflow as tf

    layers = dense_layers(model)
    weights = [w for layer in layers for w in layer.trainable_weights]

    def build():
        def grads_of(x, y):
            with tf.GradientTape() as tape:
                probs = model(x, training=True)
                loss = keras.ops.mean(keras.losses.sparse_categorical_crossentropy(y, probs))
            return tape.gradient(loss, weights)

        return grads_of

    with _KeepState(model):
        grads = compiled(model, "grads", build)(x, y)
    out, i = {}, 0
    for layer in layers:
        n = len(layer.trainable_weights)
        sq = sum(float(np.sum(np.square(g.numpy()))) for g in grads[i : i + n] if g is not None)
        out[layer.name] = math.sqrt(sq)
        i += n
    return out


def layer_param_counts(model) -> dict[str, int]:
    """Trainable parameters per Dense layer (kernel and bias)."""
    return {layer.name: sum(int(w.numpy().size) for w in layer.trainable_weights) for layer in dense_layers(model)}


def rms(norms: dict[str, float], counts: dict[str, int]) -> dict[str, float]:
    """Per-parameter RMS gradient per layer: the whole-layer norm over sqrt(parameter count)."""
    return {k: v / math.sqrt(counts[k]) for k, v in norms.items() if counts.get(k)}


def grad_log10_ratio(norms: dict[str, float]) -> float:
    """log10(first Dense layer's gradient norm / last one's); NaN when undefined."""
    values = list(norms.values())
    if len(values) < 2 or not all(math.isfinite(v) for v in (values[0], values[-1])):
        return float("nan")
    first, last = values[0], values[-1]
    if first <= 0 or last <= 0:
        return float("nan") if first == last else (-math.inf if first <= 0 else math.inf)
    return math.log10(first / last)


def activation_slope(name: str, pre):
    """The derivative of a ReLU-family activation at pre-activations ``pre`` (Keras' defaults)."""
    import numpy as np

    pre = np.asarray(pre, dtype="float64")
    if name == "relu":
        return (pre > 0).astype("float64")
    if name == "leaky_relu":
        return np.where(pre > 0, 1.0, 0.2)
    if name == "elu":
        return np.where(pre > 0, 1.0, np.exp(np.minimum(pre, 0.0)))
    if name == "selu":
        scale, alpha = 1.0507009873554805, 1.6732632423543772
        return np.where(pre > 0, scale, scale * alpha * np.exp(np.minimum(pre, 0.0)))
    raise ValueError(f"no slope for activation {name!r}; known: {', '.join(RELU_FAMILY)}")


def dead_unit_fractions(model, x) -> dict[str, float]:
    """Per ReLU-family hidden layer: fraction of units that are dead on every row of ``x``.

    Dead means no gradient passes: the activation's derivative is below ``DEAD_SLOPE`` on every
    row. For ReLU that is a pre-activation <= 0 everywhere; ELU and SELU units must be saturated
    at their negative limit; a leaky ReLU unit always passes a gradient, so it is never dead.
    """
    import keras
    import numpy as np

    layers = [layer for layer in dense_layers(model)[:-1] if layer.activation.__name__ in RELU_FAMILY]
    if not layers:
        return {}

    def build():
        probe = keras.Model(model.input, [layer.input for layer in layers])
        return lambda x: probe(x, training=False)

    inputs = compiled(model, "dead_probe", build)(x)
    inputs = inputs if isinstance(inputs, list | tuple) else [inputs]
    out = {}
    for layer, inp in zip(layers, inputs):
        pre = np.asarray(inp) @ layer.kernel.numpy() + layer.bias.numpy()
        slope = activation_slope(layer.activation.__name__, pre)
        out[layer.name] = float(np.mean(np.all(slope < DEAD_SLOPE, axis=0)))
    return out


def bn_stats_row(moving_mean, moving_var, true_mean, true_var) -> dict[str, float]:
    """Moving statistics of a BN layer against the true statistics of its input, summarised over features."""
    import numpy as np

    mm, mv, tm, tv = (np.asarray(a, dtype="float64") for a in (moving_mean, moving_var, true_mean, true_var))
    scale = float(np.mean(tv))
    return {
        "bn_first/moving_mean": float(np.mean(mm)),
        "bn_first/true_mean": float(np.mean(tm)),
        "bn_first/moving_var": float(np.mean(mv)),
        "bn_first/true_var": scale,
        "bn_first/mean_err_std": float(np.sqrt(np.mean((mm - tm) ** 2) / scale)) if scale > 0 else float("nan"),
        "bn_first/var_ratio": float(np.mean(mv) / scale) if scale > 0 else float("nan"),
    }


def mode_accuracies(model, x, y, batch_size: int) -> tuple[float, float]:
    """(train-mode, inference-mode) accuracy on ``x``: batch statistics per mini-batch vs. moving statistics."""
    import numpy as np
    import tensorflow as tf

    def build():
        def both(x):  # inference first: the train-mode calls update the moving statistics
            infer = model(x, training=False)
            parts = [model(x[i : i + batch_size], training=True) for i in range(0, x.shape[0], batch_size)]
            return infer, tf.concat(parts, axis=0)

        return both

    with _KeepState(model):
        infer, train = compiled(model, ("modes", batch_size), build)(np.asarray(x, dtype="float32"))
    infer, train = np.argmax(np.asarray(infer), axis=-1), np.argmax(np.asarray(train), axis=-1)
    return float(np.mean(train == y)), float(np.mean(infer == y))


def infer_accuracy(model, x, y) -> float:
    """Accuracy on ``x`` in inference mode (BN uses its moving statistics), as validation is measured."""
    return scores(model, x, y)[1]


def fixed_sample(n_rows: int, k: int, seed: int = 0):
    """Indices of a fixed sample: the same rows for every variant and seed."""
    import numpy as np

    return np.sort(np.random.default_rng(seed).choice(n_rows, size=min(k, n_rows), replace=False))


def finite(row: dict) -> dict:
    return {k: float(v) for k, v in row.items() if v is not None and math.isfinite(v)}


def callback(X_tr, y_tr, X_va, y_va, batch_size: int, steps_per_epoch: int, sink, grad_every_steps: int = 0):
    """A Keras callback that measures the quantities above and calls ``sink([(metrics, step), ...])``.

    Rows are buffered and flushed once per epoch and at the end, so the tracking server sees one
    request per epoch rather than one per measurement.
    """
    import keras
    import numpy as np

    gi = fixed_sample(len(y_tr), GRAD_ROWS)
    ti = fixed_sample(len(y_tr), TRAIN_ROWS, seed=2)
    vi = fixed_sample(len(y_va), MODE_BATCHES * batch_size, seed=1)
    xg, yg = X_tr[gi], y_tr[gi]
    xt, yt = X_tr[ti], y_tr[ti]
    xv, yv = X_va[vi], y_va[vi]

    import time

    def clocked(hook):
        """Adds the hook's wall time to ``self.spent``: the epoch rows carry ``instrument_seconds``."""

        def wrapper(self, *args, **kwargs):
            t0 = time.perf_counter()
            try:
                return hook(self, *args, **kwargs)
            finally:
                self.spent += time.perf_counter() - t0

        return wrapper

    class Instrument(keras.callbacks.Callback):
        spent = 0.0

        @clocked
        def on_train_begin(self, logs=None):
            self.rows, self.step, self.last_grad, self.ratios, self.rms_ratios = [], 0, 0, [], []
            self.val_acc, self.losses = [], []
            self.counts = layer_param_counts(self.model)
            self.bn = first_bn(self.model)
            self.bn_probe, self.true_stats = None, None
            if self.bn is not None:
                probe = layer_input(self.model, self.bn)
                before = self.model.layers[: self.model.layers.index(self.bn)]
                if any(layer.trainable_weights for layer in before):  # input changes with training: re-measure
                    self.bn_probe = probe
                else:  # fixed input: exact statistics over the whole training split, once
                    self.true_stats = self._input_stats(probe, X_tr)
            self._grads(0)
            self._bn(0)

        def _input_stats(self, probe, X, chunk: int = 4096):
            total = total_sq = 0.0
            for i in range(0, len(X), chunk):
                out = np.asarray(probe(X[i : i + chunk]), dtype="float64")
                out = out.reshape(len(out), -1)
                total, total_sq = total + out.sum(axis=0), total_sq + np.square(out).sum(axis=0)
            mean = total / len(X)
            return mean, np.maximum(total_sq / len(X) - mean**2, 0.0)

        def _grads(self, step):
            norms = layer_grad_norms(self.model, xg, yg)
            ratio = grad_log10_ratio(norms)
            per_param = rms(norms, self.counts)
            rms_ratio = grad_log10_ratio(per_param)
            self.ratios.append(ratio)
            self.rms_ratios.append(rms_ratio)
            row = {f"grad_norm/{k}": v for k, v in norms.items()}
            row.update({f"grad_rms/{k}": v for k, v in per_param.items()})
            row["grad_log10_ratio"] = ratio
            row["grad_log10_rms_ratio"] = rms_ratio
            self.rows.append((finite(row), step))
            self.last_grad = step

        def _bn(self, step):
            if self.bn is None:
                return
            true = self.true_stats if self.bn_probe is None else self._input_stats(self.bn_probe, xg)
            row = bn_stats_row(self.bn.moving_mean.numpy(), self.bn.moving_variance.numpy(), *true)
            self.rows.append((finite(row), step))

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch_start = epoch * steps_per_epoch

        @clocked
        def on_train_batch_end(self, batch, logs=None):
            self.step = self.epoch_start + batch + 1
            if grad_every_steps and self.step - self.last_grad >= grad_every_steps:
                self._grads(self.step)
            if self.step <= BN_WARMUP_STEPS and self.step % steps_per_epoch:
                self._bn(self.step)

        def on_epoch_end(self, epoch, logs=None):
            t0 = time.perf_counter()
            logs = logs or {}
            self.step = (epoch + 1) * steps_per_epoch
            if self.last_grad != self.step:
                self._grads(self.step)
            self._bn(self.step)
            self.val_acc.append(logs.get("val_accuracy"))
            self.losses.append(logs.get("loss"))
            train_acc = infer_accuracy(self.model, xt, yt)
            row = {
                "train_infer_accuracy": train_acc,
                "gen_gap_accuracy": train_acc - logs.get("val_accuracy", math.nan),
                "gen_gap_loss": logs.get("val_loss", math.nan) - logs.get("loss", math.nan),
            }
            dead = dead_unit_fractions(self.model, xg)
            if dead:
                row.update({f"dead_fraction/{k}": v for k, v in dead.items()})
                row["dead_fraction"] = float(np.mean(list(dead.values())))
            if self.bn is not None:
                mode_acc, infer_acc = mode_accuracies(self.model, xv, yv, batch_size)
                row.update(train_mode_accuracy=mode_acc, infer_mode_accuracy=infer_acc)
                row["mode_gap_accuracy"] = mode_acc - infer_acc
                row["mode_sample_rows"] = len(yv)
            row["instrument_seconds"] = self.spent + time.perf_counter() - t0  # this epoch's, all hooks
            self.spent = 0.0
            self.rows.append((finite(row), epoch + 1))
            self.flush()

        def on_train_end(self, logs=None):
            ratios = [r for r in self.ratios if math.isfinite(r)]
            rms_ratios = [abs(r) for r in self.rms_ratios if math.isfinite(r)]
            row = {
                "steps_per_epoch": steps_per_epoch,
                "grad_log10_ratio_initial": self.ratios[0] if self.ratios else None,
                "grad_log10_ratio_mean": float(np.mean(ratios)) if ratios else None,
                "grad_log10_rms_ratio_initial": self.rms_ratios[0] if self.rms_ratios else None,
                "grad_abs_log10_rms_ratio_mean": float(np.mean(rms_ratios)) if rms_ratios else None,
                "val_accuracy_epoch1": self.val_acc[0] if self.val_acc else None,
                "loss_epoch1": self.losses[0] if self.losses else None,
            }
            self.rows.append((finite(row), len(self.val_acc)))
            self.flush()

        def flush(self):
            rows, self.rows = [r for r in self.rows if r[0]], []
            if rows:
                sink(rows)

    return Instrument()
