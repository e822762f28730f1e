"""Docs generated from the code's single sources stay current, and committed results stay consistent."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

from bnpipe.base import settings
from bnpipe.operations import params
from bnpipe.reporting import report

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"
VERDICT_FILES = sorted(RESULTS.rglob("verdicts.json"))


def test_configuration_doc_is_generated_from_settings():
    assert (ROOT / "docs" / "configuration.md").read_text() == settings.configuration_markdown(), (
        "docs/configuration.md is stale: run `.venv/bin/python -m bnpipe.base.settings > docs/configuration.md`"
    )


def test_params_doc_is_generated_from_the_spec():
    assert (ROOT / "docs" / "params.md").read_text() == params.markdown(), (
        "docs/params.md is stale: run `.venv/bin/python -m bnpipe.operations.params > docs/params.md`"
    )


def _code_files() -> list[Path]:
    """Every module of the package (all five layer folders), the DAGs and the plugins."""
    files = [*ROOT.glob("bnpipe/**/*.py"), *ROOT.glob("dags/*.py"), *ROOT.glob("plugins/*.py")]
    assert ROOT / "bnpipe" / "base" / "settings.py" in files and ROOT / "bnpipe" / "operations" / "cli.py" in files
    return files


def _env_reads(tree: ast.AST) -> list[int]:
    """Lines that read a variable: os.environ.get(...), os.getenv(...), os.environ["NAME"]."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            f = node.func
            if f.attr == "get" and ast.unparse(f.value) == "os.environ" or ast.unparse(f) == "os.getenv":
                lines.append(node.lineno)
        if isinstance(node, ast.Subscript) and ast.unparse(node.value) == "os.environ":
            key = node.slice
            if isinstance(key, ast.Constant) and isinstance(node.ctx, ast.Load) and key.value.startswith("BNPIPE_"):
                lines.append(node.lineno)
    return lines


def test_only_settings_reads_configuration_from_the_environment():
    found = {}
    for path in _code_files():
        if path == ROOT / "bnpipe" / "base" / "settings.py":
            continue
        lines = _env_reads(ast.parse(path.read_text()))
        if lines:
            found[str(path.relative_to(ROOT))] = lines
    assert found == {}, f"read these through bnpipe.base.settings (one documented source): {found}"


def test_every_variable_the_code_names_is_documented():
    names = set()
    for path in _code_files():
        names |= set(re.findall(r"\bBNPIPE_[A-Z][A-Z_]*[A-Z]\b", path.read_text()))
    undocumented = names - set(settings.VARIABLES) - {"BNPIPE_"}
    assert not undocumented, f"add these to settings.VARIABLES: {sorted(undocumented)}"


@pytest.mark.skipif(not VERDICT_FILES, reason="no committed results")
@pytest.mark.parametrize("path", VERDICT_FILES, ids=lambda p: str(p.parent.relative_to(RESULTS)))
def test_committed_verdicts_state_n_interval_margin_and_test(path):
    doc = json.loads(path.read_text())
    seeds = doc.get("seeds")
    assert seeds, "verdicts.json must say how many seeds the run had"
    for claim in doc["claims"]:
        for c in claim["comparisons"]:
            where = f"{claim['claim']} / {c['label']}"
            assert 1 <= c["n"] <= seeds, where  # n counts replicates: never more than the seeds
            assert c["margin"] is not None and c["margin"] > 0, where
            assert c["test"].startswith("paired t-test") and c["correction"], where
            assert len(c["interval"]) == 2 and len(c["differences"]) == c["n"], where
            if c["verdict"] in ("holds", "does not hold"):
                assert c["n"] >= 3 and c["interval"][0] is not None, where
    md = (path.parent / "report.md").read_text()
    for claim in doc["claims"]:  # the report's verdict table says what verdicts.json says
        assert f"| {claim['claim']} | {claim['verdict']} |" in md, claim["claim"]


def test_tabular_scales_wine_has_n_at_most_5():
    for folder in ("wine-5-epochs", "wine-100-epochs"):
        doc = json.loads((RESULTS / "tabular-scales" / folder / "verdicts.json").read_text())
        comps = [c for v in doc["claims"] for c in v["comparisons"]]
        assert comps and all(c["n"] <= 5 and c["margin"] and c["test"] for c in comps)


def test_readme_findings_table_matches_the_committed_verdicts():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- findings -->\n(.*?)\n<!-- /findings -->", readme, re.S)
    assert block, "README.md lost its <!-- findings --> block"
    assert block.group(1).strip() == report.findings_table(RESULTS).strip(), (
        "README findings are stale: paste the output of `.venv/bin/python -m bnpipe.reporting.report docs/results`"
    )
