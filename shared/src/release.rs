//! Signed releases and the update feed: what a coordinator offers, and the checks a client makes before it installs.
//!
//! Artifacts are signed offline with the project's [minisign](https://jedisct1.github.io/minisign/) key; clients
//! carry the public key. A signature binds the artifact's name (minisign's trusted comment holds
//! `file:<name>`), and the name carries the product, version and platform
//! (`commons-agent-0.1.1-linux-x86_64`), so a signed old build cannot be passed off as a newer one.

use serde::{Deserialize, Serialize};

/// The project's release public key (minisign): what clients built without `COMMONS_RELEASE_KEY` trust. Its secret
/// key never enters the repository (see the README's "Releases").
pub const PROJECT_KEY: &str = include_str!("../release-key.pub");

/// Update channels. `beta` also sees stable releases.
pub const CHANNELS: [&str; 2] = ["stable", "beta"];
/// Products that update themselves.
pub const PRODUCTS: [&str; 2] = ["agent", "desktop"];
/// The suffix of a platform whose artifact is a system package (offered where a client cannot replace itself).
pub const PACKAGE_SUFFIX: &str = "-deb";
/// Longest release notes kept.
pub const MAX_NOTES_LEN: usize = 4096;
/// Largest artifact a client downloads.
pub const MAX_ARTIFACT_BYTES: u64 = 1 << 30;

/// The platform this build runs on, as feeds name it (`linux-x86_64`).
pub fn this_platform() -> String {
    format!("{}-{}", std::env::consts::OS, std::env::consts::ARCH)
}

/// The file name of an artifact: `commons-agent-0.1.1-linux-x86_64`, `commons-desktop-0.2.0-linux-x86_64`; a
/// package platform keeps its extension (`commons-agent-0.1.1-linux-x86_64.deb`).
pub fn artifact_name(product: &str, version: &str, platform: &str) -> String {
    match platform.strip_suffix(PACKAGE_SUFFIX) {
        Some(p) => format!("commons-{product}-{version}-{p}.deb"),
        None => format!("commons-{product}-{version}-{platform}"),
    }
}

/// One release in a feed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReleaseInfo {
    /// `agent` or `desktop`.
    pub product: String,
    /// Semantic version.
    pub version: String,
    /// `stable` or `beta`.
    pub channel: String,
    /// `linux-x86_64`, or `linux-x86_64-deb` for a system package.
    pub platform: String,
    /// What changed, for people.
    #[serde(default)]
    pub notes: String,
    /// The artifact's file name.
    pub file: String,
    /// Where to download it (relative to the coordinator).
    pub url: String,
    /// Size in bytes.
    pub size_bytes: u64,
    /// SHA-256 of the artifact, hex.
    pub sha256: String,
    /// The minisign signature file's text.
    pub signature: String,
    /// When it was published (RFC 3339).
    #[serde(default)]
    pub published_at: String,
}

/// `GET /api/updates/{product}/{channel}/{platform}`: the newest release for a client, if any.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UpdateFeed {
    /// The newest release on the channel (a beta feed includes stable releases).
    pub latest: Option<ReleaseInfo>,
    /// The newest system package of the same product (`{platform}-deb`), for a client that cannot replace itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package: Option<ReleaseInfo>,
}

/// Why an artifact is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The public key is not a minisign public key.
    #[error("the release key is not a minisign public key")]
    BadKey,
    /// The signature text does not parse.
    #[error("the signature is not a minisign signature")]
    BadSignatureText,
    /// Signed, but by another key.
    #[error("the signature was made with another key than the Commons release key")]
    OtherKey,
    /// The bytes are not what was signed.
    #[error("the signature does not match the file (tampered or corrupted)")]
    Tampered,
    /// The signature is for another file.
    #[error("the signature is for {signed:?}, not {expected:?}")]
    OtherFile {
        /// What the trusted comment names.
        signed: String,
        /// The expected artifact name.
        expected: String,
    },
    /// The SHA-256 is not the feed's.
    #[error("checksum mismatch: the feed says {expected}, the download is {actual}")]
    Checksum {
        /// From the feed.
        expected: String,
        /// Of the bytes.
        actual: String,
    },
    /// Not newer than what runs.
    #[error("{offered} is not newer than the running {running}: refusing a downgrade")]
    Downgrade {
        /// The feed's version.
        offered: String,
        /// This build's.
        running: String,
    },
    /// Not a version.
    #[error("{0:?} is not a semantic version")]
    BadVersion(String),
}

/// Parses a version (`0.1.1`, `1.2.0-beta.1`).
pub fn parse_version(v: &str) -> Result<semver::Version, Refusal> {
    semver::Version::parse(v).map_err(|_| Refusal::BadVersion(v.to_owned()))
}

/// Whether `offered` is an update for `running`: strictly newer, else a [`Refusal::Downgrade`] (equal is up to
/// date, reported as `Ok(false)`).
pub fn is_newer(offered: &str, running: &str) -> Result<bool, Refusal> {
    let (o, r) = (parse_version(offered)?, parse_version(running)?);
    match o.cmp(&r) {
        std::cmp::Ordering::Greater => Ok(true),
        std::cmp::Ordering::Equal => Ok(false),
        std::cmp::Ordering::Less => Err(Refusal::Downgrade {
            offered: offered.to_owned(),
            running: running.to_owned(),
        }),
    }
}

/// A streaming check of an artifact's signature (and its name in the trusted comment).
pub struct Verifier {
    key: minisign_verify::PublicKey,
    signature: minisign_verify::Signature,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("trusted_comment", &self.signature.trusted_comment())
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// Sets up the check of `signature` (minisign text) against `public_key` (the `.pub` file's text or its
    /// base64 line) for the artifact named `file`.
    pub fn new(public_key: &str, signature: &str, file: &str) -> Result<Self, Refusal> {
        let key = public_key_from(public_key)?;
        let signature =
            minisign_verify::Signature::decode(signature).map_err(|_| Refusal::BadSignatureText)?;
        let signed = signature
            .trusted_comment()
            .split('\t')
            .find_map(|f| f.strip_prefix("file:"))
            .unwrap_or("")
            .to_owned();
        if signed != file {
            return Err(Refusal::OtherFile {
                signed,
                expected: file.to_owned(),
            });
        }
        Ok(Self { key, signature })
    }

    /// A one-pass check of an artifact: feed its bytes with [`ArtifactCheck::update`], then
    /// [`ArtifactCheck::finish`]. Refused at once when the signature is by another key.
    pub fn check(&self) -> Result<ArtifactCheck<'_>, Refusal> {
        let signature = self
            .key
            .verify_stream(&self.signature)
            .map_err(|e| match e {
                minisign_verify::Error::UnexpectedKeyId => Refusal::OtherKey,
                _ => Refusal::BadSignatureText,
            })?;
        Ok(ArtifactCheck {
            signature,
            sha256: sha2::Sha256::default(),
            size: 0,
        })
    }
}

/// The size, SHA-256 and signature of an artifact, taken in one pass over its bytes.
pub struct ArtifactCheck<'a> {
    signature: minisign_verify::StreamVerifier<'a>,
    sha256: sha2::Sha256,
    size: u64,
}

impl std::fmt::Debug for ArtifactCheck<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArtifactCheck")
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

/// What [`ArtifactCheck::finish`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// Bytes seen.
    pub size: u64,
    /// Their SHA-256, lowercase hex.
    pub sha256: String,
    /// Whether the signature holds for them ([`Refusal::Tampered`] if not).
    pub signature: Result<(), Refusal>,
}

impl ArtifactCheck<'_> {
    /// The next bytes of the artifact.
    pub fn update(&mut self, bytes: &[u8]) {
        use sha2::Digest;
        self.signature.update(bytes);
        self.sha256.update(bytes);
        self.size += bytes.len() as u64;
    }

    /// Bytes seen so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The size, the SHA-256 and the signature's verdict.
    pub fn finish(mut self) -> Checked {
        use sha2::Digest;
        Checked {
            size: self.size,
            sha256: format!("{:x}", self.sha256.finalize()),
            signature: self.signature.finalize().map_err(|_| Refusal::Tampered),
        }
    }
}

/// Checks that `bytes`, named `name` in the signature's trusted comment, are signed by one of `keys` (minisign
/// public keys); whole, not streamed (a catalogue, not a download). Returns which key signed them.
pub fn verify_by_any(
    bytes: &[u8],
    signature: &str,
    name: &str,
    keys: &[&str],
) -> Result<usize, Refusal> {
    let mut last = Refusal::OtherKey;
    for (i, key) in keys.iter().enumerate() {
        let outcome = Verifier::new(key, signature, name).and_then(|v| {
            let mut c = v.check()?;
            c.update(bytes);
            c.finish().signature
        });
        match outcome {
            Ok(()) => return Ok(i),
            // Another key's signature: try the next key; anything else is the answer.
            Err(Refusal::OtherKey) => {}
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// A minisign public key from a `.pub` file's text (comment line and key) or the bare base64 key.
pub fn public_key_from(text: &str) -> Result<minisign_verify::PublicKey, Refusal> {
    let line = text
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty() && !l.starts_with("untrusted comment:"))
        .ok_or(Refusal::BadKey)?;
    minisign_verify::PublicKey::from_base64(line).map_err(|_| Refusal::BadKey)
}

#[cfg(test)]
mod tests {
    use super::*;

    // minisign's own test vector: the key, and a pre-hashed signature of b"test" whose trusted comment names "test".
    const PK: &str = "RWQf6LRCGA9i53mlYecO4IzT51TGPpvWucNSCh1CBM0QTaLn73Y7GFO3";
    const SIG: &str = "untrusted comment: signature from minisign secret key
RUQf6LRCGA9i559r3g7V1qNyJDApGip8MfqcadIgT9CuhV3EMhHoN1mGTkUidF/z7SrlQgXdy8ofjb7bNJJylDOocrCo8KLzZwo=
trusted comment: timestamp:1556193335\tfile:test
y/rUw2y8/hOUYjZU71eHp/Wo1KZ40fGy2VJEDl34XMJM+TX48Ss/17u3IvIfbVR1FkZZSNCisQbuQY+bHwhEBg==";

    fn check(v: &Verifier, bytes: &[u8]) -> Result<Checked, Refusal> {
        let mut c = v.check()?;
        c.update(bytes);
        Ok(c.finish())
    }

    #[test]
    fn a_signature_verifies_and_any_change_is_refused() {
        let v = Verifier::new(PK, SIG, "test").unwrap();
        let checked = check(&v, b"test").unwrap();
        assert_eq!(checked.signature, Ok(()));
        assert_eq!(checked.size, 4);
        assert_eq!(
            checked.sha256,
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
        );
        assert_eq!(
            check(&v, b"tesT").unwrap().signature,
            Err(Refusal::Tampered)
        );
        assert_eq!(
            Verifier::new(PK, SIG, "commons-agent-9.9.9-linux-x86_64").unwrap_err(),
            Refusal::OtherFile {
                signed: "test".into(),
                expected: "commons-agent-9.9.9-linux-x86_64".into()
            }
        );
        // The same key bytes under another key id: refused before any hashing.
        let other = "RWQg6LRCGA9i53mlYecO4IzT51TGPpvWucNSCh1CBM0QTaLn73Y7GFO3";
        assert_eq!(
            check(&Verifier::new(other, SIG, "test").unwrap(), b"test"),
            Err(Refusal::OtherKey)
        );
        assert_eq!(
            Verifier::new("not a key", SIG, "test").unwrap_err(),
            Refusal::BadKey
        );
        assert_eq!(
            Verifier::new(PK, "garbage", "test").unwrap_err(),
            Refusal::BadSignatureText
        );
    }

    #[test]
    fn versions_order_and_a_downgrade_is_refused() {
        assert_eq!(is_newer("0.1.1", "0.1.0"), Ok(true));
        assert_eq!(is_newer("0.1.10", "0.1.9"), Ok(true));
        assert_eq!(is_newer("0.1.0", "0.1.0"), Ok(false));
        assert_eq!(is_newer("1.0.0", "1.0.0-beta.2"), Ok(true));
        assert!(matches!(
            is_newer("0.0.9", "0.1.0"),
            Err(Refusal::Downgrade { .. })
        ));
        assert_eq!(is_newer("x", "0.1.0"), Err(Refusal::BadVersion("x".into())));
    }

    #[test]
    fn artifact_names_carry_product_version_and_platform() {
        assert_eq!(
            artifact_name("agent", "0.1.1", "linux-x86_64"),
            "commons-agent-0.1.1-linux-x86_64"
        );
        assert_eq!(
            artifact_name("agent", "0.1.1", "linux-x86_64-deb"),
            "commons-agent-0.1.1-linux-x86_64.deb"
        );
    }
}
