"""Model: a short pure function from a variant (and the training data's statistics) to a Keras model.

Preprocessing is part of the model, so the model always takes raw inputs:
- ``standard``: a frozen ``Normalization`` layer with sklearn's StandardScaler mean and scale,
  fitted on the training split only, held in the layer's (non-trainable) variables;
- ``minmax``: the same layer with MinMaxScaler's min and range;
- ``bn_first``: a ``BatchNormalization`` layer right after the input (the claim under test);
- ``rescale``: a fixed 1/255 ``Rescaling`` layer (pixels); ``rescale_bn_first``: that, then BN;
- ``none``: nothing.

``recalibrate_bn`` is the remedy for BN's moving averages (precise BN): after training, every
BatchNormalization layer's moving mean and variance are recomputed exactly over the training
split, layer by layer in inference mode (Ioffe & Szegedy's Algorithm 2 computes population
statistics after training in the same way).

``graph_key`` and ``restart`` let one compiled model train every variant of the same graph:
variants that differ only in values (seed, initializer, learning rate, the scaler's statistics)
run the same traced training step, so a trainer traces (and compiles) it once.
"""

from __future__ import annotations

import json

from bnpipe.core.variants import Variant


def scaler_stats(variant: Variant, X_train):
    """(mean, variance) for a fixed Normalization layer, or None. Fitted on the training split only."""
    import numpy as np

    if variant.preprocessing not in ("standard", "minmax"):
        return None
    flat = np.asarray(X_train, dtype="float64").reshape(len(X_train), -1)
    if variant.preprocessing == "standard":
        from sklearn.preprocessing import StandardScaler

        sc = StandardScaler().fit(flat)
        return sc.mean_.astype("float32"), (sc.scale_**2).astype("float32")
    from sklearn.preprocessing import MinMaxScaler

    sc = MinMaxScaler().fit(flat)
    rng = np.where(sc.data_range_ > 0, sc.data_range_, 1.0)
    return sc.data_min_.astype("float32"), (rng**2).astype("float32")


def initializer(name: str):
    """A Keras initializer by name; ``naive_normal`` is N(0, 1), the choice before Glorot and Bengio."""
    import keras

    if name == "naive_normal":
        return keras.initializers.RandomNormal(mean=0.0, stddev=1.0)
    return name


def _layers(variant: Variant, n_classes: int, flatten: bool) -> list:
    """The model's layers after its input, in order: made, not built (no weights yet)."""
    from keras import layers

    out = [layers.Flatten(name="flatten")] if flatten else []
    if variant.preprocessing in ("standard", "minmax"):
        out.append(layers.Normalization(name=f"{variant.preprocessing}_scaler"))
    elif variant.preprocessing in ("rescale", "rescale_bn_first"):
        out.append(layers.Rescaling(1.0 / 255.0, name="rescale"))
    bn = {"momentum": variant.bn_momentum, "epsilon": variant.bn_epsilon}
    if variant.bn_first:
        out.append(layers.BatchNormalization(**bn, name="bn_input"))
    for i, units in enumerate(variant.hidden):
        out.append(
            layers.Dense(
                units, activation=variant.activation, kernel_initializer=initializer(variant.initializer),
                name=f"dense_{i}",
            )
        )  # fmt: skip
        if variant.hidden_bn:
            out.append(layers.BatchNormalization(**bn, name=f"bn_{i}"))
    out.append(layers.Dense(n_classes, activation="softmax", name="output"))
    return out


def build_model(variant: Variant, input_shape, n_classes: int, stats=None):
    """The design notes' MLP: [preprocessing], then Dense(+BN) blocks, then softmax."""
    import keras

    if variant.preprocessing in ("standard", "minmax") and stats is None:
        raise ValueError(f"preprocessing={variant.preprocessing!r} needs the scaler's statistics (scaler_stats)")
    inputs = keras.Input(shape=tuple(input_shape), name="raw")
    x = inputs
    for layer in _layers(variant, n_classes, flatten=len(input_shape) > 1):
        x = layer(x)
    model = keras.Model(inputs, x, name="bnpipe_" + variant.preprocessing)
    if stats is not None and variant.preprocessing in ("standard", "minmax"):
        _hold_statistics(model.get_layer(f"{variant.preprocessing}_scaler"), *stats)
    return model


def initial_weights(model, variant: Variant, stats) -> list:
    """``build_model(variant, ..., stats).get_weights()`` right after seeding, for ``model`` of the same
    graph, without building a model: the layers are made in the same order (making a layer draws
    its initializer's seed), and each weight is drawn from its layer's ``<weight>_initializer``."""
    import numpy as np

    made = {layer.name: layer for layer in _layers(variant, model.output.shape[-1], flatten=False)}
    values = []
    for layer in model.layers:
        for w in layer.weights:
            if layer.name.endswith("_scaler"):  # the Normalization's mean, variance and (unused) count
                values.append({"mean": stats[0], "variance": stats[1]}.get(w.name, np.zeros(w.shape, w.dtype)))
            else:
                values.append(getattr(made[layer.name], f"{w.name}_initializer")(w.shape, dtype=w.dtype))
    return values


def _hold_statistics(layer, mean, variance) -> None:
    """Put the scaler's statistics in ``layer``'s variables, and make the layer read them there.

    A ``Normalization`` given ``mean`` and ``variance`` (or adapted) keeps them as constant tensors,
    which a traced training step would bake in; reading the variables lets the step traced for one
    seed's statistics serve the next seed's (``restart``). A saved model stores them as the layer's
    weights, and loading restores Keras' own constants, so inference is unchanged.
    """
    layer.adapt_mean.assign(mean)
    layer.adapt_variance.assign(variance)
    layer.mean, layer.variance = layer.adapt_mean, layer.adapt_variance  # already tracked: adds no weights


def optimizer(variant: Variant):
    """The variant's optimizer, with its gradient clipping."""
    import keras

    clip = {} if variant.clipping == "none" else {variant.clipping: variant.clip_value}
    if variant.optimizer == "adam":
        return keras.optimizers.Adam(learning_rate=variant.learning_rate, **clip)
    momentum = 0.0 if variant.optimizer == "sgd_plain" else 0.9
    return keras.optimizers.SGD(learning_rate=variant.learning_rate, momentum=momentum, **clip)


def compile_model(model, variant: Variant, steps_per_execution: int = 32, jit_compile: bool = True):
    model.compile(
        optimizer=optimizer(variant),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        steps_per_execution=steps_per_execution,
        jit_compile=jit_compile,
    )
    return model


# Variant fields that set values, not the graph: initial weights (seed, initializer), a variable
# (the learning rate) or what happens after training (bn_recalibrate).
VALUE_FIELDS = ("seed", "initializer", "learning_rate", "bn_recalibrate")


def graph_key(variant: Variant, input_shape, n_classes: int) -> str:
    """What the traced training step depends on: variants with the same key can share a compiled model."""
    fields = {k: v for k, v in variant.to_dict().items() if k not in (*VALUE_FIELDS, "name")}
    return json.dumps([fields, list(input_shape), int(n_classes)], sort_keys=True)


def restart(model, weights: list, variant: Variant) -> None:
    """Give a compiled model of ``variant``'s graph the state a fresh one would start from.

    ``weights`` are a fresh model's (``initial_weights``): initial values, BN moving statistics and
    scaler statistics; the optimizer forgets every step taken (slots and iteration count zero) and
    takes ``variant``'s learning rate. The metrics are reset by ``fit`` itself at every epoch.
    """
    import numpy as np

    model.set_weights(weights)
    opt = model.optimizer
    for v in opt.variables:
        v.assign(np.zeros(v.shape, dtype=v.dtype))
    opt.learning_rate = variant.learning_rate


def compiled(model, key, build):
    """``build()``'s function, made once per model and purpose and traced by ``tf.function``: an eager
    call of a Keras model costs tens of milliseconds, which at every epoch end added up to ~20% of
    an epoch (cProfile, benchmarks row 1e). Kept on the model, so it goes away with it, and serves
    every variant the model trains (``restart``). Inputs of a new shape relax the traced signature
    instead of adding one trace per shape."""
    import tensorflow as tf

    cache = model.__dict__.get("_bnpipe_compiled")
    if cache is None:
        cache = {}
        object.__setattr__(model, "_bnpipe_compiled", cache)  # bypass Keras' attribute tracking
    if key not in cache:
        cache[key] = tf.function(build(), reduce_retracing=True)
    return cache[key]


def scores(model, X, y, chunk: int = 4096) -> tuple[float, float]:
    """(loss, accuracy) of ``model`` on ``(X, y)`` in inference mode: what ``model.evaluate`` reports
    (the mean sparse categorical cross-entropy, from the softmax's logits, and the accuracy), through
    a traced function kept on the model instead of a new ``evaluate`` pipeline per call."""
    import keras
    import numpy as np

    def build():
        def per_row(x, y):
            probs = model(x, training=False)
            loss = keras.losses.sparse_categorical_crossentropy(y, probs)
            hit = keras.ops.equal(keras.ops.cast(keras.ops.argmax(probs, axis=-1), "int32"), keras.ops.cast(y, "int32"))
            return loss, keras.ops.cast(hit, "float32")

        return per_row

    fn = compiled(model, "scores", build)
    loss_sum = hits = 0.0
    for i in range(0, len(y), chunk):
        loss, hit = fn(np.asarray(X[i : i + chunk], dtype="float32"), np.asarray(y[i : i + chunk]))
        loss_sum, hits = loss_sum + float(np.sum(loss, dtype="float64")), hits + float(np.sum(hit))
    return loss_sum / len(y), hits / len(y)


def bn_layers(model) -> list:
    import keras

    return [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]


def bn_state(model) -> list:
    """The moving statistics of every BN layer, to restore them with ``set_bn_state``."""
    return [(layer.moving_mean.numpy(), layer.moving_variance.numpy()) for layer in bn_layers(model)]


def set_bn_state(model, state: list) -> None:
    for layer, (mean, var) in zip(bn_layers(model), state):
        layer.moving_mean.assign(mean)
        layer.moving_variance.assign(var)


def layer_input(model, layer):
    """A traced function from the model's input to ``layer``'s input, in inference mode."""
    import keras

    def build():
        probe = keras.Model(model.input, layer.input)
        return lambda x: probe(x, training=False)

    return compiled(model, ("input_of", layer.name), build)


def recalibrate_bn(model, X, chunk: int = 4096) -> int:
    """Set each BN layer's moving mean and variance to the exact statistics of its input over ``X``.

    Layers are done in order, each in inference mode with the layers before it already
    recalibrated, so every layer sees the inputs it will see at inference. Returns the number of
    BN layers changed.
    """
    import numpy as np

    layers = bn_layers(model)
    for layer in layers:
        probe = layer_input(model, layer)
        total = total_sq = 0.0
        rows = 0
        for i in range(0, len(X), chunk):
            out = np.asarray(probe(X[i : i + chunk]), dtype="float64")
            out = out.reshape(-1, out.shape[-1])  # BN normalizes the last axis over all others
            total, total_sq, rows = total + out.sum(axis=0), total_sq + np.square(out).sum(axis=0), rows + len(out)
        mean = total / rows
        layer.moving_mean.assign(mean.astype("float32"))
        layer.moving_variance.assign(np.maximum(total_sq / rows - mean**2, 0.0).astype("float32"))
    return len(layers)
