-- Schema 1 of the ibkit serve database (before single-use pairing keys and
-- per-host report ids), kept to test the migration from it.
CREATE TABLE IF NOT EXISTS instances (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    spec_json TEXT NOT NULL,
    status TEXT NOT NULL,
    status_reason TEXT,
    generation INTEGER NOT NULL DEFAULT 1,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS hosts (
    instance TEXT NOT NULL REFERENCES instances(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    pairing_key_hash TEXT,
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
    report_id TEXT PRIMARY KEY,
    at INTEGER NOT NULL
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
