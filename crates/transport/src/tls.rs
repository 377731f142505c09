//! TLS on the proxy → endpoint hop, with mutual authentication (rustls,
//! the `ring` provider).
//!
//! An endpoint (a service built on `rpc-sdk`, or `rpc-lb`'s frontend)
//! with a certificate, its key and a client CA accepts only TLS from
//! clients whose certificate that CA signed ([`TlsServer`]); a proxy with
//! a CA, a certificate and its key speaks TLS to the endpoints that
//! registered `"tls": true` ([`TlsClient`]) and verifies that the
//! endpoint's certificate names the host it dials (IP address or DNS
//! name of its `frontend`; `localhost` for a Unix socket).
//!
//! The handshake runs when a connection opens, bounded by
//! [`HANDSHAKE_TIMEOUT`]; the result is a [`Stream::Tls`], which every
//! hop drives like any other stream. Files are read when a server or
//! client is made and again on [`TlsServer::reload`] /
//! [`TlsClient::reload`] (SIGHUP): connections opened afterwards use the
//! new certificates, open ones keep theirs. A reload that fails keeps the
//! previous ones.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::{Address, Stream};

/// Longest a TLS handshake may take on either side before the connection
/// is closed.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The TLS keys of `config.ini`, paths as given (made absolute at load).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// `tls_cert_file`: this process's certificate chain (PEM, leaf first).
    pub cert: Option<PathBuf>,
    /// `tls_key_file`: the private key of `cert` (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
    /// `tls_client_ca_file` (services, LB): the CA that signs the clients
    /// (proxies) this endpoint accepts; with it the endpoint speaks TLS only.
    pub client_ca: Option<PathBuf>,
    /// `tls_ca_file` (proxy): the CA that signs the endpoints' certificates;
    /// with it the proxy speaks TLS to endpoints that registered it.
    pub ca: Option<PathBuf>,
}

impl TlsFiles {
    /// Whether this process serves TLS (an endpoint with a client CA).
    pub fn serves(&self) -> bool {
        self.client_ca.is_some()
    }

    /// Whether this process dials TLS endpoints (a proxy with a CA).
    pub fn dials(&self) -> bool {
        self.ca.is_some()
    }

    /// One line for a status page: which side of TLS this process takes
    /// and the CA it trusts.
    pub fn summary(&self) -> String {
        let show = |p: &Option<PathBuf>| {
            p.as_ref()
                .map_or(String::new(), |p| p.display().to_string())
        };
        match (self.serves(), self.dials()) {
            (false, false) => "off".into(),
            (true, false) => format!("TLS only, clients signed by {}", show(&self.client_ca)),
            (false, true) => format!("to endpoints that registered it, CA {}", show(&self.ca)),
            (true, true) => format!(
                "TLS only, clients signed by {}; to endpoints that registered it, CA {}",
                show(&self.client_ca),
                show(&self.ca)
            ),
        }
    }

    /// What a configuration loader checks: certificate and key come
    /// together, every file named is readable and holds PEM of its kind,
    /// the key matches the certificate, and a CA file goes with them.
    pub fn validate(&self) -> Result<(), TlsError> {
        if self == &TlsFiles::default() {
            return Ok(());
        }
        if self.serves() {
            server_config(self)?;
        }
        if self.dials() {
            client_config(self)?;
        }
        if !self.serves() && !self.dials() {
            let key = if self.cert.is_some() {
                "tls_cert_file"
            } else {
                "tls_key_file"
            };
            let path = self
                .cert
                .as_ref()
                .or(self.key.as_ref())
                .expect("one is set");
            return Err(TlsError::new(
                key,
                path,
                "set tls_client_ca_file (a service or LB accepting TLS) or tls_ca_file (a proxy dialling TLS endpoints) with it",
            ));
        }
        Ok(())
    }
}

/// A TLS file that cannot be used, and why.
#[derive(Debug, Clone)]
pub struct TlsError {
    /// The configuration key naming the file.
    pub key: &'static str,
    pub path: PathBuf,
    pub reason: String,
}

impl TlsError {
    fn new(key: &'static str, path: &Path, reason: impl ToString) -> TlsError {
        TlsError {
            key,
            path: path.to_path_buf(),
            reason: reason.to_string(),
        }
    }
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` ({}): {}",
            self.key,
            self.path.display(),
            self.reason
        )
    }
}

impl std::error::Error for TlsError {}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn required<'a>(key: &'static str, path: &'a Option<PathBuf>) -> Result<&'a Path, TlsError> {
    path.as_deref()
        .ok_or_else(|| TlsError::new(key, Path::new(""), "missing: the TLS keys go together"))
}

fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::new(key, path, format!("cannot read: {e}")))
}

fn certs(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(key, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::new(key, path, format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(TlsError::new(key, path, "no PEM certificate in it"));
    }
    Ok(certs)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read("tls_key_file", path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        TlsError::new(
            "tls_key_file",
            path,
            format!("no PEM private key in it: {e}"),
        )
    })
}

fn roots(key: &'static str, path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut store = RootCertStore::empty();
    for c in certs(key, path)? {
        store
            .add(c)
            .map_err(|e| TlsError::new(key, path, format!("not a CA certificate: {e}")))?;
    }
    Ok(Arc::new(store))
}

/// This process's certificate chain and key, checked to match.
fn identity(
    files: &TlsFiles,
    provider: &CryptoProvider,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let cert_path = required("tls_cert_file", &files.cert)?;
    let key_path = required("tls_key_file", &files.key)?;
    let chain = certs("tls_cert_file", cert_path)?;
    let key = private_key(key_path)?;
    CertifiedKey::from_der(chain.clone(), key.clone_key(), provider).map_err(|e| {
        let reason = match e {
            rustls::Error::InconsistentKeys(_) => {
                "does not match the certificate of tls_cert_file".to_string()
            }
            e => format!("unusable key: {e}"),
        };
        TlsError::new("tls_key_file", key_path, reason)
    })?;
    Ok((chain, key))
}

fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let p = provider();
    let ca_path = required("tls_client_ca_file", &files.client_ca)?;
    let (chain, key) = identity(files, &p)?;
    let verifier = WebPkiClientVerifier::builder_with_provider(
        roots("tls_client_ca_file", ca_path)?,
        p.clone(),
    )
    .build()
    .map_err(|e| TlsError::new("tls_client_ca_file", ca_path, e))?;
    let cert_path = files.cert.as_deref().unwrap_or(Path::new(""));
    let config = ServerConfig::builder_with_provider(p)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::new("tls_cert_file", cert_path, e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::new("tls_cert_file", cert_path, e))?;
    Ok(Arc::new(config))
}

fn client_config(files: &TlsFiles) -> Result<Arc<ClientConfig>, TlsError> {
    let p = provider();
    let ca_path = required("tls_ca_file", &files.ca)?;
    let roots = roots("tls_ca_file", ca_path)?;
    let (chain, key) = identity(files, &p)?;
    let cert_path = files.cert.as_deref().unwrap_or(Path::new(""));
    let config = ClientConfig::builder_with_provider(p)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::new("tls_ca_file", ca_path, e))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| TlsError::new("tls_cert_file", cert_path, e))?;
    Ok(Arc::new(config))
}

fn handshake_error(e: io::Error, peer: &str) -> io::Error {
    io::Error::new(e.kind(), format!("TLS handshake with {peer} failed: {e}"))
}

fn handshake_timeout(peer: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("TLS handshake with {peer} timed out after {HANDSHAKE_TIMEOUT:?}"),
    )
}

impl fmt::Debug for TlsServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsServer")
            .field("files", &self.files)
            .finish()
    }
}

impl fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsClient")
            .field("files", &self.files)
            .finish()
    }
}

/// The server side: accepts TLS connections from clients whose
/// certificate the client CA signed.
pub struct TlsServer {
    files: TlsFiles,
    config: RwLock<Arc<ServerConfig>>,
}

impl TlsServer {
    /// Reads and checks the files (`tls_cert_file`, `tls_key_file`,
    /// `tls_client_ca_file`).
    pub fn new(files: &TlsFiles) -> Result<Arc<TlsServer>, TlsError> {
        Ok(Arc::new(TlsServer {
            config: RwLock::new(server_config(files)?),
            files: files.clone(),
        }))
    }

    /// [`TlsServer::new`] if the files make this process a TLS server.
    pub fn from_files(files: &TlsFiles) -> Result<Option<Arc<TlsServer>>, TlsError> {
        files.serves().then(|| TlsServer::new(files)).transpose()
    }

    /// Reads the files again; new connections use what they hold. On
    /// error the previous certificates stay in use.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = server_config(&self.files)?;
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(())
    }

    fn current(&self) -> Arc<ServerConfig> {
        self.config
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Runs the server side of the handshake on an accepted connection
    /// (at most [`HANDSHAKE_TIMEOUT`]). The error names the peer and why.
    pub async fn accept(&self, stream: Stream) -> io::Result<Stream> {
        let peer = stream.peer();
        let acceptor = TlsAcceptor::from(self.current());
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
            Ok(Ok(s)) => Ok(Stream::Tls(Box::new(s.into()))),
            Ok(Err(e)) => Err(handshake_error(e, &peer)),
            Err(_) => Err(handshake_timeout(&peer)),
        }
    }
}

/// Logs how reading the TLS files again (SIGHUP) went: on error the
/// current certificates stay in use.
pub fn log_reload(result: Result<(), TlsError>) {
    match result {
        Ok(()) => tracing::info!("TLS certificates reloaded"),
        Err(e) => {
            tracing::error!(error = %e, "TLS reload failed; keeping the current certificates")
        }
    }
}

/// An accepted connection as served: through the TLS handshake when `tls`
/// is set (run it on the connection's own task: a slow handshake holds up
/// no other). A failed handshake is logged, naming the peer, and the
/// connection dropped.
pub async fn accept(tls: Option<&TlsServer>, stream: Stream) -> Option<Stream> {
    let Some(tls) = tls else {
        return Some(stream);
    };
    match tls.accept(stream).await {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "connection closed");
            None
        }
    }
}

/// The client side (the proxy): dials endpoints over TLS, verifying their
/// certificate against the CA and presenting its own.
pub struct TlsClient {
    files: TlsFiles,
    config: RwLock<Arc<ClientConfig>>,
}

impl TlsClient {
    /// Reads and checks the files (`tls_ca_file`, `tls_cert_file`,
    /// `tls_key_file`).
    pub fn new(files: &TlsFiles) -> Result<Arc<TlsClient>, TlsError> {
        Ok(Arc::new(TlsClient {
            config: RwLock::new(client_config(files)?),
            files: files.clone(),
        }))
    }

    /// [`TlsClient::new`] if the files make this process a TLS client.
    pub fn from_files(files: &TlsFiles) -> Result<Option<Arc<TlsClient>>, TlsError> {
        files.dials().then(|| TlsClient::new(files)).transpose()
    }

    /// Reads the files again; new connections use what they hold. On
    /// error the previous certificates stay in use.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = client_config(&self.files)?;
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(())
    }

    /// Runs the client side of the handshake on `stream`, connected to
    /// `addr` (at most [`HANDSHAKE_TIMEOUT`]): the endpoint's certificate
    /// must name `addr`'s host. The error names the peer and why.
    pub async fn handshake(&self, addr: &Address, stream: Stream) -> io::Result<Stream> {
        let peer = addr.to_string();
        let name = server_name(addr)?;
        let config = self
            .config
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let connector = TlsConnector::from(config);
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(name, stream)).await {
            Ok(Ok(s)) => Ok(Stream::Tls(Box::new(s.into()))),
            Ok(Err(e)) => Err(handshake_error(e, &peer)),
            Err(_) => Err(handshake_timeout(&peer)),
        }
    }

    /// Connects to `addr` and runs the handshake.
    pub async fn connect(&self, addr: &Address) -> io::Result<Stream> {
        let stream = Stream::connect(addr).await?;
        self.handshake(addr, stream).await
    }
}

/// The name an endpoint's certificate must carry: the host of its TCP
/// address (an IP address or a DNS name), `localhost` for a Unix socket.
fn server_name(addr: &Address) -> io::Result<ServerName<'static>> {
    let host = match addr {
        Address::Unix(_) => "localhost".to_string(),
        Address::Tcp(a) => match a.rsplit_once(':') {
            Some((h, _)) => h.trim_start_matches('[').trim_end_matches(']').to_string(),
            None => a.clone(),
        },
    };
    ServerName::try_from(host).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{addr}: no TLS server name: {e}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_come_from_the_address() {
        let name = |a: &str| {
            server_name(&a.parse().unwrap())
                .unwrap()
                .to_str()
                .to_string()
        };
        assert_eq!(name("127.0.0.1:5555"), "127.0.0.1");
        assert_eq!(name("[::1]:5555"), "::1");
        assert_eq!(name("echo.internal:5555"), "echo.internal");
        assert_eq!(name("/tmp/x.sock"), "localhost");
    }

    #[test]
    fn no_keys_is_valid_and_a_lone_certificate_is_not() {
        TlsFiles::default().validate().unwrap();
        let files = TlsFiles {
            cert: Some("/nonexistent.pem".into()),
            key: Some("/nonexistent.key".into()),
            ..Default::default()
        };
        let e = files.validate().unwrap_err().to_string();
        assert!(
            e.contains("tls_client_ca_file") && e.contains("tls_ca_file"),
            "{e}"
        );
    }
}
