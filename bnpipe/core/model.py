"""Model: a short pure function from a variant (and the training data's statistics) to a Keras model.

Preprocessing is part of the model, so the model always takes raw inputs:
- ``standard``: a frozen ``Normalization`` layer with sklearn's StandardScaler mean and scale,
  fitted on the training split only;
- ``minmax``: the same layer with MinMaxScaler's min and range;
- ``bn_first``: a ``BatchNormalization`` layer right after the input (the claim under test);
- ``rescale``: a fixed 1/255 ``Rescaling`` layer (pixels); ``rescale_bn_first``: that, then BN;
- ``none``: nothing.

``recalibrate_bn`` is the remedy for BN's moving averages (precise BN): after training, every
BatchNormalization layer's moving mean and variance are recomputed exactly over the training
split, layer by layer in inference mode (Ioffe & Szegedy's Algorithm 2 computes population
statistics after training in the same way).
"""

from __future__ import annotations

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


def build_model(variant: Variant, input_shape, n_classes: int, stats=None):
    """The design notes' MLP: [preprocessing], then Dense(+BN) blocks, then softmax."""
    import keras
    from keras import layers

    inputs = keras.Input(shape=tuple(input_shape), name="raw")
    x = layers.Flatten(name="flatten")(inputs) if len(input_shape) > 1 else inputs
    if variant.preprocessing in ("standard", "minmax"):
        mean, var = stats
        x = layers.Normalization(mean=mean, variance=var, name=f"{variant.preprocessing}_scaler")(x)
    elif variant.preprocessing in ("rescale", "rescale_bn_first"):
        x = layers.Rescaling(1.0 / 255.0, name="rescale")(x)
    bn = {"momentum": variant.bn_momentum, "epsilon": variant.bn_epsilon}
    if variant.bn_first:
        x = layers.BatchNormalization(**bn, name="bn_input")(x)
    for i, units in enumerate(variant.hidden):
        x = layers.Dense(
            units,
            activation=variant.activation,
            kernel_initializer=initializer(variant.initializer),
            name=f"dense_{i}",
        )(x)
        if variant.hidden_bn:
            x = layers.BatchNormalization(**bn, name=f"bn_{i}")(x)
    outputs = layers.Dense(n_classes, activation="softmax", name="output")(x)
    return keras.Model(inputs, outputs, name="bnpipe_" + variant.preprocessing)


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


def recalibrate_bn(model, X, chunk: int = 4096) -> int:
    """Set each BN layer's moving mean and variance to the exact statistics of its input over ``X``.

    Layers are done in order, each in inference mode with the layers before it already
    recalibrated, so every layer sees the inputs it will see at inference. Returns the number of
    BN layers changed.
    """
    import keras
    import numpy as np

    layers = bn_layers(model)
    for layer in layers:
        probe = keras.Model(model.input, layer.input)
        total = total_sq = 0.0
        rows = 0
        for i in range(0, len(X), chunk):
            out = np.asarray(probe(X[i : i + chunk], training=False), dtype="float64")
            out = out.reshape(-1, out.shape[-1])  # BN normalizes the last axis over all others
            total, total_sq, rows = total + out.sum(axis=0), total_sq + np.square(out).sum(axis=0), rows + len(out)
        mean = total / rows
        layer.moving_mean.assign(mean.astype("float32"))
        layer.moving_variance.assign(np.maximum(total_sq / rows - mean**2, 0.0).astype("float32"))
    return len(layers)
