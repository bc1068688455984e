//! The model cache on the donated disk: the files a catalogue entry names (model weights), each downloaded once,
//! verified, and mounted read-only into the containers that need them.
//!
//! - A file is stored under its SHA-256 (`{dir}/{sha256}`), so two services naming the same file share it, and a
//!   file is only ever there once it has been verified.
//! - A download goes to `{sha256}.part` and resumes from where it stopped (an HTTP range request); its hash is
//!   computed while it arrives (the part already there is hashed first), and the file is refused and deleted when
//!   its size or SHA-256 differs from the catalogue's: nothing runs with it.
//! - The cache stays within the volunteer's cap: before a download, the least recently used files that no current
//!   assignment needs are deleted until the new one fits.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use commons_shared::api::ModelArtifact;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use crate::containers::Progress;

/// Why a model cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// The download failed (it resumes at the next try).
    #[error("could not download the model {name}: {source}")]
    Download {
        /// The model.
        name: String,
        /// Why.
        #[source]
        source: reqwest::Error,
    },
    /// The server did not send the file.
    #[error("could not download the model {name}: the server answered {status}")]
    Status {
        /// The model.
        name: String,
        /// The HTTP status.
        status: u16,
    },
    /// The file is not the one the catalogue names.
    #[error(
        "the model {name} that was downloaded is not the one the catalogue names (its {what} differs); it was deleted, and nothing runs with it"
    )]
    Mismatch {
        /// The model.
        name: String,
        /// "size" or "SHA-256".
        what: &'static str,
    },
    /// It does not fit in the disk the volunteer gives to models.
    #[error(
        "the model {name} needs {need_mb} MiB, but only {free_mb} MiB of the {cap_mb} MiB of disk this computer gives to models is free for it (settings: models_disk_mb)"
    )]
    TooBig {
        /// The model.
        name: String,
        /// MiB it needs.
        need_mb: u64,
        /// MiB free for it (the cap, less the models in use).
        free_mb: u64,
        /// MiB the volunteer gives.
        cap_mb: u64,
    },
    /// The cache folder cannot be written.
    #[error("the model cache {path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ModelError + '_ {
    move |source| ModelError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A verified model on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Local {
    /// The file in the cache.
    pub path: PathBuf,
    /// Where the container sees it.
    pub mount: String,
}

impl Local {
    /// The engine's bind for it: read-only.
    pub fn bind(&self) -> String {
        format!("{}:{}:ro", self.path.display(), self.mount)
    }
}

/// How often a download reports its progress.
const PROGRESS_EVERY: Duration = Duration::from_millis(200);

/// Tries per download before giving up until the next reconcile (each one resumes).
const TRIES: u32 = 3;

/// The cache: a folder and a cap.
#[derive(Debug, Clone)]
pub struct ModelCache {
    dir: PathBuf,
    cap_bytes: u64,
    client: reqwest::Client,
}

impl ModelCache {
    /// A cache in `dir` holding at most `cap_bytes`.
    pub fn new(dir: PathBuf, cap_bytes: u64) -> Self {
        let client = commons_server::tls::http()
            .connect_timeout(Duration::from_secs(15))
            .read_timeout(Duration::from_secs(60))
            .user_agent(concat!("commons-agent/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_default();
        Self {
            dir,
            cap_bytes,
            client,
        }
    }

    /// Where a verified model lives.
    pub fn path(&self, m: &ModelArtifact) -> PathBuf {
        self.dir.join(&m.sha256)
    }

    /// Makes every one of `models` present and verified, downloading what is missing; `needed` are the SHA-256s
    /// that must not be evicted to make room (every current assignment's models). Progress is reported as part of
    /// `image`'s (the service's image: the window shows one row per service).
    pub async fn ensure(
        &self,
        models: &[ModelArtifact],
        needed: &[&str],
        progress: Option<(&mpsc::Sender<Progress>, &str)>,
    ) -> Result<Vec<Local>, ModelError> {
        let mut out = Vec::with_capacity(models.len());
        for m in models {
            let path = self.path(m);
            match tokio::fs::metadata(&path).await {
                Ok(meta) if meta.len() == m.size => touch(&path).await,
                _ => {
                    // One download of a file at a time on this machine (two agents may share the cache): the
                    // second waits, then finds the file there.
                    let _lock = self.lock(m).await?;
                    let there = tokio::fs::metadata(&path)
                        .await
                        .is_ok_and(|meta| meta.len() == m.size);
                    if !there {
                        let mut tries = 0;
                        loop {
                            tries += 1;
                            match self.download(m, needed, progress).await {
                                Ok(()) => break,
                                Err(e @ ModelError::Download { .. }) if tries < TRIES => {
                                    tracing::warn!(model = %m.name, error = %e, "download interrupted; resuming");
                                }
                                Err(e) => return Err(e),
                            }
                        }
                    }
                }
            }
            out.push(Local {
                path,
                mount: format!("/models/{}", m.name),
            });
        }
        Ok(out)
    }

    /// Holds `{sha256}.lock` exclusively (an advisory lock, released when the file is dropped).
    async fn lock(&self, m: &ModelArtifact) -> Result<std::fs::File, ModelError> {
        tokio::fs::create_dir_all(&self.dir)
            .await
            .map_err(io(&self.dir))?;
        let path = self.dir.join(format!("{}.lock", m.sha256));
        let p = path.clone();
        tokio::task::spawn_blocking(move || {
            let f = std::fs::File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&p)?;
            f.lock()?;
            Ok(f)
        })
        .await
        .map_err(|e| ModelError::Io {
            path: path.clone(),
            source: std::io::Error::other(e),
        })?
        .map_err(io(&path))
    }

    /// Deletes the least recently used models (neither in `needed` nor `m` itself) until `want` more bytes fit.
    async fn make_room(
        &self,
        m: &ModelArtifact,
        want: u64,
        needed: &[&str],
    ) -> Result<(), ModelError> {
        let dir = self.dir.clone();
        let listed = tokio::task::spawn_blocking(move || list(&dir))
            .await
            .map_err(|e| ModelError::Io {
                path: self.dir.clone(),
                source: std::io::Error::other(e),
            })?
            .map_err(io(&self.dir))?;
        let mut used: u64 = listed.iter().map(|f| f.size).sum();
        if want > self.cap_bytes.saturating_sub(used) {
            let mut evictable: Vec<&Cached> = listed
                .iter()
                .filter(|f| f.name != m.sha256 && !f.name.starts_with(&m.sha256))
                .filter(|f| !needed.iter().any(|n| f.name.starts_with(n)))
                .collect();
            evictable.sort_by_key(|f| f.used);
            for f in evictable {
                if want <= self.cap_bytes.saturating_sub(used) {
                    break;
                }
                let path = self.dir.join(&f.name);
                tracing::info!(file = %path.display(), "evicting the least recently used model");
                tokio::fs::remove_file(&path).await.map_err(io(&path))?;
                used -= f.size;
            }
        }
        if want > self.cap_bytes.saturating_sub(used) {
            return Err(ModelError::TooBig {
                name: m.name.clone(),
                need_mb: want.div_ceil(1 << 20),
                free_mb: self.cap_bytes.saturating_sub(used) >> 20,
                cap_mb: self.cap_bytes >> 20,
            });
        }
        Ok(())
    }

    async fn download(
        &self,
        m: &ModelArtifact,
        needed: &[&str],
        progress: Option<(&mpsc::Sender<Progress>, &str)>,
    ) -> Result<(), ModelError> {
        tokio::fs::create_dir_all(&self.dir)
            .await
            .map_err(io(&self.dir))?;
        let part = self.dir.join(format!("{}.part", m.sha256));
        let mut have = match tokio::fs::metadata(&part).await {
            Ok(meta) if meta.len() <= m.size => meta.len(),
            _ => 0,
        };
        self.make_room(m, m.size - have, needed).await?;
        let fail = |source| ModelError::Download {
            name: m.name.clone(),
            source,
        };
        let mut req = self.client.get(&m.url);
        if have > 0 {
            req = req.header(reqwest::header::RANGE, format!("bytes={have}-"));
        }
        let mut resp = req.send().await.map_err(fail)?;
        let status = resp.status();
        if status == reqwest::StatusCode::PARTIAL_CONTENT && have > 0 {
            tracing::info!(model = %m.name, from = have, "resuming the download");
        } else if status.is_success() {
            have = 0;
        } else {
            return Err(ModelError::Status {
                name: m.name.clone(),
                status: status.as_u16(),
            });
        }
        // The part already there is hashed first, off the async threads.
        let mut hasher = if have > 0 {
            let p = part.clone();
            tokio::task::spawn_blocking(move || hash_prefix(&p, have))
                .await
                .map_err(|e| ModelError::Io {
                    path: part.clone(),
                    source: std::io::Error::other(e),
                })?
                .map_err(io(&part))?
        } else {
            Sha256::new()
        };
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(have == 0)
            .append(have > 0)
            .open(&part)
            .await
            .map_err(io(&part))?;
        let mut last = Instant::now() - PROGRESS_EVERY;
        let report = |current: u64, done: bool| {
            if let Some((tx, image)) = progress {
                let _ = tx.try_send(Progress {
                    image: image.to_owned(),
                    layer: format!("model {}", m.name),
                    status: if done { "Verified" } else { "Downloading" }.into(),
                    done,
                    current,
                    total: m.size,
                });
            }
        };
        loop {
            let chunk = match resp.chunk().await {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(e) => {
                    // Keep what arrived: the next try resumes from there.
                    file.flush().await.map_err(io(&part))?;
                    return Err(fail(e));
                }
            };
            have += chunk.len() as u64;
            if have > m.size {
                drop(file);
                let _ = tokio::fs::remove_file(&part).await;
                return Err(ModelError::Mismatch {
                    name: m.name.clone(),
                    what: "size",
                });
            }
            hasher.update(&chunk);
            file.write_all(&chunk).await.map_err(io(&part))?;
            if last.elapsed() >= PROGRESS_EVERY {
                last = Instant::now();
                report(have, false);
            }
        }
        file.flush().await.map_err(io(&part))?;
        file.sync_all().await.map_err(io(&part))?;
        drop(file);
        let what = if have != m.size {
            Some("size")
        } else if hex::encode(hasher.finalize()) != m.sha256 {
            Some("SHA-256")
        } else {
            None
        };
        if let Some(what) = what {
            let _ = tokio::fs::remove_file(&part).await;
            return Err(ModelError::Mismatch {
                name: m.name.clone(),
                what,
            });
        }
        let path = self.path(m);
        tokio::fs::rename(&part, &path).await.map_err(io(&path))?;
        report(have, true);
        Ok(())
    }
}

/// One file in the cache.
struct Cached {
    name: String,
    size: u64,
    used: SystemTime,
}

fn list(dir: &Path) -> std::io::Result<Vec<Cached>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry?;
        let meta = entry.metadata()?;
        let name = entry.file_name();
        if meta.is_file() && !name.to_string_lossy().ends_with(".lock") {
            out.push(Cached {
                name: name.to_string_lossy().into_owned(),
                size: meta.len(),
                used: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            });
        }
    }
    Ok(out)
}

/// The hash of the first `len` bytes of `path`.
fn hash_prefix(path: &Path, len: u64) -> std::io::Result<Sha256> {
    use std::io::Read;
    let mut h = Sha256::new();
    let mut f = std::fs::File::open(path)?.take(len);
    std::io::copy(&mut f, &mut h)?;
    Ok(h)
}

/// Marks a model used now (its modification time orders eviction).
async fn touch(path: &Path) {
    let p = path.to_owned();
    let _ = tokio::task::spawn_blocking(move || {
        std::fs::File::options()
            .append(true)
            .open(&p)
            .and_then(|f| f.set_modified(SystemTime::now()))
    })
    .await;
}
