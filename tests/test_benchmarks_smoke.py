"""The benchmark harness on tiny sizes: it must keep producing every row, with numbers.

Not a timed test: the numbers are not checked against the targets, only that each row was
measured. Uses the session's real stack (``live_stack``), as the end-to-end tests do.
"""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ sits next to bnpipe/
from benchmarks import run as bench
from benchmarks import scaleout

pytestmark = pytest.mark.integration

EXPECTED = {
    "1a", "1b", "1c", "1d", "1e", "1f", "2a", "2b", "2c", "2d", "3a", "3b", "3c", "3d", "4a", "4b", "4c", "4d",
    "4e", "5-1", "5-2", "6a", "6b", "6c", "6d", "6e", "7a", "7a'", "7b", "7c", "7d", "7d'", "7e", "7f", "7g",
    "8a", "8b", "8c", "8d", "8e", "8f", "8g", "8h", "8i", "8j", "9a", "9b", "9c", "9d", "9e", "9f", "9g", "9h", "9i",
    "9j", "9k", "9l", "9m", "9n",
}  # fmt: skip
# only where PostgreSQL, Redis and two cores are
SCALEOUT = {"10a", "10b", "10c", "10d", "10e", "10f", "10g", "10h", "10i", "10j", "10k"}


def test_smoke_run_has_every_row_with_numbers(live_stack, tmp_path):
    out = tmp_path / "BENCHMARKS.md"
    result = bench.run("smoke", stack=live_stack, out=out, argv=["--smoke"])
    rows = {r["id"]: r for r in result["rows"]}
    expected = EXPECTED | (set() if scaleout.missing() else SCALEOUT)
    assert set(rows) >= expected, f"missing rows: {sorted(expected - set(rows))}"
    numbers = [int(re.match(r"\d+", r["id"]).group()) for r in result["rows"]]
    assert numbers == sorted(numbers), [r["id"] for r in result["rows"]]  # 10 after 9, not after 1
    for rid, row in rows.items():
        s = row["stats"]
        assert s["n"] >= 1 and all(math.isfinite(s[k]) for k in ("median", "min", "max")), (rid, s)
        assert s["min"] <= s["median"] <= s["max"], (rid, s)
    # the measured quantities are physical: positive times, rates and peaks
    positive = ("1b", "1c", "1f", "2a", "2b", "3a", "4b", "4c", "4e", "5-1", "6a", "6b", "7f")
    positive += tuple(sorted({"10a", "10b", "10c", "10d", "10e", "10h", "10i", "10j", "10k"} & set(rows)))
    for rid in (*positive, "8a", "8f", "8j", "9a", "9b", "9d", "9e", "9h", "9k"):
        assert rows[rid]["stats"]["median"] > 0, rid
    text = out.read_text()
    for rid, row in rows.items():
        assert f"| {rid} | {row['what']} |" in text
    assert "-m benchmarks --smoke`" in text and "Load average" in text and "memory bandwidth" in text
