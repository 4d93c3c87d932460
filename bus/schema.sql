-- The bus store of one agent (bus.sqlite3 under the gateway's STATE_DIR), WAL mode.
-- Run by bus.store.init_db in one transaction under a lock; PRAGMA user_version = 2.

-- Messages received by this agent; (sender, id) is the idempotency key.
CREATE TABLE IF NOT EXISTS inbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL,
    sender TEXT NOT NULL,
    recipient TEXT NOT NULL,
    type TEXT NOT NULL,
    payload TEXT NOT NULL,          -- JSON
    timestamp TEXT NOT NULL,
    correlation_id TEXT,
    reply_to TEXT,
    ttl INTEGER,
    format TEXT NOT NULL,           -- 'fleet' or 'cloudevents'
    received_at REAL NOT NULL,
    acked_at REAL,
    UNIQUE (sender, id)
);
CREATE INDEX IF NOT EXISTS inbox_correlation ON inbox (correlation_id);

-- Messages waiting to be delivered: one row per (message, recipient).
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL,
    recipient TEXT NOT NULL,
    body TEXT NOT NULL,             -- the JSON message as sent on the wire
    created_at REAL NOT NULL,
    expires_at REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    lease_until REAL NOT NULL DEFAULT 0,
    lease_owner TEXT,
    last_error TEXT,
    UNIQUE (id, recipient)
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (next_attempt_at);

-- Messages given up on (too old, TTL expired, refused by the recipient): kept until an
-- operator re-sends them (redrive) or deletes them.
CREATE TABLE IF NOT EXISTS dead_letters (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL,
    recipient TEXT NOT NULL,
    body TEXT NOT NULL,
    created_at REAL NOT NULL,
    attempts INTEGER NOT NULL,
    reason TEXT NOT NULL,
    last_error TEXT,
    dead_at REAL NOT NULL
);

-- Unacknowledged inbox messages per sender, kept by store() and ack (the inbox quota).
CREATE TABLE IF NOT EXISTS senders (
    sender TEXT PRIMARY KEY,
    unacked INTEGER NOT NULL
);

-- Ids this agent sent (POST /outbox, send()): a send posted again queues nothing new.
CREATE TABLE IF NOT EXISTS sent (
    id TEXT PRIMARY KEY,
    recipients TEXT NOT NULL,       -- JSON list
    created_at REAL NOT NULL
);

-- Monotonic counters: received, duplicates, delivered, retried, dead_lettered.
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
