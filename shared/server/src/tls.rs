//! TLS with rustls (the `ring` provider, already in the build through libp2p's noise): a server's certificate and
//! key, and what every client of ours trusts.
//!
//! A coordinator or an edge serves HTTPS itself when given a certificate chain and its key as PEM files
//! ([`acceptor`]); operators behind a reverse proxy leave them out. Every outgoing connection (the agent to its
//! coordinator, the edge to coordinators, a coordinator to a tunnel's `https://` endpoint, the updater to a
//! release feed) trusts the public web's roots (Mozilla's, built in, so a machine without a CA bundle still
//! joins) and the certificates in the PEM file [`CA_FILE_ENV`] names: a private or test CA. It is read once, at
//! start ([`load_trust`]); a file that cannot be used stops the program with the reason.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// The environment variable naming a PEM file of certificate authorities to trust besides the public ones.
pub const CA_FILE_ENV: &str = "COMMONS_CA_FILE";

/// The protocol our servers speak over TLS (ALPN): HTTP/1.1, which the reverse path upgrades.
const ALPN: &[u8] = b"http/1.1";

/// A certificate, key or CA file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The file cannot be read, or is not PEM.
    #[error("cannot read {what} from {path}: {source}")]
    Read {
        /// What was looked for in it.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// The file holds no certificate.
    #[error(
        "{path} holds no certificate (a PEM file with -----BEGIN CERTIFICATE----- blocks is expected)"
    )]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// rustls refused the certificate, the key or the pair.
    #[error("{path} cannot be used: {source}")]
    Refused {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: rustls::Error,
    },
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let read = |source| TlsError::Read {
        what: "certificates",
        path: path.into(),
        source,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(read)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(read)?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { path: path.into() });
    }
    Ok(certs)
}

/// What accepts TLS connections for a server.
pub type Acceptor = tokio_rustls::TlsAcceptor;

/// A server's TLS from its settings `tls_cert` and `tls_key` (both, or neither: plain HTTP).
pub fn from_settings(
    cert: Option<&Path>,
    key: Option<&Path>,
) -> Result<Option<Acceptor>, crate::config::ConfigError> {
    match (cert, key) {
        (None, None) => Ok(None),
        (Some(cert), Some(key)) => acceptor(cert, key)
            .map(Some)
            .map_err(|e| crate::config::ConfigError::Invalid(e.to_string())),
        _ => Err(crate::config::ConfigError::Invalid(
            "tls_cert and tls_key go together: give both to serve HTTPS, or neither".into(),
        )),
    }
}

/// A server's TLS from its certificate chain (`cert`, PEM, the leaf first) and private key (`key`, PEM: PKCS#8,
/// PKCS#1 or SEC1), speaking HTTP/1.1.
pub fn acceptor(cert: &Path, key: &Path) -> Result<Acceptor, TlsError> {
    let chain = certificates(cert)?;
    let private = PrivateKeyDer::from_pem_file(key).map_err(|source| TlsError::Read {
        what: "a private key",
        path: key.into(),
        source,
    })?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(chain, private))
        .map_err(|source| TlsError::Refused {
            path: key.into(),
            source,
        })?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(Acceptor::from(Arc::new(config)))
}

/// What [`client_config`] gives: set by [`trust`]; the public roots alone until then.
static TRUST: parking_lot::RwLock<Option<Arc<rustls::ClientConfig>>> =
    parking_lot::const_rwlock(None);

/// The client configuration trusting the public roots and the certificates of `ca_file`.
fn trusting(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, TlsError> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = ca_file {
        for c in certificates(path)? {
            roots.add(c).map_err(|source| TlsError::Refused {
                path: path.into(),
                source,
            })?;
        }
    }
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Refused {
            path: ca_file.unwrap_or(Path::new("(built-in roots)")).into(),
            source,
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// Reads the CA file [`CA_FILE_ENV`] names, if any, into what [`client_config`] trusts ([`trust`]). Call it
/// once at start, to stop with the reason when the file cannot be used.
pub fn load_trust() -> Result<(), TlsError> {
    let file = std::env::var_os(CA_FILE_ENV)
        .filter(|f| !f.is_empty())
        .map(PathBuf::from);
    trust(file.as_deref())
}

/// From now on, outgoing TLS connections (and HTTP clients made after this) trust the public roots and the
/// certificates in `ca_file`.
pub fn trust(ca_file: Option<&Path>) -> Result<(), TlsError> {
    let config = Arc::new(trusting(ca_file)?);
    *TRUST.write() = Some(config);
    Ok(())
}

/// What outgoing TLS connections trust: the public roots, and the CA file given to [`trust`].
pub fn client_config() -> Arc<rustls::ClientConfig> {
    if let Some(c) = &*TRUST.read() {
        return c.clone();
    }
    let built = Arc::new(trusting(None).expect("the built-in roots are valid"));
    TRUST.write().get_or_insert(built).clone()
}

/// An HTTP client builder that trusts what [`client_config`] trusts. Every `reqwest` client of ours starts here.
pub fn http() -> reqwest::ClientBuilder {
    reqwest::Client::builder().use_preconfigured_tls((*client_config()).clone())
}

/// Opens TLS over `tcp` to `host` (the name the certificate must carry, or an IP address).
pub async fn connect(
    host: &str,
    tcp: tokio::net::TcpStream,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let name = ServerName::try_from(host.to_owned())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    tokio_rustls::TlsConnector::from(client_config())
        .connect(name, tcp)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_that_cannot_be_used_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "nothing here\n").unwrap();
        let refused = |cert: &Path, key: &Path| match acceptor(cert, key) {
            Ok(_) => panic!("{} accepted", cert.display()),
            Err(e) => e.to_string(),
        };
        let e = refused(&empty, &empty);
        assert!(e.contains("empty.pem holds no certificate"), "{e}");
        let e = refused(&dir.path().join("missing.pem"), &empty);
        assert!(
            e.starts_with("cannot read certificates from ") && e.contains("missing.pem"),
            "{e}"
        );
        let e = trusting(Some(&empty)).unwrap_err().to_string();
        assert!(e.contains("holds no certificate"), "{e}");
        // The public roots alone.
        assert!(trusting(None).is_ok());
    }
}
