"""The generator: deterministic, exact, inside its window, and realistic enough to analyse."""

from __future__ import annotations

import hashlib
import io
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow.csv as pacsv
import pytest

from careflow_ha.data import clock
from careflow_ha.data.clock import KST, seoul_month_start
from careflow_ha.data.generator import RESULT_COLUMNS, DataSpec, build_world, iter_chunks, month_budgets
from careflow_ha.errors import UsageError

END = datetime(2026, 11, 20, 6, 0, tzinfo=UTC)


def digest(spec: DataSpec) -> tuple[str, int]:
    world = build_world(spec)
    h = hashlib.sha256(repr(world.pets).encode() + repr(world.owners).encode())
    n = 0
    for chunk in iter_chunks(world, spec):
        h.update(chunk.results_csv)
        h.update(repr(chunk.visits).encode())
        n += chunk.n_results
    return h.hexdigest(), n


def test_same_seed_same_bytes_and_another_seed_differs():
    spec = DataSpec(rows=20_000, clinics=3, months=4, seed=11, end=END)
    first, n = digest(spec)
    assert digest(spec) == (first, n)
    assert digest(DataSpec(rows=20_000, clinics=3, months=4, seed=12, end=END))[0] != first


@pytest.mark.parametrize("rows", [1, 17, 50_001])
def test_exactly_the_requested_number_of_results(rows):
    assert digest(DataSpec(rows=rows, clinics=2, months=2, seed=1, end=END))[1] == rows


def results_of(spec: DataSpec):
    """The world and every generated result of ``spec``, as numpy columns."""
    world = build_world(spec)
    csv = b"".join(c.results_csv for c in iter_chunks(world, spec))
    t = pacsv.read_csv(io.BytesIO(csv), read_options=pacsv.ReadOptions(column_names=list(RESULT_COLUMNS)),
                       convert_options=pacsv.ConvertOptions(column_types={"collected_at": "string"}))
    return world, {name: t.column(name).to_numpy(zero_copy_only=False) for name in RESULT_COLUMNS}


@pytest.fixture(scope="module")
def sample():
    """150k results with pet attributes joined in, as numpy columns."""
    spec = DataSpec(rows=150_000, clinics=4, months=12, seed=5, end=END)
    world, cols = results_of(spec)
    pets = {p[0]: p for p in world.pets}
    idx = cols["pet_id"]
    cols["species"] = np.array([pets[i][4] for i in idx])
    cols["breed"] = np.array([pets[i][5] for i in idx])
    birth = np.array([pets[i][7].toordinal() for i in idx])
    cols["age"] = (END.date().toordinal() - birth) / 365.25
    return spec, world, cols


def high_rate(cols, mask) -> float:
    assert mask.sum() > 200, "too few rows for a rate"
    return float((cols["flag"][mask] == "H").mean())


def test_results_stay_inside_the_window_and_never_in_the_future(sample):
    spec, _, cols = sample
    stamps = np.array([s.rstrip("Z") for s in cols["collected_at"]], dtype="datetime64[s]")  # UTC
    assert stamps.min() >= np.datetime64(spec.window_start.astimezone(UTC).replace(tzinfo=None), "s")
    assert stamps.max() <= np.datetime64(END.replace(tzinfo=None), "s")


def test_results_reference_only_known_pets_and_each_pets_clinic(sample):
    _, world, cols = sample
    clinic_of = dict(zip(world.pet_id.tolist(), world.pet_clinic.tolist(), strict=True))
    assert all(clinic_of[p] == c for p, c in zip(cols["pet_id"][:5000], cols["clinic_id"][:5000], strict=True))


def test_overall_abnormal_rate_is_plausible(sample):
    _, _, cols = sample
    abnormal = float((cols["flag"] != "N").mean())
    assert 0.03 < abnormal < 0.20


def test_old_cats_have_more_high_creatinine_than_young_cats(sample):
    _, _, cols = sample
    crea_cat = (cols["test_code"] == "CREA") & (cols["species"] == "cat")
    assert high_rate(cols, crea_cat & (cols["age"] >= 12)) > 3 * high_rate(cols, crea_cat & (cols["age"] < 6))


def test_miniature_schnauzers_have_more_high_triglycerides(sample):
    _, _, cols = sample
    trig_dog = (cols["test_code"] == "TRIG") & (cols["species"] == "dog")
    schnauzer = cols["breed"] == "Miniature Schnauzer"
    assert high_rate(cols, trig_dog & schnauzer) > 3 * high_rate(cols, trig_dog & ~schnauzer)


def test_species_ranges_differ_for_the_same_test(sample):
    """Cats' MCV sits far below dogs' (35.9-53.1 vs 61.6-73.5 fL): ranges are per species."""
    _, _, cols = sample
    mcv = cols["test_code"] == "MCV"
    cat_median = np.median(cols["value"][mcv & (cols["species"] == "cat")])
    dog_median = np.median(cols["value"][mcv & (cols["species"] == "dog")])
    assert 36 < cat_median < 53 < 62 < dog_median < 74


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rows": 0}, "--rows 0"),
        ({"rows": 10, "clinics": 0}, "--clinics 0"),
        ({"rows": 10, "months": 0}, "--months 0"),
        ({"rows": 10, "months": 121}, "--months 121"),
        ({"rows": 10, "seed": -1}, "--seed -1"),
        ({"rows": 10, "end": datetime.now(UTC) + timedelta(days=2)}, "in the future"),
    ],
)
def test_bad_specs_fail_early_naming_the_flag(kwargs, message):
    with pytest.raises(UsageError, match=message.replace("-", r"\-")):
        DataSpec(**kwargs).validated()


def collected_seoul(spec: DataSpec) -> np.ndarray:
    """Every result's collected_at as Seoul wall-clock datetime64 (seconds)."""
    world = build_world(spec)
    csv = b"".join(c.results_csv for c in iter_chunks(world, spec))
    t = pacsv.read_csv(io.BytesIO(csv), read_options=pacsv.ReadOptions(column_names=list(RESULT_COLUMNS)),
                       convert_options=pacsv.ConvertOptions(column_types={"collected_at": "string"}))
    utc = np.array([s.rstrip("Z") for s in t.column("collected_at").to_pylist()], dtype="datetime64[s]")
    return utc + np.timedelta64(9, "h")


#: Window ends where UTC and Seoul disagree about the day or the month, the year end and leap day included.
AWKWARD_ENDS = [
    datetime(2026, 11, 30, 14, 59, 59, tzinfo=UTC),  # Seoul: the last second of November
    datetime(2026, 11, 30, 16, 0, tzinfo=UTC),  # Seoul: 01:00 on 1 December (the data fixtures' shape)
    datetime(2026, 12, 31, 15, 0, tzinfo=UTC),  # Seoul: the first instant of 2027
    datetime(2026, 12, 31, 23, 30, tzinfo=UTC),  # Seoul: 08:30 on 1 January, before the clinics open
    datetime(2028, 2, 29, 6, 0, tzinfo=UTC),  # leap day, mid-afternoon in Seoul
    datetime(2026, 12, 1, 3, 0, tzinfo=UTC),  # the day CI went red
]


@pytest.fixture
def pin_clock(monkeypatch):
    """Pin the generator's clock: ``pin_clock(at)`` makes ``at`` now."""
    return lambda at: monkeypatch.setattr(clock, "now", lambda: at)


@pytest.mark.parametrize("end", AWKWARD_ENDS)
def test_rows_spread_over_every_month_of_the_window_up_to_its_end(end, pin_clock):
    """The whole window is filled, not just its start: the recent months are what an EMR reads most."""
    pin_clock(end)
    spec = DataSpec(rows=30_000, clinics=4, months=6, seed=3, end=end)
    stamps = collected_seoul(spec)
    assert len(stamps) == spec.rows
    start_local = np.datetime64(spec.window_start.replace(tzinfo=None), "s")
    end_local = np.datetime64(end.astimezone(KST).replace(tzinfo=None), "s")
    assert stamps.min() >= start_local and stamps.max() < end_local
    months = stamps.astype("datetime64[M]")
    for k in range(spec.months):
        first = seoul_month_start(end, -k)
        days_in_window = (min(seoul_month_start(end, -k + 1), end) - first).total_seconds() / 86400
        n = int((months == np.datetime64(first.replace(tzinfo=None), "M")).sum())
        if days_in_window >= 1:  # a month the window holds at least a day of gets its share (~1,000 rows/week)
            assert n >= 0.5 * spec.rows / (spec.months * 30.4) * days_in_window, (first, n)
    last_day = np.datetime64((end.astimezone(KST) - timedelta(days=2)).replace(tzinfo=None), "s")
    assert (stamps >= last_day).sum() > 0, "rows reach the window's last days"


def test_month_budgets_grow_gently_and_add_up(pin_clock):
    pin_clock(datetime(2026, 11, 1, tzinfo=KST))
    # The window ends at the first instant of November: November is in it with no time, so no rows.
    spec = DataSpec(rows=1_000_000, clinics=8, months=37, seed=1, end=datetime(2026, 11, 1, tzinfo=KST))
    budgets = month_budgets(spec)
    assert sum(b[2] for b in budgets) == spec.rows
    assert [b[0] for b in budgets] == sorted(b[0] for b in budgets) and len(budgets) == 37
    assert budgets[-1][1:] == (budgets[-1][0], 0), "an empty month gets no rows"
    budgets = budgets[:-1]
    per_day = np.array([rows / ((hi - lo) / 86400) for lo, hi, rows in budgets])
    years_later = per_day[24:36].mean() / per_day[0:12].mean()  # same months, two years apart
    assert 1.12 < years_later < 1.22, "about 8% a year"
    by_month = {datetime.fromtimestamp(lo, KST).month: rate for (lo, _, _), rate in zip(budgets, per_day,
                                                                                            strict=True)}
    assert by_month[5] > by_month[1], "spring is busier than midwinter"


def test_a_window_that_ends_minutes_into_a_month_still_spreads_and_stays_inside(pin_clock):
    end = datetime(2027, 1, 1, 0, 20, tzinfo=KST)  # 20 minutes of January in the window
    pin_clock(end)
    spec = DataSpec(rows=5_000, clinics=2, months=3, seed=9, end=end)
    budgets = month_budgets(spec)
    assert budgets[-1][2] <= 2, "a 20-minute month gets at most a couple of rows"
    stamps = collected_seoul(spec)
    assert stamps.max() < np.datetime64("2027-01-01T00:20:00")
    assert (stamps.astype("datetime64[M]") == np.datetime64("2026-12", "M")).sum() > 1000


@pytest.mark.parametrize(("ahead", "refused"), [(timedelta(0), False), (timedelta(minutes=5), False),
                                                 (timedelta(minutes=5, seconds=1), True)])
def test_a_window_end_is_in_the_future_only_past_the_clock_skew_allowance(ahead, refused, pin_clock):
    now = datetime(2026, 12, 31, 15, 0, tzinfo=UTC)
    pin_clock(now)
    spec = DataSpec(rows=10, end=now + ahead)
    if refused:
        with pytest.raises(UsageError, match="in the future"):
            spec.validated()
    else:
        assert spec.validated().end == now + ahead


@pytest.fixture(scope="module")
def network_sample():
    """A sample at network size: 1,000 clinics (owners then come from the Faker pool), 24 months."""
    spec = DataSpec(rows=400_000, clinics=1000, months=24, seed=8, end=END)
    world, cols = results_of(spec)
    species = np.array([p[4] for p in world.pets])
    breed = np.array([p[5] for p in world.pets])
    birth = np.array([p[7].toordinal() for p in world.pets])
    idx = cols["pet_id"] - 1  # pet ids are dense from 1
    cols["species"], cols["breed"] = species[idx], breed[idx]
    cols["age"] = (END.date().toordinal() - birth[idx]) / 365.25
    return spec, world, cols


def test_age_and_breed_patterns_hold_at_network_scale(network_sample):
    _, _, cols = network_sample
    crea_cat = (cols["test_code"] == "CREA") & (cols["species"] == "cat")
    assert high_rate(cols, crea_cat & (cols["age"] >= 12)) > 3 * high_rate(cols, crea_cat & (cols["age"] < 6))
    trig_dog = (cols["test_code"] == "TRIG") & (cols["species"] == "dog")
    schnauzer = cols["breed"] == "Miniature Schnauzer"
    assert high_rate(cols, trig_dog & schnauzer) > 3 * high_rate(cols, trig_dog & ~schnauzer)
    assert 0.03 < float((cols["flag"] != "N").mean()) < 0.20


def test_clinics_of_a_network_have_results_and_big_hospitals_more(network_sample):
    spec, world, cols = network_sample
    per_clinic = np.bincount(cols["clinic_id"], minlength=spec.clinics + 1)[1:]
    assert (per_clinic > 0).mean() > 0.95, "nearly every clinic sees patients, even in a 400k-row sample"
    assert per_clinic[:10].mean() > 3 * per_clinic[-100:].mean(), "a few big hospitals, many small clinics"
    clinic_of = world.pet_clinic
    assert (clinic_of[cols["pet_id"] - 1] == cols["clinic_id"]).all()


def test_owners_above_the_faker_pool_are_complete_and_varied(network_sample):
    _, world, _ = network_sample
    owners = world.owners
    assert len(owners) > 2000 and [o[0] for o in owners] == list(range(1, len(owners) + 1))
    assert all(o[2] and o[4] and len(o[3]) == 13 and o[3].startswith("010-") for o in owners)
    assert len({o[2] for o in owners}) > 1000, "names come from a pool of Faker draws"
    emails = [o[5] for o in owners if o[5]]
    assert 0.5 < len(emails) / len(owners) < 0.7 and len(set(emails)) == len(emails)


def test_chunks_generated_ahead_are_the_same_and_a_dead_generator_is_an_error_not_a_hang(monkeypatch):
    import os
    import signal

    from careflow_ha.data import generator
    from careflow_ha.errors import CommandFailed

    spec = DataSpec(rows=30_000, clinics=2, months=3, seed=4, end=END)
    world = build_world(spec)
    assert [c.results_csv for c in generator.iter_chunks_ahead(world, spec)] == \
        [c.results_csv for c in iter_chunks(world, spec)]

    def produce_then_die(queue, *_args) -> None:  # the child is killed from outside (say, the OOM killer)
        os.kill(os.getpid(), signal.SIGKILL)

    monkeypatch.setattr(generator, "_produce", produce_then_die)
    with pytest.raises(CommandFailed, match="generator process died"):
        list(generator.iter_chunks_ahead(world, spec))
