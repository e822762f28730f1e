"""Row 9: the training step's roofline, and how close the trainer comes to it.

``python -m benchmarks.roofline measure --config JSON --out FILE`` measures, in this one process
with the same TensorFlow thread cap, ``reps`` interleaved repetitions of:

- the fp32 matmul peak (``benchmarks.trainer.matmul_peak``, row 2a's measurement);
- the memory bandwidth: a STREAM-style triad ``a = b + q * c`` in NumPy on float64 arrays well
  beyond the last-level cache, cut into blocks that stay in L2 (so ``q * c`` never goes to memory)
  and shared among the threads; counted as STREAM counts it, 24 bytes per element (read b and c,
  write a). The same triad on arrays as large as one step's working set gives the bandwidth from
  the cache, a second, higher roof;
- the trainer: ``train.fit`` with the instrumentation on (no MLflow: row 3 is its cost) on the
  rows 1-3 snapshot and variant, steady-state epochs as in row 2b;
- the bare step: the same compiled model's ``fit`` without validation, instrumentation or callbacks;
- the step's matmuls alone: the forward and backward matrix products of one step at its shapes, in
  one traced function, looped: what TensorFlow's matmul reaches at these small shapes.

A training step's FLOPs are its Dense layers' matrix products (forward, the weight gradient and
the input gradient: 6 * batch * fan_in * fan_out per layer, the input gradient left out where no
trainable layer lies below; elementwise work is not counted, as in row 2b). Its bytes are what it
would stream if nothing stayed in cache between passes: every parameter read in the forward and
backward passes, its gradient written and read, the optimizer's slots read and written, the
parameter read and written by the update (4 bytes each); every activation written and read once
forward and its gradient written and read once backward; the input batch read once. The roofline
bound is min(peak, bandwidth * FLOPs / bytes).
"""

from __future__ import annotations

import math
import statistics
import threading
import time
from pathlib import Path

from benchmarks.common import child_main, dense_flops_per_sample, rotated
from benchmarks.trainer import matmul_peak

ARMS = ("peak", "triad", "trainer", "matmuls")  # "trainer" also times the bare step
BLOCK = 32 * 1024  # float64 elements per triad block: 256 KiB per array, half an L2 of this machine


def triad(n: int, threads: int, trials: int = 3) -> float:
    """Best STREAM triad bandwidth in GB/s (24 bytes per element) on three float64 arrays of ``n``."""
    import numpy as np

    a, b, c = np.zeros(n), np.full(n, 1.0), np.full(n, 2.0)
    q = 3.0
    tmp = [np.empty(BLOCK) for _ in range(threads)]
    bounds = [(i * n // threads, (i + 1) * n // threads) for i in range(threads)]

    def part(k: int) -> None:
        t = tmp[k]
        for s in range(bounds[k][0], bounds[k][1], BLOCK):
            e = min(s + BLOCK, bounds[k][1])
            np.multiply(c[s:e], q, out=t[: e - s])
            np.add(b[s:e], t[: e - s], out=a[s:e])

    best = 0.0
    repeats = max(1, int(2e8 // (24 * n)))  # small (cache-sized) arrays: loop for a measurable time
    for _ in range(trials + 1):  # the first touches the pages
        t0 = time.perf_counter()
        for _ in range(repeats):
            workers = [threading.Thread(target=part, args=(k,)) for k in range(threads)]
            for w in workers:
                w.start()
            for w in workers:
                w.join()
        best = max(best, 24 * n * repeats / (time.perf_counter() - t0) / 1e9)
    if a[n // 2] != 7.0:
        raise AssertionError("triad computed a wrong result")
    return best


def step_costs(model, batch: int, optimizer_slots: int) -> dict:
    """FLOPs and bytes of one training step of ``model`` at ``batch`` (see the module's docstring)."""
    import keras

    flops = params = acts = 0
    trainable_below = False
    for layer in model.layers:
        n = sum(int(w.numpy().size) for w in layer.trainable_weights)
        params += n
        if isinstance(layer, keras.layers.Dense):
            fan_in, fan_out = (int(d) for d in layer.kernel.shape)
            flops += 2 * batch * fan_in * fan_out * (3 if trainable_below else 2)
            acts += fan_out * (2 if layer.activation.__name__ != "linear" else 1)  # pre-activation and output
        elif not isinstance(layer, keras.layers.InputLayer | keras.layers.Flatten):
            acts += int(layer.output.shape[-1])
        trainable_below = trainable_below or n > 0
    inputs = math.prod(int(d) for d in model.input.shape[1:])
    param_passes = 2 + 2 + 2 * optimizer_slots + 2  # W fwd/bwd, G w/r, slots r/w, W r/w by the update
    moving = sum(int(w.numpy().size) for w in model.non_trainable_weights)
    nbytes = 4 * (param_passes * params + 2 * moving + 4 * batch * acts + batch * inputs)
    return {
        "flops": flops,
        "bytes": nbytes,
        "params": params,
        "activations_per_sample": acts,
        "intensity": flops / nbytes,
        "working_set_bytes": 4 * ((2 + optimizer_slots) * params + moving + batch * (2 * acts + inputs)),
    }


def step_matmuls(model, batch: int, reps: int = 200) -> float:
    """GFLOP/s of one step's matrix products alone (forward, weight and input gradients), traced once."""
    import keras
    import tensorflow as tf

    shapes, below = [], False
    for layer in model.layers:
        if isinstance(layer, keras.layers.Dense):
            fan_in, fan_out = (int(d) for d in layer.kernel.shape)
            shapes.append((fan_in, fan_out, below))
        below = below or bool(layer.trainable_weights)
    xs = [tf.random.normal((batch, i)) for i, _, _ in shapes]
    ws = [tf.random.normal((i, o)) for i, o, _ in shapes]
    gs = [tf.random.normal((batch, o)) for _, o, _ in shapes]

    @tf.function
    def one_step():
        out = []
        for (_, _, grad_in), x, w, g in zip(shapes, xs, ws, gs):
            out.append(tf.matmul(x, w))  # forward
            out.append(tf.matmul(x, g, transpose_a=True))  # weight gradient
            if grad_in:
                out.append(tf.matmul(g, w, transpose_b=True))  # input gradient
        return tf.add_n([tf.reduce_sum(o[:1]) for o in out])

    flops = sum(2 * batch * i * o * (3 if grad_in else 2) for i, o, grad_in in shapes)
    float(one_step())
    best = 0.0
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(reps):
            r = one_step()
        float(r)
        best = max(best, flops * reps / (time.perf_counter() - t0) / 1e9)
    return best


def step_ops(model, variant, batch: int) -> dict:
    """The operations in one traced training step of ``model`` (Keras' ``train_step``, as compiled by
    ``train``), counted in its graph before TensorFlow's optimizer prunes it; constants, placeholders
    and no-ops left out: each of the rest runs as a kernel of its own."""
    import collections

    import numpy as np
    import tensorflow as tf

    from bnpipe.core import model as model_lib

    model_lib.compile_model(model, variant, 1, False)
    shape = (batch, *model.input.shape[1:])
    model.fit(np.zeros(shape, "float32"), np.zeros(batch, "int64"), batch_size=batch, epochs=1, verbose=0)
    step = tf.function(lambda x, y: model.train_step((x, y)))
    graph = step.get_concrete_function(tf.TensorSpec(shape), tf.TensorSpec((batch,), tf.int64)).graph
    kinds = collections.Counter(op.type for op in graph.get_operations())
    for fn in graph._functions.values():  # nested functions (the optimizer's update), if any
        kinds.update(op.type for op in fn.graph.get_operations())
    ops = sum(n for k, n in kinds.items() if k not in ("Const", "Placeholder", "NoOp"))
    return {"ops": ops, "matmuls": kinds["MatMul"]}


def trainer_epochs(variant, snapshot: dict, cfg) -> dict:
    """Steady-state epoch periods of ``train.fit`` (instrumentation on), and of the bare ``fit`` of the
    model it returns (no validation, no callbacks: the training steps and Keras' epoch loop)."""
    from bnpipe.core import snapshots, train

    epochs: list[float] = []
    model, _, _, _ = train.fit(variant, snapshot["path"], cfg, on_epoch=lambda e, row: epochs.append(
        row["epoch_seconds"]), on_metrics=lambda rows: None)  # fmt: skip
    X, y = snapshots.load_split(snapshot["path"], "train")
    ends: list[float] = []
    import keras

    class Ends(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            ends.append(time.perf_counter())

    model.fit(X.astype("float32"), y, batch_size=cfg.batch_size, epochs=cfg.epochs, verbose=0, callbacks=[Ends()])
    return {"trainer": statistics.median(epochs[1:]), "bare": statistics.median(b - a for a, b in zip(ends, ends[1:]))}


def measure(cfg: dict) -> dict:
    from bnpipe.core import train

    threads = train.configure_threads(cfg["threads"])
    import keras

    from bnpipe.core import model as model_lib
    from bnpipe.core import snapshots, sources
    from bnpipe.core.variants import Variant

    snap = snapshots.ingest(sources.IngestRequest(source="fashion_mnist", max_rows=cfg["max_rows"]), Path(cfg["store"]))
    variant = Variant.from_dict(cfg["variant"])
    tcfg = train.TrainConfig(epochs=cfg["epochs"], batch_size=cfg["batch_size"], threads=threads)
    probe = model_lib.build_model(variant, snap["input_shape"], snap["n_classes"], None)
    slots = {"sgd": 1, "sgd_plain": 0, "adam": 2}[variant.optimizer]
    costs = step_costs(probe, tcfg.batch_size, slots)
    costs.update(step_ops(probe, variant, tcfg.batch_size))
    fwd = dense_flops_per_sample(probe)
    keras.backend.clear_session()
    epoch_flops = 3 * fwd * snap["n_train"] + fwd * snap["n_val"]  # row 2b's accounting
    n_dram = cfg["triad_mib"] * 1024 * 1024 // 8
    n_cache = max(BLOCK, costs["working_set_bytes"] // (3 * 8))
    reps = []
    for rep in range(cfg["reps"]):
        row: dict = {}
        for arm in rotated(list(ARMS), rep):
            if arm == "peak":
                row["peak_gflops"] = matmul_peak(**cfg.get("peak", {}))
            elif arm == "triad":
                row["bandwidth_gbs"] = triad(n_dram, threads)
                row["cache_bandwidth_gbs"] = triad(n_cache, threads)
            elif arm == "trainer":
                periods = trainer_epochs(variant, snap, tcfg)
                row["trainer_gflops"] = epoch_flops / periods["trainer"] / 1e9
                row["bare_gflops"] = 3 * fwd * snap["n_train"] / periods["bare"] / 1e9
                row["bare_step_ms"] = 1e3 * periods["bare"] / -(-snap["n_train"] // tcfg.batch_size)
            else:
                model = model_lib.build_model(variant, snap["input_shape"], snap["n_classes"], None)
                row["matmul_gflops"] = step_matmuls(model, tcfg.batch_size)
                del model
        bound = min(row["peak_gflops"], row["bandwidth_gbs"] * costs["intensity"])
        row["bound_gflops"] = bound
        row["cache_bound_gflops"] = min(row["peak_gflops"], row["cache_bandwidth_gbs"] * costs["intensity"])
        # what a bare step spends beyond its matrix products, per remaining operation
        matmul_ms = 1e3 * costs["flops"] / row["matmul_gflops"] / 1e9
        row["us_per_other_op"] = 1e3 * (row["bare_step_ms"] - matmul_ms) / (costs["ops"] - costs["matmuls"])
        reps.append(row)
    train.forget_compiled_models()
    return {
        "threads": threads,
        "variant": variant.name,
        "batch_size": tcfg.batch_size,
        "n_train": snap["n_train"],
        "epochs": tcfg.epochs,
        "xla": train.uses_xla(tcfg, -(-snap["n_train"] // tcfg.batch_size)),
        "triad_mib": cfg["triad_mib"],
        "cache_triad_kib": 3 * 8 * n_cache // 1024,
        **costs,
        "reps": reps,
    }


def main(argv: list[str] | None = None) -> None:
    child_main("benchmarks.roofline", {"measure": measure}, argv)


if __name__ == "__main__":
    main()
