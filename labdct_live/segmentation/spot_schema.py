"""The spot table's schema, defined once.

Every table of spots this package writes (``spot_table``, the per-frame methods, the catalog's
``processed/<node>/spots``, ``segment``'s ``spots.csv``) has the columns of
:data:`SPOT_COLUMNS`, in that order, with those dtypes. ``spot_table`` gives the geometric
columns (:data:`SPOT_TABLE_COLUMNS`); the methods add the per-spot SNR; a writer adds the
frame index. Bounding boxes are half-open, like slices: ``image[row_start:row_stop,
col_start:col_stop]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = ["SpotColumn", "SPOT_COLUMNS", "SPOT_TABLE_COLUMNS", "SPOT_COLUMN_NAMES",
           "conform_spots", "spot_columns_markdown"]


@dataclass(frozen=True)
class SpotColumn:
    """One column of the spot table: name, numpy dtype, unit and meaning."""

    name: str
    dtype: str
    unit: str
    description: str


#: The spot table, in column order.
SPOT_COLUMNS: tuple[SpotColumn, ...] = (
    SpotColumn("frame", "int64", "", "scan index of the frame (0-based)"),
    SpotColumn("label", "int64", "", "label of the spot in the frame's 4-connected label image"),
    SpotColumn("centroid_row", "float64", "px",
               "intensity-weighted centroid, row (geometric where the intensity sums to 0)"),
    SpotColumn("centroid_col", "float64", "px", "intensity-weighted centroid, column"),
    SpotColumn("area", "int64", "px", "number of pixels"),
    SpotColumn("integrated_intensity", "float64", "counts",
               "sum of the measured image over the spot (routine: median-subtracted frame; "
               "U-Net: denoised image)"),
    SpotColumn("peak_intensity", "float64", "counts", "largest value of that image in the spot"),
    SpotColumn("row_start", "int64", "px", "first row of the bounding box"),
    SpotColumn("row_stop", "int64", "px", "one past the last row of the bounding box"),
    SpotColumn("col_start", "int64", "px", "first column of the bounding box"),
    SpotColumn("col_stop", "int64", "px", "one past the last column of the bounding box"),
    SpotColumn("snr", "float64", "", "SNR on the raw frame: (mean of the spot - mean of its "
               "local background) / SD of that background"),
    SpotColumn("visible", "bool", "", "mean of the spot above its background's mean + 1.5 SD"),
)

SPOT_COLUMN_NAMES: tuple[str, ...] = tuple(c.name for c in SPOT_COLUMNS)

#: The columns :func:`labdct_live.segmentation.spots.spot_table` measures from a label image.
SPOT_TABLE_COLUMNS: tuple[str, ...] = SPOT_COLUMN_NAMES[1:-2]


def conform_spots(spots: pd.DataFrame, frame: int | None = None) -> pd.DataFrame:
    """A spot table with exactly the :data:`SPOT_COLUMNS`, in order, with their dtypes.

    Parameters
    ----------
    spots : pandas.DataFrame
        Spot rows with at least the :data:`SPOT_TABLE_COLUMNS`; ``snr`` and ``visible`` are
        filled with NaN and False where missing (a spot measured without its raw frame).
    frame : int, optional
        Sets the ``frame`` column; required when ``spots`` has none.

    Returns
    -------
    pandas.DataFrame
        A new table; columns not in the schema are dropped.

    Raises
    ------
    ValueError
        When a measured column is missing (a table from another schema).

    Examples
    --------
    >>> import pandas as pd
    >>> t = pd.DataFrame({c: [1] for c in SPOT_TABLE_COLUMNS})
    >>> list(conform_spots(t, frame=3).columns) == list(SPOT_COLUMN_NAMES)
    True
    """
    missing = [c for c in SPOT_TABLE_COLUMNS if c not in spots.columns]
    if missing:
        raise ValueError(f"spot table lacks column(s) {missing}; expected {SPOT_TABLE_COLUMNS}")
    out = spots.copy()
    if frame is not None:
        out["frame"] = int(frame)
    elif "frame" not in out.columns:
        raise ValueError("spot table has no 'frame' column and no frame index was given")
    if "snr" not in out.columns:
        out["snr"] = np.nan
    out["visible"] = out["visible"].fillna(False) if "visible" in out.columns else False
    return out[list(SPOT_COLUMN_NAMES)].astype({c.name: c.dtype for c in SPOT_COLUMNS})


def spot_columns_markdown() -> str:
    """The schema as a Markdown table (the docs' table is checked against it)."""
    lines = ["| column | dtype | unit | meaning |", "|---|---|---|---|"]
    lines += [f"| `{c.name}` | {c.dtype} | {c.unit or '–'} | {c.description} |"
              for c in SPOT_COLUMNS]
    return "\n".join(lines)
