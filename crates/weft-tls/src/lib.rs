//! TLS for weft's listeners and clients, on rustls (with aws-lc-rs): certificates and keys from PEM
//! files, checked at start with the file and the reason, reloaded when they change without
//! dropping a connection, and optional client-certificate authentication (mTLS) against a
//! trusted CA, as etcd's `--client-cert-auth`.
//!
//! - [`Acceptor`]: a server side. Each handshake uses the configuration current at its
//!   start; [`Acceptor::watch`] reloads it when a file changes (a bad new file is logged and
//!   the last good configuration stays). TLS 1.2 and 1.3 only; handshakes time out.
//! - [`client_config`]: a client side that trusts a CA file (or the system's roots) and may
//!   present a client certificate.
//! - [`limit::PerClient`]: how many connections one client address may hold on a listener.
//!
//! ```
//! # #[cfg(feature = "testing")]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! # let dir = tempfile::tempdir()?;
//! # let pki = weft_tls::testing::Pki::new(dir.path())?;
//! use weft_tls::{Acceptor, ClientFiles, ServerFiles};
//! let acceptor = Acceptor::load(
//!     ServerFiles { cert: pki.server_cert.clone(), key: pki.server_key.clone(), client_ca: None },
//!     &[b"http/1.1"],
//! )?;
//! let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let addr = l.local_addr()?;
//! tokio::spawn(async move {
//!     let (tcp, _) = l.accept().await.unwrap();
//!     let mut tls = acceptor.accept(tcp).await.unwrap();
//!     tokio::io::AsyncWriteExt::write_all(&mut tls, b"hello").await.unwrap();
//!     tokio::io::AsyncWriteExt::shutdown(&mut tls).await.unwrap();
//! });
//! let cfg = weft_tls::client_config(&ClientFiles { ca: Some(pki.ca_cert.clone()), ..Default::default() }, &[])?;
//! let tcp = tokio::net::TcpStream::connect(addr).await?;
//! let name = weft_tls::server_name("localhost")?;
//! let mut tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg)).connect(name, tcp).await?;
//! let mut got = Vec::new();
//! tokio::io::AsyncReadExt::read_to_end(&mut tls, &mut got).await?;
//! assert_eq!(got, b"hello");
//! # Ok(()) }
//! # #[cfg(not(feature = "testing"))]
//! # fn main() {}
//! ```

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite};

pub use rustls;
pub use tokio_rustls;
/// A server side TLS stream.
pub type ServerStream<IO> = tokio_rustls::server::TlsStream<IO>;

pub mod limit;
#[cfg(feature = "testing")]
pub mod testing;

/// Why a TLS configuration cannot be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file cannot be read.
    #[error("cannot read {}: {source}", file.display())]
    Read {
        /// The file.
        file: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A file holds no usable certificate or key, or they do not fit together.
    #[error("{}: {reason}", file.display())]
    Invalid {
        /// The file.
        file: PathBuf,
        /// What is wrong, and what is expected.
        reason: String,
    },
    /// The options do not make a configuration (what is wrong and what is allowed).
    #[error("{0}")]
    Config(String),
}

impl TlsError {
    /// Whether trying again may succeed (a file being replaced may read well later).
    pub fn is_retryable(&self) -> bool {
        matches!(self, TlsError::Read { .. })
    }
}

/// A listener's certificate, key and, for client-certificate authentication, the CA that
/// client certificates must chain to. PEM files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerFiles {
    /// The certificate chain (leaf first).
    pub cert: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// Require client certificates signed by this CA (mTLS).
    pub client_ca: Option<PathBuf>,
}

/// Another certificate of a listener, served to clients that ask for one of its names by
/// SNI (TLS server name indication). Names are exact (`api.example.com`) or wildcards of one
/// label (`*.example.com`); case does not matter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SniFiles {
    /// The names it serves.
    pub names: Vec<String>,
    /// Its certificate chain (leaf first).
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
}

/// A client's trust and identity. PEM files.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientFiles {
    /// Trust only this CA (default: the system's roots).
    pub ca: Option<PathBuf>,
    /// A client certificate to present (with `key`).
    pub cert: Option<PathBuf>,
    /// The client certificate's key.
    pub key: Option<PathBuf>,
}

impl ClientFiles {
    /// Whether any option is set.
    pub fn is_set(&self) -> bool {
        self.ca.is_some() || self.cert.is_some() || self.key.is_some()
    }
}

/// How long a TLS handshake may take before the connection is dropped (a client that opens
/// connections and never finishes them holds nothing longer).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// rustls's default provider, aws-lc-rs: post-quantum key exchange (X25519MLKEM768) first,
/// and the one reqwest (the CLI's and the saga steps' HTTP client) uses, so the process links
/// one crypto library.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn read(file: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(file).map_err(|source| TlsError::Read {
        file: file.to_path_buf(),
        source,
    })
}

/// The certificates of a PEM file (at least one).
pub fn read_certs(file: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(file)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Invalid {
            file: file.to_path_buf(),
            reason: format!("not a PEM certificate file: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Invalid {
            file: file.to_path_buf(),
            reason: "no certificate in it (expected PEM \"BEGIN CERTIFICATE\" blocks)".into(),
        });
    }
    Ok(certs)
}

/// The private key of a PEM file.
pub fn read_key(file: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(file)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::Invalid {
        file: file.to_path_buf(),
        reason: format!("no private key in it (expected a PEM PKCS#8, PKCS#1 or SEC1 key): {e}"),
    })
}

fn roots(file: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in read_certs(file)? {
        roots.add(c).map_err(|e| TlsError::Invalid {
            file: file.to_path_buf(),
            reason: format!("not a usable CA certificate: {e}"),
        })?;
    }
    Ok(roots)
}

/// A certificate and its key, checked to go together.
fn certified(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    let ck =
        CertifiedKey::from_der(read_certs(cert)?, read_key(key)?, &provider()).map_err(|e| {
            TlsError::Invalid {
                file: key.to_path_buf(),
                reason: format!(
                    "does not go with the certificate in {}: {e}",
                    cert.display()
                ),
            }
        })?;
    Ok(Arc::new(ck))
}

/// Chooses a certificate by the client's SNI name: exact names, then one-label wildcards,
/// then the listener's default certificate.
#[derive(Debug)]
struct Sni {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// By the part after `*.` (`example.com` for `*.example.com`).
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl Sni {
    fn new(files: &ServerFiles, sni: &[SniFiles]) -> Result<Sni, TlsError> {
        let mut out = Sni {
            exact: HashMap::new(),
            wildcard: HashMap::new(),
            default: certified(&files.cert, &files.key)?,
        };
        for f in sni {
            let ck = certified(&f.cert, &f.key)?;
            if f.names.is_empty() {
                return Err(TlsError::Invalid {
                    file: f.cert.clone(),
                    reason: "an SNI certificate needs at least one name".into(),
                });
            }
            for n in &f.names {
                let n = n.to_ascii_lowercase();
                let (map, key) = match n.strip_prefix("*.") {
                    Some(rest) => (&mut out.wildcard, rest.to_string()),
                    None => (&mut out.exact, n.clone()),
                };
                if key.is_empty() || key.contains('*') || map.insert(key, ck.clone()).is_some() {
                    return Err(TlsError::Invalid {
                        file: f.cert.clone(),
                        reason: format!(
                            "SNI name {n:?} is given twice or is not a name or a one-label wildcard"
                        ),
                    });
                }
            }
        }
        Ok(out)
    }

    fn pick(&self, name: Option<&str>) -> Arc<CertifiedKey> {
        let Some(name) = name.map(str::to_ascii_lowercase) else {
            return self.default.clone();
        };
        if let Some(ck) = self.exact.get(&name) {
            return ck.clone();
        }
        name.split_once('.')
            .and_then(|(_, rest)| self.wildcard.get(rest))
            .unwrap_or(&self.default)
            .clone()
    }
}

impl rustls::server::ResolvesServerCert for Sni {
    fn resolve(&self, hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.pick(hello.server_name()))
    }
}

fn server_config(
    files: &ServerFiles,
    sni: &[SniFiles],
    alpn: &[Vec<u8>],
) -> Result<ServerConfig, TlsError> {
    let certs = read_certs(&files.cert)?;
    let key = read_key(&files.key)?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match &files.client_ca {
        Some(ca) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), provider())
                    .build()
                    .map_err(|e| TlsError::Invalid {
                        file: ca.clone(),
                        reason: format!("cannot verify clients with it: {e}"),
                    })?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut cfg = if sni.is_empty() {
        builder
            .with_single_cert(certs, key)
            .map_err(|e| TlsError::Invalid {
                file: files.key.clone(),
                reason: format!(
                    "does not go with the certificate in {}: {e}",
                    files.cert.display()
                ),
            })?
    } else {
        builder.with_cert_resolver(Arc::new(Sni::new(files, sni)?))
    };
    cfg.alpn_protocols = alpn.to_vec();
    Ok(cfg)
}

/// What a file looked like when it was last loaded.
type Stamp = Option<(SystemTime, u64)>;

fn stamp(file: &Path) -> Stamp {
    let m = std::fs::metadata(file).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// A listener's TLS side; see the crate docs.
pub struct Acceptor {
    files: ServerFiles,
    sni: Vec<SniFiles>,
    alpn: Vec<Vec<u8>>,
    current: RwLock<Arc<ServerConfig>>,
    stamps: Mutex<Vec<Stamp>>,
}

impl std::fmt::Debug for Acceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acceptor")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl Acceptor {
    /// Loads the files and offers the `alpn` protocols (most preferred first); fails with the
    /// file and the reason.
    pub fn load(files: ServerFiles, alpn: &[&[u8]]) -> Result<Arc<Acceptor>, TlsError> {
        Self::load_sni(files, Vec::new(), alpn)
    }

    /// Like [`Acceptor::load`], with more certificates chosen by the client's SNI name
    /// (`files` serves every other name, and clients that send none).
    pub fn load_sni(
        files: ServerFiles,
        sni: Vec<SniFiles>,
        alpn: &[&[u8]],
    ) -> Result<Arc<Acceptor>, TlsError> {
        let alpn: Vec<Vec<u8>> = alpn.iter().map(|p| p.to_vec()).collect();
        let cfg = server_config(&files, &sni, &alpn)?;
        let stamps = Self::stamps_of(&files, &sni);
        Ok(Arc::new(Acceptor {
            files,
            sni,
            alpn,
            current: RwLock::new(Arc::new(cfg)),
            stamps: Mutex::new(stamps),
        }))
    }

    fn stamps_of(files: &ServerFiles, sni: &[SniFiles]) -> Vec<Stamp> {
        let mut v = vec![stamp(&files.cert), stamp(&files.key)];
        if let Some(ca) = &files.client_ca {
            v.push(stamp(ca));
        }
        for f in sni {
            v.push(stamp(&f.cert));
            v.push(stamp(&f.key));
        }
        v
    }

    /// The files it serves.
    pub fn files(&self) -> &ServerFiles {
        &self.files
    }

    /// Whether clients must present a certificate.
    pub fn client_auth(&self) -> bool {
        self.files.client_ca.is_some()
    }

    /// The configuration new handshakes use.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Loads the files again; on an error the current configuration stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let stamps = Self::stamps_of(&self.files, &self.sni);
        let cfg = server_config(&self.files, &self.sni, &self.alpn)?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(cfg);
        *self.stamps.lock().unwrap_or_else(PoisonError::into_inner) = stamps;
        Ok(())
    }

    /// Reloads if a file's modification time or size changed since the last load; true if
    /// it reloaded.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let now = Self::stamps_of(&self.files, &self.sni);
        if *self.stamps.lock().unwrap_or_else(PoisonError::into_inner) == now {
            return Ok(false);
        }
        self.reload().map(|()| true)
    }

    /// Checks the files every `every` and reloads them when they change, for as long as the
    /// acceptor lives. A file that does not load is logged (with the reason) and tried again
    /// at the next change; the last good configuration keeps serving.
    pub fn watch(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(a) = me.upgrade() else { return };
                match a.reload_if_changed() {
                    Ok(true) => {
                        tracing::info!(cert = %a.files.cert.display(), "TLS files reloaded")
                    }
                    Ok(false) => {}
                    Err(e) => {
                        // Not again until the files change once more.
                        *a.stamps.lock().unwrap_or_else(PoisonError::into_inner) =
                            Self::stamps_of(&a.files, &a.sni);
                        tracing::warn!("TLS files not reloaded, the previous ones stay: {e}");
                    }
                }
            }
        })
    }

    /// Runs a server handshake on `io` with the current configuration, within
    /// [`HANDSHAKE_TIMEOUT`].
    pub async fn accept<IO>(&self, io: IO) -> io::Result<ServerStream<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.config());
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(io)).await {
            Ok(r) => r,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "TLS handshake not finished in time",
            )),
        }
    }
}

/// A client configuration: trust `files.ca` (or the system's roots), present
/// `files.cert`/`files.key` if given, offer `alpn`.
pub fn client_config(files: &ClientFiles, alpn: &[&[u8]]) -> Result<ClientConfig, TlsError> {
    let roots = match &files.ca {
        Some(ca) => roots(ca)?,
        None => {
            let mut roots = RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(TlsError::Config(
                    "no trusted CA: the system has no root certificates; give a CA file".into(),
                ));
            }
            roots
        }
    };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots);
    with_identity(builder, files, alpn)
}

/// Finishes a client configuration: the client certificate of `files` (if any) and `alpn`.
fn with_identity(
    builder: rustls::ConfigBuilder<ClientConfig, rustls::client::WantsClientCert>,
    files: &ClientFiles,
    alpn: &[&[u8]],
) -> Result<ClientConfig, TlsError> {
    let mut cfg = match (&files.cert, &files.key) {
        (Some(cert), Some(key)) => builder
            .with_client_auth_cert(read_certs(cert)?, read_key(key)?)
            .map_err(|e| TlsError::Invalid {
                file: key.clone(),
                reason: format!(
                    "does not go with the certificate in {}: {e}",
                    cert.display()
                ),
            })?,
        (None, None) => builder.with_no_client_auth(),
        _ => {
            return Err(TlsError::Config(
                "a client certificate needs both a certificate file and its key file".into(),
            ))
        }
    };
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(cfg)
}

/// Like [`client_config`], but the server's certificate is not verified at all (only the
/// handshake's signatures are): any server, or a man in the middle, is accepted. For tests
/// against self-signed upstreams; callers say so loudly.
pub fn client_config_unverified(
    files: &ClientFiles,
    alpn: &[&[u8]],
) -> Result<ClientConfig, TlsError> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Unverified(provider)));
    with_identity(builder, files, alpn)
}

/// Accepts any server certificate; checks the handshake's signatures.
#[derive(Debug)]
struct Unverified(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A server name to verify (a DNS name or an IP address).
pub fn server_name(host: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
    )
    .map_err(|e| TlsError::Config(format!("{host:?} is not a DNS name or an IP address: {e}")))
}

/// The common name (CN) of the client certificate a connection presented, if any: with
/// client-certificate authentication, the user a call without a token runs as (etcd's rule).
/// The certificate was verified during the handshake; one without a CN, or whose CN is not
/// UTF-8 or printable text, gives none.
pub fn peer_common_name(conn: &rustls::CommonState) -> Option<String> {
    use x509_cert::der::{asn1, Decode};
    let der = conn.peer_certificates()?.first()?;
    let cert = x509_cert::Certificate::from_der(der.as_ref()).ok()?;
    const CN: x509_cert::der::oid::ObjectIdentifier =
        x509_cert::der::oid::ObjectIdentifier::new_unwrap("2.5.4.3");
    let atv = cert
        .tbs_certificate
        .subject
        .0
        .iter()
        .flat_map(|rdn| rdn.0.iter())
        .find(|atv| atv.oid == CN)?;
    if let Ok(s) = atv.value.decode_as::<asn1::Utf8StringRef<'_>>() {
        return Some(s.as_str().to_owned());
    }
    atv.value
        .decode_as::<asn1::PrintableStringRef<'_>>()
        .ok()
        .map(|s| s.as_str().to_owned())
}
