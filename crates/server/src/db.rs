//! SQLite storage: one writer connection (all changes go through it, so
//! writers never conflict) and a few readers; WAL with `synchronous=NORMAL`
//! survives a killed process.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use rusqlite::{Connection, params};

use crate::store::StoreError;

/// 2: single-use pairing keys with an expiry and the last refused pairing
/// (hosts), a per-instance pairing key lifetime (instances), report ids
/// de-duplicated per (instance, host) (processed_reports).
/// 3: the billing emulator's credentials, usage and pushed metric ids
/// (billing_*): new tables only, which a schema-2 database gains as it is
/// opened (`CREATE TABLE IF NOT EXISTS`); nothing else changes.
/// 5: the deployment controller's published timeline (deployments): a new
/// table only.
pub const SCHEMA_VERSION: i64 = 5;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS instances (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    spec_json TEXT NOT NULL,
    status TEXT NOT NULL,
    status_reason TEXT,
    generation INTEGER NOT NULL DEFAULT 1,
    pairing_key_ttl_ms INTEGER,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS hosts (
    instance TEXT NOT NULL REFERENCES instances(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    pairing_key_hash TEXT,
    pairing_key_expires_at INTEGER,
    pairing_key_used_at INTEGER,
    last_pairing_refusal TEXT,
    last_pairing_refusal_at INTEGER,
    credential_hash TEXT UNIQUE,
    paired_at INTEGER,
    last_heartbeat_at INTEGER,
    agent_version TEXT,
    health TEXT NOT NULL DEFAULT 'unknown',
    unhealthy_reason TEXT,
    unhealthy_since INTEGER,
    checks_active_since INTEGER,
    PRIMARY KEY (instance, name)
);
CREATE TABLE IF NOT EXISTS steps (
    instance TEXT NOT NULL,
    host TEXT NOT NULL,
    grp TEXT NOT NULL,
    idx INTEGER NOT NULL,
    hash TEXT NOT NULL,
    once INTEGER NOT NULL DEFAULT 0,
    status TEXT NOT NULL,
    exec_id TEXT,
    dispatched_at INTEGER,
    work_json TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    exit_code INTEGER,
    signal INTEGER,
    timed_out INTEGER NOT NULL DEFAULT 0,
    halted INTEGER NOT NULL DEFAULT 0,
    started_at_ms INTEGER,
    finished_at_ms INTEGER,
    log TEXT,
    log_truncated_bytes INTEGER NOT NULL DEFAULT 0,
    result TEXT,
    result_truncated_bytes INTEGER NOT NULL DEFAULT 0,
    structured_result TEXT,
    error TEXT,
    ever_ok INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (instance, host, grp, idx),
    FOREIGN KEY (instance, host) REFERENCES hosts(instance, name) ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS steps_exec ON steps(exec_id);
CREATE TABLE IF NOT EXISTS health_results (
    instance TEXT NOT NULL,
    host TEXT NOT NULL,
    check_name TEXT NOT NULL,
    ok INTEGER NOT NULL,
    detail TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    received_at INTEGER NOT NULL,
    last_ok_at INTEGER,
    PRIMARY KEY (instance, host, check_name),
    FOREIGN KEY (instance, host) REFERENCES hosts(instance, name) ON DELETE CASCADE
);
CREATE TABLE IF NOT EXISTS processed_reports (
    instance TEXT NOT NULL,
    host TEXT NOT NULL,
    report_id TEXT NOT NULL,
    at INTEGER NOT NULL,
    PRIMARY KEY (instance, host, report_id)
);
CREATE TABLE IF NOT EXISTS recovery_requests (
    id TEXT PRIMARY KEY,
    instance TEXT NOT NULL,
    host TEXT NOT NULL,
    kind TEXT NOT NULL,
    reason TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    status TEXT NOT NULL,
    resolved_at INTEGER
);
CREATE INDEX IF NOT EXISTS recovery_open ON recovery_requests(instance, host, status);
CREATE TABLE IF NOT EXISTS billing_tokens (
    instance TEXT PRIMARY KEY REFERENCES instances(id) ON DELETE CASCADE,
    token_hash TEXT NOT NULL UNIQUE,
    token TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS billing_keys (
    key_hash TEXT PRIMARY KEY,
    instance TEXT NOT NULL REFERENCES instances(id) ON DELETE CASCADE,
    key TEXT,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS billing_keys_instance ON billing_keys(instance, created_at);
CREATE TABLE IF NOT EXISTS billing_usage (
    instance TEXT NOT NULL REFERENCES instances(id) ON DELETE CASCADE,
    param TEXT NOT NULL,
    day TEXT NOT NULL,
    total REAL NOT NULL,
    count INTEGER NOT NULL,
    last_push_at INTEGER NOT NULL,
    PRIMARY KEY (instance, param, day)
);
CREATE TABLE IF NOT EXISTS billing_pushes (
    instance TEXT NOT NULL REFERENCES instances(id) ON DELETE CASCADE,
    at INTEGER NOT NULL,
    scheme TEXT NOT NULL,
    status INTEGER NOT NULL,
    metrics INTEGER NOT NULL,
    counted INTEGER NOT NULL,
    key_created_at INTEGER,
    error TEXT
);
CREATE INDEX IF NOT EXISTS billing_pushes_instance ON billing_pushes(instance, at);
CREATE TABLE IF NOT EXISTS billing_metric_ids (
    instance TEXT NOT NULL REFERENCES instances(id) ON DELETE CASCADE,
    metric_id TEXT NOT NULL,
    at INTEGER NOT NULL,
    PRIMARY KEY (instance, metric_id)
);
CREATE TABLE IF NOT EXISTS deployments (
    instance TEXT PRIMARY KEY REFERENCES instances(id) ON DELETE CASCADE,
    timeline_json TEXT NOT NULL,
    stored_at INTEGER NOT NULL
);
"#;

fn open(path: &Path) -> anyhow::Result<Connection> {
    let c = Connection::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    c.busy_timeout(std::time::Duration::from_secs(10))?;
    c.pragma_update(None, "journal_mode", "WAL")?;
    c.pragma_update(None, "synchronous", "NORMAL")?;
    c.pragma_update(None, "foreign_keys", "ON")?;
    Ok(c)
}

fn lock(m: &Mutex<Connection>) -> std::sync::MutexGuard<'_, Connection> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub struct Db {
    writer: Arc<Mutex<Connection>>,
    readers: Vec<Arc<Mutex<Connection>>>,
    next: AtomicUsize,
    /// Where write latencies go (`ibkit_db_write_duration_seconds`).
    write_seconds: Option<prometheus::Histogram>,
}

/// Creates the database file readable by its owner only, and narrows an
/// existing one (and its `-wal`/`-shm`, which SQLite creates with the
/// database file's mode) that an older ibkit left world-readable: it holds
/// every script, environment variable and result.
fn make_private(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    for suffix in ["", "-wal", "-shm"] {
        let p = PathBuf::from(format!("{}{suffix}", path.display()));
        if p.symlink_metadata().is_ok() {
            crate::narrow_to_owner(&p)?;
        }
    }
    Ok(())
}

/// Schema 1 → 2 in one transaction, keeping every row. Report ids seen
/// before keep their global meaning (instance and host `''`, still looked
/// up) so an agent resending one after the upgrade is still told it is a
/// duplicate; a key already used is marked used; an unused one expires
/// `pairing_key_ttl` from now.
fn migrate_v1(c: &mut Connection, pairing_key_ttl: Duration) -> anyhow::Result<()> {
    let tx = c.transaction()?;
    tx.execute_batch(
        "ALTER TABLE instances ADD COLUMN pairing_key_ttl_ms INTEGER;
         ALTER TABLE hosts ADD COLUMN pairing_key_expires_at INTEGER;
         ALTER TABLE hosts ADD COLUMN pairing_key_used_at INTEGER;
         ALTER TABLE hosts ADD COLUMN last_pairing_refusal TEXT;
         ALTER TABLE hosts ADD COLUMN last_pairing_refusal_at INTEGER;
         UPDATE hosts SET pairing_key_used_at = paired_at WHERE paired_at IS NOT NULL;
         ALTER TABLE processed_reports RENAME TO processed_reports_v1;
         CREATE TABLE processed_reports (
             instance TEXT NOT NULL,
             host TEXT NOT NULL,
             report_id TEXT NOT NULL,
             at INTEGER NOT NULL,
             PRIMARY KEY (instance, host, report_id)
         );
         INSERT INTO processed_reports (instance, host, report_id, at)
             SELECT '', '', report_id, at FROM processed_reports_v1;
         DROP TABLE processed_reports_v1;",
    )
    .context("migrating the database from schema 1 to 2")?;
    let ttl = i64::try_from(pairing_key_ttl.as_millis()).unwrap_or(i64::MAX);
    tx.execute(
        "UPDATE hosts SET pairing_key_expires_at = ?1
         WHERE pairing_key_hash IS NOT NULL AND pairing_key_used_at IS NULL",
        params![ibkit_support::clock::now_ms().saturating_add(ttl)],
    )?;
    tx.pragma_update(None, "user_version", 2)?;
    tx.commit()?;
    Ok(())
}

impl Db {
    /// Opens (creating or migrating) the database; `pairing_key_ttl` is the
    /// lifetime given to unused keys found by a migration.
    pub fn open(path: &Path, readers: usize, pairing_key_ttl: Duration) -> anyhow::Result<Db> {
        make_private(path)?;
        let mut w = open(path)?;
        let version: i64 = w.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            anyhow::bail!(
                "{} has schema version {version}, newer than this ibkit ({SCHEMA_VERSION})",
                path.display()
            );
        }
        if version == 1 {
            migrate_v1(&mut w, pairing_key_ttl)
                .with_context(|| format!("cannot migrate {}", path.display()))?;
            tracing::info!("migrated {} to schema {SCHEMA_VERSION}", path.display());
        }
        w.execute_batch(SCHEMA)?;
        w.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        // The WAL and shared-memory files exist now: make sure of their mode.
        make_private(path)?;
        let readers = (0..readers.max(1))
            .map(|_| open(path).map(|c| Arc::new(Mutex::new(c))))
            .collect::<anyhow::Result<_>>()?;
        Ok(Db {
            writer: Arc::new(Mutex::new(w)),
            readers,
            next: AtomicUsize::new(0),
            write_seconds: None,
        })
    }

    /// Times every write from now on into `h`: all changes go through
    /// [`Db::write`], so this is the one place they are timed.
    pub fn time_writes(&mut self, h: prometheus::Histogram) {
        self.write_seconds = Some(h);
    }

    /// Runs `f` on the writer connection in a blocking thread.
    pub async fn write<T, E, F>(&self, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, E> + Send + 'static,
    {
        let w = self.writer.clone();
        let _timer = self.write_seconds.as_ref().map(|h| h.start_timer());
        tokio::task::spawn_blocking(move || f(&mut lock(&w)))
            .await
            .map_err(|e| E::from(StoreError::Task(e.to_string())))?
    }

    /// Runs `f` on one of the reader connections.
    pub async fn read<T, E, F>(&self, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
        F: FnOnce(&Connection) -> Result<T, E> + Send + 'static,
    {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.readers.len();
        let r = self.readers[i].clone();
        tokio::task::spawn_blocking(move || f(&lock(&r)))
            .await
            .map_err(|e| E::from(StoreError::Task(e.to_string())))?
    }
}
