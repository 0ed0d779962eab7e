"""Published result tables stored with the recipes, transcribed cell by cell as printed.

Each table keeps the paper's cells as the strings it prints (``"0.5493"``, ``"47.50"``), so the
printed precision is kept with them, and converts them to :class:`PublishedRow` values in
taskbalance's metric names and units (percentages become fractions; angles stay in degrees; depth
errors as printed). A row records the paper and table it belongs to (``source``) and where its
cells were actually read (``checked``): where the original paper could not be opened, that says
so. A missing cell is ``"–"``: it was not found in any source, and nothing is stored for it.

The single-task row of a table (``STL``) is stored as well, so a row's Δm% can be recomputed
from the stored numbers and compared with the Δm% the paper prints: the test
``tests/training/test_published_tables.py`` does that for every row within the printed rounding,
which catches a mistyped cell or a column put under the wrong metric.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

__all__ = [
    "CITYSCAPES_MTAN",
    "NYUV2_MTAN",
    "PublishedRow",
    "PublishedTable",
    "printed_decimals",
]

MISSING = "–"


@dataclass(frozen=True)
class PublishedRow:
    """Published test numbers of one method under a recipe's protocol.

    Attributes:
        method: our method name (``"ew"``, ``"nash_mtl"``, ...; ``"single-task"`` for the
            table's single-task baselines).
        label: the row's name in the paper (``"LS"``, ``"Nash-MTL"``).
        metrics: ``{task: {metric: value}}`` in taskbalance's names and units (fractions, not
            percentages); only the cells that were read are stored.
        source: paper and table the numbers belong to.
        checked: where the numbers were read (so a reader can tell how far to trust them).
        delta_m: the paper's Δm% of the row as printed (``None`` where none was read).
        printed: ``{"task/metric": cell}``, the cells as printed (their precision); Δm% under
            ``"delta_m"``.
    """

    method: str
    label: str
    metrics: Mapping[str, Mapping[str, float]]
    source: str
    checked: str
    delta_m: float | None = None
    printed: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class _Row:
    label: str
    method: str
    cells: str  # the printed cells, space-separated, in the table's column order; "–": not read
    delta_m: str  # the printed Δm%, "–" where not read
    source: str
    checked: str


@dataclass(frozen=True)
class PublishedTable:
    """One paper table: its columns, its single-task row and its method rows, as printed.

    Attributes:
        columns: ``(task, metric, percent)`` per printed column; ``percent``: printed in
            percent, stored as a fraction.
        baseline: the single-task (``STL``) row.
        rows: the method rows.
    """

    columns: tuple[tuple[str, str, bool], ...]
    baseline: PublishedRow
    rows: tuple[PublishedRow, ...]


def printed_decimals(cell: str) -> int:
    """Decimals a printed number carries (``"47.50"`` -> 2, ``"0.0125"`` -> 4, ``"3"`` -> 0)."""
    return len(cell.split(".")[1]) if "." in cell else 0


def _convert(columns: Sequence[tuple[str, str, bool]], row: _Row) -> PublishedRow:
    cells = row.cells.split()
    if len(cells) != len(columns):
        raise ValueError(f"{row.label}: {len(cells)} cells for {len(columns)} columns")
    metrics: dict[str, dict[str, float]] = {}
    printed: dict[str, str] = {}
    for (task, metric, percent), cell in zip(columns, cells, strict=True):
        if cell == MISSING:
            continue
        value = float(cell)
        metrics.setdefault(task, {})[metric] = round(value / 100, 8) if percent else value
        printed[f"{task}/{metric}"] = cell
    if row.delta_m != MISSING:
        printed["delta_m"] = row.delta_m
    return PublishedRow(
        method=row.method,
        label=row.label,
        metrics=metrics,
        source=row.source,
        checked=row.checked,
        delta_m=None if row.delta_m == MISSING else float(row.delta_m),
        printed=printed,
    )


def _table(columns: tuple[tuple[str, str, bool], ...], rows: Sequence[_Row]) -> PublishedTable:
    converted = [_convert(columns, row) for row in rows]
    return PublishedTable(columns=columns, baseline=converted[0], rows=tuple(converted[1:]))


# ------------------------------------------------------------------------------ sources
_NASH = "Navon et al., ICML 2022"  # 'Multi-Task Learning as a Bargaining Game' (Nash-MTL)
_MOCO = "Fernando et al., ICLR 2023"  # 'Mitigating Gradient Bias in Multi-objective Learning'
_FAMO = "Liu et al., NeurIPS 2023"  # 'FAMO: Fast Adaptive Multitask Optimization'
_NOT_OPENED = "the original paper's text could not be opened when this was written"
_NTKMTL = "Qin et al., 'NTKMTL' (arXiv HTML)"
_RECAP = "Phan et al., 'Beyond Reasoning Gains' (arXiv 2510.21978)"
_COST = "Zhou et al., 'Continual Optimization with Symmetry Teleportation for MTL' (COST)"
_BASE_CODE = (
    "the single-task row also equals BASE, 'base results from CAGrad', in the FAMO repository "
    "(experiments/cityscapes/utils.py: Cityscapes, with the NYUv2 one beside it)"
)
_RECHECK = "each row's Δm% follows from its cells and the STL row within the printed rounding"

_NYUV2_READ = (
    f"read from two later papers that reprint the table identically to 4 decimals: {_NTKMTL}, "
    f"Table 1, and {_RECAP}, Table 4; {_NOT_OPENED}; {_BASE_CODE}; {_RECHECK}"
)
_NYUV2_LATER = (
    f"read from {_NTKMTL}, Table 1, which reprints it with its Δm%; {_NOT_OPENED}; a third "
    f"paper (IMGrad) prints the same values rounded to 2 decimals; {_RECHECK}"
)
_CITYSCAPES_READ = (
    f"read from two later papers that reprint the table: {_NTKMTL}, Table 7, and {_COST}, "
    f"Cityscapes table (same cells; COST's Δm% differ by up to 0.08, within the printed "
    f"rounding; NTKMTL's are stored); {_NOT_OPENED}; {_BASE_CODE}; {_RECHECK}"
)
_GRADDROP_CITYSCAPES = (
    f"cells read from {_COST} (mIoU, pixel accuracy and abs error also in the IMGrad paper); its "
    f"Δm% (23.67) is not stored: COST's Δm% column is recomputed, not Navon et al.'s; {_NOT_OPENED}"
)
_FAMO_CITYSCAPES = (
    f"read from {_NTKMTL}, Table 7, and {_COST} (identical cells and Δm%); {_NOT_OPENED}"
)
_MOCO_CITYSCAPES = (
    "mIoU, pixel accuracy and abs error read from the IMGrad paper's reprint; the relative error "
    f"and Δm% were not found in any source reachable when this was written; {_NOT_OPENED}"
)

# ------------------------------------------------------------------------------ NYUv2
_NYUV2_COLUMNS = (
    ("segmentation", "miou", True),
    ("segmentation", "pixel_acc", True),
    ("depth", "abs_err", False),
    ("depth", "rel_err", False),
    ("normals", "mean_angle", False),
    ("normals", "median_angle", False),
    ("normals", "within_11.25", True),
    ("normals", "within_22.5", True),
    ("normals", "within_30", True),
)
_T2 = f"{_NASH}, Table 2"
_NYUV2_ROWS = {  # label: (method, cells as printed, Δm% as printed)
    "STL": ("single-task", "38.30 63.76 0.6754 0.2780 25.01 19.21 30.14 57.20 69.15", MISSING),
    "LS": ("ew", "39.29 65.33 0.5493 0.2263 28.15 23.96 22.09 47.50 61.08", "5.59"),
    "UW": ("uw", "36.87 63.17 0.5446 0.2260 27.04 22.61 23.54 49.05 63.65", "4.05"),
    "RLW": ("rlw", "37.17 63.77 0.5759 0.2410 28.27 24.18 22.26 47.05 60.62", "7.78"),
    "DWA": ("dwa", "39.11 65.31 0.5510 0.2285 27.61 23.18 24.17 50.18 62.39", "3.57"),
    "MGDA": ("mgda", "30.47 59.90 0.6070 0.2555 24.88 19.45 29.18 56.88 69.36", "1.38"),
    "PCGrad": ("pcgrad", "38.06 64.64 0.5550 0.2325 27.41 22.80 23.86 49.83 63.14", "3.97"),
    "GradDrop": ("graddrop", "39.39 65.12 0.5455 0.2279 27.48 22.96 23.38 49.44 62.87", "3.58"),
    "CAGrad": ("cagrad", "39.79 65.49 0.5486 0.2250 26.31 21.58 25.61 52.36 65.58", "0.20"),
    "Nash-MTL": ("nash_mtl", "40.13 65.93 0.5261 0.2171 25.26 20.08 28.40 55.47 68.15", "-4.04"),
    "MoCo": ("moco", "40.30 66.07 0.5575 0.2135 26.67 21.83 25.61 51.78 64.85", "0.16"),
    "FAMO": ("famo", "38.88 64.90 0.5474 0.2194 25.06 19.57 29.21 56.61 68.98", "-4.10"),
}
_NYUV2_WHERE = {  # label: (source, where read) of the rows that are not Table 2's
    "MoCo": (f"{_MOCO}, NYUv2 table", _NYUV2_LATER),
    "FAMO": (f"{_FAMO}, NYUv2 table", _NYUV2_LATER),
}

# ------------------------------------------------------------------------------ Cityscapes
_CITYSCAPES_COLUMNS = (
    ("segmentation", "miou", True),
    ("segmentation", "pixel_acc", True),
    ("depth", "abs_err", False),
    ("depth", "rel_err", False),
)
_T3 = f"{_NASH}, Table 3"
_CITYSCAPES_ROWS = {  # label: (method, cells as printed, Δm% as printed)
    "STL": ("single-task", "74.01 93.16 0.0125 27.77", MISSING),
    "LS": ("ew", "75.18 93.49 0.0155 46.77", "22.60"),
    "UW": ("uw", "72.02 92.85 0.0140 30.13", "5.89"),
    "RLW": ("rlw", "74.57 93.41 0.0158 47.79", "24.38"),
    "DWA": ("dwa", "75.24 93.52 0.0160 44.37", "21.45"),
    "MGDA": ("mgda", "68.84 91.54 0.0309 33.50", "44.14"),
    "PCGrad": ("pcgrad", "75.13 93.48 0.0154 42.07", "18.29"),
    "GradDrop": ("graddrop", "75.27 93.53 0.0157 47.54", MISSING),
    "CAGrad": ("cagrad", "75.16 93.48 0.0141 37.60", "11.64"),
    "Nash-MTL": ("nash_mtl", "75.41 93.66 0.0129 35.02", "6.82"),
    "MoCo": ("moco", f"75.42 93.55 0.0149 {MISSING}", MISSING),
    "FAMO": ("famo", "74.54 93.29 0.0145 32.59", "8.13"),
}
_CITYSCAPES_WHERE = {
    "GradDrop": (_T3, _GRADDROP_CITYSCAPES),
    "MoCo": (f"{_MOCO}, Cityscapes table", _MOCO_CITYSCAPES),
    "FAMO": (f"{_FAMO}, Cityscapes table", _FAMO_CITYSCAPES),
}


def _rows(
    table: Mapping[str, tuple[str, str, str]],
    where: Mapping[str, tuple[str, str]],
    default: tuple[str, str],
) -> list[_Row]:
    return [
        _Row(label, method, cells, delta, *where.get(label, default))
        for label, (method, cells, delta) in table.items()
    ]


#: NYUv2 with MTAN, 200 epochs, mean of the last 10 (Navon et al. 2022, Table 2; MoCo, FAMO).
NYUV2_MTAN = _table(_NYUV2_COLUMNS, _rows(_NYUV2_ROWS, _NYUV2_WHERE, (_T2, _NYUV2_READ)))

#: Cityscapes (7 classes, depth) with MTAN (Navon et al. 2022, Table 3; MoCo, FAMO).
CITYSCAPES_MTAN = _table(
    _CITYSCAPES_COLUMNS,
    _rows(_CITYSCAPES_ROWS, _CITYSCAPES_WHERE, (_T3, _CITYSCAPES_READ)),
)
