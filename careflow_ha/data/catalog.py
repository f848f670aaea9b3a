"""Static EMR reference data: species, breeds, lab tests and their reference ranges.

One source of truth: the catalogue migration inserts these rows, the generator
draws values around them and the CSV importer validates against the database
copy. Reference ranges are typical in-house analyser ranges (IDEXX-like), per
species; ``plausible`` bounds are what a living animal can physically show, so
a value outside them is a data error, not a finding.
"""

from __future__ import annotations

from dataclasses import dataclass

SPECIES: tuple[str, ...] = ("dog", "cat")

#: Breeds as seen in Korean clinics, with their share of the species population.
BREEDS: dict[str, tuple[tuple[str, float], ...]] = {
    "dog": (
        ("Maltese", 0.20),
        ("Poodle", 0.16),
        ("Pomeranian", 0.13),
        ("Mixed", 0.10),
        ("Shih Tzu", 0.07),
        ("Bichon Frise", 0.06),
        ("Chihuahua", 0.05),
        ("Yorkshire Terrier", 0.05),
        ("Jindo", 0.05),
        ("Miniature Schnauzer", 0.05),
        ("Welsh Corgi", 0.04),
        ("Golden Retriever", 0.04),
    ),
    "cat": (
        ("Korean Shorthair", 0.45),
        ("Persian", 0.10),
        ("Russian Blue", 0.10),
        ("Scottish Fold", 0.10),
        ("British Shorthair", 0.08),
        ("Siamese", 0.06),
        ("Ragdoll", 0.06),
        ("Bengal", 0.05),
    ),
}

SPECIES_SHARE: dict[str, float] = {"dog": 0.62, "cat": 0.38}


@dataclass(frozen=True)
class LabTest:
    """One analyte: its panel, unit, per-species reference range and plausible bounds."""

    code: str
    panel: str  # 'CBC' or 'CHEM'
    name: str
    unit: str
    decimals: int
    ref: dict[str, tuple[float, float]]  # species -> (low, high)
    plausible: tuple[float, float]


LAB_TESTS: tuple[LabTest, ...] = (
    LabTest("WBC", "CBC", "White blood cells", "10^9/L", 2, {"dog": (5.05, 16.76), "cat": (2.87, 17.02)}, (0.0, 300.0)),
    LabTest("RBC", "CBC", "Red blood cells", "10^12/L", 2, {"dog": (5.65, 8.87), "cat": (6.54, 12.20)}, (0.3, 20.0)),
    LabTest("HGB", "CBC", "Haemoglobin", "g/dL", 1, {"dog": (13.1, 20.5), "cat": (9.8, 16.2)}, (1.0, 30.0)),
    LabTest("HCT", "CBC", "Haematocrit", "%", 1, {"dog": (37.3, 61.7), "cat": (30.3, 52.3)}, (3.0, 85.0)),
    LabTest("MCV", "CBC", "Mean corpuscular volume", "fL", 1, {"dog": (61.6, 73.5), "cat": (35.9, 53.1)},
            (20.0, 130.0)),
    LabTest("PLT", "CBC", "Platelets", "10^9/L", 0, {"dog": (148.0, 484.0), "cat": (151.0, 600.0)}, (0.0, 3000.0)),
    LabTest("NEU", "CBC", "Neutrophils", "10^9/L", 2, {"dog": (2.95, 11.64), "cat": (2.30, 10.29)}, (0.0, 250.0)),
    LabTest("LYM", "CBC", "Lymphocytes", "10^9/L", 2, {"dog": (1.05, 5.10), "cat": (0.92, 6.88)}, (0.0, 200.0)),
    LabTest("EOS", "CBC", "Eosinophils", "10^9/L", 2, {"dog": (0.06, 1.23), "cat": (0.17, 1.57)}, (0.0, 50.0)),
    LabTest("GLU", "CHEM", "Glucose", "mg/dL", 0, {"dog": (74.0, 143.0), "cat": (71.0, 159.0)}, (5.0, 1500.0)),
    LabTest("BUN", "CHEM", "Blood urea nitrogen", "mg/dL", 0, {"dog": (7.0, 27.0), "cat": (16.0, 36.0)}, (1.0, 400.0)),
    LabTest("CREA", "CHEM", "Creatinine", "mg/dL", 2, {"dog": (0.5, 1.8), "cat": (0.8, 2.4)}, (0.05, 30.0)),
    LabTest("SDMA", "CHEM", "Symmetric dimethylarginine", "ug/dL", 0, {"dog": (0.0, 14.0), "cat": (0.0, 14.0)},
            (0.0, 150.0)),
    LabTest("PHOS", "CHEM", "Phosphorus", "mg/dL", 1, {"dog": (2.5, 6.8), "cat": (3.1, 7.5)}, (0.3, 30.0)),
    LabTest("ALT", "CHEM", "Alanine aminotransferase", "U/L", 0, {"dog": (10.0, 125.0), "cat": (12.0, 130.0)},
            (0.0, 10000.0)),
    LabTest("ALKP", "CHEM", "Alkaline phosphatase", "U/L", 0, {"dog": (23.0, 212.0), "cat": (14.0, 111.0)},
            (0.0, 20000.0)),
    LabTest("TP", "CHEM", "Total protein", "g/dL", 1, {"dog": (5.2, 8.2), "cat": (5.7, 8.9)}, (1.0, 15.0)),
    LabTest("ALB", "CHEM", "Albumin", "g/dL", 1, {"dog": (2.3, 4.0), "cat": (2.2, 4.0)}, (0.3, 7.0)),
    LabTest("CHOL", "CHEM", "Cholesterol", "mg/dL", 0, {"dog": (110.0, 320.0), "cat": (65.0, 225.0)}, (10.0, 3000.0)),
    LabTest("TRIG", "CHEM", "Triglycerides", "mg/dL", 0, {"dog": (50.0, 150.0), "cat": (10.0, 114.0)}, (2.0, 10000.0)),
    LabTest("TBIL", "CHEM", "Total bilirubin", "mg/dL", 1, {"dog": (0.0, 0.9), "cat": (0.0, 0.9)}, (0.0, 50.0)),
)

TEST_BY_CODE: dict[str, LabTest] = {t.code: t for t in LAB_TESTS}
PANELS: dict[str, tuple[str, ...]] = {
    panel: tuple(t.code for t in LAB_TESTS if t.panel == panel) for panel in ("CBC", "CHEM")
}


def flag_for(value: float, low: float, high: float) -> str:
    """'L', 'N' or 'H' against a reference range (bounds are inside the range)."""
    if value < low:
        return "L"
    if value > high:
        return "H"
    return "N"
