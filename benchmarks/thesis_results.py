"""Published NC-VQVAE results (SPEC §5.5) as data, for side-by-side comparison.

Mean and population std over 4 seeds of the thesis runs (stage 1 and stage 2: 1000 epochs), from
the reference repository's `results/<Dataset>/{stage1,stage2,cas}/*.csv`. Accuracies are in
percent, as published. The thesis ran its linear probes in training mode (SPEC §5.4) and its
FID/IS/CAS with the pretrained `supervised-fcn` classifiers, so numbers are comparable only up
to those differences.
"""

from __future__ import annotations

# Column order of every table below (the names `benchmarks/reproduce.py` uses).
VARIANTS = (
    "vqvae",
    "barlowtwins-warp",
    "barlowtwins-slice",
    "barlowtwins-gauss",
    "vibcreg-warp",
    "vibcreg-slice",
    "vibcreg-gauss",
)

# SVM probe accuracy (%)
_SVM_ACCURACY = """
ECG5000                  82.8±1.6 81.4±4.5 84.4±2.5 83.9±2.6 82.2±1.8 83.8±1.3 82.3±1.7
ElectricDevices          41.4±1.2 43.7±0.9 41.0±1.4 42.3±2.0 37.5±2.9 39.1±2.3 42.7±1.4
FordA                    74.2±4.3 83.9±4.3 89.4±2.9 82.8±3.8 74.0±2.1 86.1±3.6 78.1±4.7
FordB                    60.0±1.9 67.4±3.3 75.6±3.1 67.7±7.1 63.9±1.5 69.8±4.3 64.4±3.3
Mallat                  76.7±10.1 80.7±5.9 83.3±6.0 77.8±2.4 86.7±3.6 84.5±3.1 86.4±3.4
ShapesAll                30.5±1.9 55.2±3.4 60.4±3.0 48.0±1.8 56.0±0.6 60.2±2.0 46.0±2.2
SonyAIBORobotSurface1    67.9±7.1 69.8±5.0 74.0±6.0 69.9±3.5 74.4±3.5 70.8±3.7 69.2±5.3
SonyAIBORobotSurface2    85.5±1.8 79.2±4.0 79.9±3.9 81.5±0.6 85.3±2.4 85.2±3.3 84.9±1.7
StarLightCurves          88.5±2.9 93.4±0.8 94.1±1.7 88.0±2.2 93.5±0.8 93.4±1.4 89.1±1.0
Symbols                  60.1±3.9 60.4±6.2 66.4±6.3 66.0±3.5 61.3±4.1 61.8±3.2 62.9±4.4
TwoPatterns              52.9±6.7 90.6±3.0 82.3±1.8 72.7±2.5 90.2±1.4 80.4±0.1 72.0±2.7
UWaveGestureLibraryAll   40.5±1.6 70.1±2.6 63.4±4.4 53.7±0.5 73.3±1.9 65.8±1.3 55.2±2.2
Wafer                    89.2±0.0 94.4±0.2 93.6±2.5 92.7±0.5 93.9±0.8 91.7±2.5 91.6±1.6
"""

# KNN (k=5) probe accuracy (%)
_KNN_ACCURACY = """
ECG5000                 80.0±3.5 85.5±2.5 87.8±1.8 86.4±2.4 86.0±1.0 88.5±0.3 84.4±1.0
ElectricDevices         34.5±1.0 34.6±1.2 37.8±1.1 39.6±3.3 33.3±0.2 35.7±2.0 39.0±2.3
FordA                   70.1±4.7 83.0±1.4 90.9±1.4 80.4±4.0 80.3±1.1 86.8±1.2 76.2±5.8
FordB                   57.8±1.7 64.4±2.1 74.2±1.0 63.8±4.4 63.2±2.4 70.0±2.2 61.2±1.8
Mallat                  63.2±8.6 71.6±8.3 76.0±2.7 67.7±2.4 79.4±5.4 77.1±4.4 68.7±5.6
ShapesAll               28.7±3.2 48.7±3.1 53.3±3.2 39.7±2.9 48.3±0.8 53.9±2.1 40.3±3.3
SonyAIBORobotSurface1   55.7±7.4 54.5±6.6 60.8±9.5 53.2±5.9 47.8±2.2 57.8±5.7 54.3±6.7
SonyAIBORobotSurface2   80.6±3.4 77.1±1.7 80.3±1.6 80.2±1.8 77.4±3.1 79.5±0.7 80.3±1.5
StarLightCurves         86.8±1.7 92.8±1.4 94.1±1.7 87.5±1.5 92.5±1.8 91.3±1.0 89.2±0.7
Symbols                 50.4±4.0 58.9±5.3 50.2±4.6 58.7±3.4 44.9±4.2 41.9±2.4 42.6±3.7
TwoPatterns             34.1±2.4 69.3±5.9 66.2±3.0 47.2±4.6 64.1±4.2 68.1±2.7 55.0±5.8
UWaveGestureLibraryAll  31.1±2.0 61.9±3.7 55.8±3.0 39.8±1.9 61.7±4.4 55.4±1.4 43.9±2.4
Wafer                   93.3±0.4 96.3±0.3 96.4±0.2 96.4±0.2 96.6±0.4 96.3±0.3 96.5±0.4
"""

# FID (lower is better)
_FID = """
ECG5000                  1.62±0.05  2.61±0.15  2.56±0.19  2.47±0.22  2.60±0.33  2.39±0.15  1.76±0.20
ElectricDevices         13.48±1.31 16.51±4.80 10.20±0.98 11.54±1.04 13.99±1.36 11.82±0.66 15.20±1.33
FordA                    5.15±2.65  2.59±0.43  2.36±0.21  2.28±0.59  3.01±0.18  2.90±0.39  3.73±1.66
FordB                    4.05±0.92  2.66±0.54  3.49±0.68  2.88±0.87  2.49±0.52  3.07±0.71  3.04±0.99
Mallat                   2.09±0.48  2.54±0.34  3.68±1.21  2.12±0.22  2.11±0.18  2.40±0.11  1.65±0.30
ShapesAll               27.64±3.72 38.22±1.45 32.54±2.52 32.25±3.05 36.59±4.38 35.79±2.94 31.56±3.66
SonyAIBORobotSurface1   23.71±6.66 30.65±2.57 31.97±3.64 25.29±2.16 26.11±2.93 28.20±2.12 18.61±2.32
SonyAIBORobotSurface2    5.42±2.05  3.35±1.31  4.41±1.43  1.78±0.61  4.43±1.73  3.32±0.61  2.36±1.07
StarLightCurves          1.01±0.16  1.29±0.26  1.91±0.26  1.08±0.27  1.07±0.16  1.19±0.22  1.05±0.29
Symbols                 13.62±3.32  9.78±2.63  9.78±1.57  8.61±2.80  8.84±1.43  9.74±1.70  8.58±0.43
TwoPatterns              4.04±0.42  4.00±0.39  2.96±0.16  2.44±0.13  4.05±0.57  3.15±0.24  2.62±0.44
UWaveGestureLibraryAll   8.48±0.36  6.77±0.40  6.64±0.25  7.35±0.02  6.80±0.18  6.49±0.09  7.34±0.25
Wafer                    5.72±0.46  3.70±0.26  4.20±0.22  2.85±0.11  3.67±0.23  3.86±0.16  2.84±0.29
"""

# IS, mean over 10 splits (higher is better)
_IS_MEAN = """
ECG5000                 1.94±0.05 2.00±0.02 1.98±0.01 2.00±0.02 1.99±0.03 2.00±0.01 1.99±0.02
ElectricDevices         3.75±0.17 3.95±0.18 3.93±0.11 3.75±0.15 4.17±0.04 3.85±0.06 3.55±0.10
FordA                   1.16±0.09 1.41±0.08 1.45±0.02 1.45±0.07 1.34±0.04 1.41±0.02 1.29±0.11
FordB                   1.28±0.15 1.48±0.04 1.50±0.12 1.52±0.10 1.48±0.11 1.51±0.13 1.31±0.14
Mallat                  3.01±0.32 3.29±0.25 2.94±0.51 3.53±0.13 3.18±0.16 2.96±0.07 3.72±0.22
ShapesAll               4.22±0.07 5.07±0.09 5.04±0.07 4.56±0.16 4.72±0.19 4.76±0.14 4.71±0.20
SonyAIBORobotSurface1   1.20±0.09 1.22±0.06 1.21±0.06 1.28±0.03 1.32±0.06 1.32±0.06 1.44±0.07
SonyAIBORobotSurface2   1.62±0.07 1.77±0.06 1.74±0.05 1.81±0.01 1.74±0.06 1.79±0.03 1.79±0.05
StarLightCurves         1.93±0.05 2.35±0.05 2.32±0.02 2.25±0.09 2.35±0.03 2.36±0.03 2.22±0.04
Symbols                 1.99±0.27 2.92±0.28 2.67±0.10 3.14±0.30 3.20±0.15 3.03±0.21 3.24±0.07
TwoPatterns             2.41±0.06 2.54±0.09 2.66±0.04 2.67±0.02 2.56±0.10 2.66±0.04 2.67±0.09
UWaveGestureLibraryAll  2.13±0.12 2.86±0.09 2.96±0.12 2.73±0.06 2.91±0.05 2.99±0.05 2.72±0.08
Wafer                   1.33±0.04 1.25±0.02 1.24±0.01 1.31±0.02 1.26±0.02 1.26±0.03 1.31±0.02
"""

# CAS, val_acc_ema (%)
_CAS_VAL_ACC_EMA = """
ECG5000                  86.6±2.1  88.1±2.7  86.3±5.4  88.0±1.4 87.7±4.4 89.2±3.9 91.0±0.7
ElectricDevices          61.4±1.8  58.8±1.6  60.7±0.5  59.9±2.4 61.8±1.5 61.0±1.1 59.4±1.5
FordA                    86.4±0.6  88.4±2.3  90.2±0.5  87.8±2.1 86.4±3.2 89.5±0.9 87.0±1.5
FordB                    72.5±2.2  74.8±2.4  75.6±1.8  74.1±1.0 75.0±2.0 73.8±2.1 75.0±0.3
Mallat                  47.1±15.1 64.2±13.7 56.3±26.4 66.1±15.8 82.7±7.1 87.6±6.6 90.8±4.6
ShapesAll                36.1±8.3  34.4±4.6  32.9±3.3  42.0±3.4 37.9±6.9 36.7±3.7 40.4±3.0
SonyAIBORobotSurface1    97.5±0.8  93.3±3.7  95.7±1.5  97.9±0.4 98.2±0.2 97.6±0.9 98.5±0.3
SonyAIBORobotSurface2    92.9±2.5  95.6±0.8  95.1±2.0  96.9±1.4 96.0±1.3 97.0±0.4 96.4±1.1
StarLightCurves          96.0±0.6  95.3±0.4  95.5±0.3  96.5±0.3 96.2±0.2 95.4±0.2 96.4±0.3
Symbols                  95.6±0.4  92.9±2.2  93.0±2.9  93.0±3.0 96.9±0.8 97.4±0.6 96.3±1.0
TwoPatterns              80.8±2.2  77.0±2.3  78.8±2.3  84.7±1.2 71.5±7.2 78.1±3.1 84.6±0.5
UWaveGestureLibraryAll   33.3±2.6  30.0±8.5  36.7±7.8  31.3±4.9 36.0±2.4 40.1±6.2 38.3±2.1
Wafer                    97.6±0.3  97.7±0.8  97.8±0.4  96.8±1.3 97.9±0.4 97.6±0.2 98.4±0.2
"""


def _parse(table: str) -> dict[str, tuple[tuple[float, float], ...]]:
    """`Dataset  m±s  m±s ...` rows -> {dataset: ((mean, std) per variant)}."""
    parsed = {}
    for line in table.strip().splitlines():
        dataset, *cells = line.split()
        if len(cells) != len(VARIANTS):
            raise ValueError(f"thesis table row {dataset!r}: expected {len(VARIANTS)} cells")
        parsed[dataset] = tuple(
            (float(mean), float(std)) for mean, std in (cell.split("±") for cell in cells)
        )
    return parsed


RESULTS: dict[str, dict[str, tuple[tuple[float, float], ...]]] = {
    "svm_accuracy": _parse(_SVM_ACCURACY),
    "knn_accuracy": _parse(_KNN_ACCURACY),
    "fid": _parse(_FID),
    "is_mean": _parse(_IS_MEAN),
    "cas_val_acc_ema": _parse(_CAS_VAL_ACC_EMA),
}


def published(metric: str, dataset: str, variant: str) -> tuple[float, float] | None:
    """(mean, std) reported for a metric in RESULTS, or None where the thesis has no number."""
    table = RESULTS.get(metric, {})
    if dataset not in table or variant not in VARIANTS:
        return None
    return table[dataset][VARIANTS.index(variant)]
