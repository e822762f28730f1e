"""Validation: the checks every untrusted input passes before it becomes features and labels.

Where a csv/parquet file may come from (the allow-listed directories and URL schemes of
``bnpipe.base.settings``, a size cap), how it is read (UTF-8, unique column names), and what its
table must hold (a label column, numeric finite features, two or more classes; pandera). Ingest
and batch scoring (``bnpipe.mlflow_edge.score``) share the location checks and the reader, so a
file accepted by one is accepted by the other. A failed check raises ``DataError``.
"""

from __future__ import annotations

import urllib.parse
from pathlib import Path

from bnpipe.base import settings

DEFAULT_MAX_BYTES = 512 * 1024 * 1024


class DataError(ValueError):
    """Input that no retry can fix: the message says what is wrong, where, and what to do."""


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


def validate_table(df, label: str, where: str, impute: bool = False, encode_categoricals: bool = False):
    """Check a raw table (pandera plus explicit checks) and turn it into features and encoded labels.

    Returns ``(X, y, classes, feature_names, notes)``: float32 features, int64 labels 0..k-1, the
    class names in label order, the kept feature columns and what was changed on the way.
    ``impute`` replaces NaN/Inf by the column's median over the whole table, every row, before
    any split (the label is not used); ``encode_categoricals`` one-hot encodes non-numeric columns.
    """
    import numpy as np
    import pandas as pd
    import pandera.pandas as pa

    notes: list[str] = []
    if df.columns.duplicated().any():
        dupes = sorted(set(df.columns[df.columns.duplicated()]))
        raise DataError(f"{where}: duplicate column names {dupes}; every column needs a unique name")
    if len(df.columns) == 0:
        raise DataError(f"{where}: the file is empty")
    if label not in df.columns:
        raise DataError(f"{where}: label column {label!r} not found; columns are {list(df.columns)}")
    if len(df) == 0:
        raise DataError(f"{where}: the file has a header but no rows")
    features = df.drop(columns=[label])
    if features.shape[1] == 0:
        raise DataError(f"{where}: no feature columns besides the label {label!r}")
    non_numeric = [c for c in features.columns if not pd.api.types.is_numeric_dtype(features[c])]
    if non_numeric:
        if not encode_categoricals:
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
        if not impute:
            raise DataError(
                f"{where}: {int(bad.sum())} NaN/Inf values in columns {counts}; clean them "
                "or set the Param impute to replace them with the column's median over the whole file"
            )
        features = features.mask(bad)
        features = features.fillna(features.median())  # over every row of the file: split comes later
        notes.append(f"imputed NaN/Inf with column medians over the whole file, before the split: {counts}")
    constant = [c for c in features.columns if features[c].nunique(dropna=False) <= 1]
    if constant:
        features = features.drop(columns=constant)
        notes.append(f"dropped constant columns {constant}")
        if features.shape[1] == 0:
            raise DataError(f"{where}: every feature column is constant; nothing to learn from")
    labels = df[label]
    if labels.isna().any():
        raise DataError(f"{where}: {int(labels.isna().sum())} rows have no label in {label!r}")
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
        raise DataError(f"{where}: the label column {label!r} has a single class {classes}; need two or more")
    index = {c: i for i, c in enumerate(classes)}
    y = labels.astype(str).map(index).to_numpy("int64")
    return features.to_numpy("float32"), y, classes, [str(c) for c in features.columns], notes
