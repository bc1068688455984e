//! Signed releases: `commons-coordinator release add` (checks an artifact's signature against the release key,
//! then publishes it into the releases directory) and the update feed clients poll
//! (`GET /api/updates/{product}/{channel}/{platform}`).
//!
//! The coordinator signs nothing: artifacts arrive signed offline by the project's release key. Each published
//! artifact sits in the releases directory beside `<file>.release.json` (its [`ReleaseInfo`], signature included).

use std::io::Read;
use std::path::{Path, PathBuf};

use commons_shared::release::{
    self, CHANNELS, MAX_NOTES_LEN, PACKAGE_SUFFIX, PRODUCTS, ReleaseInfo, UpdateFeed, Verifier,
};

/// The sidecar that makes an artifact a published release.
const SIDECAR: &str = ".release.json";
/// Longest platform name.
const MAX_PLATFORM_LEN: usize = 40;
/// Longest signature file (a minisign signature is about 300 bytes).
const MAX_SIGNATURE_LEN: u64 = 4096;

/// The project's release public key (minisign), the default the coordinator checks artifacts against.
pub use commons_shared::release::PROJECT_KEY;

/// What `release add` is told.
#[derive(Debug, Clone)]
pub struct NewRelease {
    /// The signed artifact, named as [`release::artifact_name`] says.
    pub file: PathBuf,
    /// Its minisign signature [default: `<file>.minisig`].
    pub signature: Option<PathBuf>,
    /// `agent` or `desktop`.
    pub product: String,
    /// Semantic version.
    pub version: String,
    /// `stable` or `beta`.
    pub channel: String,
    /// Platform [default: this machine's].
    pub platform: String,
    /// Release notes.
    pub notes: String,
}

/// Why `release add` refuses.
#[derive(Debug, thiserror::Error)]
pub enum AddError {
    /// A field is wrong.
    #[error("{0}")]
    Invalid(String),
    /// The signature does not verify.
    #[error("refusing {file}: {why}")]
    Refused {
        /// The artifact.
        file: String,
        /// Why.
        why: release::Refusal,
    },
    /// Reading or writing failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> AddError {
    let what = what.into();
    move |source| AddError::Io { what, source }
}

pub(crate) fn plain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_PLATFORM_LEN
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_'))
}

/// Checks `r` against `key` and publishes it into `dir`; returns what the feed now lists. A version already
/// published with other bytes is refused (versions are immutable); the same bytes again may move channel or notes.
pub fn add(dir: &Path, key: &str, r: &NewRelease) -> Result<ReleaseInfo, AddError> {
    if !PRODUCTS.contains(&r.product.as_str()) {
        return Err(AddError::Invalid(format!(
            "unknown product {:?} (one of {})",
            r.product,
            PRODUCTS.join(", ")
        )));
    }
    if !CHANNELS.contains(&r.channel.as_str()) {
        return Err(AddError::Invalid(format!(
            "unknown channel {:?} (one of {})",
            r.channel,
            CHANNELS.join(", ")
        )));
    }
    if !plain(&r.platform) {
        return Err(AddError::Invalid(format!(
            "{:?} is not a platform name (like linux-x86_64)",
            r.platform
        )));
    }
    release::parse_version(&r.version).map_err(|e| AddError::Invalid(e.to_string()))?;
    if r.notes.len() > MAX_NOTES_LEN {
        return Err(AddError::Invalid(format!(
            "the notes are longer than {MAX_NOTES_LEN} bytes"
        )));
    }
    let name = release::artifact_name(&r.product, &r.version, &r.platform);
    let given = r.file.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if given != name {
        return Err(AddError::Invalid(format!(
            "the artifact for {} {} on {} must be named {name} (its signature names the file), not {given:?}",
            r.product, r.version, r.platform
        )));
    }
    let sig_path = r
        .signature
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{}.minisig", r.file.display())));
    let signature = std::fs::File::open(&sig_path)
        .and_then(|f| {
            let mut text = String::new();
            f.take(MAX_SIGNATURE_LEN + 1).read_to_string(&mut text)?;
            Ok(text)
        })
        .map_err(io(format!(
            "cannot read the signature {}",
            sig_path.display()
        )))?;
    if signature.len() as u64 > MAX_SIGNATURE_LEN {
        return Err(AddError::Refused {
            file: name,
            why: release::Refusal::BadSignatureText,
        });
    }
    let refused = |why| AddError::Refused {
        file: name.clone(),
        why,
    };
    let verifier = Verifier::new(key, &signature, &name).map_err(refused)?;
    // One pass: the signature check and the checksum, while copying to a temporary file beside the target.
    std::fs::create_dir_all(dir).map_err(io(format!("cannot create {}", dir.display())))?;
    let mut src =
        std::fs::File::open(&r.file).map_err(io(format!("cannot read {}", r.file.display())))?;
    let tmp = tempfile::NamedTempFile::new_in(dir)
        .map_err(io(format!("cannot write into {}", dir.display())))?;
    let mut out = std::io::BufWriter::new(tmp.as_file());
    let mut check = verifier.check().map_err(refused)?;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = src
            .read(&mut buf)
            .map_err(io(format!("cannot read {}", r.file.display())))?;
        if n == 0 {
            break;
        }
        check.update(&buf[..n]);
        std::io::Write::write_all(&mut out, &buf[..n]).map_err(io("cannot copy the artifact"))?;
    }
    let checked = check.finish();
    checked.signature.map_err(refused)?;
    let (sha256, size) = (checked.sha256, checked.size);
    std::io::Write::flush(&mut out).map_err(io("cannot copy the artifact"))?;
    drop(out);
    let sidecar = dir.join(format!("{name}{SIDECAR}"));
    let published_at = match read_info(&sidecar) {
        Some(old) if old.sha256 != sha256 => {
            return Err(AddError::Invalid(format!(
                "{} {} on {} is already published with other contents (sha256 {}); publish a new version",
                r.product, r.version, r.platform, old.sha256
            )));
        }
        Some(old) => old.published_at,
        None => crate::state::rfc3339(crate::state::now_ms()),
    };
    let info = ReleaseInfo {
        product: r.product.clone(),
        version: r.version.clone(),
        channel: r.channel.clone(),
        platform: r.platform.clone(),
        notes: r.notes.clone(),
        url: format!("/releases/{name}"),
        file: name.clone(),
        size_bytes: size,
        sha256,
        signature,
        published_at,
    };
    tmp.persist(dir.join(&name))
        .map_err(|e| io("cannot publish the artifact")(e.error))?;
    let json = serde_json::to_vec_pretty(&info).map_err(|e| AddError::Invalid(e.to_string()))?;
    let side_tmp = tempfile::NamedTempFile::new_in(dir).map_err(io("cannot write the sidecar"))?;
    std::fs::write(side_tmp.path(), json).map_err(io("cannot write the sidecar"))?;
    side_tmp
        .persist(&sidecar)
        .map_err(|e| io("cannot write the sidecar")(e.error))?;
    Ok(info)
}

fn read_info(path: &Path) -> Option<ReleaseInfo> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// Whether `name` is a release sidecar (kept out of the installers list).
pub(crate) fn is_sidecar(name: &str) -> bool {
    name.ends_with(SIDECAR) || name.ends_with(".minisig")
}

/// The newest release of `product` for `platform` on `channel` (beta sees stable too), and the newest system package.
pub fn feed(
    dir: &Path,
    product: &str,
    channel: &str,
    platform: &str,
) -> std::io::Result<UpdateFeed> {
    let mut latest: Option<(semver::Version, ReleaseInfo)> = None;
    let mut package: Option<(semver::Version, ReleaseInfo)> = None;
    let package_platform = format!("{platform}{PACKAGE_SUFFIX}");
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(UpdateFeed {
                latest: None,
                package: None,
            });
        }
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        if !name.to_string_lossy().ends_with(SIDECAR) {
            continue;
        }
        let Some(info) = read_info(&entry.path()) else {
            tracing::warn!(file = %entry.path().display(), "an unreadable release sidecar; skipped");
            continue;
        };
        if info.product != product || (channel == "stable" && info.channel != "stable") {
            continue;
        }
        let Ok(v) = release::parse_version(&info.version) else {
            continue;
        };
        let slot = if info.platform == platform {
            &mut latest
        } else if info.platform == package_platform {
            &mut package
        } else {
            continue;
        };
        if slot.as_ref().is_none_or(|(best, _)| v > *best) {
            *slot = Some((v, info));
        }
    }
    Ok(UpdateFeed {
        latest: latest.map(|(_, i)| i),
        package: package.map(|(_, i)| i),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_misnamed_or_unsigned_artifact_is_refused_and_nothing_is_published() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("releases");
        let file = dir.path().join("commons-agent-0.1.1-linux-x86_64");
        std::fs::write(&file, b"binary").unwrap();
        let r = NewRelease {
            file: dir.path().join("agent"),
            signature: None,
            product: "agent".into(),
            version: "0.1.1".into(),
            channel: "stable".into(),
            platform: "linux-x86_64".into(),
            notes: String::new(),
        };
        let e = add(&out, PROJECT_KEY, &r).unwrap_err().to_string();
        assert!(
            e.contains("must be named commons-agent-0.1.1-linux-x86_64"),
            "{e}"
        );
        let r = NewRelease { file, ..r };
        let e = add(&out, PROJECT_KEY, &r).unwrap_err().to_string();
        assert!(e.contains("cannot read the signature"), "{e}");
        std::fs::write(
            dir.path().join("commons-agent-0.1.1-linux-x86_64.minisig"),
            "junk",
        )
        .unwrap();
        let e = add(&out, PROJECT_KEY, &r).unwrap_err().to_string();
        assert!(e.contains("not a minisign signature"), "{e}");
        let bad = NewRelease {
            channel: "nightly".into(),
            ..r.clone()
        };
        assert!(
            add(&out, PROJECT_KEY, &bad)
                .unwrap_err()
                .to_string()
                .contains("unknown channel")
        );
        let bad = NewRelease {
            version: "1.x".into(),
            ..r
        };
        assert!(
            add(&out, PROJECT_KEY, &bad)
                .unwrap_err()
                .to_string()
                .contains("semantic version")
        );
        assert!(!out.exists() || std::fs::read_dir(&out).unwrap().next().is_none());
    }

    #[test]
    fn the_feed_picks_the_newest_per_channel_and_the_package() {
        let dir = tempfile::tempdir().unwrap();
        let put = |version: &str, channel: &str, platform: &str| {
            let name = release::artifact_name("agent", version, platform);
            let info = ReleaseInfo {
                product: "agent".into(),
                version: version.into(),
                channel: channel.into(),
                platform: platform.into(),
                notes: String::new(),
                url: format!("/releases/{name}"),
                file: name.clone(),
                size_bytes: 1,
                sha256: "00".into(),
                signature: String::new(),
                published_at: String::new(),
            };
            std::fs::write(
                dir.path().join(format!("{name}{SIDECAR}")),
                serde_json::to_vec(&info).unwrap(),
            )
            .unwrap();
        };
        put("0.1.10", "stable", "linux-x86_64");
        put("0.1.9", "stable", "linux-x86_64");
        put("0.2.0-beta.1", "beta", "linux-x86_64");
        put("0.1.10", "stable", "linux-x86_64-deb");
        put("9.0.0", "stable", "windows-x86_64");
        let f = feed(dir.path(), "agent", "stable", "linux-x86_64").unwrap();
        assert_eq!(f.latest.unwrap().version, "0.1.10");
        assert_eq!(
            f.package.unwrap().file,
            "commons-agent-0.1.10-linux-x86_64.deb"
        );
        // A Windows client is offered the Windows build, and no package.
        let f = feed(dir.path(), "agent", "stable", "windows-x86_64").unwrap();
        assert_eq!(f.latest.unwrap().file, "commons-agent-9.0.0-windows-x86_64");
        assert!(f.package.is_none());
        let f = feed(dir.path(), "agent", "beta", "linux-x86_64").unwrap();
        assert_eq!(f.latest.unwrap().version, "0.2.0-beta.1");
        assert_eq!(
            feed(dir.path(), "desktop", "beta", "linux-x86_64")
                .unwrap()
                .latest,
            None
        );
    }
}
