-- Deliveries, deploy runs and drift checks of the webhook receiver (SQLite, WAL mode),
-- schema version 4.
-- Every authenticated delivery is kept (its id refuses replays). Pushes that deploy get a run.
-- A run records what its push claimed (sha) and what the tag pointed to when it started
-- (commit_sha), the release and fleet run record of its deploy, and that record's outcome;
-- rollback_from: the release the fleet ran when the tag was moved back to an older commit.
-- No semicolons inside statements: db.py runs them one by one in a transaction.

CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery_id TEXT NOT NULL,
    forge TEXT NOT NULL,
    tag TEXT NOT NULL,
    sha TEXT NOT NULL,
    before_sha TEXT NOT NULL DEFAULT '',
    pusher TEXT NOT NULL,
    repository TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL CHECK (status IN
        ('queued', 'running', 'ok', 'degraded', 'failed', 'unhealthy', 'up-to-date',
         'superseded', 'interrupted')),
    superseded_by INTEGER REFERENCES runs (id),
    queued_at TEXT NOT NULL,
    started_at TEXT,
    ended_at TEXT,
    exit_status INTEGER,
    worker_pid INTEGER,
    commit_sha TEXT,
    release TEXT,
    fleet_run_id TEXT,
    record_path TEXT,
    log_path TEXT,
    summary TEXT NOT NULL DEFAULT '',
    hosts TEXT NOT NULL DEFAULT '{}',
    stages TEXT NOT NULL DEFAULT '[]',
    health TEXT NOT NULL DEFAULT '[]',
    rollback_from TEXT
);

CREATE INDEX IF NOT EXISTS runs_by_status ON runs (status, id);

CREATE TABLE IF NOT EXISTS deliveries (
    delivery_id TEXT PRIMARY KEY,
    forge TEXT NOT NULL,
    event TEXT NOT NULL,
    received_at TEXT NOT NULL,
    outcome TEXT NOT NULL CHECK (outcome IN ('queued', 'ignored')),
    reason TEXT NOT NULL DEFAULT '',
    run_id INTEGER REFERENCES runs (id)
);

-- Scheduled drift checks: a dry run of the deploy of what the tag points to, per host the
-- operations that would change. ``alert`` says whether drift appeared or cleared with this
-- check (an alert went to the orchestrator over the bus: ``alert_status``).
CREATE TABLE IF NOT EXISTS drift_checks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    started_at TEXT NOT NULL,
    ended_at TEXT,
    commit_sha TEXT,
    status TEXT NOT NULL CHECK (status IN ('running', 'ok', 'drift', 'failed')),
    drifted TEXT NOT NULL DEFAULT '[]',
    hosts TEXT NOT NULL DEFAULT '[]',
    summary TEXT NOT NULL DEFAULT '',
    alert TEXT NOT NULL DEFAULT '' CHECK (alert IN ('', 'appeared', 'cleared')),
    alert_status TEXT NOT NULL DEFAULT '',
    heal_run_id INTEGER REFERENCES runs (id)
);
