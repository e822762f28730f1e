"""The pure champion decision: every branch, both metric directions, and the data-only mismatch check."""

import pytest

from bnpipe.mlflow_edge.champion import Decision, Holder, beats, decide, mismatch, recorded

TAB = {"input_shape": [3], "feature_names": ["a", "b", "c"]}
IMG = {"input_shape": [28, 28], "feature_names": [f"px{i}" for i in range(784)]}


def test_no_champion_moves():
    assert decide(4, 0.8, None, "val_accuracy", True) == Decision(True, "no champion yet; version 4 becomes champion")


def test_candidate_already_holding_the_alias_stays():
    d = decide(4, 0.8, Holder(4), "val_accuracy", True)
    assert d == Decision(False, "version 4 already holds champion")


def test_better_on_the_same_snapshot_moves_and_says_how_the_champion_was_scored():
    d = decide(5, 0.91, Holder(2, 0.90, "recorded on the same snapshot"), "val_accuracy", True)
    assert d.moves
    assert d.reason == "val_accuracy 0.9100 beats champion v2's 0.9000 (recorded on the same snapshot)"


def test_better_than_a_rescored_champion_moves():
    d = decide(5, 0.30, Holder(2, 0.35, "re-scored on snapshot abc"), "val_loss", False)
    assert d.moves and "(re-scored on snapshot abc)" in d.reason


@pytest.mark.parametrize(("metric", "higher"), [("val_accuracy", True), ("val_loss", False)])
def test_a_tie_keeps_the_champion(metric, higher):
    d = decide(5, 0.5, Holder(2, 0.5, "recorded on the same snapshot"), metric, higher)
    assert not d.moves and "a tie keeps the champion" in d.reason


@pytest.mark.parametrize(
    ("metric", "higher", "ours", "theirs"), [("val_accuracy", True, 0.8, 0.9), ("val_loss", False, 0.4, 0.3)]
)
def test_worse_stays(metric, higher, ours, theirs):
    d = decide(5, ours, Holder(2, theirs, "re-scored on snapshot abc"), metric, higher)
    assert not d.moves and f"does not beat champion v2's {theirs:.4f}" in d.reason


def test_nan_never_beats():
    assert not decide(5, float("nan"), Holder(2, 0.1, "x"), "val_accuracy", True).moves
    assert not beats(float("nan"), 0.1, False)


def test_a_champion_that_cannot_score_this_data_is_replaced_with_the_reason():
    d = decide(
        5, 0.2, Holder(2, mismatch="it takes inputs of shape (4,), the snapshot's are (3,)"), "val_accuracy", True
    )
    assert d.moves
    assert d.reason == (
        "champion v2 cannot score this data (it takes inputs of shape (4,), the snapshot's are (3,)); "
        "version 5 replaces it"
    )


def test_a_holder_with_neither_score_nor_mismatch_is_a_bug_not_a_decision():
    with pytest.raises(ValueError, match="champion v2"):
        decide(5, 0.2, Holder(2), "val_accuracy", True)


def test_recorded_only_on_the_same_snapshot_and_metric():
    tags = {"bnpipe.data_digest": "d1", "bnpipe.metric": "val_accuracy", "bnpipe.metric_value": "0.875"}
    assert recorded(tags, "d1", "val_accuracy") == 0.875
    assert recorded(tags, "d2", "val_accuracy") is None
    assert recorded(tags, "d1", "val_loss") is None
    assert recorded({}, "d1", "val_accuracy") is None


def test_same_columns_or_shape_can_score():
    assert mismatch({"columns": ["a", "b", "c"]}, TAB) is None
    assert mismatch({"shape": [3]}, TAB) is None
    assert mismatch({"shape": [28, 28]}, IMG) is None


def test_mismatch_names_what_differs():
    assert (
        mismatch({"columns": ["a", "b", "d"]}, TAB)
        == "it takes columns the snapshot lacks ['d'] and not the snapshot's ['c']"
    )
    assert mismatch({"columns": ["c", "b", "a"]}, TAB) == "it takes the same columns in another order"
    assert mismatch({"shape": [4]}, TAB) == "it takes inputs of shape (4,), the snapshot's are (3,)"
    assert mismatch({"columns": ["a", "b", "c"]}, IMG) == "it takes 3 named columns, the snapshot has (28, 28) tensors"
    assert mismatch({"shape": [28, 28]}, TAB) == "it takes inputs of shape (28, 28), the snapshot's are (3,)"
