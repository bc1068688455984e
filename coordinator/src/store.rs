//! Persistence: one SQLite file in WAL mode, embedded migrations, a single writer thread with group commit.
//!
//! Every write goes through the writer thread: it takes all queued commands, applies them in one transaction,
//! commits (fsync: `synchronous=FULL`), and only then answers each caller. A registration's 200 is therefore sent
//! after its row is durable, and a burst of registrations shares one fsync. Reads use a second connection
//! (WAL lets it read while the writer writes).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;

use parking_lot::Mutex;
use rusqlite::{Connection, OptionalExtension, params};
use rusqlite_migration::{M, Migrations};
use tokio::sync::oneshot;

/// Storage failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite said no.
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// Migrations failed.
    #[error("database migration failed: {0}")]
    Migration(#[from] rusqlite_migration::Error),
    /// A stored value could not be decoded.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The data directory cannot be used.
    #[error("cannot use the data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The writer thread has stopped.
    #[error("the database writer has stopped")]
    Closed,
}

impl From<StoreError> for commons_server::error::ApiError {
    fn from(e: StoreError) -> Self {
        Self::Internal(e.to_string())
    }
}

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
}

/// An enrollment token as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct EnrollmentRow {
    /// Id.
    pub id: String,
    /// Label.
    pub label: String,
    /// SHA-256 of the token.
    pub hash: Vec<u8>,
}

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// Answers a caller once the batch's commit is known (with the commit's error, if any).
type Done = Box<dyn FnOnce(Option<&StoreError>)>;

enum Cmd {
    InsertWorker(Box<WorkerRow>, Reply<()>),
    DeleteWorker(String, Reply<bool>),
    Live(Vec<LiveRow>, Reply<()>),
    Assignment {
        id: String,
        services: String,
        version: u64,
    },
    Purge(Vec<String>),
    History {
        ts_ms: i64,
        data: String,
        prune_before_ms: i64,
    },
    Setting(String, String, Reply<()>),
    InsertEnrollment(EnrollmentRow, Reply<()>),
    RevokeEnrollment(String, Reply<bool>),
}

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
];

fn migrations() -> Migrations<'static> {
    Migrations::new(MIGRATIONS.iter().map(|sql| M::up(sql)).collect())
}

fn open(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    // A small page cache per connection (the OS caches the file anyway): memory stays flat as the registry grows.
    conn.pragma_update(None, "cache_size", -512)?;
    Ok(conn)
}

/// The database.
#[derive(Debug, Clone)]
pub struct Store {
    tx: mpsc::Sender<Cmd>,
    reader: Arc<Mutex<Connection>>,
    path: PathBuf,
}

impl std::fmt::Debug for Cmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cmd")
    }
}

impl Store {
    /// Opens (creating if needed) `commons.db` in `data_dir` and migrates it.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|source| StoreError::DataDir {
            path: data_dir.into(),
            source,
        })?;
        let path = data_dir.join("commons.db");
        let mut writer = open(&path)?;
        migrations().to_latest(&mut writer)?;
        let reader = open(&path)?;
        let (tx, rx) = mpsc::channel();
        // The thread ends when the last `Store` clone is dropped and the queue is empty; callers that need their
        // writes durable wait for a reply (`write_live_sync` is the shutdown flush).
        std::thread::Builder::new()
            .name("commons-db-writer".into())
            .spawn(move || writer_loop(writer, rx))
            .map_err(|source| StoreError::DataDir {
                path: data_dir.into(),
                source,
            })?;
        Ok(Self {
            tx,
            reader: Arc::new(Mutex::new(reader)),
            path,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Cmd) -> Result<T, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(make(reply)).map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    fn tell(&self, cmd: Cmd) {
        if self.tx.send(cmd).is_err() {
            tracing::warn!("database writer has stopped; a write was dropped");
        }
    }

    /// Stores a new worker; returns once it is durable.
    pub async fn insert_worker(&self, row: WorkerRow) -> Result<(), StoreError> {
        self.ask(|r| Cmd::InsertWorker(Box::new(row), r)).await
    }

    /// Deletes a worker; returns once durable, with whether it existed.
    pub async fn delete_worker(&self, id: String) -> Result<bool, StoreError> {
        self.ask(|r| Cmd::DeleteWorker(id, r)).await
    }

    /// Writes heartbeat state in one transaction and waits until it is durable (an empty list is a barrier:
    /// everything queued before it is durable when it returns).
    pub async fn write_live(&self, rows: Vec<LiveRow>) -> Result<(), StoreError> {
        self.ask(|r| Cmd::Live(rows, r)).await
    }

    /// Stores a new assignment (fire and forget; the worker learns it on its next heartbeat).
    pub fn write_assignment(&self, id: String, services: String, version: u64) {
        self.tell(Cmd::Assignment {
            id,
            services,
            version,
        });
    }

    /// Forgets workers.
    pub fn purge(&self, ids: Vec<String>) {
        if !ids.is_empty() {
            self.tell(Cmd::Purge(ids));
        }
    }

    /// Adds a history point and drops those older than `prune_before_ms`.
    pub fn write_history(&self, ts_ms: i64, data: String, prune_before_ms: i64) {
        self.tell(Cmd::History {
            ts_ms,
            data,
            prune_before_ms,
        });
    }

    /// Sets a setting durably.
    pub async fn set_setting(&self, key: &str, value: &str) -> Result<(), StoreError> {
        let (k, v) = (key.to_owned(), value.to_owned());
        self.ask(|r| Cmd::Setting(k, v, r)).await
    }

    /// Adds an enrollment token durably.
    pub async fn insert_enrollment(&self, row: EnrollmentRow) -> Result<(), StoreError> {
        self.ask(|r| Cmd::InsertEnrollment(row, r)).await
    }

    /// Revokes an enrollment token; whether it existed.
    pub async fn revoke_enrollment(&self, id: String) -> Result<bool, StoreError> {
        self.ask(|r| Cmd::RevokeEnrollment(id, r)).await
    }

    /// Reads a setting.
    pub fn setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        let conn = self.reader.lock();
        Ok(conn
            .query_row("SELECT value FROM settings WHERE key = ?1", [key], |r| {
                r.get(0)
            })
            .optional()?)
    }

    /// Every stored worker.
    pub fn load_workers(&self) -> Result<Vec<WorkerRow>, StoreError> {
        let conn = self.reader.lock();
        let mut stmt = conn.prepare(
            "SELECT id, token_hash, tier, roles, capabilities, ip_address, endpoint, tunnel_url, legacy, services,
                    assignment_version, registered_at_ms, last_heartbeat_ms, status, load, free_memory, agent_version,
                    samples, requests, errors, peer_id FROM workers",
        )?;
        let rows = stmt.query_map([], |r| {
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
                },
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Every enrollment token.
    pub fn load_enrollments(&self) -> Result<Vec<EnrollmentRow>, StoreError> {
        let conn = self.reader.lock();
        let mut stmt = conn.prepare("SELECT id, label, hash FROM enrollment_tokens")?;
        let rows = stmt.query_map([], |r| {
            Ok(EnrollmentRow {
                id: r.get(0)?,
                label: r.get(1)?,
                hash: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// History points since `since_ms`, oldest first, at most `limit`.
    pub fn history(&self, since_ms: i64, limit: usize) -> Result<Vec<(i64, String)>, StoreError> {
        let conn = self.reader.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT ts_ms, data FROM history WHERE ts_ms >= ?1 ORDER BY ts_ms LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![since_ms, limit as i64], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

fn writer_loop(mut conn: Connection, rx: mpsc::Receiver<Cmd>) {
    const MAX_BATCH: usize = 4096;
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(c) => batch.push(c),
                Err(_) => break,
            }
        }
        let mut done: Vec<Done> = Vec::with_capacity(batch.len());
        let result = (|| -> Result<(), StoreError> {
            let tx = conn.transaction()?;
            for cmd in batch {
                apply(&tx, cmd, &mut done);
            }
            tx.commit()?;
            Ok(())
        })();
        if let Err(e) = &result {
            tracing::error!(error = %e, "database commit failed");
        }
        for d in done {
            d(result.as_ref().err());
        }
    }
}

/// Applies one command inside the open transaction and queues its reply for after the commit.
fn apply(tx: &rusqlite::Transaction<'_>, cmd: Cmd, done: &mut Vec<Done>) {
    fn reply<T: 'static>(r: Reply<T>, res: Result<T, rusqlite::Error>) -> Done {
        Box::new(move |commit_err: Option<&StoreError>| {
            let out = match (res, commit_err) {
                (Err(e), _) => Err(StoreError::Sqlite(e)),
                (Ok(_), Some(e)) => Err(StoreError::Corrupt(format!("commit failed: {e}"))),
                (Ok(v), None) => Ok(v),
            };
            let _ = r.send(out);
        })
    }
    let log = |what: &str, res: Result<usize, rusqlite::Error>| {
        if let Err(e) = res {
            tracing::error!(error = %e, "database write failed: {what}");
        }
    };
    match cmd {
        Cmd::InsertWorker(w, r) => {
            let res = tx
                .prepare_cached(
                    "INSERT INTO workers (id, token_hash, tier, roles, capabilities, ip_address, endpoint, tunnel_url, legacy,
                     services, assignment_version, registered_at_ms, last_heartbeat_ms, status, load, free_memory,
                     agent_version, samples, requests, errors, peer_id)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21)",
                )
                .and_then(|mut s| {
                    s.execute(params![
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
                        w.peer_id
                    ])
                })
                .map(|_| ());
            done.push(reply(r, res));
        }
        Cmd::DeleteWorker(id, r) => {
            let res = tx
                .execute("DELETE FROM workers WHERE id = ?1", [id])
                .map(|n| n > 0);
            done.push(reply(r, res));
        }
        Cmd::Live(rows, r) => {
            let res = tx
                .prepare_cached(
                    "UPDATE workers SET last_heartbeat_ms = ?2, status = ?3, load = ?4, free_memory = ?5, agent_version = ?6,
                     samples = ?7, requests = ?8, errors = ?9, endpoint = ?10 WHERE id = ?1",
                )
                .and_then(|mut s| {
                    for l in &rows {
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
                            l.endpoint
                        ])?;
                    }
                    Ok(())
                });
            done.push(reply(r, res));
        }
        Cmd::Assignment {
            id,
            services,
            version,
        } => log(
            "assignment",
            tx.execute(
                "UPDATE workers SET services = ?2, assignment_version = ?3 WHERE id = ?1",
                params![id, services, version as i64],
            ),
        ),
        Cmd::Purge(ids) => {
            for id in ids {
                log(
                    "purge",
                    tx.execute("DELETE FROM workers WHERE id = ?1", [id]),
                );
            }
        }
        Cmd::History {
            ts_ms,
            data,
            prune_before_ms,
        } => {
            log(
                "history",
                tx.execute(
                    "INSERT OR REPLACE INTO history (ts_ms, data) VALUES (?1, ?2)",
                    params![ts_ms, data],
                ),
            );
            log(
                "history prune",
                tx.execute("DELETE FROM history WHERE ts_ms < ?1", [prune_before_ms]),
            );
        }
        Cmd::Setting(k, v, r) => {
            let res = tx
                .execute("INSERT INTO settings (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = ?2", [k, v])
                .map(|_| ());
            done.push(reply(r, res));
        }
        Cmd::InsertEnrollment(e, r) => {
            let res = tx
                .execute(
                    "INSERT INTO enrollment_tokens (id, label, hash) VALUES (?1, ?2, ?3)",
                    params![e.id, e.label, e.hash],
                )
                .map(|_| ());
            done.push(reply(r, res));
        }
        Cmd::RevokeEnrollment(id, r) => {
            let res = tx
                .execute("DELETE FROM enrollment_tokens WHERE id = ?1", [id])
                .map(|n| n > 0);
            done.push(reply(r, res));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_valid() {
        migrations().validate().unwrap();
    }
}
