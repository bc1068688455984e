//! The rag service: a vector store of named collections, searched by vector. Clients embed their texts with the
//! llm service's `/v1/embeddings` and keep them here with their vectors; a question is embedded the same way and
//! searched for.
//!
//! - `PUT /collections/{name}` `{dimension}` creates one (200 when it exists with that dimension, 409 with another);
//!   `GET /collections`, `GET /collections/{name}`, `DELETE /collections/{name}`.
//! - `POST /collections/{name}/points` `{points: [{id, vector, text?, payload?}]}` adds or replaces points by id;
//!   `POST /collections/{name}/points/delete` `{ids}` removes them.
//! - `POST /collections/{name}/search` `{vector, limit?}` answers the nearest points by cosine similarity,
//!   `{results: [{id, score, text, payload}]}`, best first.
//! - `GET /health`. Errors are JSON `{error, message}`; bodies, dimensions, ids, texts and the number of points are
//!   bounded.
//!
//! The index: an HNSW graph (`instant-distance`) over the points present when it was built, and an exact scan of
//! the points written since. The graph is immutable, so it is rebuilt off the request path (a blocking task, no lock
//! held while it builds) once the points written since outnumber a quarter of those in it; until then, and while it
//! builds, every point is found. Replaced and deleted points are skipped, and dropped when the index is rebuilt
//! from scratch.
//!
//! Collections live in the container's memory: a rag replica is a cache on a volunteer's machine, not a database.
//! The coordinator routes each collection's requests to one replica (the catalogue's `sticky_segment`).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use commons_server::error::ApiError;
use commons_shared::validate::parse_json;
use instant_distance::{Builder, HnswMap, Search};
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The largest request body, bytes.
pub const MAX_BODY: usize = 16 << 20;
/// The widest vector.
pub const MAX_DIMENSION: usize = 4096;
/// Collections one replica holds.
pub const MAX_COLLECTIONS: usize = 64;
/// Results one search answers.
pub const MAX_LIMIT: usize = 100;
/// Points one request writes.
pub const MAX_POINTS_PER_REQUEST: usize = 10_000;
/// The longest text kept with a point, bytes.
pub const MAX_TEXT: usize = 64 << 10;
/// Points written since the last build that an exact scan takes before a rebuild is worth it, at least.
const REBUILD_AFTER: usize = 256;

/// A unit vector (normalised when stored, so that the dot product is the cosine similarity).
#[derive(Debug, Clone)]
struct Unit(Arc<[f32]>);

impl Unit {
    /// `v` scaled to length 1; `None` for a zero or non-finite vector.
    fn new(v: &[f32]) -> Option<Self> {
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        (norm.is_finite() && norm > 0.0).then(|| Self(v.iter().map(|x| x / norm).collect()))
    }

    fn dot(&self, other: &Self) -> f32 {
        self.0.iter().zip(other.0.iter()).map(|(a, b)| a * b).sum()
    }
}

impl instant_distance::Point for Unit {
    fn distance(&self, other: &Self) -> f32 {
        1.0 - self.dot(other)
    }
}

/// What is kept with a point.
#[derive(Debug, Clone)]
struct Entry {
    id: String,
    text: Option<String>,
    payload: Value,
}

/// One collection: its points by slot (a replaced point gets a new slot; its old one is dead), and the index over
/// the first `indexed` slots.
struct Collection {
    dimension: usize,
    vectors: Vec<Unit>,
    entries: Vec<Entry>,
    dead: Vec<bool>,
    ids: HashMap<String, usize>,
    index: Option<Arc<HnswMap<Unit, usize>>>,
    indexed: usize,
    /// A rebuild is under way.
    building: Arc<AtomicBool>,
}

impl std::fmt::Debug for Collection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collection")
            .field("dimension", &self.dimension)
            .field("slots", &self.vectors.len())
            .field("live", &self.live())
            .field("indexed", &self.indexed)
            .finish_non_exhaustive()
    }
}

impl Collection {
    fn new(dimension: usize) -> Self {
        Self {
            dimension,
            vectors: Vec::new(),
            entries: Vec::new(),
            dead: Vec::new(),
            ids: HashMap::new(),
            index: None,
            indexed: 0,
            building: Arc::new(AtomicBool::new(false)),
        }
    }

    fn live(&self) -> usize {
        self.ids.len()
    }

    fn upsert(&mut self, id: String, vector: Unit, text: Option<String>, payload: Value) {
        let slot = self.vectors.len();
        if let Some(old) = self.ids.insert(id.clone(), slot) {
            self.dead[old] = true;
        }
        self.vectors.push(vector);
        self.entries.push(Entry { id, text, payload });
        self.dead.push(false);
    }

    fn delete(&mut self, id: &str) -> bool {
        match self.ids.remove(id) {
            Some(slot) => {
                self.dead[slot] = true;
                true
            }
            None => false,
        }
    }

    /// Drops dead slots when they are most of the collection (the index then covers nothing, and is rebuilt).
    fn compact(&mut self) {
        let dead = self.vectors.len() - self.live();
        if dead <= self.live() {
            return;
        }
        let mut vectors = Vec::with_capacity(self.live());
        let mut entries = Vec::with_capacity(self.live());
        for (slot, (v, e)) in self
            .vectors
            .drain(..)
            .zip(self.entries.drain(..))
            .enumerate()
        {
            if !self.dead[slot] {
                vectors.push(v);
                entries.push(e);
            }
        }
        self.ids = entries
            .iter()
            .enumerate()
            .map(|(slot, e)| (e.id.clone(), slot))
            .collect();
        self.dead = vec![false; vectors.len()];
        self.vectors = vectors;
        self.entries = entries;
        self.index = None;
        self.indexed = 0;
    }

    /// Whether the points written since the last build are enough to build again.
    fn wants_build(&self) -> bool {
        let fresh = self.vectors.len() - self.indexed;
        fresh >= REBUILD_AFTER.max(self.indexed / 4) && !self.building.load(Ordering::Acquire)
    }

    /// The `limit` nearest live points: from the index, and by an exact scan of the slots written since.
    fn search(&self, q: &Unit, limit: usize) -> Vec<(f32, usize)> {
        let mut found: Vec<(f32, usize)> = Vec::new();
        if let Some(index) = &self.index {
            let mut search = Search::default();
            found.extend(
                index
                    .search(q, &mut search)
                    .map(|item| (1.0 - item.distance, *item.value))
                    .filter(|(_, slot)| !self.dead[*slot]),
            );
        }
        found.extend(
            (self.indexed..self.vectors.len())
                .filter(|slot| !self.dead[*slot])
                .map(|slot| (q.dot(&self.vectors[slot]), slot)),
        );
        found.sort_by(|a, b| b.0.total_cmp(&a.0));
        found.truncate(limit);
        found
    }
}

/// The collections, bounded in number and in points.
#[derive(Debug)]
pub struct Store {
    collections: RwLock<HashMap<String, Arc<RwLock<Collection>>>>,
    max_points: usize,
    /// Serialises writes that check the total of points.
    writing: Mutex<()>,
}

impl Store {
    /// An empty store holding at most `max_points` points in all.
    pub fn new(max_points: usize) -> Self {
        Self {
            collections: RwLock::new(HashMap::new()),
            max_points,
            writing: Mutex::new(()),
        }
    }

    fn get(&self, name: &str) -> Result<Arc<RwLock<Collection>>, ApiError> {
        self.collections
            .read()
            .get(name)
            .cloned()
            .ok_or_else(|| ApiError::NotFound(format!("there is no collection {name:?}")))
    }

    fn points(&self) -> usize {
        self.collections
            .read()
            .values()
            .map(|c| c.read().live())
            .sum()
    }
}

/// Builds the index of `c` again, off the async threads and without holding its lock while the graph is built.
fn rebuild(c: Arc<RwLock<Collection>>) {
    let (vectors, building) = {
        let mut w = c.write();
        if !w.wants_build() {
            return;
        }
        w.compact();
        w.building.store(true, Ordering::Release);
        (w.vectors.clone(), w.building.clone())
    };
    tokio::task::spawn_blocking(move || {
        let n = vectors.len();
        let slots: Vec<usize> = (0..n).collect();
        let index = Builder::default().seed(17).build(vectors, slots);
        // Slots only grow while a build runs (compaction happens before one starts, never during): the first `n`
        // are still the ones indexed.
        let mut w = c.write();
        w.index = Some(Arc::new(index));
        w.indexed = n;
        building.store(false, Ordering::Release);
        tracing::debug!(points = n, "index rebuilt");
    });
}

fn check_name(name: &str) -> Result<(), ApiError> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(ApiError::Invalid {
            field: "name".into(),
            message: "a collection's name is 1 to 64 lowercase letters, digits, '-' or '_'".into(),
        })
    }
}

fn invalid(field: &str, message: String) -> ApiError {
    ApiError::Invalid {
        field: field.into(),
        message,
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Create {
    dimension: usize,
}

#[derive(Debug, Serialize)]
struct Info {
    name: String,
    dimension: usize,
    points: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PointIn {
    id: String,
    vector: Vec<f32>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    payload: Value,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Upsert {
    points: Vec<PointIn>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Delete {
    ids: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Query {
    vector: Vec<f32>,
    #[serde(default = "ten")]
    limit: usize,
}

fn ten() -> usize {
    10
}

#[derive(Debug, Serialize)]
struct Hit {
    id: String,
    score: f32,
    text: Option<String>,
    payload: Value,
}

async fn create(
    State(store): State<Arc<Store>>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    check_name(&name)?;
    let Create { dimension } = parse_json(&body)?;
    if !(1..=MAX_DIMENSION).contains(&dimension) {
        return Err(invalid(
            "dimension",
            format!("must be from 1 to {MAX_DIMENSION}, got {dimension}"),
        ));
    }
    let mut all = store.collections.write();
    if let Some(c) = all.get(&name) {
        let have = c.read().dimension;
        if have != dimension {
            return Ok((
                StatusCode::CONFLICT,
                Json(commons_shared::ErrorBody::new(
                    "conflict",
                    format!("the collection {name:?} exists with dimension {have}"),
                )),
            )
                .into_response());
        }
        let info = Info {
            points: c.read().live(),
            name,
            dimension,
        };
        return Ok(Json(info).into_response());
    }
    if all.len() >= MAX_COLLECTIONS {
        return Err(invalid(
            "name",
            format!("this replica holds at most {MAX_COLLECTIONS} collections"),
        ));
    }
    all.insert(
        name.clone(),
        Arc::new(RwLock::new(Collection::new(dimension))),
    );
    Ok((
        StatusCode::CREATED,
        Json(Info {
            name,
            dimension,
            points: 0,
        }),
    )
        .into_response())
}

async fn list(State(store): State<Arc<Store>>) -> Json<Value> {
    let mut out: Vec<Info> = store
        .collections
        .read()
        .iter()
        .map(|(name, c)| {
            let c = c.read();
            Info {
                name: name.clone(),
                dimension: c.dimension,
                points: c.live(),
            }
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Json(serde_json::json!({ "collections": out }))
}

async fn info(
    State(store): State<Arc<Store>>,
    Path(name): Path<String>,
) -> Result<Json<Info>, ApiError> {
    let c = store.get(&name)?;
    let c = c.read();
    Ok(Json(Info {
        name,
        dimension: c.dimension,
        points: c.live(),
    }))
}

async fn drop_collection(
    State(store): State<Arc<Store>>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    store
        .collections
        .write()
        .remove(&name)
        .map(|_| StatusCode::NO_CONTENT)
        .ok_or_else(|| ApiError::NotFound(format!("there is no collection {name:?}")))
}

async fn upsert(
    State(store): State<Arc<Store>>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let c = store.get(&name)?;
    let Upsert { points } = parse_json(&body)?;
    if points.len() > MAX_POINTS_PER_REQUEST {
        return Err(invalid(
            "points",
            format!("at most {MAX_POINTS_PER_REQUEST} points a request"),
        ));
    }
    let dimension = c.read().dimension;
    let mut units = Vec::with_capacity(points.len());
    for (i, p) in points.iter().enumerate() {
        if p.id.is_empty() || p.id.len() > 256 {
            return Err(invalid(
                &format!("points[{i}].id"),
                "an id is 1 to 256 bytes".into(),
            ));
        }
        if p.vector.len() != dimension {
            return Err(invalid(
                &format!("points[{i}].vector"),
                format!(
                    "has {} numbers; the collection's vectors have {dimension}",
                    p.vector.len()
                ),
            ));
        }
        if p.text.as_ref().is_some_and(|t| t.len() > MAX_TEXT) {
            return Err(invalid(
                &format!("points[{i}].text"),
                format!("at most {MAX_TEXT} bytes"),
            ));
        }
        units.push(Unit::new(&p.vector).ok_or_else(|| {
            invalid(
                &format!("points[{i}].vector"),
                "must be finite and not all zero".into(),
            )
        })?);
    }
    let upserted = points.len();
    {
        let _writing = store.writing.lock();
        let new_ids = {
            let r = c.read();
            points.iter().filter(|p| !r.ids.contains_key(&p.id)).count()
        };
        if store.points() + new_ids > store.max_points {
            return Err(invalid(
                "points",
                format!(
                    "this replica holds at most {} points in all",
                    store.max_points
                ),
            ));
        }
        let mut w = c.write();
        for (p, u) in points.into_iter().zip(units) {
            w.upsert(p.id, u, p.text, p.payload);
        }
    }
    if c.read().wants_build() {
        rebuild(c);
    }
    Ok(Json(serde_json::json!({ "upserted": upserted })))
}

async fn delete(
    State(store): State<Arc<Store>>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let c = store.get(&name)?;
    let Delete { ids } = parse_json(&body)?;
    let mut w = c.write();
    let deleted = ids.iter().filter(|id| w.delete(id)).count();
    Ok(Json(serde_json::json!({ "deleted": deleted })))
}

async fn search(
    State(store): State<Arc<Store>>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let c = store.get(&name)?;
    let Query { vector, limit } = parse_json(&body)?;
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(invalid(
            "limit",
            format!("must be from 1 to {MAX_LIMIT}, got {limit}"),
        ));
    }
    let c = c.read();
    if vector.len() != c.dimension {
        return Err(invalid(
            "vector",
            format!(
                "has {} numbers; the collection's vectors have {}",
                vector.len(),
                c.dimension
            ),
        ));
    }
    let q = Unit::new(&vector)
        .ok_or_else(|| invalid("vector", "must be finite and not all zero".into()))?;
    let results: Vec<Hit> = c
        .search(&q, limit)
        .into_iter()
        .map(|(score, slot)| {
            let e = &c.entries[slot];
            Hit {
                id: e.id.clone(),
                score,
                text: e.text.clone(),
                payload: e.payload.clone(),
            }
        })
        .collect();
    Ok(Json(serde_json::json!({ "results": results })))
}

async fn health() -> Json<Value> {
    Json(serde_json::json!({"status": "ok"}))
}

/// The service's routes.
pub fn router(store: Arc<Store>) -> Router {
    commons_server::finish(
        Router::new()
            .route("/health", get(health))
            .route("/collections", get(list))
            .route(
                "/collections/{name}",
                get(info).put(create).delete(drop_collection),
            )
            .route("/collections/{name}/points", post(upsert))
            .route("/collections/{name}/points/delete", post(delete))
            .route("/collections/{name}/search", post(search))
            .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
            .with_state(store),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(v: &[f32]) -> Unit {
        Unit::new(v).unwrap()
    }

    /// A deterministic pseudo-random vector.
    fn vector(seed: u64, dim: usize) -> Vec<f32> {
        let mut x = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..dim)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((x >> 33) as f32 / (1u64 << 31) as f32) - 0.5
            })
            .collect()
    }

    #[test]
    fn finds_the_nearest_through_the_index_and_the_fresh_points() {
        let mut c = Collection::new(32);
        for i in 0..1000 {
            c.upsert(format!("p{i}"), unit(&vector(i, 32)), None, Value::Null);
        }
        // Build the index as the store does, in place.
        let slots: Vec<usize> = (0..c.vectors.len()).collect();
        c.index = Some(Arc::new(
            Builder::default().seed(1).build(c.vectors.clone(), slots),
        ));
        c.indexed = c.vectors.len();
        // Points written after the build are found too.
        for i in 1000..1050 {
            c.upsert(format!("p{i}"), unit(&vector(i, 32)), None, Value::Null);
        }
        let mut exact_hits = 0;
        for i in (0..1050).step_by(37) {
            let q = unit(&vector(i, 32));
            let found = c.search(&q, 5);
            assert_eq!(c.entries[found[0].1].id, format!("p{i}"), "itself first");
            assert!((found[0].0 - 1.0).abs() < 1e-4);
            // The best five by an exact scan: the index finds nearly all of them.
            let mut exact: Vec<(f32, usize)> = (0..c.vectors.len())
                .map(|s| (q.dot(&c.vectors[s]), s))
                .collect();
            exact.sort_by(|a, b| b.0.total_cmp(&a.0));
            exact_hits += exact[..5]
                .iter()
                .filter(|e| found.iter().any(|f| f.1 == e.1))
                .count();
        }
        let asked = (0..1050).step_by(37).count() * 5;
        assert!(
            exact_hits * 100 >= asked * 95,
            "recall@5 {exact_hits}/{asked}"
        );
        // A replaced point is found at its new place only; a deleted one not at all.
        c.upsert("p5".into(), unit(&vector(99_999, 32)), None, Value::Null);
        let found = c.search(&unit(&vector(5, 32)), 3);
        assert!(
            found
                .iter()
                .all(|f| c.entries[f.1].id != "p5" || f.0 < 0.99)
        );
        assert!(c.delete("p7"));
        let found = c.search(&unit(&vector(7, 32)), 3);
        assert!(found.iter().all(|f| c.entries[f.1].id != "p7"));
        assert_eq!(c.live(), 1049);
    }

    #[test]
    fn compaction_drops_the_dead_when_they_are_most() {
        let mut c = Collection::new(4);
        for round in 0..3 {
            for i in 0..10 {
                c.upsert(
                    format!("p{i}"),
                    unit(&vector(i + round * 10, 4)),
                    None,
                    Value::Null,
                );
            }
        }
        assert_eq!((c.vectors.len(), c.live()), (30, 10));
        c.compact();
        assert_eq!((c.vectors.len(), c.live()), (10, 10));
        let q = unit(&vector(23, 4));
        assert_eq!(c.entries[c.search(&q, 1)[0].1].id, "p3");
    }
}
