-- EMR dimensions (clinics, vets, owners, pets) and visits.
-- Ids are natural to the generator and importers (no sequences): a data set
-- generated with a seed has the same ids everywhere it is loaded.

CREATE TABLE clinics (
    clinic_id  integer PRIMARY KEY CHECK (clinic_id > 0),
    name       text NOT NULL UNIQUE,
    city       text NOT NULL,
    address    text NOT NULL,
    phone      text NOT NULL,
    opened_on  date NOT NULL
);

CREATE TABLE vets (
    vet_id      integer PRIMARY KEY,
    clinic_id   integer NOT NULL REFERENCES clinics,
    name        text NOT NULL,
    license_no  text NOT NULL UNIQUE,
    specialty   text NOT NULL
);
CREATE INDEX vets_clinic_idx ON vets (clinic_id);

CREATE TABLE owners (
    owner_id   bigint PRIMARY KEY,
    clinic_id  integer NOT NULL REFERENCES clinics,  -- the clinic where the owner registered
    name       text NOT NULL,
    phone      text NOT NULL,
    address    text NOT NULL,
    email      text
);
CREATE INDEX owners_clinic_idx ON owners (clinic_id);

CREATE TABLE pets (
    pet_id      bigint PRIMARY KEY,
    owner_id    bigint NOT NULL REFERENCES owners,
    clinic_id   integer NOT NULL REFERENCES clinics,  -- home clinic; lab_results carries it for pruning
    name        text NOT NULL,
    species     text NOT NULL CHECK (species IN ('dog', 'cat')),
    breed       text NOT NULL,
    sex         text NOT NULL CHECK (sex IN ('M', 'F', 'MN', 'FS')),  -- MN/FS: neutered / spayed
    birth_date  date NOT NULL,
    weight_kg   numeric(5, 2) CHECK (weight_kg > 0)
);
CREATE INDEX pets_owner_idx ON pets (owner_id);
CREATE INDEX pets_clinic_idx ON pets (clinic_id);

-- Visits are ~1/17 of lab_results (one visit carries one or two panels), so
-- they stay unpartitioned: see partitioning/DECISION.md.
CREATE TABLE visits (
    visit_id    bigint PRIMARY KEY,
    clinic_id   integer NOT NULL REFERENCES clinics,
    pet_id      bigint NOT NULL REFERENCES pets,
    vet_id      integer NOT NULL REFERENCES vets,
    visited_at  timestamptz NOT NULL,
    reason      text NOT NULL,
    notes       text NOT NULL  -- free-text clinical notes
);
CREATE INDEX visits_pet_idx ON visits (pet_id, visited_at);
CREATE INDEX visits_clinic_time_idx ON visits (clinic_id, visited_at);
