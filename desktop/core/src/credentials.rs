//! Where the worker id and token live: the OS keyring, or an explicit file (mode 0600) for servers.
//!
//! A keyring that cannot be reached is an error that says what to do; there is never a silent fallback to a
//! plaintext file.

use std::path::{Path, PathBuf};
use std::sync::mpsc::RecvTimeoutError;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What the agent keeps between runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    /// The worker id.
    pub worker_id: String,
    /// The worker token.
    pub worker_token: String,
    /// The coordinator it belongs to.
    pub coordinator_url: String,
}

/// Credentials could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// The keyring is not there or refused.
    #[error(
        "the OS keyring cannot be reached ({0}); on a server without one, pass --credentials-file PATH"
    )]
    Keyring(String),
    /// The keyring did not answer in time: a locked Secret Service waits for someone to type the password.
    #[error(
        "the OS keyring did not answer within {0} s: it is most likely locked, waiting for someone to unlock it. \
         Unlock it (log in to the desktop, or open Passwords and Keys) and start Commons again, or on a server \
         pass --credentials-file PATH"
    )]
    KeyringTimeout(u64),
    /// The file failed.
    #[error("credentials file {0}: {1}")]
    File(PathBuf, String),
}

/// A place for credentials.
pub trait CredentialStore: Send + Sync + std::fmt::Debug {
    /// The stored credentials, if any.
    fn load(&self) -> Result<Option<Credentials>, CredentialError>;
    /// Stores them.
    fn save(&self, c: &Credentials) -> Result<(), CredentialError>;
    /// Forgets them.
    fn clear(&self) -> Result<(), CredentialError>;
    /// The DHT identity (an encoded ed25519 key), kept beside the credentials but not forgotten with them: the
    /// node keeps its peer id across re-registrations.
    fn load_identity(&self) -> Result<Option<Vec<u8>>, CredentialError>;
    /// Keeps the DHT identity.
    fn save_identity(&self, key: &[u8]) -> Result<(), CredentialError>;
}

/// Loads the DHT identity, or makes one and keeps it.
pub fn dht_identity(store: &dyn CredentialStore) -> Result<Vec<u8>, CredentialError> {
    if let Some(k) = store.load_identity()? {
        return Ok(k);
    }
    let key = commons_dht::encode_keypair(&commons_dht::generate_keypair());
    store.save_identity(&key)?;
    Ok(key)
}

/// How long a keyring operation may take before the agent gives up on it, unless told otherwise.
pub const DEFAULT_KEYRING_TIMEOUT: Duration = Duration::from_secs(30);

/// The OS keyring. On Linux: the desktop session's Secret Service (GNOME Keyring, KWallet) when a session bus
/// offers one, else the kernel's keyutils keyring (headless servers); elsewhere the platform's store.
///
/// Every operation has a deadline ([`KeyringStore::with_timeout`]): a locked Secret Service asks its prompter
/// for the password and waits for ever when nobody is there to type it.
#[derive(Debug)]
pub struct KeyringStore {
    service: String,
    user: String,
    timeout: Duration,
    /// Chosen on first use: probing the session bus for every read and write would ask it again each time.
    backend: std::sync::OnceLock<Backend>,
}

/// Which keyring a [`KeyringStore`] uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The Secret Service on the session bus.
    SecretService,
    /// The kernel keyutils keyring.
    Keyutils,
    /// The Windows Credential Manager.
    CredentialManager,
    /// The macOS Keychain.
    Keychain,
}

impl KeyringStore {
    /// The agent's entry.
    pub fn new() -> Self {
        Self::named("commons-agent", "worker")
    }

    /// Another entry (tests, self-checks).
    pub fn named(service: &str, user: &str) -> Self {
        Self {
            service: service.into(),
            user: user.into(),
            timeout: DEFAULT_KEYRING_TIMEOUT,
            backend: std::sync::OnceLock::new(),
        }
    }

    /// Gives up on an operation after `timeout` ([`DEFAULT_KEYRING_TIMEOUT`] unless set).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The backend this machine offers: the Secret Service when a session bus answers for it, else keyutils.
    pub fn backend(&self) -> Result<Backend, CredentialError> {
        if let Some(b) = self.backend.get() {
            return Ok(*b);
        }
        let b = self.probe_backend()?;
        Ok(*self.backend.get_or_init(|| b))
    }

    #[cfg(not(target_os = "linux"))]
    fn probe_backend(&self) -> Result<Backend, CredentialError> {
        Ok(if cfg!(windows) {
            Backend::CredentialManager
        } else {
            Backend::Keychain
        })
    }

    #[cfg(target_os = "linux")]
    fn probe_backend(&self) -> Result<Backend, CredentialError> {
        if std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_some()
            && let Ok(c) = keyring::secret_service::SsCredential::new_with_target(
                None,
                &self.service,
                &self.user,
            )
        {
            let entry = keyring::Entry::new_with_credential(Box::new(c));
            if matches!(
                self.within_deadline(move || entry.get_password())?,
                Ok(_) | Err(keyring::Error::NoEntry)
            ) {
                return Ok(Backend::SecretService);
            }
        }
        Ok(Backend::Keyutils)
    }

    fn entry(&self) -> Result<keyring::Entry, CredentialError> {
        #[cfg(target_os = "linux")]
        {
            let credential: Box<keyring::credential::Credential> = match self.backend()? {
                Backend::SecretService => Box::new(
                    keyring::secret_service::SsCredential::new_with_target(
                        None,
                        &self.service,
                        &self.user,
                    )
                    .map_err(unreachable)?,
                ),
                // Only the two above are probed for on Linux.
                Backend::Keyutils | Backend::CredentialManager | Backend::Keychain => Box::new(
                    keyring::keyutils::KeyutilsCredential::new_with_target(
                        None,
                        &self.service,
                        &self.user,
                    )
                    .map_err(unreachable)?,
                ),
            };
            Ok(keyring::Entry::new_with_credential(credential))
        }
        #[cfg(not(target_os = "linux"))]
        keyring::Entry::new(&self.service, &self.user).map_err(unreachable)
    }

    /// Runs one keyring call on its own thread and waits for it until the deadline. A call still waiting then
    /// (for a prompt nobody answers) is left to finish or to end with the process.
    fn within_deadline<T: Send + 'static>(
        &self,
        call: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, CredentialError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("keyring".into())
            .spawn(move || {
                let _ = tx.send(call());
            })
            .map_err(|e| CredentialError::Keyring(format!("cannot start a thread for it: {e}")))?;
        rx.recv_timeout(self.timeout).map_err(|e| match e {
            RecvTimeoutError::Timeout => CredentialError::KeyringTimeout(self.timeout.as_secs()),
            RecvTimeoutError::Disconnected => {
                CredentialError::Keyring("the keyring call failed".into())
            }
        })
    }

    /// The stored text, if any.
    fn password(&self) -> Result<Option<String>, CredentialError> {
        let entry = self.entry()?;
        match self.within_deadline(move || entry.get_password())? {
            Ok(s) => Ok(Some(s)),
            Err(keyring::Error::NoEntry) => Ok(None),
            Err(e) => Err(unreachable(e)),
        }
    }

    /// Stores `text`, then reads it back: some keyrings accept a write they cannot keep (the sandbox's session
    /// keyring does).
    fn set_password(&self, text: String) -> Result<(), CredentialError> {
        let entry = self.entry()?;
        let written = text.clone();
        let back = self.within_deadline(move || {
            entry.set_password(&written)?;
            Ok(entry.get_password())
        })?;
        match back.map_err(unreachable)? {
            Ok(back) if back == text => Ok(()),
            Ok(_) => Err(CredentialError::Keyring(
                "it did not keep what was written".into(),
            )),
            Err(e) => Err(CredentialError::Keyring(format!(
                "it did not keep what was written: {e}"
            ))),
        }
    }

    /// The entry beside this one that holds the DHT identity, on the same backend.
    fn identity_entry(&self) -> KeyringStore {
        let s = KeyringStore::named(&self.service, &format!("{}-dht-identity", self.user))
            .with_timeout(self.timeout);
        if let Some(b) = self.backend.get() {
            let _ = s.backend.set(*b);
        }
        s
    }
}

fn unreachable(e: keyring::Error) -> CredentialError {
    CredentialError::Keyring(e.to_string())
}

impl Default for KeyringStore {
    fn default() -> Self {
        Self::new()
    }
}

impl CredentialStore for KeyringStore {
    fn load(&self) -> Result<Option<Credentials>, CredentialError> {
        self.password()?
            .map(|s| serde_json::from_str(&s))
            .transpose()
            .map_err(|e| CredentialError::Keyring(format!("stored value unreadable: {e}")))
    }

    fn save(&self, c: &Credentials) -> Result<(), CredentialError> {
        let text = serde_json::to_string(c).map_err(|e| CredentialError::Keyring(e.to_string()))?;
        self.set_password(text)
    }

    fn clear(&self) -> Result<(), CredentialError> {
        let entry = self.entry()?;
        match self.within_deadline(move || entry.delete_credential())? {
            Ok(()) | Err(keyring::Error::NoEntry) => Ok(()),
            Err(e) => Err(unreachable(e)),
        }
    }

    fn load_identity(&self) -> Result<Option<Vec<u8>>, CredentialError> {
        self.identity_entry()
            .password()?
            .map(|s| hex::decode(s.trim()))
            .transpose()
            .map_err(|e| CredentialError::Keyring(format!("stored DHT identity unreadable: {e}")))
    }

    fn save_identity(&self, key: &[u8]) -> Result<(), CredentialError> {
        self.identity_entry().set_password(hex::encode(key))
    }
}

/// The named tunnel's token, kept in the keyring (`commons-agent` / `tunnel-token`).
pub fn tunnel_token() -> Result<String, CredentialError> {
    KeyringStore::named("commons-agent", "tunnel-token")
        .password()?
        .ok_or_else(|| {
            CredentialError::Keyring(
                "no tunnel token is stored (commons-agent / tunnel-token)".into(),
            )
        })
}

/// A file readable by its owner only.
#[derive(Debug)]
pub struct FileStore {
    path: PathBuf,
}

impl FileStore {
    /// The file at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    fn err(&self, m: impl std::fmt::Display) -> CredentialError {
        CredentialError::File(self.path.clone(), m.to_string())
    }
}

#[cfg(unix)]
fn private(path: &Path) -> std::io::Result<bool> {
    use std::os::unix::fs::PermissionsExt;
    Ok(std::fs::metadata(path)?.permissions().mode() & 0o077 == 0)
}

#[cfg(not(unix))]
fn private(_: &Path) -> std::io::Result<bool> {
    Ok(true)
}

impl CredentialStore for FileStore {
    fn load(&self) -> Result<Option<Credentials>, CredentialError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.err(e)),
        };
        if !private(&self.path).map_err(|e| self.err(e))? {
            return Err(
                self.err("is readable by others; make it mode 0600 (chmod 600) and try again")
            );
        }
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| self.err(format!("is not valid: {e}")))
    }

    fn save(&self, c: &Credentials) -> Result<(), CredentialError> {
        let text = serde_json::to_string_pretty(c).map_err(|e| self.err(e))?;
        write_private(&self.path, text.as_bytes()).map_err(|e| self.err(e))
    }

    fn clear(&self) -> Result<(), CredentialError> {
        match std::fs::remove_file(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.err(e)),
        }
    }

    fn load_identity(&self) -> Result<Option<Vec<u8>>, CredentialError> {
        let path = self.identity_path();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.err(e)),
        };
        if !private(&path).map_err(|e| self.err(e))? {
            return Err(CredentialError::File(
                path,
                "is readable by others; make it mode 0600 (chmod 600) and try again".into(),
            ));
        }
        hex::decode(text.trim())
            .map(Some)
            .map_err(|e| CredentialError::File(path, format!("is not valid: {e}")))
    }

    fn save_identity(&self, key: &[u8]) -> Result<(), CredentialError> {
        write_private(&self.identity_path(), hex::encode(key).as_bytes()).map_err(|e| self.err(e))
    }
}

impl FileStore {
    fn identity_path(&self) -> PathBuf {
        let mut name = self.path.file_name().unwrap_or_default().to_owned();
        name.push(".dht-identity");
        self.path.with_file_name(name)
    }
}

/// Writes `bytes` to `path` (mode 0600) through a temporary file and a rename.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&tmp)?;
    std::io::Write::write_all(&mut f, bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds() -> Credentials {
        Credentials {
            worker_id: "0123".into(),
            worker_token: "secret".into(),
            coordinator_url: "http://127.0.0.1:1".into(),
        }
    }

    #[test]
    fn file_store_round_trip_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path().join("sub/creds.json"));
        assert_eq!(store.load().unwrap(), None);
        store.save(&creds()).unwrap();
        assert_eq!(store.load().unwrap(), Some(creds()));
        // The DHT identity stays when the credentials are forgotten.
        let id = dht_identity(&store).unwrap();
        store.clear().unwrap();
        assert_eq!(dht_identity(&store).unwrap(), id);
        store.save(&creds()).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("sub/creds.json"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
            std::fs::set_permissions(
                dir.path().join("sub/creds.json"),
                std::fs::Permissions::from_mode(0o644),
            )
            .unwrap();
            let e = store.load().unwrap_err().to_string();
            assert!(e.contains("chmod 600"), "{e}");
        }
        store.clear().unwrap();
        assert_eq!(store.load().unwrap(), None);
    }

    #[test]
    fn keyring_round_trips_or_says_what_to_do() {
        // The kernel keyring works in a fresh session (`keyctl session -`); elsewhere it must fail clearly,
        // never fall back to a file.
        let store = KeyringStore::named("commons-agent-test", &format!("t{}", std::process::id()));
        match store.save(&creds()) {
            Ok(()) => {
                assert_eq!(store.load().unwrap(), Some(creds()));
                store.clear().unwrap();
                assert_eq!(store.load().unwrap(), None);
            }
            Err(e) => assert!(e.to_string().contains("--credentials-file"), "{e}"),
        }
    }
}
