//! The store's schema, as an append-only list of migrations tracked in SQLite's `user_version`.
//! Never edit a migration that has shipped: add a new one at the end of the list.

use rusqlite_migration::{M, Migrations};

/// Every migration of the store, oldest first. `Migrations::to_latest` applies the missing ones.
pub(super) fn migrations() -> Migrations<'static> {
    Migrations::from_slice(MIGRATIONS)
}

pub(super) static MIGRATIONS: &[M<'static>] = &[
    M::up(V1_INITIAL),
    M::up(V2_SECRETS_BACKUPS),
    M::up(V3_RELEASE_IMAGES),
    M::up(V4_APPROVER_ROLE),
    M::up(V5_SIGNALS),
    M::up(V6_CERTIFICATES),
    M::up(V7_EDGE),
    M::up(V8_SWARM),
    M::up(V9_SESSIONS),
    M::up(V10_WORKLOADS),
    M::up(V11_REMOTE_BACKUPS),
    M::up(V12_PREVIEWS),
    M::up(V13_PROXY_ROLE),
    M::up(V14_REGISTRY),
];

/// The first schema.
///
/// Invariants kept by the schema itself rather than by the Rust code, so that a bug elsewhere
/// cannot break them:
/// - A release is immutable once written, except its `outcome` (trigger `releases_immutable`).
/// - Release numbers are never reused, even if releases are pruned later: they come from
///   `release_counters`, not from `MAX(number)`.
/// - The current release of an (app, environment) exists (foreign key).
/// - Events are append-only (triggers `events_append_only_*`); ids come from AUTOINCREMENT, so
///   they strictly increase and are never reused.
/// - Every `*_json` column holds valid JSON.
const V1_INITIAL: &str = r#"
CREATE TABLE release_counters (
    app          TEXT    NOT NULL,
    environment  TEXT    NOT NULL,
    last_number  INTEGER NOT NULL,
    PRIMARY KEY (app, environment)
) STRICT;

CREATE TABLE releases (
    app              TEXT    NOT NULL,
    environment      TEXT    NOT NULL,
    number           INTEGER NOT NULL CHECK (number >= 1),
    artifact         TEXT    NOT NULL,
    config_json      TEXT    NOT NULL CHECK (json_valid(config_json)),
    secrets_version  TEXT,
    strategy         TEXT    NOT NULL,
    created_by       TEXT    NOT NULL,
    created_at       INTEGER NOT NULL,
    outcome          TEXT    NOT NULL
        CHECK (outcome IN ('pending', 'live', 'superseded', 'failed', 'rolled_back')),
    message          TEXT,
    PRIMARY KEY (app, environment, number)
) STRICT;

CREATE TRIGGER releases_immutable
BEFORE UPDATE OF app, environment, number, artifact, config_json, secrets_version,
                 strategy, created_by, created_at, message ON releases
BEGIN
    SELECT RAISE(ABORT, 'a release is immutable except its outcome');
END;

CREATE TABLE current_releases (
    app          TEXT    NOT NULL,
    environment  TEXT    NOT NULL,
    number       INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL,
    PRIMARY KEY (app, environment),
    FOREIGN KEY (app, environment, number) REFERENCES releases (app, environment, number)
) STRICT;

CREATE TABLE deployments (
    id            TEXT    NOT NULL PRIMARY KEY,
    app           TEXT    NOT NULL,
    environment   TEXT    NOT NULL,
    kind          TEXT    NOT NULL CHECK (kind IN ('deploy', 'rollback')),
    from_release  INTEGER,
    to_release    INTEGER NOT NULL,
    strategy      TEXT    NOT NULL,
    state         TEXT    NOT NULL,
    reason        TEXT,
    data_json     TEXT    NOT NULL CHECK (json_valid(data_json)),
    created_by    TEXT    NOT NULL,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL,
    FOREIGN KEY (app, environment, to_release) REFERENCES releases (app, environment, number)
) STRICT;

CREATE INDEX deployments_by_app ON deployments (app, environment);
CREATE INDEX deployments_by_state ON deployments (state);

CREATE TABLE deploy_locks (
    app            TEXT    NOT NULL,
    environment    TEXT    NOT NULL,
    owner          TEXT    NOT NULL,
    deployment_id  TEXT    NOT NULL,
    acquired_at    INTEGER NOT NULL,
    heartbeat_at   INTEGER NOT NULL,
    expires_at     INTEGER NOT NULL,
    PRIMARY KEY (app, environment)
) STRICT;

CREATE TABLE events (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    at             INTEGER NOT NULL,
    app            TEXT,
    environment    TEXT,
    deployment_id  TEXT,
    kind           TEXT    NOT NULL,
    message        TEXT    NOT NULL,
    data_json      TEXT    NOT NULL CHECK (json_valid(data_json))
) STRICT;

CREATE INDEX events_by_deployment ON events (deployment_id, id);

CREATE TRIGGER events_append_only_update
BEFORE UPDATE ON events
BEGIN
    SELECT RAISE(ABORT, 'events are append-only');
END;

CREATE TRIGGER events_append_only_delete
BEFORE DELETE ON events
BEGIN
    SELECT RAISE(ABORT, 'events are append-only');
END;

CREATE TABLE instances (
    instance_id  TEXT    NOT NULL PRIMARY KEY,
    app          TEXT    NOT NULL,
    environment  TEXT    NOT NULL,
    release      INTEGER NOT NULL,
    service      TEXT    NOT NULL,
    port         INTEGER NOT NULL CHECK (port BETWEEN 0 AND 65535),
    state        TEXT    NOT NULL,
    warm_until   INTEGER,
    updated_at   INTEGER NOT NULL
) STRICT;

CREATE INDEX instances_by_app ON instances (app, environment);

CREATE TABLE artifacts (
    digest       TEXT    NOT NULL PRIMARY KEY,
    size         INTEGER NOT NULL CHECK (size >= 0),
    recorded_at  INTEGER NOT NULL
) STRICT;

CREATE TABLE tokens (
    id          TEXT    NOT NULL PRIMARY KEY,
    name        TEXT    NOT NULL,
    role        TEXT    NOT NULL CHECK (role IN ('viewer', 'deployer', 'admin')),
    hash        TEXT    NOT NULL UNIQUE,
    created_at  INTEGER NOT NULL,
    revoked_at  INTEGER
) STRICT;
"#;

/// Secrets (encrypted, versioned, never deleted: a release keeps the versions it used, so a rollback
/// gets them back) and database backups.
///
/// - A secret version is immutable; `ciphertext` NULL is an unset (a tombstone version).
/// - The store never sees a secret value in clear: `nonce` and `ciphertext` come from XChaCha20-Poly1305.
const V2_SECRETS_BACKUPS: &str = r#"
CREATE TABLE secrets (
    app          TEXT    NOT NULL,
    environment  TEXT    NOT NULL,
    name         TEXT    NOT NULL,
    version      INTEGER NOT NULL CHECK (version >= 1),
    nonce        BLOB,
    ciphertext   BLOB,
    created_by   TEXT    NOT NULL,
    created_at   INTEGER NOT NULL,
    PRIMARY KEY (app, environment, name, version)
) STRICT;

CREATE TRIGGER secrets_immutable
BEFORE UPDATE ON secrets
BEGIN
    SELECT RAISE(ABORT, 'a secret version is immutable');
END;

CREATE TABLE backups (
    id             TEXT    NOT NULL PRIMARY KEY,
    app            TEXT    NOT NULL,
    environment    TEXT    NOT NULL,
    release        INTEGER,
    deployment_id  TEXT,
    kind           TEXT    NOT NULL CHECK (kind IN ('sqlite', 'postgres')),
    reason         TEXT    NOT NULL CHECK (reason IN ('release', 'manual', 'schedule')),
    target         TEXT    NOT NULL,
    path           TEXT    NOT NULL,
    size           INTEGER NOT NULL,
    sha256         TEXT    NOT NULL,
    created_at     INTEGER NOT NULL
) STRICT;

CREATE INDEX backups_by_app ON backups (app, environment, created_at);
"#;

/// The image each container service of a release runs, recorded once when the release is
/// prepared (by id, so a rollback runs exactly that image even after a tag moved).
const V3_RELEASE_IMAGES: &str = r#"
CREATE TABLE release_images (
    app          TEXT    NOT NULL,
    environment  TEXT    NOT NULL,
    release      INTEGER NOT NULL,
    service      TEXT    NOT NULL,
    image        TEXT    NOT NULL,
    PRIMARY KEY (app, environment, release, service)
) STRICT;

CREATE TRIGGER release_images_immutable
BEFORE UPDATE ON release_images
BEGIN
    SELECT RAISE(ABORT, 'a release image is recorded once');
END;
"#;

/// The `approver` role (between deployer and admin). SQLite cannot change a CHECK constraint in
/// place, so the tokens table is rebuilt with the same rows.
const V4_APPROVER_ROLE: &str = r#"
CREATE TABLE tokens_v4 (
    id          TEXT    NOT NULL PRIMARY KEY,
    name        TEXT    NOT NULL,
    role        TEXT    NOT NULL CHECK (role IN ('viewer', 'deployer', 'approver', 'admin')),
    hash        TEXT    NOT NULL UNIQUE,
    created_at  INTEGER NOT NULL,
    revoked_at  INTEGER
) STRICT;
INSERT INTO tokens_v4 (id, name, role, hash, created_at, revoked_at)
    SELECT id, name, role, hash, created_at, revoked_at FROM tokens;
DROP TABLE tokens;
ALTER TABLE tokens_v4 RENAME TO tokens;
"#;

/// Signals to running deployments (promote, abort, approve), kept until the executor has acted on
/// them (`handled_at`), so an agent restart does not forget one the API accepted.
const V5_SIGNALS: &str = r#"
CREATE TABLE signals (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    deployment_id TEXT    NOT NULL REFERENCES deployments(id),
    kind          TEXT    NOT NULL CHECK (kind IN ('promote', 'abort', 'approve')),
    by            TEXT    NOT NULL,
    at            INTEGER NOT NULL,
    handled_at    INTEGER
) STRICT;
CREATE INDEX signals_pending ON signals (deployment_id) WHERE handled_at IS NULL;
"#;

/// Certificates served by the proxy's TLS listener, one row per host, and the ACME account per
/// directory. Private keys and the account credentials are sealed with the master key (nonce and
/// ciphertext), never stored in clear; the chain is public.
const V6_CERTIFICATES: &str = r#"
CREATE TABLE certificates (
    host             TEXT    NOT NULL PRIMARY KEY,
    source           TEXT    NOT NULL CHECK (source IN ('acme', 'given')),
    app              TEXT    NOT NULL,
    environment      TEXT    NOT NULL,
    chain_pem        TEXT    NOT NULL,
    key_nonce        BLOB    NOT NULL,
    key_sealed       BLOB    NOT NULL,
    issuer           TEXT    NOT NULL,
    not_before       INTEGER NOT NULL,
    not_after        INTEGER NOT NULL,
    renewed_at       INTEGER NOT NULL,
    last_error       TEXT,
    failures         INTEGER NOT NULL DEFAULT 0 CHECK (failures >= 0),
    next_attempt_at  INTEGER
) STRICT;

CREATE TABLE acme_accounts (
    directory          TEXT    NOT NULL PRIMARY KEY,
    credentials_nonce  BLOB    NOT NULL,
    credentials_sealed BLOB    NOT NULL,
    created_at         INTEGER NOT NULL
) STRICT;
"#;

/// Edge controls of an environment (issue 16): maintenance mode and pause, so they outlive agent and
/// proxy restarts. One row per environment with at least one of them on; a row with neither is deleted.
const V7_EDGE: &str = r#"
CREATE TABLE edge_controls (
    app               TEXT    NOT NULL,
    environment       TEXT    NOT NULL,
    maintenance_json  TEXT    CHECK (maintenance_json IS NULL OR json_valid(maintenance_json)),
    paused_until      INTEGER,
    paused_since      INTEGER,
    updated_at        INTEGER NOT NULL,
    PRIMARY KEY (app, environment),
    CHECK ((paused_until IS NULL) = (paused_since IS NULL))
) STRICT;
"#;

/// The swarm driver (issue 17): an instance answers on a node's address, not only on loopback.
/// Every earlier instance ran on the agent's host.
const V8_SWARM: &str = r#"
ALTER TABLE instances ADD COLUMN host TEXT NOT NULL DEFAULT '127.0.0.1';
"#;

/// Issue 19: cron runs and destroyed environments.
///
/// - A cron run is recorded before its command starts, once per (app, environment, job, tick):
///   the primary key is what makes a tick run at most once across deploys and agent restarts.
///   A manual run takes the time it was asked for as its tick.
/// - An environment destroyed by `rollway destroy` keeps its releases, events and backups; its row
///   here says it runs nothing until its next deploy (which deletes the row).
const V10_WORKLOADS: &str = r#"
CREATE TABLE cron_runs (
    app          TEXT    NOT NULL,
    environment  TEXT    NOT NULL,
    job          TEXT    NOT NULL,
    tick         INTEGER NOT NULL,
    trigger      TEXT    NOT NULL CHECK (trigger IN ('schedule', 'catch_up', 'manual')),
    release      INTEGER NOT NULL,
    state        TEXT    NOT NULL
        CHECK (state IN ('running', 'succeeded', 'failed', 'timed_out', 'skipped', 'replaced', 'interrupted')),
    started_at   INTEGER NOT NULL,
    finished_at  INTEGER,
    exit_code    INTEGER,
    by_name      TEXT,
    output       TEXT    NOT NULL DEFAULT '',
    reason       TEXT,
    PRIMARY KEY (app, environment, job, tick)
) STRICT;

CREATE INDEX cron_runs_running ON cron_runs (state) WHERE state = 'running';

CREATE TABLE destroyed_environments (
    app           TEXT    NOT NULL,
    environment   TEXT    NOT NULL,
    destroyed_at  INTEGER NOT NULL,
    destroyed_by  TEXT    NOT NULL,
    PRIMARY KEY (app, environment)
) STRICT;
"#;

/// Off-host backups (issue 21): where each backup's encrypted copy is on the remote, and the
/// agent's backup key, sealed by the master key (never in clear here).
/// - A backup has a remote copy iff `remote_key` is set; `remote_sha256` is the uploaded object's.
/// - One backup key per agent (`id = 1`).
const V11_REMOTE_BACKUPS: &str = r#"
ALTER TABLE backups ADD COLUMN remote_key TEXT;
ALTER TABLE backups ADD COLUMN remote_sha256 TEXT;
ALTER TABLE backups ADD COLUMN remote_size INTEGER;
ALTER TABLE backups ADD COLUMN uploaded_at INTEGER;

CREATE TABLE backup_key (
    id          INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
    sealed      BLOB    NOT NULL,
    created_at  INTEGER NOT NULL
) STRICT;
"#;

/// Preview environments (issue 19): an environment deployed with `--from BASE --ttl`, one row per
/// preview, kept after it expires or is destroyed (its releases and events stay too). A deploy of
/// the same preview renews `expires_at`; the agent destroys those past it.
const V12_PREVIEWS: &str = r#"
CREATE TABLE previews (
    app          TEXT    NOT NULL,
    environment  TEXT    NOT NULL CHECK (environment LIKE 'preview-%'),
    base         TEXT    NOT NULL CHECK (base NOT LIKE 'preview-%'),
    created_by   TEXT    NOT NULL,
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL CHECK (expires_at > created_at),
    PRIMARY KEY (app, environment)
) STRICT;
CREATE INDEX previews_expiry ON previews (expires_at);
"#;

/// Dashboard sign-in sessions (issue 18): one row per session, keyed by the SHA-256 of its random
/// id (the id itself lives only in the browser's cookie), tied to the token it was exchanged for.
/// Revoking that token deletes its sessions in the same statement (trigger), so no session outlives
/// its token whatever code revokes it.
const V9_SESSIONS: &str = r#"
CREATE TABLE dashboard_sessions (
    id_hash     TEXT    NOT NULL PRIMARY KEY,
    token_id    TEXT    NOT NULL REFERENCES tokens(id),
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL CHECK (expires_at > created_at)
) STRICT;
CREATE INDEX dashboard_sessions_token ON dashboard_sessions (token_id);
CREATE TRIGGER dashboard_sessions_end_with_token
AFTER UPDATE OF revoked_at ON tokens
WHEN NEW.revoked_at IS NOT NULL
BEGIN
    DELETE FROM dashboard_sessions WHERE token_id = NEW.id;
END;
"#;

/// The `proxy` role (issue 17: a proxy following the agent; beside the people's roles, see
/// `tokens::Role`). SQLite cannot change a CHECK constraint in place, so the tokens table is
/// rebuilt with the same rows; `dashboard_sessions` references it, so it is rebuilt around it
/// (same rows, index and trigger) and no signed-in session is lost.
const V13_PROXY_ROLE: &str = r#"
CREATE TABLE tokens_v13 (
    id          TEXT    NOT NULL PRIMARY KEY,
    name        TEXT    NOT NULL,
    role        TEXT    NOT NULL CHECK (role IN ('viewer', 'deployer', 'approver', 'admin', 'proxy')),
    hash        TEXT    NOT NULL UNIQUE,
    created_at  INTEGER NOT NULL,
    revoked_at  INTEGER
) STRICT;
INSERT INTO tokens_v13 (id, name, role, hash, created_at, revoked_at)
    SELECT id, name, role, hash, created_at, revoked_at FROM tokens;
CREATE TABLE dashboard_sessions_v13_copy AS SELECT * FROM dashboard_sessions;
DROP TABLE dashboard_sessions;
DROP TABLE tokens;
ALTER TABLE tokens_v13 RENAME TO tokens;
CREATE TABLE dashboard_sessions (
    id_hash     TEXT    NOT NULL PRIMARY KEY,
    token_id    TEXT    NOT NULL REFERENCES tokens(id),
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL CHECK (expires_at > created_at)
) STRICT;
INSERT INTO dashboard_sessions (id_hash, token_id, created_at, expires_at)
    SELECT id_hash, token_id, created_at, expires_at FROM dashboard_sessions_v13_copy;
DROP TABLE dashboard_sessions_v13_copy;
CREATE INDEX dashboard_sessions_token ON dashboard_sessions (token_id);
CREATE TRIGGER dashboard_sessions_end_with_token
AFTER UPDATE OF revoked_at ON tokens
WHEN NEW.revoked_at IS NOT NULL
BEGIN
    DELETE FROM dashboard_sessions WHERE token_id = NEW.id;
END;
"#;

/// The registry the agent runs for the cluster (issue 17): its two credentials, made on the first
/// start, the passwords sealed by the master key (never in clear here). `push` is the agent's own
/// (its engine pushes with it); `pull` is given to Swarm with the service specs.
const V14_REGISTRY: &str = r#"
CREATE TABLE registry_credentials (
    access      TEXT    NOT NULL PRIMARY KEY CHECK (access IN ('push', 'pull')),
    username    TEXT    NOT NULL,
    nonce       BLOB    NOT NULL,
    ciphertext  BLOB    NOT NULL,
    created_at  INTEGER NOT NULL
) STRICT;
"#;
