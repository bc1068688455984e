//! The edge's SQLite file ([`commons_server::db`]: WAL, one writer with group commit, durable before the caller
//! continues): coordinators, federation keys, settings, request counts.

use std::path::Path;

use commons_server::db::Db;
use commons_server::tokens::TokenKind;
use rusqlite::params;

pub use commons_server::db::DbError as StoreError;

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
    CREATE TABLE request_counts (day TEXT NOT NULL, kind TEXT NOT NULL, count INTEGER NOT NULL, PRIMARY KEY (day, kind)) STRICT;",
    commons_server::consumers::TABLE,
];

/// The federation keys, kept in their table.
pub const FEDERATION_KEYS: TokenKind = TokenKind {
    table: "federation_keys",
    noun: "federation key",
    secret_field: "key",
    list_field: "keys",
};

/// The database.
#[derive(Debug, Clone)]
pub struct Store {
    db: Db,
}

impl Store {
    /// Opens (creating if needed) `edge.db` in `data_dir` and migrates it.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        Ok(Self {
            db: Db::open(data_dir, "edge.db", MIGRATIONS, "edge-db-writer")?,
        })
    }

    /// The database underneath (settings, tokens).
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Inserts or replaces a coordinator.
    pub async fn put_coordinator(&self, r: CoordinatorRow) -> Result<(), StoreError> {
        self.db.write(move |c| {
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
        self.db
            .write(move |c| {
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
        self.db
            .write(move |tx| {
                for id in ids {
                    tx.execute("DELETE FROM coordinators WHERE id = ?1", [id])?;
                }
                Ok(())
            })
            .await
    }

    /// Every stored coordinator.
    pub fn load_coordinators(&self) -> Result<Vec<CoordinatorRow>, StoreError> {
        self.db.read_now(|conn| {
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
        rows.collect()
        })
    }

    /// Request counts (day, kind, count) from `since_day` on.
    pub fn load_counts(&self, since_day: &str) -> Result<Vec<(String, String, u64)>, StoreError> {
        self.db.read_now(|conn| {
            conn.prepare(
                "SELECT day, kind, count FROM request_counts WHERE day >= ?1 ORDER BY day",
            )?
            .query_map([since_day], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? as u64))
            })?
            .collect()
        })
    }

    /// Stores request counts (absolute values) and drops days before `keep_from_day`.
    pub async fn write_counts(
        &self,
        counts: Vec<(String, String, u64)>,
        keep_from_day: String,
    ) -> Result<(), StoreError> {
        self.db
            .write(move |tx| {
                for (day, kind, n) in counts {
                    tx.execute(
                    "INSERT OR REPLACE INTO request_counts (day, kind, count) VALUES (?1, ?2, ?3)",
                    params![day, kind, n as i64],
                )?;
                }
                tx.execute("DELETE FROM request_counts WHERE day < ?1", [keep_from_day])?;
                Ok(())
            })
            .await
    }
}
