//! The coordinator's SQLite file ([`commons_server::db`]: WAL, one writer thread with group commit, reads off the
//! async threads): workers, settings, enrollment tokens, history.
//!
//! A registration's 200 is sent after its row is durable, and a burst of registrations shares one fsync.

use std::path::Path;

use commons_server::db::Db;
use commons_server::tokens::TokenKind;
use rusqlite::params;

use crate::ledger::Booking;

pub use commons_server::db::DbError as StoreError;

/// A worker as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerRow {
    /// Hex id.
    pub id: String,
    /// SHA-256 of the worker token.
    pub token_hash: Vec<u8>,
    /// Tier number.
    pub tier: u8,
    /// Bit 0 edge, bit 1 storage.
    pub roles: u8,
    /// Capabilities as JSON.
    pub capabilities: String,
    /// Address.
    pub ip_address: Option<String>,
    /// Endpoint.
    pub endpoint: Option<String>,
    /// Tunnel URL.
    pub tunnel_url: Option<String>,
    /// Legacy shape.
    pub legacy: bool,
    /// Service names as a JSON array.
    pub services: String,
    /// Assignment version.
    pub assignment_version: u64,
    /// Registration time, ms since the epoch.
    pub registered_at_ms: i64,
    /// DHT peer id bound at registration.
    pub peer_id: Option<String>,
    /// Live part.
    pub live: LiveRow,
}

/// The part of a worker a heartbeat changes.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LiveRow {
    /// Hex id.
    pub id: String,
    /// Last heartbeat, ms since the epoch.
    pub last_heartbeat_ms: Option<i64>,
    /// Reported status.
    pub status: String,
    /// Load.
    pub load: f64,
    /// Free memory.
    pub free_memory: i64,
    /// Agent version.
    pub agent_version: String,
    /// Base URL of the worker's services.
    pub endpoint: Option<String>,
    /// GPU samples and container states as JSON.
    pub samples: String,
    /// Requests routed.
    pub requests: i64,
    /// Of which failed.
    pub errors: i64,
    /// How far its answers are trusted, 0 to 1 ([`crate::verify`]).
    pub trust: f64,
}

/// The enrollment tokens, kept in their table.
pub const ENROLLMENT_TOKENS: TokenKind = TokenKind {
    table: "enrollment_tokens",
    noun: "enrollment token",
    secret_field: "token",
    list_field: "tokens",
};

const MIGRATIONS: &[&str] = &[
    "CREATE TABLE workers (
        id TEXT PRIMARY KEY NOT NULL,
        token_hash BLOB NOT NULL,
        tier INTEGER NOT NULL,
        roles INTEGER NOT NULL,
        capabilities TEXT NOT NULL,
        ip_address TEXT,
        endpoint TEXT,
        tunnel_url TEXT,
        legacy INTEGER NOT NULL,
        services TEXT NOT NULL,
        assignment_version INTEGER NOT NULL,
        registered_at_ms INTEGER NOT NULL,
        last_heartbeat_ms INTEGER,
        status TEXT NOT NULL,
        load REAL NOT NULL,
        free_memory INTEGER NOT NULL,
        agent_version TEXT NOT NULL,
        samples TEXT NOT NULL,
        requests INTEGER NOT NULL,
        errors INTEGER NOT NULL
    ) STRICT;
    CREATE TABLE settings (key TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL) STRICT;
    CREATE TABLE enrollment_tokens (id TEXT PRIMARY KEY NOT NULL, label TEXT NOT NULL, hash BLOB NOT NULL UNIQUE) STRICT;
    CREATE TABLE history (ts_ms INTEGER PRIMARY KEY NOT NULL, data TEXT NOT NULL) STRICT;",
    "ALTER TABLE workers ADD COLUMN peer_id TEXT;",
    commons_server::consumers::TABLE,
    crate::ledger::TABLES,
    "ALTER TABLE workers ADD COLUMN trust REAL NOT NULL DEFAULT 0.5;",
    // The lowered trust of workers that went (unregistered or forgotten), by their DHT identity: a worker that
    // registers again with it starts there, not afresh.
    "CREATE TABLE peer_trust (peer_id TEXT PRIMARY KEY NOT NULL, trust REAL NOT NULL, at_ms INTEGER NOT NULL) STRICT;",
];

/// Keeps a DHT identity's lowered trust (the lower of what is kept and `trust`).
fn keep_trust(
    tx: &rusqlite::Transaction<'_>,
    peer: &str,
    trust: f64,
    at_ms: i64,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO peer_trust (peer_id, trust, at_ms) VALUES (?1, ?2, ?3)
         ON CONFLICT (peer_id) DO UPDATE SET trust = MIN(trust, excluded.trust), at_ms = excluded.at_ms",
    )?
    .execute(params![peer, trust, at_ms])
    .map(|_| ())
}

/// The database.
#[derive(Debug, Clone)]
pub struct Store {
    db: Db,
}

impl Store {
    /// Opens (creating if needed) `commons.db` in `data_dir` and migrates it.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        Ok(Self {
            db: Db::open(data_dir, "commons.db", MIGRATIONS, "commons-db-writer")?,
        })
    }

    /// The database underneath (settings, tokens).
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        self.db.path()
    }

    /// Stores a new worker; returns once it is durable.
    pub async fn insert_worker(&self, w: WorkerRow) -> Result<(), StoreError> {
        self.db
            .write(move |tx| {
                tx.prepare_cached(
                    "INSERT INTO workers (id, token_hash, tier, roles, capabilities, ip_address, endpoint, tunnel_url, legacy,
                     services, assignment_version, registered_at_ms, last_heartbeat_ms, status, load, free_memory,
                     agent_version, samples, requests, errors, peer_id, trust)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22)",
                )?
                .execute(params![
                    w.id,
                    w.token_hash,
                    w.tier,
                    w.roles,
                    w.capabilities,
                    w.ip_address,
                    w.endpoint,
                    w.tunnel_url,
                    w.legacy,
                    w.services,
                    w.assignment_version as i64,
                    w.registered_at_ms,
                    w.live.last_heartbeat_ms,
                    w.live.status,
                    w.live.load,
                    w.live.free_memory,
                    w.live.agent_version,
                    w.live.samples,
                    w.live.requests,
                    w.live.errors,
                    w.peer_id,
                    w.live.trust
                ])
                .map(|_| ())
            })
            .await
    }

    /// Deletes a worker, keeping its lowered trust by its DHT identity in the same transaction when `keep` says
    /// so, and booking what its last heartbeats brought (`booking`: with the time of the last one); returns once
    /// durable, with whether it existed.
    pub(crate) async fn delete_worker(
        &self,
        id: String,
        keep: Option<(String, f64)>,
        booking: Option<(i64, Booking)>,
        at_ms: i64,
    ) -> Result<bool, StoreError> {
        self.db
            .write(move |tx| {
                if let Some((peer, trust)) = keep {
                    keep_trust(tx, &peer, trust, at_ms)?;
                }
                if let Some((last_ms, b)) = &booking {
                    crate::ledger::book(tx, &id, *last_ms, b)?;
                }
                tx.execute("DELETE FROM workers WHERE id = ?1", [id])
                    .map(|n| n > 0)
            })
            .await
    }

    /// Writes heartbeat state in one transaction, with what each worker's heartbeats brought to the ledger
    /// ([`crate::ledger::book`]), and waits until it is durable (an empty list is a barrier: everything queued
    /// before it is durable when it returns).
    pub(crate) async fn write_live(&self, rows: Vec<(LiveRow, Booking)>) -> Result<(), StoreError> {
        self.db
            .write(move |tx| {
                let mut s = tx.prepare_cached(
                    "UPDATE workers SET last_heartbeat_ms = ?2, status = ?3, load = ?4, free_memory = ?5, agent_version = ?6,
                     samples = ?7, requests = ?8, errors = ?9, endpoint = ?10, trust = ?11 WHERE id = ?1",
                )?;
                for (l, b) in &rows {
                    if !b.is_empty() {
                        crate::ledger::book(tx, &l.id, l.last_heartbeat_ms.unwrap_or(0), b)?;
                    }
                    s.execute(params![
                        l.id,
                        l.last_heartbeat_ms,
                        l.status,
                        l.load,
                        l.free_memory,
                        l.agent_version,
                        l.samples,
                        l.requests,
                        l.errors,
                        l.endpoint,
                        l.trust
                    ])?;
                }
                Ok(())
            })
            .await
    }

    /// Stores a new assignment (fire and forget; the worker learns it on its next heartbeat).
    pub fn write_assignment(&self, id: String, services: String, version: u64) {
        self.db.write_later("assignment", move |tx| {
            tx.execute(
                "UPDATE workers SET services = ?2, assignment_version = ?3 WHERE id = ?1",
                params![id, services, version as i64],
            )
            .map(|_| ())
        });
    }

    /// Keeps the lowered trust of workers that go, by DHT identity (fire and forget).
    pub fn remember_trust(&self, trusts: Vec<(String, f64)>, at_ms: i64) {
        if !trusts.is_empty() {
            self.db.write_later("peer trust", move |tx| {
                for (peer, trust) in trusts {
                    keep_trust(tx, &peer, trust, at_ms)?;
                }
                Ok(())
            });
        }
    }

    /// The trust kept for a DHT identity whose worker went, if any.
    pub async fn peer_trust(&self, peer_id: String) -> Result<Option<f64>, StoreError> {
        self.db
            .read(move |conn| {
                conn.prepare_cached("SELECT trust FROM peer_trust WHERE peer_id = ?1")?
                    .query_map([peer_id], |r| r.get(0))?
                    .next()
                    .transpose()
            })
            .await
    }

    /// Forgets workers.
    pub fn purge(&self, ids: Vec<String>) {
        if !ids.is_empty() {
            self.db.write_later("purge", move |tx| {
                let mut s = tx.prepare_cached("DELETE FROM workers WHERE id = ?1")?;
                for id in ids {
                    s.execute([id])?;
                }
                Ok(())
            });
        }
    }

    /// Adds a history point and drops those older than `prune_before_ms`.
    pub fn write_history(&self, ts_ms: i64, data: String, prune_before_ms: i64) {
        self.db.write_later("history", move |tx| {
            tx.execute(
                "INSERT OR REPLACE INTO history (ts_ms, data) VALUES (?1, ?2)",
                params![ts_ms, data],
            )?;
            tx.execute("DELETE FROM history WHERE ts_ms < ?1", [prune_before_ms])?;
            Ok(())
        });
    }

    /// Every stored worker (at start).
    pub fn load_workers(&self) -> Result<Vec<WorkerRow>, StoreError> {
        self.db.read_now(|conn| {
            let mut stmt = conn.prepare(
                "SELECT id, token_hash, tier, roles, capabilities, ip_address, endpoint, tunnel_url, legacy, services,
                        assignment_version, registered_at_ms, last_heartbeat_ms, status, load, free_memory, agent_version,
                        samples, requests, errors, peer_id, trust FROM workers",
            )?;
            stmt.query_map([], |r| {
                let id: String = r.get(0)?;
                Ok(WorkerRow {
                    id: id.clone(),
                    token_hash: r.get(1)?,
                    tier: r.get(2)?,
                    roles: r.get(3)?,
                    capabilities: r.get(4)?,
                    ip_address: r.get(5)?,
                    endpoint: r.get(6)?,
                    tunnel_url: r.get(7)?,
                    legacy: r.get(8)?,
                    services: r.get(9)?,
                    assignment_version: r.get::<_, i64>(10)? as u64,
                    registered_at_ms: r.get(11)?,
                    peer_id: r.get(20)?,
                    live: LiveRow {
                        id,
                        last_heartbeat_ms: r.get(12)?,
                        status: r.get(13)?,
                        load: r.get(14)?,
                        free_memory: r.get(15)?,
                        agent_version: r.get(16)?,
                        endpoint: r.get(6)?,
                        samples: r.get(17)?,
                        requests: r.get(18)?,
                        errors: r.get(19)?,
                        trust: r.get(21)?,
                    },
                })
            })?
            .collect()
        })
    }

    /// History points since `since_ms`, oldest first, at most `limit`.
    pub async fn history(
        &self,
        since_ms: i64,
        limit: usize,
    ) -> Result<Vec<(i64, String)>, StoreError> {
        self.db
            .read(move |conn| {
                conn.prepare_cached(
                    "SELECT ts_ms, data FROM history WHERE ts_ms >= ?1 ORDER BY ts_ms LIMIT ?2",
                )?
                .query_map(params![since_ms, limit as i64], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?
                .collect()
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_valid() {
        commons_server::db::migrations(MIGRATIONS)
            .validate()
            .unwrap();
    }
}
