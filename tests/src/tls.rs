//! Certificates for TLS tests: a test CA that this process trusts, a server certificate it signed for `localhost`
//! and 127.0.0.1, and a self-signed certificate nobody trusts.

use std::path::PathBuf;
use std::sync::OnceLock;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

/// A certificate and its key, as PEM files.
#[derive(Debug)]
pub struct Pair {
    /// The certificate chain.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
}

/// The test CA and what it signed, in files that live as long as the process.
#[derive(Debug)]
pub struct TestCa {
    /// The CA's certificate (what `COMMONS_CA_FILE` names).
    pub ca: PathBuf,
    /// A server certificate for `localhost` and 127.0.0.1, signed by the CA.
    pub server: Pair,
    /// A self-signed certificate for the same names, which nothing trusts.
    pub stranger: Pair,
    _dir: tempfile::TempDir,
}

fn params(names: &[&str], common_name: &str) -> CertificateParams {
    let mut p = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
        .expect("valid names");
    p.distinguished_name.push(DnType::CommonName, common_name);
    p
}

fn write(dir: &std::path::Path, name: &str, cert: &rcgen::Certificate, key: &KeyPair) -> Pair {
    let pair = Pair {
        cert: dir.join(format!("{name}.pem")),
        key: dir.join(format!("{name}-key.pem")),
    };
    std::fs::write(&pair.cert, cert.pem()).unwrap();
    std::fs::write(&pair.key, key.serialize_pem()).unwrap();
    pair
}

/// The process's test CA, made on first use; from then on this process's outgoing TLS trusts it
/// ([`commons_server::tls::trust`]), as a program started with `COMMONS_CA_FILE` naming it would.
pub fn test_ca() -> &'static TestCa {
    static CA: OnceLock<TestCa> = OnceLock::new();
    CA.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = params(&[], "Commons test CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let names = ["localhost", "127.0.0.1"];
        let server_key = KeyPair::generate().unwrap();
        let server_cert = params(&names, "localhost")
            .signed_by(&server_key, &ca_cert, &ca_key)
            .unwrap();
        let stranger_key = KeyPair::generate().unwrap();
        let stranger_cert = params(&names, "localhost")
            .self_signed(&stranger_key)
            .unwrap();
        let ca_path = dir.path().join("ca.pem");
        std::fs::write(&ca_path, ca_cert.pem()).unwrap();
        let test_ca = TestCa {
            server: write(dir.path(), "server", &server_cert, &server_key),
            stranger: write(dir.path(), "stranger", &stranger_cert, &stranger_key),
            ca: ca_path,
            _dir: dir,
        };
        commons_server::tls::trust(Some(&test_ca.ca)).expect("the test CA is valid");
        test_ca
    })
}
