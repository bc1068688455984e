//! The usage ledger in the coordinator's SQLite file: what was served per minute, per consumer key, service and
//! worker (kept 30 days), each worker's credit (kept for good), and the hours each worker donated per day.
//!
//! Written in batches by the accounting task ([`crate::accounting`]) and, for donated time and display names, with
//! each worker's live row by the flusher ([`book`]); never on a request's path. Read by the admin usage report, the
//! volunteers' leaderboard and a worker's own contribution.

use commons_shared::WorkerId;
use commons_shared::usage::{Credit, KeyUsage, ServiceUsage, Totals, UsagePoint};
use rusqlite::{Connection, Row, Transaction, params};

use crate::store::{Store, StoreError};

/// The ledger's tables (a migration step).
pub(crate) const TABLES: &str = "
    CREATE TABLE usage (
        minute INTEGER NOT NULL,
        key_id TEXT NOT NULL,
        service TEXT NOT NULL,
        worker_id TEXT NOT NULL,
        requests INTEGER NOT NULL,
        completed INTEGER NOT NULL,
        bytes_in INTEGER NOT NULL,
        bytes_out INTEGER NOT NULL,
        duration_ms INTEGER NOT NULL,
        prompt_tokens INTEGER NOT NULL,
        completion_tokens INTEGER NOT NULL,
        PRIMARY KEY (minute, key_id, service, worker_id)
    ) STRICT, WITHOUT ROWID;
    CREATE INDEX usage_by_worker ON usage (worker_id, minute);
    CREATE TABLE credit (
        worker_id TEXT PRIMARY KEY NOT NULL,
        display_name TEXT,
        requests INTEGER NOT NULL DEFAULT 0,
        compute_ms REAL NOT NULL DEFAULT 0,
        online_ms INTEGER NOT NULL DEFAULT 0
    ) STRICT;
    CREATE TABLE donated (
        worker_id TEXT NOT NULL,
        day INTEGER NOT NULL,
        online_ms INTEGER NOT NULL,
        PRIMARY KEY (worker_id, day)
    ) STRICT, WITHOUT ROWID;";

const MINUTE_MS: i64 = 60_000;
const DAY_MS: i64 = 86_400_000;
/// How long the per-minute usage and the per-day hours are kept.
pub(crate) const KEEP_DAYS: i64 = 30;

/// One row of sums to add.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct UsageRow {
    /// Minutes since the epoch.
    pub minute: i64,
    /// The key's id ("" anonymous).
    pub key_id: String,
    /// The service's name.
    pub service: String,
    /// The worker (none when none of ours took it: stored as "").
    pub worker_id: Option<WorkerId>,
    /// The sums.
    pub totals: Totals,
}

/// What a worker earned by serving in one batch.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct CreditRow {
    /// Completed requests.
    pub requests: u64,
    /// Weighted compute time of completed requests, ms.
    pub compute_ms: f64,
}

/// What a worker's heartbeats brought since its live row was last written, booked with it.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Booking {
    /// Time it donated, ms (on the UTC day of its last heartbeat).
    pub online_ms: u64,
    /// The display name its volunteer chose (none: anonymous), when it changed or was first heard since this start.
    pub name: Option<Option<String>>,
}

impl Booking {
    /// Whether there is nothing to book.
    pub(crate) fn is_empty(&self) -> bool {
        self.online_ms == 0 && self.name.is_none()
    }
}

/// Books what worker `id`'s heartbeats brought (`at_ms`: its last heartbeat): its credit's hours, the hours of that
/// day, its display name.
pub(crate) fn book(
    tx: &Transaction<'_>,
    id: &str,
    at_ms: i64,
    b: &Booking,
) -> rusqlite::Result<()> {
    if b.online_ms > 0 {
        tx.prepare_cached(
            "INSERT INTO credit (worker_id, online_ms) VALUES (?1, ?2)
             ON CONFLICT DO UPDATE SET online_ms = online_ms + excluded.online_ms",
        )?
        .execute(params![id, sql(b.online_ms)])?;
        tx.prepare_cached(
            "INSERT INTO donated (worker_id, day, online_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT DO UPDATE SET online_ms = online_ms + excluded.online_ms",
        )?
        .execute(params![id, at_ms.div_euclid(DAY_MS), sql(b.online_ms)])?;
    }
    if let Some(name) = &b.name {
        tx.prepare_cached(
            "INSERT INTO credit (worker_id, display_name) VALUES (?1, ?2)
             ON CONFLICT DO UPDATE SET display_name = excluded.display_name",
        )?
        .execute(params![id, name])?;
    }
    Ok(())
}

/// One batch for the ledger.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    /// Usage to add.
    pub usage: Vec<UsageRow>,
    /// Credit to add, per worker that served (ids stay 16 bytes until each row is written).
    pub credit: Vec<(WorkerId, CreditRow)>,
}

impl Batch {
    pub(crate) fn is_empty(&self) -> bool {
        self.usage.is_empty() && self.credit.is_empty()
    }
}

fn add_batch(tx: &Transaction<'_>, b: &Batch, now_ms: i64) -> rusqlite::Result<()> {
    let mut s = tx.prepare_cached(
        "INSERT INTO usage (minute, key_id, service, worker_id, requests, completed, bytes_in, bytes_out, duration_ms,
                            prompt_tokens, completion_tokens)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
         ON CONFLICT DO UPDATE SET requests = requests + excluded.requests, completed = completed + excluded.completed,
            bytes_in = bytes_in + excluded.bytes_in, bytes_out = bytes_out + excluded.bytes_out,
            duration_ms = duration_ms + excluded.duration_ms, prompt_tokens = prompt_tokens + excluded.prompt_tokens,
            completion_tokens = completion_tokens + excluded.completion_tokens",
    )?;
    for r in &b.usage {
        let t = &r.totals;
        s.execute(params![
            r.minute,
            r.key_id,
            r.service,
            r.worker_id.map(|w| w.to_string()).unwrap_or_default(),
            sql(t.requests),
            sql(t.completed),
            sql(t.bytes_in),
            sql(t.bytes_out),
            sql(t.duration_ms),
            sql(t.prompt_tokens),
            sql(t.completion_tokens)
        ])?;
    }
    let mut s = tx.prepare_cached(
        "INSERT INTO credit (worker_id, requests, compute_ms) VALUES (?1, ?2, ?3)
         ON CONFLICT DO UPDATE SET requests = requests + excluded.requests, compute_ms = compute_ms + excluded.compute_ms",
    )?;
    for (id, c) in &b.credit {
        s.execute(params![id.to_string(), sql(c.requests), c.compute_ms])?;
    }
    let keep_from = now_ms - KEEP_DAYS * DAY_MS;
    tx.prepare_cached("DELETE FROM usage WHERE minute < ?1")?
        .execute([keep_from.div_euclid(MINUTE_MS)])?;
    tx.prepare_cached("DELETE FROM donated WHERE day < ?1")?
        .execute([keep_from.div_euclid(DAY_MS)])?;
    Ok(())
}

/// SQLite integers are signed.
fn sql(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn totals(r: &Row<'_>, from: usize) -> rusqlite::Result<Totals> {
    let n = |i: usize| {
        r.get::<_, i64>(from + i)
            .map(|v| u64::try_from(v).unwrap_or(0))
    };
    Ok(Totals {
        requests: n(0)?,
        completed: n(1)?,
        bytes_in: n(2)?,
        bytes_out: n(3)?,
        duration_ms: n(4)?,
        prompt_tokens: n(5)?,
        completion_tokens: n(6)?,
    })
}

const SUMS: &str = "SUM(requests), SUM(completed), SUM(bytes_in), SUM(bytes_out), SUM(duration_ms), SUM(prompt_tokens),
                    SUM(completion_tokens)";

fn credit(r: &Row<'_>, from: usize) -> rusqlite::Result<Credit> {
    Ok(Credit {
        requests: u64::try_from(r.get::<_, i64>(from)?).unwrap_or(0),
        compute_secs: r.get::<_, f64>(from + 1)? / 1000.0,
        hours: r.get::<_, i64>(from + 2)? as f64 / 3_600_000.0,
    })
}

fn usage_report(
    c: &Connection,
    since_ms: i64,
    bucket_ms: i64,
) -> rusqlite::Result<(Vec<KeyUsage>, Vec<ServiceUsage>)> {
    let since = since_ms.div_euclid(MINUTE_MS);
    let bucket = bucket_ms / MINUTE_MS;
    let mut keys: Vec<KeyUsage> = Vec::new();
    let mut s = c.prepare_cached(&format!(
        "SELECT key_id, (minute / ?2) * ?2, {SUMS} FROM usage WHERE minute >= ?1 GROUP BY key_id, 2
         ORDER BY key_id, 2"
    ))?;
    let mut rows = s.query(params![since, bucket])?;
    while let Some(r) = rows.next()? {
        let key_id: String = r.get(0)?;
        let point = UsagePoint {
            at_ms: r.get::<_, i64>(1)? * MINUTE_MS,
            totals: totals(r, 2)?,
        };
        match keys.last_mut() {
            Some(k) if k.key_id == key_id => k.series.push(point),
            _ => keys.push(KeyUsage {
                key_id,
                totals: Totals::default(),
                series: vec![point],
                services: Vec::new(),
            }),
        }
    }
    let mut s = c.prepare_cached(&format!(
        "SELECT key_id, service, {SUMS} FROM usage WHERE minute >= ?1 GROUP BY key_id, service"
    ))?;
    let mut rows = s.query([since])?;
    while let Some(r) = rows.next()? {
        let key_id: String = r.get(0)?;
        if let Some(k) = keys.iter_mut().find(|k| k.key_id == key_id) {
            k.services.push(ServiceUsage {
                service: r.get(1)?,
                totals: totals(r, 2)?,
            });
        }
    }
    let mut s = c.prepare_cached(&format!(
        "SELECT service, {SUMS} FROM usage WHERE minute >= ?1 GROUP BY service"
    ))?;
    let mut services = s
        .query_map([since], |r| {
            Ok(ServiceUsage {
                service: r.get(0)?,
                totals: totals(r, 1)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    for k in &mut keys {
        k.totals = sum(k.series.iter().map(|p| &p.totals));
        k.services
            .sort_by_key(|s| std::cmp::Reverse(s.totals.requests));
    }
    keys.sort_by_key(|k| std::cmp::Reverse(k.totals.requests));
    services.sort_by_key(|s| std::cmp::Reverse(s.totals.requests));
    Ok((keys, services))
}

fn sum<'a>(all: impl Iterator<Item = &'a Totals>) -> Totals {
    all.fold(Totals::default(), |a, t| Totals {
        requests: a.requests + t.requests,
        completed: a.completed + t.completed,
        bytes_in: a.bytes_in + t.bytes_in,
        bytes_out: a.bytes_out + t.bytes_out,
        duration_ms: a.duration_ms + t.duration_ms,
        prompt_tokens: a.prompt_tokens + t.prompt_tokens,
        completion_tokens: a.completion_tokens + t.completion_tokens,
    })
}

/// What a worker served today and donated this week, as the ledger has it.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct WorkerRecord {
    /// Completed requests today per service name.
    pub today: Vec<(String, u64)>,
    /// Online time in the last 7 days, ms.
    pub week_ms: u64,
    /// Its credit.
    pub credit: Credit,
}

impl Store {
    /// Adds a batch (fire and forget: losing the last seconds' sums in a crash costs only those) and drops what is
    /// older than 30 days.
    pub(crate) fn add_usage(&self, batch: Batch, now_ms: i64) {
        self.db()
            .write_later("usage", move |tx| add_batch(tx, &batch, now_ms));
    }

    /// Each key's use since `since_ms` in buckets of `bucket_ms` (whole minutes), and every service's.
    pub(crate) async fn usage_report(
        &self,
        since_ms: i64,
        bucket_ms: i64,
    ) -> Result<(Vec<KeyUsage>, Vec<ServiceUsage>), StoreError> {
        self.db()
            .read(move |c| usage_report(c, since_ms, bucket_ms))
            .await
    }

    /// The `limit` best workers by credit points, with their display names.
    pub(crate) async fn leaderboard(
        &self,
        limit: usize,
    ) -> Result<Vec<(String, Option<String>, Credit)>, StoreError> {
        use commons_shared::usage::{CREDIT_PER_HOUR, CREDIT_PER_REQUEST};
        self.db()
            .read(move |c| {
                c.prepare_cached(
                    "SELECT worker_id, display_name, requests, compute_ms, online_ms FROM credit
                     ORDER BY requests * ?1 + compute_ms / 1000.0 + online_ms / 3600000.0 * ?2 DESC, worker_id
                     LIMIT ?3",
                )?
                .query_map(
                    params![CREDIT_PER_REQUEST, CREDIT_PER_HOUR, sql(limit as u64)],
                    |r| Ok((r.get(0)?, r.get(1)?, credit(r, 2)?)),
                )?
                .collect()
            })
            .await
    }

    /// What worker `id` served today and donated in the 7 days up to today (UTC), and its credit.
    pub(crate) async fn worker_record(
        &self,
        id: String,
        now_ms: i64,
    ) -> Result<WorkerRecord, StoreError> {
        let today = now_ms.div_euclid(DAY_MS);
        self.db()
            .read(move |c| {
                let served = c
                    .prepare_cached(
                        "SELECT service, SUM(completed) FROM usage WHERE worker_id = ?1 AND minute >= ?2
                         GROUP BY service ORDER BY 2 DESC, service",
                    )?
                    .query_map(params![id, today * DAY_MS / MINUTE_MS], |r| {
                        Ok((r.get(0)?, u64::try_from(r.get::<_, i64>(1)?).unwrap_or(0)))
                    })?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                let week_ms: i64 = c
                    .prepare_cached(
                        "SELECT COALESCE(SUM(online_ms), 0) FROM donated WHERE worker_id = ?1 AND day > ?2",
                    )?
                    .query_row(params![id, today - 7], |r| r.get(0))?;
                let credit = c
                    .prepare_cached(
                        "SELECT requests, compute_ms, online_ms FROM credit WHERE worker_id = ?1",
                    )?
                    .query_row([&id], |r| credit(r, 0))
                    .or_else(|e| match e {
                        rusqlite::Error::QueryReturnedNoRows => Ok(Credit::default()),
                        e => Err(e),
                    })?;
                Ok(WorkerRecord {
                    today: served,
                    week_ms: u64::try_from(week_ms).unwrap_or(0),
                    credit,
                })
            })
            .await
    }

    /// Each key's requests and tokens so far today (UTC), to carry its daily quota across a restart.
    pub(crate) fn key_use_today(&self, now_ms: i64) -> Result<Vec<(String, u64, u64)>, StoreError> {
        let since = now_ms.div_euclid(DAY_MS) * DAY_MS / MINUTE_MS;
        self.db().read_now(|c| {
            c.prepare(
                "SELECT key_id, SUM(requests), SUM(prompt_tokens + completion_tokens) FROM usage
                 WHERE minute >= ?1 AND key_id != '' GROUP BY key_id",
            )?
            .query_map([since], |r| {
                Ok((
                    r.get(0)?,
                    u64::try_from(r.get::<_, i64>(1)?).unwrap_or(0),
                    u64::try_from(r.get::<_, i64>(2)?).unwrap_or(0),
                ))
            })?
            .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W1: WorkerId = WorkerId(1);
    const W2: WorkerId = WorkerId(2);

    fn row(minute: i64, key: &str, service: &str, worker: WorkerId, completed: u64) -> UsageRow {
        UsageRow {
            minute,
            key_id: key.into(),
            service: service.into(),
            worker_id: Some(worker),
            totals: Totals {
                requests: 1,
                completed,
                bytes_in: 10,
                bytes_out: 100,
                duration_ms: 5,
                prompt_tokens: 2,
                completion_tokens: 3,
            },
        }
    }

    #[tokio::test]
    async fn batches_add_up_and_old_minutes_go() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let now_ms = 100 * DAY_MS + 5 * MINUTE_MS;
        let now_min = now_ms / MINUTE_MS;
        let old = now_min - KEEP_DAYS * 1440 - 1;
        for _ in 0..2 {
            store.add_usage(
                Batch {
                    usage: vec![
                        row(now_min, "k1", "ocr", W1, 1),
                        row(now_min, "k1", "llm", W1, 0),
                        row(now_min - 61, "k2", "ocr", W2, 1),
                        row(old, "k1", "ocr", W1, 1),
                    ],
                    credit: vec![(
                        W1,
                        CreditRow {
                            requests: 1,
                            compute_ms: 20.0,
                        },
                    )],
                },
                now_ms,
            );
            // What the flusher books with a live row: half an hour donated, and a name.
            let booking = Booking {
                online_ms: 1_800_000,
                name: Some(Some("Ada".into())),
            };
            store
                .db()
                .write(move |tx| book(tx, &W1.to_string(), now_ms, &booking))
                .await
                .unwrap();
        }
        store.write_live(Vec::new()).await.unwrap(); // a barrier: both batches are in
        let (keys, services) = store
            .usage_report(now_ms - 3_600_000 * 2, 3_600_000)
            .await
            .unwrap();
        assert_eq!(keys[0].key_id, "k1");
        assert_eq!((keys[0].totals.requests, keys[0].totals.completed), (4, 2));
        assert_eq!(keys[0].totals.prompt_tokens, 8);
        assert_eq!(keys[0].services.len(), 2);
        assert_eq!(keys[1].key_id, "k2");
        assert_eq!(keys[1].series.len(), 1);
        assert_eq!(keys[1].series[0].at_ms % 3_600_000, 0);
        assert_eq!(services[0].service, "ocr");
        assert_eq!(services[0].totals.requests, 4);
        // The row older than 30 days was dropped.
        let all = store.usage_report(0, 1440 * MINUTE_MS).await.unwrap().0;
        assert_eq!(all.iter().map(|k| k.totals.requests).sum::<u64>(), 6);
        let board = store.leaderboard(10).await.unwrap();
        assert_eq!(board.len(), 1);
        assert_eq!(board[0].1.as_deref(), Some("Ada"));
        assert_eq!(board[0].2.requests, 2);
        assert_eq!(board[0].2.hours, 1.0);
        let rec = store.worker_record(W1.to_string(), now_ms).await.unwrap();
        assert_eq!(
            rec.today,
            vec![("ocr".to_owned(), 2), ("llm".to_owned(), 0)]
        );
        assert_eq!(rec.week_ms, 3_600_000);
        assert_eq!(rec.credit.compute_secs, 0.04);
        // k2's requests were yesterday's.
        assert_eq!(
            store.key_use_today(now_ms).unwrap(),
            vec![("k1".to_owned(), 4, 20)]
        );
        let none = store
            .worker_record(WorkerId(9).to_string(), now_ms)
            .await
            .unwrap();
        assert_eq!(none, WorkerRecord::default());
    }
}
