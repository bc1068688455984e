//! The edge's SQLite file (WAL, fsync on commit): coordinators, federation keys, settings, request counts.
//!
//! Edge writes are few (a coordinator heartbeats once a minute), so one connection behind a mutex, used from
//! `spawn_blocking`, is enough; every write is durable before the caller continues.

use std::path::Path;
use std::sync::Arc;

use parking_lot::Mutex;
use rusqlite::{Connection, OptionalExtension, params};
use rusqlite_migration::{M, Migrations};

/// Storage failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite said no.
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// Migrations failed.
    #[error("database migration failed: {0}")]
    Migration(#[from] rusqlite_migration::Error),
    /// The data directory cannot be used.
    #[error("cannot use the data directory: {0}")]
    DataDir(#[from] std::io::Error),
    /// The blocking task failed.
    #[error("database task failed: {0}")]
    Task(String),
}

impl From<StoreError> for commons_server::error::ApiError {
    fn from(e: StoreError) -> Self {
        Self::Internal(e.to_string())
    }
}

/// A coordinator as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct CoordinatorRow {
    /// Id.
    pub id: String,
    /// Public URL.
    pub url: String,
    /// Region.
    pub region: Option<String>,
    /// Location.
    pub location: Option<String>,
    /// DHT addresses as JSON.
    pub dht_addrs: String,
    /// Capacity.
    pub capacity: Option<u32>,
    /// Id of the federation key it registered with.
    pub key_id: String,
    /// Registration time, ms since the epoch.
    pub registered_at_ms: i64,
    /// Last heartbeat, ms since the epoch.
    pub last_seen_ms: i64,
    /// Figures as JSON.
    pub figures: String,
}

const MIGRATIONS: &[&str] = &["CREATE TABLE coordinators (
        id TEXT PRIMARY KEY NOT NULL,
        url TEXT NOT NULL,
        region TEXT,
        location TEXT,
        dht_addrs TEXT NOT NULL,
        capacity INTEGER,
        key_id TEXT NOT NULL,
        registered_at_ms INTEGER NOT NULL,
        last_seen_ms INTEGER NOT NULL,
        figures TEXT NOT NULL
    ) STRICT;
    CREATE TABLE federation_keys (id TEXT PRIMARY KEY NOT NULL, label TEXT NOT NULL, hash BLOB NOT NULL UNIQUE) STRICT;
    CREATE TABLE settings (key TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL) STRICT;
    CREATE TABLE request_counts (day TEXT NOT NULL, kind TEXT NOT NULL, count INTEGER NOT NULL, PRIMARY KEY (day, kind)) STRICT;"];

/// The database.
#[derive(Debug, Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
}

impl Store {
    /// Opens (creating if needed) `edge.db` in `data_dir` and migrates it.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir)?;
        let mut conn = Connection::open(data_dir.join("edge.db"))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        Migrations::new(MIGRATIONS.iter().map(|s| M::up(s)).collect()).to_latest(&mut conn)?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Runs `f` on the connection off the async threads.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, rusqlite::Error> + Send + 'static,
    ) -> Result<T, StoreError> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || f(&mut conn.lock()).map_err(StoreError::from))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }

    /// Inserts or replaces a coordinator.
    pub async fn put_coordinator(&self, r: CoordinatorRow) -> Result<(), StoreError> {
        self.run(move |c| {
            c.execute(
                "INSERT OR REPLACE INTO coordinators (id, url, region, location, dht_addrs, capacity, key_id, registered_at_ms,
                 last_seen_ms, figures) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![r.id, r.url, r.region, r.location, r.dht_addrs, r.capacity, r.key_id, r.registered_at_ms, r.last_seen_ms, r.figures],
            )
            .map(|_| ())
        })
        .await
    }

    /// Records a heartbeat.
    pub async fn touch_coordinator(
        &self,
        id: String,
        last_seen_ms: i64,
        figures: String,
    ) -> Result<(), StoreError> {
        self.run(move |c| {
            c.execute(
                "UPDATE coordinators SET last_seen_ms = ?2, figures = ?3 WHERE id = ?1",
                params![id, last_seen_ms, figures],
            )
            .map(|_| ())
        })
        .await
    }

    /// Deletes coordinators.
    pub async fn delete_coordinators(&self, ids: Vec<String>) -> Result<(), StoreError> {
        self.run(move |c| {
            let tx = c.transaction()?;
            for id in ids {
                tx.execute("DELETE FROM coordinators WHERE id = ?1", [id])?;
            }
            tx.commit()
        })
        .await
    }

    /// Every stored coordinator.
    pub fn load_coordinators(&self) -> Result<Vec<CoordinatorRow>, StoreError> {
        let conn = self.conn.lock();
        let mut stmt = conn.prepare(
            "SELECT id, url, region, location, dht_addrs, capacity, key_id, registered_at_ms, last_seen_ms, figures FROM coordinators",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(CoordinatorRow {
                id: r.get(0)?,
                url: r.get(1)?,
                region: r.get(2)?,
                location: r.get(3)?,
                dht_addrs: r.get(4)?,
                capacity: r.get(5)?,
                key_id: r.get(6)?,
                registered_at_ms: r.get(7)?,
                last_seen_ms: r.get(8)?,
                figures: r.get(9)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Federation keys: (id, label, hash).
    pub fn load_keys(&self) -> Result<Vec<(String, String, Vec<u8>)>, StoreError> {
        let conn = self.conn.lock();
        let mut stmt = conn.prepare("SELECT id, label, hash FROM federation_keys")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Adds a federation key.
    pub async fn insert_key(
        &self,
        id: String,
        label: String,
        hash: Vec<u8>,
    ) -> Result<(), StoreError> {
        self.run(move |c| {
            c.execute(
                "INSERT INTO federation_keys (id, label, hash) VALUES (?1, ?2, ?3)",
                params![id, label, hash],
            )
            .map(|_| ())
        })
        .await
    }

    /// Removes a federation key; whether it existed.
    pub async fn delete_key(&self, id: String) -> Result<bool, StoreError> {
        self.run(move |c| {
            c.execute("DELETE FROM federation_keys WHERE id = ?1", [id])
                .map(|n| n > 0)
        })
        .await
    }

    /// Reads a setting.
    pub fn setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn
            .lock()
            .query_row("SELECT value FROM settings WHERE key = ?1", [key], |r| {
                r.get(0)
            })
            .optional()?)
    }

    /// Writes a setting.
    pub async fn set_setting(&self, key: &str, value: &str) -> Result<(), StoreError> {
        let (k, v) = (key.to_owned(), value.to_owned());
        self.run(move |c| {
            c.execute("INSERT INTO settings (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = ?2", [k, v]).map(|_| ())
        })
        .await
    }

    /// Request counts (day, kind, count) from `since_day` on.
    pub fn load_counts(&self, since_day: &str) -> Result<Vec<(String, String, u64)>, StoreError> {
        let conn = self.conn.lock();
        let mut stmt = conn
            .prepare("SELECT day, kind, count FROM request_counts WHERE day >= ?1 ORDER BY day")?;
        let rows = stmt.query_map([since_day], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? as u64))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Stores request counts (absolute values) and drops days before `keep_from_day`.
    pub async fn write_counts(
        &self,
        counts: Vec<(String, String, u64)>,
        keep_from_day: String,
    ) -> Result<(), StoreError> {
        self.run(move |c| {
            let tx = c.transaction()?;
            for (day, kind, n) in counts {
                tx.execute(
                    "INSERT OR REPLACE INTO request_counts (day, kind, count) VALUES (?1, ?2, ?3)",
                    params![day, kind, n as i64],
                )?;
            }
            tx.execute("DELETE FROM request_counts WHERE day < ?1", [keep_from_day])?;
            tx.commit()
        })
        .await
    }
}
