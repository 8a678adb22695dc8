//! Throwaway certificate authorities for tests: a CA, a server certificate (for `localhost`
//! and `127.0.0.1`, or for another name only), and a client certificate, written as PEM files.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};

/// PEM files under one directory.
#[derive(Clone, Debug)]
pub struct Pki {
    /// The CA's certificate.
    pub ca_cert: PathBuf,
    /// The server's certificate (signed by the CA).
    pub server_cert: PathBuf,
    /// The server's key.
    pub server_key: PathBuf,
    /// A client certificate (signed by the CA).
    pub client_cert: PathBuf,
    /// The client's key.
    pub client_key: PathBuf,
}

type Error = Box<dyn std::error::Error + Send + Sync>;

fn ca(name: &str) -> Result<(rcgen::Certificate, KeyPair), Error> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name
        .push(rcgen::DnType::CommonName, name.to_string());
    let key = KeyPair::generate()?;
    let cert = p.self_signed(&key)?;
    Ok((cert, key))
}

fn leaf(
    name: &str,
    ca: &rcgen::Certificate,
    ca_key: &KeyPair,
) -> Result<(rcgen::Certificate, KeyPair), Error> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.subject_alt_names = vec![SanType::DnsName(name.try_into()?)];
    if name == "localhost" {
        p.subject_alt_names
            .push(SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
    }
    p.distinguished_name
        .push(rcgen::DnType::CommonName, name.to_string());
    let key = KeyPair::generate()?;
    let cert = p.signed_by(&key, ca, ca_key)?;
    Ok((cert, key))
}

impl Pki {
    /// A new CA named `weft test CA` and its certificates, in `dir`.
    pub fn new(dir: &Path) -> Result<Pki, Error> {
        Self::named(dir, "weft test CA", "localhost")
    }

    /// A new CA (`ca_name`) with a server certificate for `host` (and 127.0.0.1 if `host` is
    /// `localhost`), in `dir`
    /// (files prefixed with the CA's name, so several fit in one directory).
    pub fn named(dir: &Path, ca_name: &str, host: &str) -> Result<Pki, Error> {
        let (ca_cert, ca_key) = ca(ca_name)?;
        let (server, server_key) = leaf(host, &ca_cert, &ca_key)?;
        let (client, client_key) = leaf("weft-client", &ca_cert, &ca_key)?;
        let prefix = ca_name.replace(' ', "-");
        let path = |n: &str| dir.join(format!("{prefix}-{n}"));
        let pki = Pki {
            ca_cert: path("ca.pem"),
            server_cert: path("server.pem"),
            server_key: path("server-key.pem"),
            client_cert: path("client.pem"),
            client_key: path("client-key.pem"),
        };
        std::fs::write(&pki.ca_cert, ca_cert.pem())?;
        std::fs::write(&pki.server_cert, server.pem())?;
        std::fs::write(&pki.server_key, server_key.serialize_pem())?;
        std::fs::write(&pki.client_cert, client.pem())?;
        std::fs::write(&pki.client_key, client_key.serialize_pem())?;
        Ok(pki)
    }
}
