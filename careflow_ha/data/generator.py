"""Deterministic synthetic EMR data for a Korean veterinary clinic network.

The small tables (clinics, vets, owners, pets) are built in memory (Faker's
ko_KR locale for people and addresses). The fact table is streamed: the rows
are first budgeted to the window's Asia/Seoul months (by each month's length,
the network's growth and the season), then each month's visits are generated
inside that month in chunks, each from its own seeded random stream, and each
chunk becomes one CSV block for COPY. So every month of the window gets its
share, the most recent ones included (an EMR reads those most), nothing holds
the fact table in memory, and the same (seed, window end) always yields the
same bytes.

Realism, so that analyses show something:
- species and breed mix as seen in Korean clinics, ages from a gamma law;
- values drawn around each species' reference range (about 2-3% flagged in
  healthy animals);
- conditions whose odds depend on species, breed and age, each shifting its
  own analytes: chronic kidney disease (old cats, more in Persian / Scottish
  Fold / British Shorthair: creatinine, BUN, SDMA, phosphorus up, anaemia),
  hyperlipidaemia (Miniature Schnauzer: triglycerides, cholesterol),
  hyperadrenocorticism (older small-breed dogs: ALKP, ALT), diabetes,
  hyperthyroidism (old cats: ALT, ALKP), portosystemic shunt (young Maltese
  and Yorkshire Terriers), plus acute inflammation at some visits and
  juvenile ALKP/phosphorus.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from careflow_ha.data import clock
from careflow_ha.data.catalog import BREEDS, LAB_TESTS, PANELS, SPECIES, SPECIES_SHARE
from careflow_ha.data.clock import KST, seoul_month_start
from careflow_ha.errors import CommandFailed, UsageError

#: Visits per chunk: about 50,000 lab results, a few MB of CSV.
VISITS_PER_CHUNK = 3000
#: Mean results per visit: CBC (9 tests) in 75% of visits, chemistry (12) in 85%.
MEAN_RESULTS_PER_VISIT = 0.75 * len(PANELS["CBC"]) + 0.85 * len(PANELS["CHEM"])
#: Visits grow as the network gains clients: about 8% a year.
ANNUAL_GROWTH = 0.08
#: Seasonality of visits, +-12% around the year: spring (vaccination and heartworm season in Korea,
#: April-May) is busiest, midwinter quietest.
SEASON_AMPLITUDE = 0.12
SEASON_PEAK_MONTH = 4.5
MAX_ROWS = 200_000_000
MAX_CLINICS = 2000  # a large clinic network; the bench goes up to 1,000
MAX_MONTHS = 120

TEST_CODES = np.array([t.code for t in LAB_TESTS])
_CODE_INDEX = {t.code: i for i, t in enumerate(LAB_TESTS)}
_REF_LOW = np.array([[t.ref[s][0] for t in LAB_TESTS] for s in SPECIES])
_REF_HIGH = np.array([[t.ref[s][1] for t in LAB_TESTS] for s in SPECIES])
_PLAUS_LOW = np.array([t.plausible[0] for t in LAB_TESTS])
_PLAUS_HIGH = np.array([t.plausible[1] for t in LAB_TESTS])
_DECIMALS = np.array([t.decimals for t in LAB_TESTS])
_CBC = np.array([_CODE_INDEX[c] for c in PANELS["CBC"]])
_CHEM = np.array([_CODE_INDEX[c] for c in PANELS["CHEM"]])

#: condition -> {test: (factor at mild, factor at severe)}
CONDITIONS: dict[str, dict[str, tuple[float, float]]] = {
    "ckd": {"CREA": (1.5, 4.0), "BUN": (1.4, 3.5), "SDMA": (1.6, 3.5), "PHOS": (1.1, 1.9),
            "HCT": (0.95, 0.65), "HGB": (0.95, 0.65), "RBC": (0.95, 0.7)},
    "hyperlipidaemia": {"TRIG": (2.0, 8.0), "CHOL": (1.3, 2.2)},
    "cushings": {"ALKP": (2.0, 9.0), "ALT": (1.2, 3.0), "CHOL": (1.2, 1.7), "GLU": (1.0, 1.3)},
    "diabetes": {"GLU": (2.2, 4.5), "CHOL": (1.1, 1.6), "TRIG": (1.2, 2.5)},
    "hyperthyroid": {"ALT": (1.5, 4.0), "ALKP": (1.3, 3.0)},
    "shunt": {"ALT": (1.5, 4.0), "ALB": (0.85, 0.6), "BUN": (0.7, 0.4), "TBIL": (1.5, 3.0)},
}
CONDITION_NAMES = tuple(CONDITIONS)
_EFFECT = np.ones((len(CONDITIONS), 2, len(LAB_TESTS)))  # [condition, mild/severe, test]
for _ci, _effects in enumerate(CONDITIONS.values()):
    for _code, (_mild, _severe) in _effects.items():
        _EFFECT[_ci, 0, _CODE_INDEX[_code]] = _mild
        _EFFECT[_ci, 1, _CODE_INDEX[_code]] = _severe

_REASONS = {
    None: ("정기 건강검진 (annual wellness)", "예방접종 전 검사 (pre-vaccination check)",
           "수술 전 검사 (pre-anaesthetic bloodwork)", "구토/설사 (vomiting, diarrhoea)", "피부 가려움 (pruritus)",
           "식욕 부진 (inappetence)"),
    "ckd": ("다음/다뇨, 체중 감소 (PU/PD, weight loss)", "신장 수치 재검 (renal recheck)"),
    "hyperlipidaemia": ("복통, 구토 (abdominal pain, vomiting)", "지질 재검 (lipid recheck)"),
    "cushings": ("다음/다식, 복부 팽만 (PU/PP, pot belly)", "탈모 (alopecia)"),
    "diabetes": ("다음/다뇨, 체중 감소 (PU/PD, weight loss)", "혈당 곡선 (glucose curve)"),
    "hyperthyroid": ("체중 감소, 다식 (weight loss, polyphagia)", "갑상선 재검 (thyroid recheck)"),
    "shunt": ("발작, 성장 지연 (seizures, poor growth)", "간 수치 재검 (liver recheck)"),
}
_ASSESSMENT = {
    None: "신체검사 특이사항 없음. BCS 5/9. Plan: routine follow-up.",
    "ckd": "Azotaemia, dehydration 5%. Suspect CKD (IRIS staging pending). Plan: renal diet, SQ fluids, recheck 4 wk.",
    "hyperlipidaemia": "Lipaemic sample. Suspect primary hyperlipidaemia. Plan: low-fat diet, recheck TG 6 wk.",
    "cushings": "Hepatomegaly, thin skin. Suspect HAC. Plan: ACTH stim / LDDST, abdominal US.",
    "diabetes": "Hyperglycaemia, glucosuria. Suspect DM. Plan: insulin trial, glucose curve 1 wk.",
    "hyperthyroid": "Palpable thyroid nodule, tachycardia. Suspect hyperthyroidism. Plan: T4, BP.",
    "shunt": "Microhepatia suspected. Plan: bile acids pre/post, abdominal US, low-protein diet.",
}
_PET_NAMES = ("초코", "콩이", "보리", "코코", "두부", "별이", "뭉치", "나비", "까미", "하루", "모카", "루이", "사랑",
              "해피", "구름", "호두", "밤이", "설이", "치즈", "망고", "몽이", "제리", "토리", "레오", "단비", "감자",
              "쿠키", "꼬미")
_CITIES = ("서울 강남", "서울 마포", "성남 분당", "부산 해운대", "대구 수성", "인천 송도", "대전 유성",
           "광주 상무", "수원 광교", "고양 일산", "울산 남구", "제주 노형", "서울 송파", "창원 성산", "전주 덕진",
           "청주 흥덕")
_BREED_WEIGHT_KG = {"Maltese": 3.2, "Poodle": 4.0, "Pomeranian": 2.8, "Mixed": 8.0, "Shih Tzu": 6.0,
                    "Bichon Frise": 6.0, "Chihuahua": 2.2, "Yorkshire Terrier": 2.8, "Jindo": 18.0,
                    "Miniature Schnauzer": 7.0, "Welsh Corgi": 12.0, "Golden Retriever": 29.0}


@dataclass(frozen=True)
class DataSpec:
    """What to generate: ``rows`` lab results over ``months`` months up to ``end``, for ``clinics`` clinics."""

    rows: int
    clinics: int = 8
    months: int = 12
    seed: int = 42
    end: datetime | None = None  # default: now, to the second; pin it for byte-identical output

    def validated(self) -> DataSpec:
        """Check the numbers early, naming the fix; fill ``end`` with now."""
        if not 1 <= self.rows <= MAX_ROWS:
            raise UsageError(f"--rows {self.rows} is out of range; use 1 to {MAX_ROWS:,}")
        if not 1 <= self.clinics <= MAX_CLINICS:
            raise UsageError(f"--clinics {self.clinics} is out of range; use 1 to {MAX_CLINICS}")
        if not 1 <= self.months <= MAX_MONTHS:
            raise UsageError(f"--months {self.months} is out of range; use 1 to {MAX_MONTHS}")
        if self.seed < 0:
            raise UsageError(f"--seed {self.seed} is negative; use a non-negative integer")
        now = clock.now()
        end = self.end or now
        if end.tzinfo is None:
            raise UsageError("the window end must carry a time zone")
        if end > now + timedelta(minutes=5):
            raise UsageError(f"the window end {end.isoformat()} is in the future; lab results cannot be")
        return DataSpec(self.rows, self.clinics, self.months, self.seed, end)

    @property
    def window_start(self) -> datetime:
        """First instant of the first month (Asia/Seoul) of the window."""
        assert self.end is not None
        return seoul_month_start(self.end, -(self.months - 1))

    @property
    def n_pets(self) -> int:
        visits = self.rows / MEAN_RESULTS_PER_VISIT
        # about one visit per pet per quarter
        return max(10 * self.clinics, int(visits / max(1.0, self.months / 3)))


@dataclass
class World:
    """The dimension tables, as COPY-ready rows plus the numpy arrays the fact stream needs."""

    clinics: list[tuple]
    vets: list[tuple]
    owners: list[tuple]
    pets: list[tuple]
    pet_id: np.ndarray
    pet_clinic: np.ndarray
    pet_species: np.ndarray  # index into SPECIES
    pet_birth_s: np.ndarray  # birth, epoch seconds
    pet_conditions: np.ndarray  # bool [pet, condition]
    pet_severity: np.ndarray  # 0..1 per pet
    pet_weight: np.ndarray  # relative visit likelihood per pet
    vet_first: np.ndarray  # per clinic id: first vet id
    vet_count: np.ndarray  # per clinic id: number of vets


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def condition_odds(species: np.ndarray, breed: np.ndarray, age: np.ndarray, sex: np.ndarray) -> np.ndarray:
    """Probability of each condition per pet: [pet, condition]. Species 0 = dog, 1 = cat."""
    dog, cat = species == 0, species == 1
    p = np.zeros((len(species), len(CONDITIONS)))
    pkd = np.isin(breed, ["Persian", "Scottish Fold", "British Shorthair"])
    p[:, 0] = np.where(cat, 0.02 + 0.33 * _sigmoid((age - 12.0) / 1.8), 0.01 + 0.07 * _sigmoid((age - 11.0) / 1.5))
    p[:, 0] *= np.where(pkd, 1.8, 1.0)
    schnauzer = breed == "Miniature Schnauzer"
    p[:, 1] = np.where(schnauzer, np.where(age > 3, 0.40, 0.10), np.where(dog, 0.03, 0.01))
    small = np.isin(breed, ["Maltese", "Poodle", "Pomeranian", "Yorkshire Terrier", "Shih Tzu", "Bichon Frise"])
    p[:, 2] = np.where(dog & (age >= 7), 0.04 * np.where(small, 2.5, 1.0), 0.0)
    diab_breed = np.isin(breed, ["Miniature Schnauzer", "Poodle", "Bichon Frise"])
    p[:, 3] = np.where(dog, (0.01 + 0.03 * (age > 8)) * np.where(diab_breed, 3.0, 1.0),
                       (0.005 + 0.04 * (age > 8)) * np.where(sex == "MN", 1.5, 1.0))
    p[:, 4] = np.where(cat & (age >= 10), np.where(age >= 14, 0.20, 0.10) * np.where(breed == "Siamese", 0.5, 1.0), 0)
    p[:, 5] = np.where(np.isin(breed, ["Maltese", "Yorkshire Terrier"]) & (age < 3), 0.04, 0.0)
    return np.clip(p, 0.0, 0.95)


def build_world(spec: DataSpec) -> World:
    """Clinics, vets, owners and pets for ``spec`` (deterministic for its seed)."""
    from faker import Faker

    spec = spec.validated()
    assert spec.end is not None
    rng = np.random.default_rng([spec.seed, 0])
    fake = Faker("ko_KR")
    fake.seed_instance(spec.seed)
    end_date = spec.end.astimezone(KST).date()

    clinics = []
    for cid in range(1, spec.clinics + 1):
        city = _CITIES[(cid - 1) % len(_CITIES)]
        suffix = "" if cid <= len(_CITIES) else f" {cid // len(_CITIES) + 1}호점"
        clinics.append((cid, f"케어플로우 {city} 동물메디컬센터{suffix}", city, fake.address(), fake.phone_number(),
                        end_date - timedelta(days=int(rng.integers(400, 6000)))))

    vets, vet_first, vet_count = [], np.zeros(spec.clinics + 1, dtype=np.int64), np.zeros(spec.clinics + 1, np.int64)
    specialties = ("general", "internal medicine", "surgery", "dermatology", "cardiology", "ophthalmology")
    vid = 1
    for cid in range(1, spec.clinics + 1):
        n = int(rng.integers(3, 8))
        vet_first[cid], vet_count[cid] = vid, n
        for _ in range(n):
            vets.append((vid, cid, fake.name(), f"KVL-{spec.seed % 1000:03d}-{vid:06d}",
                         specialties[int(rng.integers(len(specialties)))]))
            vid += 1

    n_pets = spec.n_pets
    n_owners = max(spec.clinics, int(n_pets / 1.4))
    clinic_weight = 1.0 / np.sqrt(np.arange(1, spec.clinics + 1))  # a few big hospitals, many small ones
    owner_clinic = rng.choice(np.arange(1, spec.clinics + 1), size=n_owners, p=clinic_weight / clinic_weight.sum())
    owners = _owners(fake, rng, owner_clinic)

    pet_owner = rng.integers(1, n_owners + 1, size=n_pets)
    pet_clinic = owner_clinic[pet_owner - 1]
    species = (rng.random(n_pets) >= SPECIES_SHARE["dog"]).astype(np.int64)
    breed = np.empty(n_pets, dtype=object)
    for si, sname in enumerate(SPECIES):
        names = [b for b, _ in BREEDS[sname]]
        share = np.array([w for _, w in BREEDS[sname]])
        mask = species == si
        breed[mask] = rng.choice(names, size=int(mask.sum()), p=share / share.sum())
    age = np.where(species == 0, rng.gamma(2.2, 3.0, n_pets), rng.gamma(2.0, 3.4, n_pets)).clip(0.15, 20.5)
    sex = rng.choice(np.array(["M", "F", "MN", "FS"]), size=n_pets, p=[0.18, 0.17, 0.33, 0.32])
    odds = condition_odds(species, breed, age, sex)
    conditions = rng.random(odds.shape) < odds
    severity = rng.random(n_pets)
    birth = [end_date - timedelta(days=int(a * 365.25)) for a in age]
    base_weight = np.array([_BREED_WEIGHT_KG.get(b, 4.2) for b in breed])
    weight = (base_weight * np.minimum(1.0, 0.35 + age) * rng.lognormal(0, 0.15, n_pets)).round(2).clip(0.2, 90)
    names = rng.choice(np.array(_PET_NAMES), size=n_pets)
    pets = [(pid, int(pet_owner[pid - 1]), int(pet_clinic[pid - 1]), str(names[pid - 1]),
             SPECIES[int(species[pid - 1])], str(breed[pid - 1]), str(sex[pid - 1]), birth[pid - 1],
             float(weight[pid - 1])) for pid in range(1, n_pets + 1)]

    # Old and sick pets come more often.
    likelihood = (1.0 + age / 4.0) * (1.0 + 1.5 * conditions.any(axis=1))
    birth_s = np.array([(datetime(b.year, b.month, b.day, tzinfo=KST)).timestamp() for b in birth], dtype=np.int64)
    return World(clinics=clinics, vets=vets, owners=owners, pets=pets, pet_id=np.arange(1, n_pets + 1),
                 pet_clinic=pet_clinic.astype(np.int64), pet_species=species, pet_birth_s=birth_s,
                 pet_conditions=conditions, pet_severity=severity,
                 pet_weight=likelihood, vet_first=vet_first, vet_count=vet_count)


@dataclass
class Chunk:
    """One slice of the fact stream: visit rows and the matching lab results as CSV for COPY."""

    index: int
    visits: list[tuple]
    results_csv: bytes
    n_results: int


#: Column order of ``Chunk.results_csv`` (COPY ... (these columns) FROM STDIN (FORMAT csv)).
RESULT_COLUMNS = ("clinic_id", "collected_at", "pet_id", "visit_id", "test_code", "value", "flag")
VISIT_COLUMNS = ("visit_id", "clinic_id", "pet_id", "vet_id", "visited_at", "reason", "notes")


def month_budgets(spec: DataSpec) -> list[tuple[int, int, int]]:
    """``(start_s, end_s, rows)`` per Asia/Seoul month of the window, oldest first; rows add up to ``spec.rows``.

    A month's share is its length inside the window (the last month ends at ``spec.end``) times the growth
    since the window's start times its season. Largest-remainder rounding keeps the total exact.
    """
    spec = spec.validated()
    assert spec.end is not None
    end_s = int(spec.end.timestamp())
    starts = [int(seoul_month_start(spec.window_start, k).timestamp()) for k in range(spec.months)]
    bounds = [(lo, min(hi, end_s)) for lo, hi in zip(starts, [*starts[1:], end_s], strict=True)]
    weights = []
    for lo, hi in bounds:
        years = (lo - starts[0]) / (365.25 * 86400)
        month = datetime.fromtimestamp(lo, KST).month
        season = 1.0 + SEASON_AMPLITUDE * np.cos(2 * np.pi * (month - SEASON_PEAK_MONTH) / 12)
        weights.append(max(0, hi - lo) * (1.0 + ANNUAL_GROWTH) ** years * season)
    share = np.array(weights) / sum(weights) * spec.rows
    rows = np.floor(share).astype(np.int64)
    for i in np.argsort(-(share - rows), kind="stable")[: spec.rows - int(rows.sum())]:
        rows[i] += 1
    return [(lo, hi, int(n)) for (lo, hi), n in zip(bounds, rows, strict=True)]


def iter_chunks(world: World, spec: DataSpec, first_visit_id: int = 1) -> Iterator[Chunk]:
    """Stream the visits and lab results month by month, at most ``VISITS_PER_CHUNK`` visits at a time.

    Exactly ``spec.rows`` results in all, each month's budget inside that month (see ``month_budgets``).
    """
    chunk_no, next_visit = 0, first_visit_id
    for month_start_s, month_end_s, budget in month_budgets(spec):
        # Only pets already born by the month's end can visit in it.
        weight = np.where(world.pet_birth_s < month_end_s, world.pet_weight, 0.0)
        if budget == 0 or weight.sum() == 0:
            continue
        cdf = np.cumsum(weight) / weight.sum()
        remaining = budget
        while remaining > 0:
            # A little more than the budget needs (results per visit vary); the excess is cut at random.
            visits = min(VISITS_PER_CHUNK, int(remaining / MEAN_RESULTS_PER_VISIT * 1.25) + 8)
            chunk = _make_chunk(world, cdf, spec.seed, chunk_no, next_visit, visits, month_start_s, month_end_s,
                                remaining)
            remaining -= chunk.n_results
            next_visit += len(chunk.visits)
            chunk_no += 1
            yield chunk


def _make_chunk(world: World, cdf: np.ndarray, seed: int, chunk_no: int, first_visit: int, n: int,
                start_s: int, end_s: int, budget: int) -> Chunk:
    """``n`` visits (fewer if ``budget`` results are reached) between ``start_s`` and ``end_s`` (exclusive)."""
    rng = np.random.default_rng([seed, 1, chunk_no])
    pet_idx = np.searchsorted(cdf, rng.random(n), side="right").clip(0, len(world.pet_id) - 1)
    # Visit day uniform between max(month start, birth) and the month's end; clinic hours 09:00-20:00 KST.
    lo = np.maximum(start_s, world.pet_birth_s[pet_idx])
    day0 = (lo + 9 * 3600) // 86400
    day1 = (end_s - 1 + 9 * 3600) // 86400
    day = day0 + (rng.random(n) * (day1 - day0 + 1)).astype(np.int64)
    # KST midnight of ``day`` is day * 86400 - 9 h (UTC); opening at 09:00 KST cancels that out.
    visited = day * 86400 + (rng.beta(2.0, 2.5, n) * 11 * 3600).astype(np.int64)
    visited = np.clip(visited, lo, end_s - 1)  # the month (or the window) never spills
    inflamed = rng.random(n) < 0.10
    has_cbc = rng.random(n) < 0.75
    has_chem = rng.random(n) < 0.85
    has_cbc |= ~(has_cbc | has_chem)
    n_tests = has_cbc * len(_CBC) + has_chem * len(_CHEM)
    vet_pick = rng.random(n)
    # Exactly ``budget`` results: keep whole visits, trim the last one. The visits are still in random
    # order here, so the cut drops a random subset of the month, never its latest days.
    cum = np.cumsum(n_tests)
    n = min(n, int(np.searchsorted(cum, budget, side="left")) + 1 if cum[-1] >= budget else n)
    order = np.argsort(visited[:n], kind="stable")  # then results arrive in time order
    pet_idx, visited, inflamed = pet_idx[order], visited[order], inflamed[order]
    has_cbc, has_chem, n_tests, vet_pick = has_cbc[order], has_chem[order], n_tests[order], vet_pick[order]
    clinic = world.pet_clinic[pet_idx]
    vet = world.vet_first[clinic] + (vet_pick * world.vet_count[clinic]).astype(np.int64)

    ordered = np.zeros((n, len(LAB_TESTS)), dtype=bool)  # [visit, test]: which tests each visit ran
    ordered[:, _CBC] = has_cbc[:, None]
    ordered[:, _CHEM] = has_chem[:, None]
    visit_of_row, test_of_row = np.nonzero(ordered)
    if len(visit_of_row) > budget:
        visit_of_row, test_of_row = visit_of_row[:budget], test_of_row[:budget]
    m = len(visit_of_row)

    pets = pet_idx[visit_of_row]
    sp = world.pet_species[pets]
    low, high = _REF_LOW[sp, test_of_row], _REF_HIGH[sp, test_of_row]
    z = rng.standard_normal(m)
    positive = low > 0
    log_mid = (np.log(np.where(positive, low, 1.0)) + np.log(high)) / 2
    log_sd = (np.log(high) - np.log(np.where(positive, low, 1.0))) / 4
    value = np.where(positive, np.exp(log_mid + z * log_sd), (low + high) / 2 + z * (high - low) / 4)
    # Condition effects: factor between mild and severe by the pet's severity.
    sev = world.pet_severity[pets]
    for ci in range(len(CONDITIONS)):
        affected = world.pet_conditions[pets, ci]
        if affected.any():
            mild, severe = _EFFECT[ci, 0, test_of_row], _EFFECT[ci, 1, test_of_row]
            value = np.where(affected, value * (mild + sev * (severe - mild)), value)
    infl = inflamed[visit_of_row]
    wbc_like = np.isin(test_of_row, [_CODE_INDEX["WBC"], _CODE_INDEX["NEU"]])
    value = np.where(infl & wbc_like, value * rng.uniform(1.4, 3.0, m), value)
    age_days = (visited[visit_of_row] - world.pet_birth_s[pets]) / 86400
    juvenile = (age_days < 365) & np.isin(test_of_row, [_CODE_INDEX["ALKP"], _CODE_INDEX["PHOS"]])
    value = np.where(juvenile, value * np.where(test_of_row == _CODE_INDEX["ALKP"], 2.2, 1.3), value)
    value = value.clip(_PLAUS_LOW[test_of_row], _PLAUS_HIGH[test_of_row])
    scale = 10.0 ** _DECIMALS[test_of_row]
    value = np.round(value * scale) / scale
    flag = np.where(value < low, "L", np.where(value > high, "H", "N"))

    collected = np.minimum(visited[visit_of_row] + (rng.random(m) * 1800).astype(np.int64), end_s - 1)
    visit_ids = first_visit + np.arange(n)
    table = pa.table({
        "clinic_id": clinic[visit_of_row],
        "collected_at": _utc_text(collected),
        "pet_id": world.pet_id[pets],
        "visit_id": visit_ids[visit_of_row],
        "test_code": TEST_CODES[test_of_row],
        "value": value,
        "flag": flag,
    })
    buf = io.BytesIO()
    pacsv.write_csv(table, buf, pacsv.WriteOptions(include_header=False, quoting_style="none"))

    # Reason and notes depend only on the pet's set of conditions (a 6-bit combination), the visit's
    # reason draw and inflammation: looked up per visit, not rebuilt (this loop was the generator's hot spot).
    combo = world.pet_conditions[pet_idx] @ _COMBO_BITS
    reason_pick = rng.random(n)
    visits = [(vid, cid, pid, vt, datetime.fromtimestamp(ts, UTC), *_visit_text(cb, rp < 0.7, int(rp * 1000), inf))
              for vid, cid, pid, vt, ts, cb, rp, inf in zip(
                  visit_ids.tolist(), clinic.tolist(), world.pet_id[pet_idx].tolist(), vet.tolist(),
                  visited[:n].tolist(), combo.tolist(), reason_pick.tolist(), inflamed.tolist(), strict=True)]
    return Chunk(index=chunk_no, visits=visits, results_csv=buf.getvalue(), n_results=m)


_COMBO_BITS = 1 << np.arange(len(CONDITIONS))


@functools.lru_cache(maxsize=1)
def _times_of_day() -> pa.Array:
    return pa.array([f"{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}Z" for s in range(86400)])


def _utc_text(epoch_s: np.ndarray) -> pa.Array:
    """Epoch seconds as ``YYYY-MM-DDTHH:MM:SSZ`` (what ``np.datetime_as_string`` gives, 20x faster):
    the few distinct days and the times of day are looked up, then joined, all inside Arrow."""
    day, second = np.divmod(epoch_s, 86400)
    first = int(day.min()) if len(day) else 0
    last = int(day.max(initial=first))
    days = pa.array([(date(1970, 1, 1) + timedelta(days=d)).isoformat() for d in range(first, last + 1)])
    return pc.binary_join_element_wise(pc.take(days, pa.array(day - first)), pc.take(_times_of_day(), pa.array(second)),
                                       "T")


@functools.cache
def _visit_text(combo: int, by_condition: bool, pick: int, inflamed: bool) -> tuple[str, str]:
    """(reason, notes) of a visit by a pet with the conditions in bit set ``combo``."""
    names = [CONDITION_NAMES[c] for c in range(len(CONDITIONS)) if combo >> c & 1]
    key = names[0] if names and by_condition else None
    choices = _REASONS[key]
    notes = " ".join(_ASSESSMENT[k] for k in (names or [None]))
    if inflamed:
        notes += " Fever 39.8C, leukocytosis: antibiotics 7 d."
    return choices[pick % len(choices)], notes


#: Distinct people and addresses drawn from Faker, then recombined: Faker costs about 1 ms a call, which
#: for the 200k owners of a 100M-row network would be most of the run.
FAKER_POOL = 2000


def _owners(fake, rng: np.random.Generator, owner_clinic: np.ndarray) -> list[tuple]:
    """Owners with Korean names, phones, addresses and (60% of them) e-mail addresses.

    Up to ``FAKER_POOL`` owners, each is drawn from Faker directly; above it, names, addresses and e-mail
    user names come from a pool of that many Faker draws, combined at random (so about as varied as
    the real thing at any size), and phones are random 010 numbers.
    """
    n = len(owner_clinic)
    if n <= FAKER_POOL:
        return [(oid, int(owner_clinic[oid - 1]), fake.name(), fake.phone_number(), fake.address(),
                 fake.free_email() if rng.random() < 0.6 else None) for oid in range(1, n + 1)]
    names = [fake.name() for _ in range(FAKER_POOL)]
    addresses = [fake.address() for _ in range(FAKER_POOL)]
    emails = [fake.free_email() for _ in range(FAKER_POOL)]
    pick = rng.integers(0, FAKER_POOL, size=(n, 3)).tolist()
    phone = rng.integers(0, 10**8, size=n).tolist()
    has_email = (rng.random(n) < 0.6).tolist()
    return [(oid, clinic, names[a], f"010-{ph // 10**4:04d}-{ph % 10**4:04d}", addresses[b],
             (f"{oid}.{emails[c]}" if e else None))
            for oid, clinic, (a, b, c), ph, e in zip(range(1, n + 1), owner_clinic.tolist(), pick, phone, has_email,
                                                      strict=True)]


def months_between(first: date, last: date) -> list[date]:
    """First days of every month from ``first`` to ``last`` inclusive."""
    out, y, m = [], first.year, first.month
    while (y, m) <= (last.year, last.month):
        out.append(date(y, m, 1))
        m += 1
        if m > 12:
            y, m = y + 1, 1
    return out


def iter_chunks_ahead(world: World, spec: DataSpec, first_visit_id: int = 1, depth: int = 4) -> Iterator[Chunk]:
    """``iter_chunks``, generated in a forked child process up to ``depth`` chunks ahead.

    The same chunks in the same order; the caller's COPY and the generation then use both cores
    instead of taking turns. Falls back to ``iter_chunks`` where fork is unavailable.
    """
    import multiprocessing as mp
    import queue as queue_module

    if "fork" not in mp.get_all_start_methods():
        yield from iter_chunks(world, spec, first_visit_id)
        return
    ctx = mp.get_context("fork")
    queue = ctx.Queue(maxsize=depth)
    child = ctx.Process(target=_produce, args=(queue, world, spec, first_visit_id), daemon=True)
    child.start()
    try:
        while True:
            try:
                item = queue.get(timeout=2.0)
            except queue_module.Empty:
                # A child killed from outside (the OOM killer) would leave us waiting forever.
                if not child.is_alive():
                    raise CommandFailed(f"the data generator process died (exit code {child.exitcode}); "
                                        "the load is one transaction, so nothing of it was committed") from None
                continue
            if item is None:
                break
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        if child.is_alive():
            child.kill()
        child.join()


def _produce(queue, world: World, spec: DataSpec, first_visit_id: int) -> None:  # noqa: ANN001 - mp.Queue
    try:
        for chunk in iter_chunks(world, spec, first_visit_id):
            queue.put(chunk)
        queue.put(None)
    except BaseException as exc:  # handed to the consumer, which raises it
        queue.put(exc)
