"""Snapshots: ingest a source once per content digest, split it, store it, and read it back.

A snapshot is a directory ``<data_dir>/<digest>/`` holding ``X_<split>.npy`` and ``y_<split>.npy``
for the train, val and test splits, plus ``meta.json``. It is written to a temporary directory and
renamed into place, so a crash never leaves half a snapshot. Features are stored raw: scaling
belongs to the model (see ``bnpipe.core.model``), so a registered model always takes raw inputs.
Each seed of an experiment trains on its own train/validation split of a snapshot
(``replicate_split``); the test split stays fixed.

Only small JSON-able dicts leave this module; arrays stay on disk.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

from bnpipe.base import settings
from bnpipe.core.sources import IngestRequest, Loaded, dataset_name, load, synthetic_block, synthetic_header
from bnpipe.core.validation import DataError

SPLITS = ("train", "val", "test")
# Rows generated, split and written at a time: ingest holds one chunk in memory, not the data set.
SYNTHETIC_CHUNK = 1 << 18


def ingest(req: IngestRequest, store: Path | None = None) -> dict:
    """Load, validate, split and store ``req``; reuse the stored snapshot when the digest matches.

    Returns ``{digest, path, dataset, reused, n_train, n_val, n_test, n_features, n_classes,
    input_shape, classes, feature_names, notes, source_uri}``.
    """
    store = Path(store or settings.data_dir())
    if req.source == "synthetic" and not req.max_rows:
        loaded, digest = synthetic_header(req), _synthetic_digest(req)  # streamed: never whole in memory
    else:
        loaded = load(req)
        digest = snapshot_digest(loaded, req)
    target = store / digest
    reused = (target / "meta.json").exists()
    if not reused and loaded.X is None:
        _store_snapshot(target, loaded, req, digest, lambda tmp: _write_synthetic_chunks(tmp, req, loaded))
    elif not reused:
        splits = split(loaded, req)
        _write_snapshot(target, splits, loaded, req, digest)
    meta = read_meta(target)
    meta["reused"] = reused
    meta["path"] = str(target)
    return meta


def read_meta(snapshot_dir: str | Path) -> dict:
    return json.loads((Path(snapshot_dir) / "meta.json").read_text())


def load_split(snapshot_dir: str | Path, name: str, mmap: bool = False):
    """(X, y) of one split of a stored snapshot."""
    import numpy as np

    d = Path(snapshot_dir)
    mode = "r" if mmap else None
    return np.load(d / f"X_{name}.npy", mmap_mode=mode), np.load(d / f"y_{name}.npy", mmap_mode=mode)


def snapshot_digest(loaded: Loaded, req: IngestRequest) -> str:
    """sha256 of the data's bytes and of everything that decides the split, shortened to 16 hex."""
    import numpy as np

    h = hashlib.sha256()
    parts = [loaded.X, loaded.y] + (list(loaded.test) if loaded.test else [])
    for a in parts:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(memoryview(a).cast("B"))
    split_cfg = {
        "val": req.val_fraction, "test": req.test_fraction, "seed": req.seed,
        "max_rows": req.max_rows, "features": loaded.feature_names, "classes": loaded.classes,
    }  # fmt: skip
    h.update(json.dumps(split_cfg, sort_keys=True).encode())
    return h.hexdigest()[:16]


def _stratified_take(y, n: int, seed: int):
    """Indices of a stratified subsample of size n (n < len(y))."""
    import numpy as np
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    keep, _ = train_test_split(idx, train_size=n, stratify=y, random_state=seed)
    return np.sort(keep)


def split(loaded: Loaded, req: IngestRequest) -> dict:
    """Deterministic stratified train/val/test split from ``req.seed``."""
    import numpy as np
    from sklearn.model_selection import train_test_split

    X, y = loaded.X, loaded.y
    n_classes = len(loaded.classes)
    if req.max_rows and req.max_rows < len(y):
        keep = _stratified_take(y, req.max_rows, req.seed)
        X, y = X[keep], y[keep]
    counts = np.bincount(y, minlength=n_classes)
    if loaded.test is not None:
        Xt, yt = loaded.test
        if req.max_rows and req.max_rows // 6 < len(yt):
            keep = _stratified_take(yt, max(req.max_rows // 6, 2 * n_classes), req.seed)
            Xt, yt = Xt[keep], yt[keep]
        holdout = req.val_fraction or 1 / 12  # the textbook's 5,000 of 60,000
    else:
        holdout = (req.val_fraction or 0.15) + req.test_fraction
    min_rows = 3 * n_classes if loaded.test is None else 2 * n_classes
    if len(y) < max(min_rows, 10) or counts.min() < (3 if loaded.test is None else 2):
        raise DataError(
            f"{loaded.source_uri}: {len(y)} rows (smallest class: {int(counts.min())}) are too few "
            "for a stratified train/val/test split; need at least 3 rows of every class and 10 in all"
        )
    try:
        X_tr, X_ho, y_tr, y_ho = train_test_split(X, y, test_size=holdout, stratify=y, random_state=req.seed)
        if loaded.test is None:
            rel = req.test_fraction / holdout
            X_va, Xt, y_va, yt = train_test_split(X_ho, y_ho, test_size=rel, stratify=y_ho, random_state=req.seed)
        else:
            X_va, y_va = X_ho, y_ho
    except ValueError as exc:
        raise DataError(f"{loaded.source_uri}: too few rows for a stratified split ({exc})") from exc
    return {"train": (X_tr, y_tr), "val": (X_va, y_va), "test": (Xt, yt)}


def _write_snapshot(target: Path, splits: dict, loaded: Loaded, req: IngestRequest, digest: str) -> None:
    import numpy as np

    def write(tmp: Path) -> dict:
        for name, (X, y) in splits.items():
            np.save(tmp / f"X_{name}.npy", np.ascontiguousarray(X))
            np.save(tmp / f"y_{name}.npy", np.ascontiguousarray(y))
        X_tr = splits["train"][0]
        counts = {name: int(len(y)) for name, (_, y) in splits.items()}
        return {"counts": counts, "input_shape": list(X_tr.shape[1:]), "dtype": str(X_tr.dtype)}

    _store_snapshot(target, loaded, req, digest, write)


def _synthetic_digest(req: IngestRequest) -> str:
    """The rows follow from (rows, seed) and the chunking, so the digest needs no pass over the data."""
    spec = {
        "source": "synthetic", "generator": "synthetic_block", "chunk": SYNTHETIC_CHUNK, "rows": req.rows,
        "seed": req.seed, "val": req.val_fraction, "test": req.test_fraction,
    }  # fmt: skip
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def _write_synthetic_chunks(tmp: Path, req: IngestRequest, head: Loaded) -> dict:
    """Generate, split (stratified within each chunk) and append chunk after chunk to raw files, then
    give each file its ``.npy`` header. A snapshot with more than one chunk differs from the
    in-memory split only in which rows fall into which split; one chunk gives the same split."""
    import numpy as np

    starts = list(range(0, max(1, req.rows // SYNTHETIC_CHUNK) * SYNTHETIC_CHUNK, SYNTHETIC_CHUNK))
    bounds = zip(starts, starts[1:] + [req.rows])  # the last chunk takes the remainder
    files = {f"{a}_{s}": (tmp / f"{a}_{s}.raw").open("wb") for a in "Xy" for s in SPLITS}  # closed below
    counts, dtypes = dict.fromkeys(SPLITS, 0), {}
    try:
        for start, stop in bounds:
            X, y = synthetic_block(stop - start, req.seed, start)
            chunk = Loaded(X, y, head.classes, head.feature_names, head.source_uri)
            for name, (Xs, ys) in split(chunk, req).items():
                np.ascontiguousarray(Xs).tofile(files[f"X_{name}"])
                np.ascontiguousarray(ys).tofile(files[f"y_{name}"])
                counts[name] += len(ys)
                dtypes.update(X=Xs.dtype, y=ys.dtype)
    finally:
        for fh in files.values():
            fh.close()
    for key in files:
        kind, name = key.split("_", 1)
        shape = (counts[name], len(head.feature_names)) if kind == "X" else (counts[name],)
        raw = tmp / f"{key}.raw"
        with (tmp / f"{key}.npy").open("wb") as out, raw.open("rb") as src:
            header = {"descr": np.lib.format.dtype_to_descr(dtypes[kind]), "fortran_order": False, "shape": shape}
            np.lib.format.write_array_header_1_0(out, header)
            shutil.copyfileobj(src, out, 1 << 24)
        raw.unlink()
    return {"counts": counts, "input_shape": [len(head.feature_names)], "dtype": str(dtypes["X"])}


def _store_snapshot(target: Path, loaded: Loaded, req: IngestRequest, digest: str, write) -> None:
    """``write(tmp)`` stores the split files in a temporary directory and returns their counts, input
    shape and dtype; then ``meta.json`` is added and the directory renamed into place."""
    import math

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{digest}-", dir=target.parent))
    try:
        stored = write(tmp)
        meta = {
            "digest": digest,
            "dataset": dataset_name(req),
            "source_uri": loaded.source_uri,
            "request": asdict(req),
            "n_train": stored["counts"]["train"],
            "n_val": stored["counts"]["val"],
            "n_test": stored["counts"]["test"],
            "input_shape": stored["input_shape"],
            "n_features": int(math.prod(stored["input_shape"])),
            "n_classes": len(loaded.classes),
            "classes": loaded.classes,
            "feature_names": loaded.feature_names,
            "dtype": stored["dtype"],
            "notes": loaded.notes,
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        place(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def place(tmp: Path, target: Path) -> bool:
    """Rename the finished directory ``tmp`` to ``target``, atomically; False when another process placed
    the same snapshot there first (theirs is identical: same digest) and ``tmp`` stays for the caller."""
    try:
        tmp.rename(target)
    except OSError:
        if not (target / "meta.json").exists():
            raise
        return False
    return True


def manifest(snapshot_dir: str | Path) -> dict:
    """``{file name: {"sha256": hex, "bytes": size}}`` of every file of a stored snapshot."""
    out = {}
    for path in sorted(Path(snapshot_dir).iterdir()):
        h = hashlib.sha256()
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
        out[path.name] = {"sha256": h.hexdigest(), "bytes": path.stat().st_size}
    return out


def replicate_split(snapshot_dir: str | Path, replicate: int):
    """(X_train, y_train, X_val, y_val) for one replicate: its own stratified train/validation split.

    The unit of replication in the claims engine is the seed, and each seed must draw its own
    data sample as well as its own initialization, or the intervals would ignore sampling
    variance. The snapshot's train and val splits are pooled and re-split, stratified, into
    the same sizes, with ``replicate`` and the snapshot's split seed as the random state. The
    test split is never touched: it stays fixed and held out.
    """
    import numpy as np
    from sklearn.model_selection import train_test_split

    X_tr, y_tr = load_split(snapshot_dir, "train")
    X_va, y_va = load_split(snapshot_dir, "val")
    X, y = np.concatenate([X_tr, X_va]), np.concatenate([y_tr, y_va])
    split_seed = int(read_meta(snapshot_dir).get("request", {}).get("seed", 42))
    state = int(np.random.default_rng([split_seed, int(replicate)]).integers(2**31 - 1))
    counts = np.bincount(y)
    stratify = y if counts[counts > 0].min() >= 2 else None  # a class with one row cannot be stratified
    X_tr, X_va, y_tr, y_va = train_test_split(X, y, test_size=len(y_va), stratify=stratify, random_state=state)
    return X_tr, y_tr, X_va, y_va
