"""Lab-test catalogue (CBC and chemistry) with per-species reference ranges.

A Python step so that the rows come from careflow_ha.data.catalog, the one
source the generator and the importer also use.
"""

from yoyo import step

from careflow_ha.data.catalog import LAB_TESTS

__depends__ = {"0001_emr_dimensions"}


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


_tests = ",\n".join(
    f"({_quote(t.code)}, {_quote(t.panel)}, {_quote(t.name)}, {_quote(t.unit)}, {t.decimals}, "
    f"{t.plausible[0]}, {t.plausible[1]})"
    for t in LAB_TESTS
)
_ranges = ",\n".join(
    f"({_quote(t.code)}, {_quote(species)}, {low}, {high})" for t in LAB_TESTS for species, (low, high) in t.ref.items()
)

steps = [
    step(
        """
        CREATE TABLE lab_test_catalog (
            test_code      text PRIMARY KEY,
            panel          text NOT NULL CHECK (panel IN ('CBC', 'CHEM')),
            name           text NOT NULL,
            unit           text NOT NULL,
            decimals       smallint NOT NULL,
            plausible_min  double precision NOT NULL,  -- outside these a value is a data error
            plausible_max  double precision NOT NULL,
            CHECK (plausible_min < plausible_max)
        );
        CREATE TABLE lab_reference_ranges (
            test_code  text NOT NULL REFERENCES lab_test_catalog,
            species    text NOT NULL CHECK (species IN ('dog', 'cat')),
            ref_low    double precision NOT NULL,
            ref_high   double precision NOT NULL,
            PRIMARY KEY (test_code, species),
            CHECK (ref_low < ref_high)
        );
        """,
        "DROP TABLE lab_reference_ranges; DROP TABLE lab_test_catalog;",
    ),
    step(
        "INSERT INTO lab_test_catalog (test_code, panel, name, unit, decimals, plausible_min, plausible_max) "
        f"VALUES {_tests};"
        f"INSERT INTO lab_reference_ranges (test_code, species, ref_low, ref_high) VALUES {_ranges};"
    ),
]
