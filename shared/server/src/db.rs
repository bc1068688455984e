//! The one way Commons' servers keep SQLite: a file in WAL mode with embedded migrations, one writer thread with
//! group commit, and a reader connection used off the async threads.
//!
//! Every write goes through the writer thread: it takes all queued jobs, runs them in one transaction, commits
//! (fsync: `synchronous=FULL`), and only then answers each caller. A registration's 200 is therefore sent after
//! its row is durable, and a burst of writes shares one fsync. Reads use a second connection (WAL lets it read
//! while the writer writes), from `spawn_blocking`.
//!
//! Every Commons database has a `settings (key, value)` table; [`Db::setting`] and [`Db::set_setting`] use it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;

use parking_lot::Mutex;
use rusqlite::{Connection, OptionalExtension, Transaction};
use rusqlite_migration::{M, Migrations};
use tokio::sync::oneshot;

use crate::error::ApiError;

/// Storage failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DbError {
    /// SQLite said no.
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// Migrations failed.
    #[error("database migration failed: {0}")]
    Migration(#[from] rusqlite_migration::Error),
    /// The write ran, but the transaction it was part of did not commit.
    #[error("database commit failed: {0}")]
    Commit(#[source] Arc<rusqlite::Error>),
    /// A stored value could not be decoded.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The data directory cannot be used.
    #[error("cannot use the data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The writer thread has stopped, or a read task was lost.
    #[error("the database has stopped")]
    Closed,
    /// The file is there but is not a SQLite database SQLite can read.
    #[error(
        "{path} is not a SQLite database this server can read ({source}); it was left as it is: move it away to \
         start with an empty database, or put a backup in its place"
    )]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// What SQLite said.
        #[source]
        source: rusqlite::Error,
    },
}

impl DbError {
    /// Whether the write failed because the disk is full (it succeeds again once there is room).
    pub fn is_disk_full(&self) -> bool {
        let code = |e: &rusqlite::Error| e.sqlite_error_code();
        match self {
            Self::Sqlite(e) => code(e) == Some(rusqlite::ErrorCode::DiskFull),
            Self::Commit(e) => code(e) == Some(rusqlite::ErrorCode::DiskFull),
            _ => false,
        }
    }
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> Self {
        if e.is_disk_full() {
            tracing::error!(error = %e, "the database's disk is full: nothing new is stored until there is room");
            return Self::Unavailable(
                "this server cannot store anything right now (its disk is full); nothing was changed, try again later"
                    .into(),
            );
        }
        Self::Internal(e.to_string())
    }
}

/// A write job: runs inside the batch's transaction and returns what answers its caller after the commit.
type Job = Box<dyn FnOnce(&Transaction<'_>) -> Done + Send>;
/// Answers a caller once the batch's commit is known (with the commit's error, if any).
type Done = Box<dyn FnOnce(Option<&Arc<rusqlite::Error>>) + Send>;

/// Most jobs in one transaction.
const MAX_BATCH: usize = 4096;

/// A SQLite database: the writer thread's queue and a reader connection.
#[derive(Clone)]
pub struct Db {
    tx: mpsc::Sender<Job>,
    reader: Arc<Mutex<Connection>>,
    path: PathBuf,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").field("path", &self.path).finish()
    }
}

fn connect(path: &Path) -> Result<Connection, DbError> {
    let conn = Connection::open(path)?;
    // The first statement reads the file's header: a file that is not a database (or a damaged one) says so here,
    // before anything could write to it.
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(|source| match source.sqlite_error_code() {
            Some(rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt) => {
                DbError::Unreadable {
                    path: path.into(),
                    source,
                }
            }
            _ => DbError::Sqlite(source),
        })?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    // A small page cache per connection (the OS caches the file anyway): memory stays flat as tables grow.
    conn.pragma_update(None, "cache_size", -512)?;
    Ok(conn)
}

/// The migrations of `steps`, in order (for [`Db::open`] and for a test that validates them).
pub fn migrations(steps: &'static [&'static str]) -> Migrations<'static> {
    Migrations::new(steps.iter().map(|sql| M::up(sql)).collect())
}

impl Db {
    /// Opens (creating if needed) `data_dir/file`, migrates it through `steps` and starts its writer thread
    /// (named `thread`). The thread ends when the last clone is dropped and its queue is empty.
    pub fn open(
        data_dir: &Path,
        file: &str,
        steps: &'static [&'static str],
        thread: &str,
    ) -> Result<Self, DbError> {
        let dir_error = |source| DbError::DataDir {
            path: data_dir.into(),
            source,
        };
        std::fs::create_dir_all(data_dir).map_err(dir_error)?;
        let path = data_dir.join(file);
        let mut writer = connect(&path)?;
        migrations(steps).to_latest(&mut writer)?;
        let reader = connect(&path)?;
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name(thread.into())
            .spawn(move || writer_loop(writer, rx))
            .map_err(dir_error)?;
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

    /// Runs `f` in the writer's next transaction and returns its result once the transaction is durable.
    pub async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, DbError> {
        let (reply, rx) = oneshot::channel();
        let job: Job = Box::new(move |tx| {
            let res = f(tx);
            Box::new(move |commit: Option<&Arc<rusqlite::Error>>| {
                let out = match (res, commit) {
                    (Err(e), _) => Err(DbError::Sqlite(e)),
                    (Ok(_), Some(e)) => Err(DbError::Commit(e.clone())),
                    (Ok(v), None) => Ok(v),
                };
                let _ = reply.send(out);
            })
        });
        self.tx.send(job).map_err(|_| DbError::Closed)?;
        rx.await.map_err(|_| DbError::Closed)?
    }

    /// Queues `f` for the writer without waiting (a failure is logged as `what`): for writes whose loss a restart
    /// repairs, such as an assignment the worker learns again on its next heartbeat.
    pub fn write_later(
        &self,
        what: &'static str,
        f: impl FnOnce(&Transaction<'_>) -> rusqlite::Result<()> + Send + 'static,
    ) {
        let job: Job = Box::new(move |tx| {
            if let Err(e) = f(tx) {
                tracing::error!(error = %e, "database write failed: {what}");
            }
            Box::new(|_| {})
        });
        if self.tx.send(job).is_err() {
            tracing::warn!("the database writer has stopped; a write was dropped: {what}");
        }
    }

    /// Runs `f` on the reader connection, off the async threads.
    pub async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, DbError> {
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || f(&reader.lock()).map_err(DbError::from))
            .await
            .map_err(|_| DbError::Closed)?
    }

    /// Runs `f` on the reader connection on this thread: for loading at start, before serving.
    pub fn read_now<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, DbError> {
        Ok(f(&self.reader.lock())?)
    }

    /// Reads a setting (at start).
    pub fn setting(&self, key: &str) -> Result<Option<String>, DbError> {
        self.read_now(|c| {
            c.query_row("SELECT value FROM settings WHERE key = ?1", [key], |r| {
                r.get(0)
            })
            .optional()
        })
    }

    /// Sets a setting durably.
    pub async fn set_setting(&self, key: &str, value: &str) -> Result<(), DbError> {
        let (k, v) = (key.to_owned(), value.to_owned());
        self.write(move |tx| {
            tx.execute(
                "INSERT INTO settings (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = ?2",
                [k, v],
            )
            .map(|_| ())
        })
        .await
    }
}

fn writer_loop(mut conn: Connection, rx: mpsc::Receiver<Job>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        let mut done: Vec<Done> = Vec::with_capacity(batch.len());
        let result = (|| -> Result<(), rusqlite::Error> {
            let tx = conn.transaction()?;
            for job in batch {
                done.push(job(&tx));
            }
            tx.commit()
        })();
        let failed = result.err().map(Arc::new);
        if let Some(e) = &failed {
            tracing::error!(error = %e, "database commit failed");
        }
        for d in done {
            d(failed.as_ref());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STEPS: &[&str] = &[
        "CREATE TABLE settings (key TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL) STRICT;",
        "CREATE TABLE t (n INTEGER PRIMARY KEY NOT NULL) STRICT;",
    ];

    #[tokio::test]
    async fn writes_are_durable_and_read_back_and_a_failed_job_fails_alone() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), "t.db", STEPS, "test-db").unwrap();
        db.set_setting("k", "v").await.unwrap();
        assert_eq!(db.setting("k").unwrap().as_deref(), Some("v"));
        // Many writers at once share transactions; one that fails (a duplicate key) does not fail the others.
        let mut jobs = Vec::new();
        for n in 0..50i64 {
            let db = db.clone();
            jobs.push(tokio::spawn(async move {
                db.write(move |tx| tx.execute("INSERT INTO t (n) VALUES (?1)", [n % 49]))
                    .await
            }));
        }
        let mut failed = 0;
        for j in jobs {
            if let Err(e) = j.await.unwrap() {
                assert!(matches!(e, DbError::Sqlite(_)), "{e}");
                failed += 1;
            }
        }
        assert_eq!(failed, 1);
        db.write_later("n", |tx| {
            tx.execute("INSERT INTO t (n) VALUES (100)", []).map(|_| ())
        });
        // A write is a barrier for what was queued before it.
        db.set_setting("k", "w").await.unwrap();
        let count: i64 = db
            .read(|c| c.query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0)))
            .await
            .unwrap();
        assert_eq!(count, 50);
        drop(db);
        let again = Db::open(dir.path(), "t.db", STEPS, "test-db").unwrap();
        assert_eq!(again.setting("k").unwrap().as_deref(), Some("w"));
    }

    #[test]
    fn a_data_dir_that_cannot_be_made_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, "").unwrap();
        let e = Db::open(&file.join("sub"), "t.db", STEPS, "test-db").unwrap_err();
        assert!(e.to_string().contains("sub"), "{e}");
    }

    #[test]
    fn migrations_are_valid() {
        migrations(STEPS).validate().unwrap();
    }
}
