//! Certificates made in the test (rcgen) and Rust TLS clients for the
//! daemon's TLS ports: raw tokio-rustls connections, a reqwest client, and
//! a tonic channel over TLS.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType};
use rustls::{pki_types::ServerName, ClientConfig, RootCertStore};
use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use tokio::net::TcpStream;
use tokio_rustls::{client::TlsStream, TlsConnector};
use tonic::transport::{Channel, Endpoint};

/// The name the daemon's server certificates carry, and clients check.
pub const SERVER_NAME: &str = "xds.internal";

/// A certificate authority that issues server and client certificates.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pub pem: String,
}

/// A certificate and its key, PEM.
#[derive(Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Ca {
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().expect("CA key");
        let pem = params.self_signed(&key).expect("CA certificate").pem();
        Self { issuer: Issuer::new(params, key), pem }
    }

    /// A certificate with `sans`: `scheme://…` is a URI SAN, an IP address
    /// an IP SAN, anything else a DNS SAN. It expires at the start of year
    /// 2100 + `serial` ([`expiry`]), so certificates tell apart by it too.
    pub fn issue(&self, sans: &[&str], serial: u64, usage: ExtendedKeyUsagePurpose) -> Issued {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, format!("test {serial}"));
        params.serial_number = Some(serial.into());
        params.not_after = rcgen::date_time_ymd(2100 + i32::try_from(serial).expect("a small serial"), 1, 1);
        params.extended_key_usages = vec![usage];
        params.subject_alt_names = sans
            .iter()
            .map(|san| {
                if san.contains("://") {
                    SanType::URI((*san).try_into().expect("URI SAN"))
                } else if let Ok(ip) = san.parse() {
                    SanType::IpAddress(ip)
                } else {
                    SanType::DnsName((*san).try_into().expect("DNS SAN"))
                }
            })
            .collect();
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign certificate");
        Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem() }
    }

    /// A server certificate for [`SERVER_NAME`], `localhost` and 127.0.0.1.
    pub fn server(&self, serial: u64) -> Issued {
        self.issue(&[SERVER_NAME, "localhost", "127.0.0.1"], serial, ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A client certificate with `sans`.
    pub fn client(&self, sans: &[&str], serial: u64) -> Issued {
        self.issue(sans, serial, ExtendedKeyUsagePurpose::ClientAuth)
    }
}

impl Issued {
    /// Writes `{name}.pem` and `{name}.key` into `dir`; returns their paths.
    pub fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let (cert, key) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}.key")));
        std::fs::write(&cert, &self.cert_pem).expect("write certificate");
        std::fs::write(&key, &self.key_pem).expect("write key");
        (cert, key)
    }
}

/// A rustls client trusting `ca_pem`, offering `alpn`, presenting `identity` if any.
pub fn client_config(ca_pem: &str, identity: Option<&Issued>, alpn: &[&[u8]]) -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.expect("CA PEM")).expect("CA certificate");
    }
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots);
    let mut config = match identity {
        Some(identity) => {
            let chain = CertificateDer::pem_slice_iter(identity.cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>().expect("cert PEM");
            let key = PrivateKeyDer::from_pem_slice(identity.key_pem.as_bytes()).expect("key PEM");
            builder.with_client_auth_cert(chain, key).expect("client certificate")
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// A TLS connection to `addr` checked against [`SERVER_NAME`].
pub async fn connect(addr: SocketAddr, config: Arc<ClientConfig>) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(SERVER_NAME).expect("server name");
    TlsConnector::from(config).connect(name, tcp).await
}

/// A tonic channel to `addr` over TLS (ALPN h2) with `config`.
pub async fn grpc_channel(addr: SocketAddr, config: Arc<ClientConfig>) -> Result<Channel, tonic::transport::Error> {
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect_with_connector(tower::service_fn(move |_| {
            let config = config.clone();
            async move { connect(addr, config).await.map(TokioIo::new) }
        }))
        .await
}

/// A reqwest client trusting `ca_pem` (rustls).
pub fn https_client(ca_pem: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .use_rustls_tls()
        .no_proxy()
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).expect("CA PEM"))
        .build()
        .expect("HTTPS client")
}

/// When the certificate of `serial` expires (Unix seconds): see [`Ca::issue`].
pub fn expiry(serial: u64) -> i64 {
    rcgen::date_time_ymd(2100 + i32::try_from(serial).expect("a small serial"), 1, 1).unix_timestamp()
}

/// The serial number of the certificate a TLS server presented.
pub fn peer_serial(stream: &TlsStream<TcpStream>) -> u64 {
    let der = stream.get_ref().1.peer_certificates().and_then(|c| c.first()).expect("a server certificate");
    let (_, cert) = x509_parser::parse_x509_certificate(der).expect("X.509");
    cert.raw_serial().iter().fold(0, |serial, byte| serial << 8 | u64::from(*byte))
}
