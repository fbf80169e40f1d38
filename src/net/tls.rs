//! TLS for both listeners (`--tls-cert`, `--tls-key`) and client
//! certificates on xDS (`--xds-client-ca`): rustls with the ring provider.
//!
//! - The certificate and key are looked at on every handshake: when either
//!   file changed (modification time, size or inode), both are read again,
//!   so a rotated certificate needs no restart. A new pair that does not
//!   load (half written, key and certificate not matching) is logged once
//!   at ERROR and the previous pair keeps serving.
//! - The client CA file (`--xds-client-ca`) is looked at on every xDS
//!   handshake in the same way: when it changed, xDS's TLS settings are built
//!   again from it (a CA rotated in and out needs no restart), and one that
//!   does not load is logged once and the previous CA keeps verifying.
//! - A handshake has [`HANDSHAKE_TIMEOUT`]: a client that opens TCP and
//!   sends nothing does not hold a connection slot.
//! - With a client CA, xDS requires a client certificate signed by it, and
//!   the node types that certificate names ([`CertifiedNodeTypes`]) ride in
//!   every request's extensions; `XdsServer` refuses a node id of another
//!   type. REST keeps server-only TLS.

use std::{
    fmt,
    fs::Metadata,
    io,
    net::SocketAddr,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use rustls::{
    crypto::CryptoProvider,
    server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier},
    sign::CertifiedKey,
    RootCertStore, ServerConfig,
};
use rustls_pki_types::{
    pem::{self, PemObject},
    CertificateDer, PrivateKeyDer,
};
use tokio::net::TcpStream;
use tokio_rustls::{server::TlsStream, TlsAcceptor};
use tokio_util::{either::Either, sync::CancellationToken};
use x509_parser::extensions::GeneralName;

use crate::{metrics::Metrics, node_type::NodeType, Config};

/// How long a client has to complete its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection after its handshake: plain TCP without `--tls-cert`. The
/// TLS side is boxed: a rustls connection is a few KiB, and every plain
/// connection would pay for it inline (hyper keeps the stream in its state).
pub(super) type Stream = Either<TcpStream, Box<TlsStream<TcpStream>>>;

/// Why the TLS settings cannot be used; the daemon does not start.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("--tls-cert (SXDS_TLS_CERT) and --tls-key (SXDS_TLS_KEY) go together: {0} is missing")]
    Incomplete(&'static str),
    #[error("--xds-client-ca (SXDS_XDS_CLIENT_CA) needs --tls-cert and --tls-key")]
    ClientCaWithoutCert,
    #[error("{what} {path}: {reason}")]
    File { what: &'static str, path: PathBuf, reason: String },
    #[error("TLS: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("--xds-client-ca: {0}")]
    ClientCa(String),
}

/// The TLS settings of both listeners (there are none without
/// `--tls-cert`: both serve plaintext).
#[derive(Clone)]
pub struct Tls {
    pub xds: Acceptor,
    pub rest: Acceptor,
}

impl Tls {
    /// Loads what the flags name; `Ok(None)` without `--tls-cert`. What is
    /// in use, and until when it is valid, shows in `metrics`.
    pub fn from_config(config: &Config, metrics: &Metrics) -> Result<Option<Self>, TlsError> {
        let (cert, key) = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => (cert, key),
            (Some(_), None) => return Err(TlsError::Incomplete("--tls-key")),
            (None, Some(_)) => return Err(TlsError::Incomplete("--tls-cert")),
            (None, None) if config.xds_client_ca.is_some() => return Err(TlsError::ClientCaWithoutCert),
            (None, None) => return Ok(None),
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        // One resolver: both ports serve (and reload) the same certificate.
        let resolver = Arc::new(ReloadingCert::load(cert, key, provider.clone(), metrics.clone())?);
        let settings = |alpn: &'static [&'static [u8]], client_ca| Settings {
            provider: provider.clone(),
            resolver: resolver.clone(),
            alpn,
            client_ca,
            metrics: metrics.clone(),
        };
        Ok(Some(Self {
            xds: Acceptor::new(settings(&[b"h2"], config.xds_client_ca.clone()))?,
            rest: Acceptor::new(settings(&[b"h2", b"http/1.1"], None))?,
        }))
    }
}

/// One listener's TLS: its settings as last built. With a client CA they
/// are built again when the CA file changes.
#[derive(Clone)]
pub struct Acceptor(Arc<Reloading>);

struct Reloading {
    settings: Settings,
    // A std Mutex, as for the certificate: held for a stat of the CA file
    // (and on a change, a read of it) per handshake, never across an await.
    built: Mutex<Built>,
}

/// What a listener's TLS is built from.
struct Settings {
    provider: Arc<CryptoProvider>,
    resolver: Arc<ReloadingCert>,
    alpn: &'static [&'static [u8]],
    /// Clients must present a certificate this file's CAs signed.
    client_ca: Option<PathBuf>,
    metrics: Metrics,
}

struct Built {
    config: Arc<ServerConfig>,
    /// The client CA file as last tried, loaded or not: a broken file is
    /// logged once, not on every handshake.
    ca_tried: FileStamp,
}

impl Acceptor {
    fn new(settings: Settings) -> Result<Self, TlsError> {
        let ca_tried = settings.client_ca.as_deref().and_then(file_stamp);
        let config = Arc::new(settings.build()?);
        Ok(Self(Arc::new(Reloading { settings, built: Mutex::new(Built { config, ca_tried }) })))
    }

    /// The settings for a handshake starting now.
    fn current(&self) -> TlsAcceptor {
        let Reloading { settings, built } = &*self.0;
        let mut built = built.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(ca) = &settings.client_ca {
            let stamp = file_stamp(ca);
            if stamp != built.ca_tried {
                built.ca_tried = stamp;
                match settings.build() {
                    Ok(config) => {
                        tracing::info!(client_ca = %ca.display(), "client CA reloaded");
                        built.config = Arc::new(config);
                    }
                    Err(error) => {
                        tracing::error!(%error, "cannot reload the client CA; verifying with the previous one");
                        settings.metrics.tls_reload_failed("client_ca");
                    }
                }
            }
        }
        TlsAcceptor::from(built.config.clone())
    }
}

impl Settings {
    /// A fresh config, so a session verified under an earlier CA is not
    /// resumed under a later one.
    fn build(&self) -> Result<ServerConfig, TlsError> {
        let builder = ServerConfig::builder_with_provider(self.provider.clone()).with_safe_default_protocol_versions()?;
        let mut config = match &self.client_ca {
            Some(ca) => {
                let cas = read_certs(ca, "client CA")?;
                let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca, &cas)?), self.provider.clone())
                    .build()
                    .map_err(|e| TlsError::ClientCa(e.to_string()))?;
                self.metrics.tls_loaded("client_ca", cas.iter().filter_map(|ca| not_after(ca)).min());
                builder.with_client_cert_verifier(verifier).with_cert_resolver(self.resolver.clone())
            }
            None => builder.with_no_client_auth().with_cert_resolver(self.resolver.clone()),
        };
        config.alpn_protocols = self.alpn.iter().map(|protocol| protocol.to_vec()).collect();
        Ok(config)
    }
}

/// Runs the TLS handshake (when there is an acceptor) within
/// [`HANDSHAKE_TIMEOUT`]; `None` if it failed or shutdown came first.
pub(super) async fn handshake(acceptor: Option<&Acceptor>, tcp: TcpStream, server: &'static str, shutdown: &CancellationToken) -> Option<Stream> {
    let Some(acceptor) = acceptor.map(Acceptor::current) else { return Some(Either::Left(tcp)) };
    let peer = tcp.peer_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    tokio::select! {
        // Boxed for the same reason: the handshake state is as large as the connection.
        result = tokio::time::timeout(HANDSHAKE_TIMEOUT, Box::pin(acceptor.accept(tcp))) => match result {
            Ok(Ok(stream)) => Some(Either::Right(Box::new(stream))),
            Ok(Err(error)) if is_certificate_refusal(&error) => {
                tracing::info!(server, %peer, %error, "TLS handshake refused: client certificate");
                None
            }
            Ok(Err(error)) => {
                tracing::debug!(server, %peer, %error, "TLS handshake failed");
                None
            }
            Err(_) => {
                tracing::debug!(server, %peer, timeout = ?HANDSHAKE_TIMEOUT, "TLS handshake timed out");
                None
            }
        },
        () = shutdown.cancelled() => None,
    }
}

/// The client's address, under TLS or not.
pub(super) fn peer_addr(stream: &Stream) -> io::Result<SocketAddr> {
    match stream {
        Either::Left(tcp) => tcp.peer_addr(),
        Either::Right(tls) => tls.get_ref().0.peer_addr(),
    }
}

/// The peer's certificate was missing or not trusted (worth telling an
/// operator, unlike a scanner's garbage).
fn is_certificate_refusal(error: &io::Error) -> bool {
    let rustls_error = error.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>());
    matches!(rustls_error, Some(rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented))
}

/// The node types the client certificate of `stream` names, if it
/// presented one (only asked for with `--xds-client-ca`).
pub(super) fn peer_node_types(stream: &Stream) -> Option<CertifiedNodeTypes> {
    let Either::Right(tls) = stream else { return None };
    let end_entity = tls.get_ref().1.peer_certificates()?.first()?;
    Some(CertifiedNodeTypes(node_types_named(end_entity).into()))
}

/// The node types an xDS client's certificate names; in the request
/// extensions of every stream on a connection that presented one.
///
/// A certificate names node type `T` if it has
/// - a URI SAN whose path's last non-empty segment is `T`
///   (`spiffe://mesh.example/ecs/sidecar` names `sidecar`), or
/// - a DNS SAN whose first label is `T` (`sidecar.xds.internal` names `sidecar`).
///
/// Matching is exact (case-sensitive); a segment or label that is not a valid
/// node type (`*`, `a-b`) names nothing. The subject's CN is not looked at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertifiedNodeTypes(Arc<[NodeType]>);

impl CertifiedNodeTypes {
    /// Whether a stream of `node_type` may be served on this connection.
    pub fn allows(&self, node_type: &NodeType) -> bool {
        self.0.contains(node_type)
    }
}

impl fmt::Display for CertifiedNodeTypes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none");
        }
        let names: Vec<&str> = self.0.iter().map(NodeType::as_str).collect();
        f.write_str(&names.join(", "))
    }
}

/// The node types a DER certificate names (see [`CertifiedNodeTypes`]),
/// each once, in SAN order; none if it does not parse.
pub fn node_types_named(der: &[u8]) -> Vec<NodeType> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else { return Vec::new() };
    let Ok(Some(san)) = cert.subject_alternative_name() else { return Vec::new() };
    let mut types: Vec<NodeType> = Vec::new();
    for name in &san.value.general_names {
        let candidate = match name {
            GeneralName::URI(uri) => last_path_segment(uri),
            GeneralName::DNSName(dns) => dns.split('.').next(),
            _ => None,
        };
        if let Some(node_type) = candidate.and_then(|c| NodeType::parse(c).ok()) {
            if !types.contains(&node_type) {
                types.push(node_type);
            }
        }
    }
    types
}

/// The last non-empty segment of a URI's path: after `scheme://authority`
/// (or `scheme:` without one), up to any `?` or `#`.
fn last_path_segment(uri: &str) -> Option<&str> {
    let (_scheme, rest) = uri.split_once(':')?;
    let path = match rest.strip_prefix("//") {
        Some(after) => &after[after.find('/')?..],
        None => rest,
    };
    let path = path.split(['?', '#']).next().unwrap_or_default();
    path.split('/').rfind(|segment| !segment.is_empty())
}

/// The client CAs read from `path`, as rustls trusts them.
fn roots(path: &Path, cas: &[CertificateDer<'static>]) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for ca in cas {
        roots.add(ca.clone()).map_err(|e| TlsError::ClientCa(format!("{}: {e}", path.display())))?;
    }
    Ok(roots)
}

/// When a DER certificate expires (Unix seconds); `None` if it does not parse.
fn not_after(der: &[u8]) -> Option<i64> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(cert.validity().not_after.timestamp())
}

/// Every certificate of a PEM file; at least one.
fn read_certs(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let file_error = |reason: String| TlsError::File { what, path: path.to_owned(), reason };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(pem_error(&e)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(pem_error(&e)))?;
    if certs.is_empty() {
        return Err(file_error("no PEM certificate in it".into()));
    }
    Ok(certs)
}

/// What is wrong with a PEM file, in words: the library's own message
/// prints the marker lines as lists of bytes.
fn pem_error(error: &pem::Error) -> String {
    match error {
        pem::Error::MissingSectionEnd { end_marker } => {
            format!("the file ends inside a PEM block, before its \"-----END {}-----\" line (half written?)", String::from_utf8_lossy(end_marker))
        }
        pem::Error::IllegalSectionStart { line } => format!("a malformed PEM header line: {:?}", String::from_utf8_lossy(line)),
        other => other.to_string(),
    }
}

/// The server certificate, read again when its files change.
#[derive(Debug)]
struct ReloadingCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    provider: Arc<CryptoProvider>,
    metrics: Metrics,
    // A std Mutex: held for a stat (and on a change, two small reads) per
    // handshake, never across an await.
    current: Mutex<Current>,
}

#[derive(Debug)]
struct Current {
    key: Arc<CertifiedKey>,
    /// The files as last tried, whether they loaded or not: a broken pair is
    /// logged once, not on every handshake.
    tried: Stamp,
}

/// What identifies a version of a file: modification time, size and inode;
/// `None` while it cannot be looked at.
type FileStamp = Option<(SystemTime, u64, u64)>;

/// The certificate's and the key's.
type Stamp = [FileStamp; 2];

impl ReloadingCert {
    fn load(cert_path: &Path, key_path: &Path, provider: Arc<CryptoProvider>, metrics: Metrics) -> Result<Self, TlsError> {
        let (cert_path, key_path) = (cert_path.to_owned(), key_path.to_owned());
        let tried = stamp(&cert_path, &key_path);
        let key = Arc::new(read_pair(&cert_path, &key_path, &provider)?);
        metrics.tls_loaded("certificate", key.end_entity_cert().ok().and_then(|cert| not_after(cert)));
        Ok(Self { cert_path, key_path, provider, metrics, current: Mutex::new(Current { key, tried }) })
    }
}

fn stamp(cert_path: &Path, key_path: &Path) -> Stamp {
    [file_stamp(cert_path), file_stamp(key_path)]
}

fn file_stamp(path: &Path) -> FileStamp {
    let of = |m: Metadata| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len(), m.ino());
    std::fs::metadata(path).ok().map(of)
}

/// The certificate chain and its key; an error unless they match.
fn read_pair(cert_path: &Path, key_path: &Path, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let chain = read_certs(cert_path, "--tls-cert")?;
    let key = PrivateKeyDer::from_pem_file(key_path)
        .map_err(|e| TlsError::File { what: "--tls-key", path: key_path.to_owned(), reason: pem_error(&e) })?;
    Ok(CertifiedKey::from_der(chain, key, provider)?)
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let stamp = stamp(&self.cert_path, &self.key_path);
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if stamp != current.tried {
            current.tried = stamp;
            match read_pair(&self.cert_path, &self.key_path, &self.provider) {
                Ok(key) => {
                    tracing::info!(cert = %self.cert_path.display(), "TLS certificate reloaded");
                    self.metrics.tls_loaded("certificate", key.end_entity_cert().ok().and_then(|cert| not_after(cert)));
                    current.key = Arc::new(key);
                }
                Err(error) => {
                    tracing::error!(%error, "cannot reload the TLS certificate; serving the previous one");
                    self.metrics.tls_reload_failed("certificate");
                }
            }
        }
        Some(current.key.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broken_pem_file_is_described_in_words() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        for (content, says) in [
            ("-----BEGIN CERTIFICATE-----\nMIIB\n", "the file ends inside a PEM block, before its \"-----END CERTIFICATE-----\" line (half written?)"),
            ("", "no PEM certificate in it"),
        ] {
            std::fs::write(&path, content).unwrap();
            let error = read_certs(&path, "client CA").unwrap_err().to_string();
            assert_eq!(error, format!("client CA {}: {says}", path.display()));
        }
    }

    #[test]
    fn a_plain_connection_does_not_carry_a_tls_connection_inline() {
        let (plain, tls) = (std::mem::size_of::<TcpStream>(), std::mem::size_of::<TlsStream<TcpStream>>());
        assert!(std::mem::size_of::<Stream>() <= plain + 16, "Stream is {} bytes; TcpStream {plain}, TlsStream {tls}", std::mem::size_of::<Stream>());
    }

    #[test]
    fn tls_settings_come_in_pairs_and_the_client_ca_needs_them() {
        let config = |args: &[&str]| <Config as clap::Parser>::try_parse_from(std::iter::once("sxds").chain(args.iter().copied())).unwrap();
        assert!(matches!(Tls::from_config(&config(&[]), &Metrics::default()), Ok(None)));
        assert!(matches!(Tls::from_config(&config(&["--tls-cert", "c.pem"]), &Metrics::default()), Err(TlsError::Incomplete("--tls-key"))));
        assert!(matches!(Tls::from_config(&config(&["--tls-key", "k.pem"]), &Metrics::default()), Err(TlsError::Incomplete("--tls-cert"))));
        assert!(matches!(Tls::from_config(&config(&["--xds-client-ca", "ca.pem"]), &Metrics::default()), Err(TlsError::ClientCaWithoutCert)));
        let missing = Tls::from_config(&config(&["--tls-cert", "/nonexistent/c.pem", "--tls-key", "k.pem"]), &Metrics::default()).err().unwrap();
        assert!(missing.to_string().starts_with("--tls-cert /nonexistent/c.pem: "), "{missing}");
    }

    #[test]
    fn the_last_non_empty_path_segment_of_a_uri() {
        assert_eq!(last_path_segment("spiffe://mesh.example/ecs/sidecar"), Some("sidecar"));
        assert_eq!(last_path_segment("spiffe://mesh.example/ecs/sidecar/"), Some("sidecar"));
        assert_eq!(last_path_segment("https://h/a/gateway?x=1#f"), Some("gateway"));
        assert_eq!(last_path_segment("spiffe://mesh.example"), None);
        assert_eq!(last_path_segment("spiffe://mesh.example/"), None);
        assert_eq!(last_path_segment("urn:sidecar"), Some("sidecar"));
        assert_eq!(last_path_segment("no scheme"), None);
    }

    fn cert_with(sans: Vec<rcgen::SanType>) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = sans;
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn uri_and_dns_sans_name_node_types_and_nothing_else_does() {
        use rcgen::SanType::{DnsName, URI};
        let names = |der: &[u8]| node_types_named(der).iter().map(|t| t.as_str().to_owned()).collect::<Vec<_>>();
        let der = cert_with(vec![
            URI("spiffe://mesh.example/ecs/sidecar".try_into().unwrap()),
            DnsName("gateway.xds.internal".try_into().unwrap()),
            DnsName("sidecar.other.internal".try_into().unwrap()),
        ]);
        assert_eq!(names(&der), ["sidecar", "gateway"]);
        // A wildcard label, a '-' (node ids split there) and an IP name nothing.
        let der = cert_with(vec![
            DnsName("*.xds.internal".try_into().unwrap()),
            URI("spiffe://mesh.example/side-car".try_into().unwrap()),
            rcgen::SanType::IpAddress([127, 0, 0, 1].into()),
        ]);
        assert!(names(&der).is_empty());
        assert!(node_types_named(b"not a certificate").is_empty());
        let allowed = CertifiedNodeTypes(vec![NodeType::of_node_id("sidecar")].into());
        assert!(allowed.allows(&NodeType::of_node_id("sidecar-app1")));
        assert!(!allowed.allows(&NodeType::of_node_id("gateway-app1")));
        assert_eq!(CertifiedNodeTypes(Vec::new().into()).to_string(), "none");
    }
}
