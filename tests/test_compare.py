import pytest

from bnpipe import compare


def _r(name, acc, loss, status="ok"):
    return {"name": name, "run_id": name, "status": status, "metrics": {"val_accuracy": acc, "val_loss": loss}}


def test_rank_best_first_ties_to_lower_val_loss_and_diverged_left_out():
    results = [_r("a", 0.9, 0.5), _r("b", 0.95, 0.4), _r("c", 0.9, 0.3), _r("d", 0.99, float("nan"), "diverged")]
    ranked = compare.rank(results)
    assert [r["name"] for r in ranked] == ["b", "c", "a"]
    rows = compare.table_rows(results, ranked)
    assert [r["variant"] for r in rows] == ["b", "c", "a", "d"]
    assert rows[-1]["rank"] == "-" and rows[-1]["status"] == "diverged"


def test_rank_on_loss_prefers_lower():
    ranked = compare.rank([_r("a", 0.9, 0.5), _r("b", 0.8, 0.2)], metric="val_loss")
    assert ranked[0]["name"] == "b"


def test_unknown_metric_is_refused():
    with pytest.raises(ValueError, match="metric 'f1'"):
        compare.rank([_r("a", 0.9, 0.5)], metric="f1")


def test_register_refuses_when_nothing_is_healthy():
    with pytest.raises(compare.NoHealthyVariant, match="every variant diverged"):
        compare.register(None, [], {"dataset": "x"}, "val_accuracy")


def test_better_respects_direction():
    assert compare.better(0.9, 0.8, "val_accuracy") and not compare.better(0.9, 0.8, "val_loss")
