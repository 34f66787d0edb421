-- 0002 licensing: the licence registry, credentials and the transactional outbox.
--
-- History is never overwritten: a licence's terms live in append-only version rows (each a
-- full snapshot, not a patch), so "the terms in force at t" is a lookup forever after and a
-- statement can be recomputed years later from exactly what was agreed. Triggers below
-- refuse UPDATE and DELETE on the version tables. Suspension windows are the one mutable
-- history: a reinstatement closes an open window (sets ends_at and who reinstated it).

CREATE FUNCTION residuals_forbid_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'integrity_constraint_violation';
END
$$;

-- People whose likeness is licensed.
CREATE TABLE talents (
    talent_id    text        PRIMARY KEY CHECK (talent_id <> ''),
    display_name text        NOT NULL DEFAULT '',
    created_at   timestamptz NOT NULL DEFAULT now(),
    created_by   text        NOT NULL
);

-- A digital likeness belongs to exactly one talent.
CREATE TABLE avatars (
    avatar_id    text        PRIMARY KEY CHECK (avatar_id <> ''),
    talent_id    text        NOT NULL REFERENCES talents,
    display_name text        NOT NULL DEFAULT '',
    created_at   timestamptz NOT NULL DEFAULT now(),
    created_by   text        NOT NULL,
    UNIQUE (avatar_id, talent_id)
);

-- Licensees: companies that render avatars and report usage.
CREATE TABLE vendors (
    vendor_id    text        PRIMARY KEY CHECK (vendor_id <> ''),
    display_name text        NOT NULL DEFAULT '',
    created_at   timestamptz NOT NULL DEFAULT now(),
    created_by   text        NOT NULL
);

-- Who receives money from splits: the talent, an agent, an estate.
CREATE TABLE payees (
    payee_id     text        PRIMARY KEY CHECK (payee_id <> ''),
    kind         text        NOT NULL DEFAULT 'unspecified'
                             CHECK (kind IN ('unspecified', 'talent', 'agent', 'estate')),
    display_name text        NOT NULL DEFAULT '',
    created_at   timestamptz NOT NULL DEFAULT now(),
    created_by   text        NOT NULL
);

-- Talent a payee is paid for (agents and estates may act for several).
CREATE TABLE payee_talents (
    payee_id  text NOT NULL REFERENCES payees,
    talent_id text NOT NULL REFERENCES talents,
    PRIMARY KEY (payee_id, talent_id)
);

-- A licence of one avatar (of its talent) to one vendor, in one currency.
-- revision counts changes (versions and suspension windows): consumers of the compacted
-- topic drop snapshots older than the one they hold.
CREATE TABLE licences (
    licence_id    text        PRIMARY KEY CHECK (licence_id <> ''),
    talent_id     text        NOT NULL REFERENCES talents,
    avatar_id     text        NOT NULL,
    vendor_id     text        NOT NULL REFERENCES vendors,
    currency_code text        NOT NULL CHECK (currency_code ~ '^[A-Z]{3}$'),
    revision      bigint      NOT NULL DEFAULT 1 CHECK (revision >= 1),
    created_at    timestamptz NOT NULL DEFAULT now(),
    created_by    text        NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (avatar_id, talent_id) REFERENCES avatars (avatar_id, talent_id)
);

-- Listing walks licence ids in order within the caller's tenant.
CREATE INDEX licences_vendor_idx ON licences (vendor_id, licence_id);
CREATE INDEX licences_talent_idx ON licences (talent_id, licence_id);
CREATE INDEX licences_avatar_idx ON licences (avatar_id, licence_id);

-- The full terms of one version (append-only). Version 1 is in force from the beginning
-- (effective_from NULL); amendments take effect at effective_from, strictly ascending.
-- terms holds the nested parts in the licence-spec shape (residuals.domain.licence_spec):
-- {"scope": {...}, "rates": {...}, "quotas": [...]}; scalars are columns with checks.
-- Revocation is a version carrying revoked_at and wind_down_days.
CREATE TABLE licence_versions (
    licence_id              text        NOT NULL REFERENCES licences,
    version                 integer     NOT NULL CHECK (version >= 1),
    effective_from          timestamptz,
    starts_at               timestamptz NOT NULL,
    ends_at                 timestamptz,
    revoked_at              timestamptz,
    wind_down_days          integer     NOT NULL DEFAULT 0 CHECK (wind_down_days >= 0),
    minimum_guarantee       numeric     NOT NULL DEFAULT 0 CHECK (minimum_guarantee >= 0),
    advance_outstanding     numeric     NOT NULL DEFAULT 0 CHECK (advance_outstanding >= 0),
    platform_fee            numeric     NOT NULL DEFAULT 0
                                        CHECK (platform_fee >= 0 AND platform_fee <= 1),
    auto_suspend_on_critical boolean    NOT NULL DEFAULT true,
    terms                   jsonb       NOT NULL,
    recorded_at             timestamptz NOT NULL DEFAULT now(),
    recorded_by             text        NOT NULL,
    note                    text        NOT NULL DEFAULT '',
    PRIMARY KEY (licence_id, version),
    CHECK ((version = 1) = (effective_from IS NULL)),
    CHECK (ends_at IS NULL OR ends_at > starts_at)
);

CREATE TRIGGER licence_versions_append_only
    BEFORE UPDATE OR DELETE ON licence_versions
    FOR EACH ROW EXECUTE FUNCTION residuals_forbid_change();

-- Payee shares of one version (append-only with it); they sum to 1 per version.
CREATE TABLE licence_splits (
    licence_id text    NOT NULL,
    version    integer NOT NULL,
    payee_id   text    NOT NULL REFERENCES payees,
    share      numeric NOT NULL CHECK (share >= 0 AND share <= 1),
    PRIMARY KEY (licence_id, version, payee_id),
    FOREIGN KEY (licence_id, version) REFERENCES licence_versions
);

CREATE INDEX licence_splits_payee_idx ON licence_splits (payee_id);

CREATE TRIGGER licence_splits_append_only
    BEFORE UPDATE OR DELETE ON licence_splits
    FOR EACH ROW EXECUTE FUNCTION residuals_forbid_change();

-- Suspension windows [starts_at, ends_at); ends_at NULL = until reinstated. Manual ones
-- record who and why; automatic ones (critical misuse) the alert that caused them, at most
-- one window per alert so a re-delivered alert suspends once.
CREATE TABLE licence_suspensions (
    suspension_id text        PRIMARY KEY,
    licence_id    text        NOT NULL REFERENCES licences,
    starts_at     timestamptz NOT NULL,
    ends_at       timestamptz,
    reason        text        NOT NULL CHECK (reason <> ''),
    automatic     boolean     NOT NULL DEFAULT false,
    alert_id      text,
    suspended_by  text        NOT NULL,
    suspended_at  timestamptz NOT NULL DEFAULT now(),
    reinstated_by text,
    reinstated_at timestamptz,
    reinstate_note text       NOT NULL DEFAULT '',
    CHECK (ends_at IS NULL OR ends_at >= starts_at),
    CHECK (NOT automatic OR alert_id IS NOT NULL)
);

CREATE INDEX licence_suspensions_licence_idx ON licence_suspensions (licence_id, starts_at);
CREATE UNIQUE INDEX licence_suspensions_alert_idx
    ON licence_suspensions (licence_id, alert_id) WHERE automatic;

-- Ed25519 public keys vendors sign usage events with.
CREATE TABLE vendor_signing_keys (
    key_id     text        PRIMARY KEY CHECK (key_id <> ''),
    vendor_id  text        NOT NULL REFERENCES vendors,
    public_key bytea       NOT NULL UNIQUE CHECK (length(public_key) = 32),
    created_at timestamptz NOT NULL DEFAULT now(),
    created_by text        NOT NULL,
    revoked_at timestamptz,
    revoked_by text
);

CREATE INDEX vendor_signing_keys_vendor_idx ON vendor_signing_keys (vendor_id);

-- Identities API keys authenticate as. A vendor principal acts for exactly one vendor,
-- a talent principal for exactly one talent.
CREATE TABLE principals (
    principal_id text        PRIMARY KEY CHECK (principal_id <> ''),
    role         text        NOT NULL CHECK (role IN ('vendor', 'talent', 'finance', 'admin')),
    vendor_id    text        REFERENCES vendors,
    talent_id    text        REFERENCES talents,
    created_at   timestamptz NOT NULL DEFAULT now(),
    created_by   text        NOT NULL,
    CHECK ((role = 'vendor') = (vendor_id IS NOT NULL)),
    CHECK ((role = 'talent') = (talent_id IS NOT NULL))
);

-- API keys: only SHA-256 of the secret is stored (residuals.platform.auth).
CREATE TABLE api_keys (
    key_id        text        PRIMARY KEY CHECK (key_id <> ''),
    principal_id  text        NOT NULL REFERENCES principals,
    secret_sha256 bytea       NOT NULL CHECK (length(secret_sha256) = 32),
    prefix        text        NOT NULL,
    description   text        NOT NULL DEFAULT '',
    created_at    timestamptz NOT NULL DEFAULT now(),
    created_by    text        NOT NULL,
    revoked_at    timestamptz,
    revoked_by    text
);

CREATE INDEX api_keys_principal_idx ON api_keys (principal_id);

-- Transactional outbox: each registry change writes its Kafka record here in the same
-- transaction, under an advisory lock so ids are assigned in commit order; the relay
-- publishes unpublished rows in id order and marks them after Kafka confirms.
-- topic is the catalogue name without RESIDUALS_TOPIC_PREFIX.
CREATE TABLE outbox (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    topic        text        NOT NULL,
    message_key  bytea       NOT NULL,
    payload      bytea       NOT NULL,
    headers      jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    published_at timestamptz
);

CREATE INDEX outbox_unpublished_idx ON outbox (id) WHERE published_at IS NULL;
