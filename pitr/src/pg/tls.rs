//! TLS on connections to PostgreSQL, with libpq's settings and their meaning ("SSL Support" in
//! the libpq chapter of the PostgreSQL documentation, table "SSL Mode Descriptions";
//! `src/interfaces/libpq/fe-secure-openssl.c` is libpq's side): `sslmode`, `sslrootcert`,
//! `sslcert` and `sslkey` from the conninfo or PGSSLMODE, PGSSLROOTCERT, PGSSLCERT, PGSSLKEY.
//!
//! This module owns what those settings mean: which connection attempts a mode makes (TLS is for
//! TCP only; a Unix socket never uses it), which certificate check applies (none, the chain to a
//! root certificate, or the chain and the host name), the client certificate and the permissions
//! of its key, the rustls client configuration (aws-lc-rs, the provider already in pitr's
//! dependency tree through object_store), and the TLS stream for tokio-postgres
//! ([`MakeRustls`]). The replication connection (replication.rs) makes its own blocking TLS
//! session from the same [`TlsSettings::client_config`].

use std::fmt;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::error::{Error, Result};

/// libpq's `sslmode`: whether TLS is used, and how the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Never TLS.
    Disable,
    /// Without TLS first; with TLS when the server refuses that.
    Allow,
    /// With TLS when the server offers it, else without (libpq's default).
    Prefer,
    /// Only TLS; the certificate is checked only when a root certificate file exists.
    Require,
    /// Only TLS, the certificate signed by a trusted root.
    VerifyCa,
    /// Only TLS, the certificate signed by a trusted root and naming the host.
    VerifyFull,
}

impl SslMode {
    /// The mode of a libpq `sslmode` value.
    pub fn parse(value: &str) -> Result<SslMode> {
        Ok(match value {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(Error::InvalidInput(format!(
                    "sslmode '{other}' is not one of disable, allow, prefer, require, verify-ca, verify-full"
                )))
            }
        })
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        })
    }
}

/// Where the trusted root certificates come from (`sslrootcert`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCert {
    /// A PEM file (default `~/.postgresql/root.crt`).
    File(PathBuf),
    /// The system's trusted roots (`sslrootcert=system`).
    System,
}

/// The TLS settings of a connection, as libpq reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// `sslmode`.
    pub mode: SslMode,
    /// `sslrootcert`; `None` when it is not given and there is no home directory.
    pub root_cert: Option<RootCert>,
    /// `sslcert`, the client certificate, used when the file exists (default
    /// `~/.postgresql/postgresql.crt`).
    pub cert: Option<PathBuf>,
    /// `sslkey`, the client certificate's key (default `~/.postgresql/postgresql.key`).
    pub key: Option<PathBuf>,
}

/// The TLS keywords of a conninfo, as given (before the environment and the defaults).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TlsKeywords {
    /// `sslmode`.
    pub mode: Option<String>,
    /// `sslrootcert`.
    pub root_cert: Option<String>,
    /// `sslcert`.
    pub cert: Option<String>,
    /// `sslkey`.
    pub key: Option<String>,
}

impl TlsKeywords {
    /// The keywords this module reads; tokio-postgres sees none of them.
    pub const NAMES: [&'static str; 5] = ["sslmode", "sslrootcert", "sslcert", "sslkey", "sslnegotiation"];

    /// Records `key = value`; `key` is one of [`TlsKeywords::NAMES`].
    pub fn set(&mut self, key: &str, value: String) -> Result<()> {
        match key {
            "sslmode" => self.mode = Some(value),
            "sslrootcert" => self.root_cert = Some(value),
            "sslcert" => self.cert = Some(value),
            "sslkey" => self.key = Some(value),
            // libpq 17's direct TLS negotiation skips the SSLRequest; pitr always sends it.
            "sslnegotiation" if value == "postgres" => {}
            "sslnegotiation" => {
                return Err(Error::InvalidInput(format!(
                    "sslnegotiation '{value}' is not supported: pitr negotiates TLS the PostgreSQL way \
                     (sslnegotiation=postgres)"
                )))
            }
            _ => unreachable!("only the names of TlsKeywords::NAMES are set"),
        }
        Ok(())
    }
}

/// One way of opening a connection, in the order libpq tries them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// Without TLS.
    Plain,
    /// With TLS when the server answers the SSLRequest with `S`, else without.
    TlsIfOffered,
    /// Only with TLS.
    Tls,
}

impl TlsSettings {
    /// The settings of `keywords`, then the environment's PGSSL* variables, then libpq's
    /// defaults (files under `~/.postgresql`, `HOME` from `env`).
    pub fn resolve(keywords: TlsKeywords, env: super::connect::Env) -> Result<TlsSettings> {
        let home = env("HOME")
            .filter(|h| !h.is_empty())
            .map(|h| Path::new(&h).join(".postgresql"));
        let given_mode = keywords.mode.or_else(|| env("PGSSLMODE"));
        let root_cert = match keywords.root_cert.or_else(|| env("PGSSLROOTCERT")) {
            Some(system) if system == "system" => Some(RootCert::System),
            Some(path) => Some(RootCert::File(path.into())),
            None => home.as_ref().map(|h| RootCert::File(h.join("root.crt"))),
        };
        let mode = match (given_mode, &root_cert) {
            (Some(mode), _) => SslMode::parse(&mode)?,
            // libpq: the system's roots are only worth anything with the host name checked.
            (None, Some(RootCert::System)) => SslMode::VerifyFull,
            (None, _) => SslMode::Prefer,
        };
        if root_cert == Some(RootCert::System) && mode != SslMode::VerifyFull {
            return Err(Error::InvalidInput(format!(
                "sslmode={mode} does not go with sslrootcert=system: the system's roots vouch for any host \
                 they signed, so only sslmode=verify-full (which checks the host name) is allowed with them"
            )));
        }
        let file = |given: Option<String>, var: &str, default: &str| {
            given
                .or_else(|| env(var))
                .map(PathBuf::from)
                .or_else(|| home.as_ref().map(|h| h.join(default)))
        };
        Ok(TlsSettings {
            mode,
            root_cert,
            cert: file(keywords.cert, "PGSSLCERT", "postgresql.crt"),
            key: file(keywords.key, "PGSSLKEY", "postgresql.key"),
        })
    }

    /// No TLS: for pitr's own throwaway servers, reached over their Unix socket.
    pub fn disabled() -> TlsSettings {
        TlsSettings {
            mode: SslMode::Disable,
            root_cert: None,
            cert: None,
            key: None,
        }
    }

    /// The settings as libpq conninfo keywords, for the client programs pitr runs (pg_restore).
    pub fn conninfo_pairs(&self) -> Vec<(&'static str, String)> {
        let mut pairs = vec![("sslmode", self.mode.to_string())];
        match &self.root_cert {
            Some(RootCert::System) => pairs.push(("sslrootcert", "system".into())),
            Some(RootCert::File(path)) => pairs.push(("sslrootcert", path.display().to_string())),
            None => {}
        }
        pairs.extend(self.cert.iter().map(|c| ("sslcert", c.display().to_string())));
        pairs.extend(self.key.iter().map(|k| ("sslkey", k.display().to_string())));
        pairs
    }

    /// The attempts libpq makes for a host: over TCP as the mode says, over a Unix socket only
    /// one without TLS (whatever the mode, as libpq does).
    pub fn attempts(&self, tcp: bool) -> &'static [Attempt] {
        match self.mode {
            _ if !tcp => &[Attempt::Plain],
            SslMode::Disable => &[Attempt::Plain],
            SslMode::Allow => &[Attempt::Plain, Attempt::Tls],
            SslMode::Prefer => &[Attempt::TlsIfOffered, Attempt::Plain],
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => &[Attempt::Tls],
        }
    }

    /// The rustls client configuration these settings ask for: the certificate check of the
    /// mode, and the client certificate when its file exists. Reads the files now.
    pub fn client_config(&self) -> Result<Arc<ClientConfig>> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier: Arc<dyn ServerCertVerifier> = Arc::new(Verifier {
            roots: self.roots()?.map(Arc::new),
            provider: provider.clone(),
            names: self.mode == SslMode::VerifyFull,
        });
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::InvalidInput(format!("TLS settings: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let config = match self.client_certificate()? {
            Some((chain, key)) => builder.with_client_auth_cert(chain, key).map_err(|e| {
                Error::InvalidInput(format!(
                    "client certificate {} does not go with its key {}: {e}",
                    self.cert.as_deref().unwrap_or(Path::new("?")).display(),
                    self.key.as_deref().unwrap_or(Path::new("?")).display()
                ))
            })?,
            None => builder.with_no_client_auth(),
        };
        Ok(Arc::new(config))
    }

    /// The trusted roots, or `None` when the certificate is not checked: libpq checks it in
    /// verify-ca and verify-full, and in the weaker modes too when the root file exists.
    fn roots(&self) -> Result<Option<RootCertStore>> {
        let verify = matches!(self.mode, SslMode::VerifyCa | SslMode::VerifyFull);
        let mut roots = RootCertStore::empty();
        match &self.root_cert {
            Some(RootCert::System) => {
                let found = rustls_native_certs::load_native_certs();
                let (added, _) = roots.add_parsable_certificates(found.certs);
                if added == 0 {
                    return Err(Error::Refused(format!(
                        "sslrootcert=system, but the system has no trusted root certificate pitr can read{}: \
                         install the CA certificates (ca-certificates) or name a root file with sslrootcert",
                        found.errors.first().map(|e| format!(" ({e})")).unwrap_or_default()
                    )));
                }
            }
            Some(RootCert::File(path)) if path.exists() => {
                for certificate in CertificateDer::pem_file_iter(path).map_err(|e| pem_error(path, &e))? {
                    roots
                        .add(certificate.map_err(|e| pem_error(path, &e))?)
                        .map_err(|e| Error::InvalidInput(format!("root certificate file {}: {e}", path.display())))?;
                }
                if roots.is_empty() {
                    return Err(Error::InvalidInput(format!(
                        "root certificate file {} holds no PEM certificate",
                        path.display()
                    )));
                }
            }
            missing if verify => {
                let path = match missing {
                    Some(RootCert::File(path)) => path.display().to_string(),
                    _ => "~/.postgresql/root.crt".into(),
                };
                return Err(Error::Refused(format!(
                    "root certificate file {path} does not exist, and sslmode={} checks the server's certificate \
                     against it: put the certificate of the CA that signed the server's there (or name it with \
                     sslrootcert or PGSSLROOTCERT), use sslrootcert=system for the system's trusted roots, or use \
                     sslmode=require to encrypt without checking the certificate",
                    self.mode
                )));
            }
            _ => return Ok(None),
        }
        Ok(Some(roots))
    }

    /// The client certificate chain and its key, when the certificate file exists (libpq sends
    /// none otherwise). The key must not be readable by others, as libpq requires.
    fn client_certificate(&self) -> Result<Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>> {
        let Some(cert) = self.cert.as_deref().filter(|c| c.exists()) else {
            return Ok(None);
        };
        let key = self.key.as_deref().filter(|k| k.exists()).ok_or_else(|| {
            Error::Refused(format!(
                "client certificate {} exists but its private key file {} does not: put the key there, or name \
                 it with sslkey or PGSSLKEY",
                cert.display(),
                self.key
                    .as_deref()
                    .unwrap_or(Path::new("~/.postgresql/postgresql.key"))
                    .display()
            ))
        })?;
        check_key_permissions(key)?;
        let chain = CertificateDer::pem_file_iter(cert)
            .map_err(|e| pem_error(cert, &e))?
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| pem_error(cert, &e))?;
        if chain.is_empty() {
            return Err(Error::InvalidInput(format!(
                "client certificate file {} holds no PEM certificate",
                cert.display()
            )));
        }
        // The key's own error is not shown: its text could quote the key.
        let key_der = PrivateKeyDer::from_pem_file(key).map_err(|_| {
            Error::InvalidInput(format!(
                "private key file {} holds no PEM private key pitr can read (PKCS#8, PKCS#1 or SEC1, unencrypted)",
                key.display()
            ))
        })?;
        Ok(Some((chain, key_der)))
    }
}

/// libpq's rule for the client key: owned by the user, no access for group or others; owned by
/// root, at most read access for the group (`fe-secure-openssl.c`, `initialize_SSL`).
fn check_key_permissions(key: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(key)
        .map_err(|e| Error::Refused(format!("cannot read private key file {}: {e}", key.display())))?;
    let mode = meta.mode() & 0o777;
    let allowed = if meta.uid() == 0 { 0o740 } else { 0o700 };
    if !meta.is_file() || mode & !allowed != 0 {
        return Err(Error::Refused(format!(
            "private key file {} has access for group or others (mode {mode:04o}): run `chmod 0600` on it \
             (u=rw, or u=rw,g=r when root owns it), as libpq also requires",
            key.display()
        )));
    }
    Ok(())
}

fn pem_error(path: &Path, e: &rustls::pki_types::pem::Error) -> Error {
    Error::InvalidInput(format!("{} is not a PEM file of certificates: {e}", path.display()))
}

/// What to tell about a failed TLS handshake, or `None` when `e` is not one.
pub fn explain(e: &(dyn std::error::Error + 'static), mode: SslMode) -> Option<String> {
    let mut cause = Some(e);
    while let Some(e) = cause {
        let tls = e.downcast_ref::<rustls::Error>().or_else(|| {
            e.downcast_ref::<io::Error>()
                .and_then(|io| io.get_ref()?.downcast_ref())
        });
        if let Some(tls) = tls {
            return Some(explain_rustls(tls, mode));
        }
        cause = e.source();
    }
    None
}

/// What to tell about a rustls error.
pub fn explain_rustls(e: &rustls::Error, mode: SslMode) -> String {
    match e {
        rustls::Error::InvalidCertificate(why) => {
            let what = match why {
                rustls::CertificateError::NotValidForName | rustls::CertificateError::NotValidForNameContext { .. } => {
                    "it does not name the host connected to (sslmode=verify-full compares the host with the \
                     certificate's subjectAltName): connect by a name the certificate holds, or give the server \
                     a certificate for this name"
                }
                rustls::CertificateError::UnknownIssuer | rustls::CertificateError::BadSignature => {
                    "no trusted root certificate signed it: name the file of the CA that signed the server's \
                     certificate with sslrootcert (or PGSSLROOTCERT, default ~/.postgresql/root.crt)"
                }
                rustls::CertificateError::Expired
                | rustls::CertificateError::ExpiredContext { .. }
                | rustls::CertificateError::NotValidYet
                | rustls::CertificateError::NotValidYetContext { .. } => {
                    "it is outside its validity period: renew the server's certificate (or check this \
                     machine's clock)"
                }
                _ => "check the server's certificate and the root certificate file (sslrootcert)",
            };
            format!("the server's TLS certificate was refused ({e}, sslmode={mode}): {what}")
        }
        rustls::Error::AlertReceived(alert) => format!(
            "the server ended the TLS handshake ({alert:?}): when it asks for a client certificate, name one with \
             sslcert and sslkey (or PGSSLCERT and PGSSLKEY) that a CA in the server's ssl_ca_file signed"
        ),
        other => format!("the TLS handshake failed: {other}"),
    }
}

/// What to do when the server refused a connection with `message`, when TLS is the matter:
/// pg_hba.conf wants TLS (`hostssl`) or a client certificate (`cert`, `clientcert`).
pub fn refusal_hint(message: &str) -> Option<&'static str> {
    if message.contains("client certificate") {
        Some(
            "name the client certificate and its key with sslcert and sslkey (or PGSSLCERT and PGSSLKEY; \
             default ~/.postgresql/postgresql.crt and postgresql.key), signed by a CA of the server's ssl_ca_file",
        )
    } else if message.contains("no encryption") || message.contains("SSL off") {
        Some("the server takes this connection only over TLS: use sslmode=require, verify-ca or verify-full")
    } else {
        None
    }
}

/// The message when the server answers the SSLRequest with `N` and the mode needs TLS.
pub fn not_offered(mode: SslMode) -> String {
    format!(
        "the server does not accept TLS connections, and sslmode={mode} requires TLS: turn ssl on in the \
         server's postgresql.conf (with ssl_cert_file and ssl_key_file), or use sslmode=prefer or disable"
    )
}

/// The server's certificate check. With `roots`, the chain to a trusted root, and the host name
/// when `names` (verify-full). Without (`require` and weaker without a root file: encrypted, not
/// authenticated), any certificate. Either way the handshake's signature is checked: the server
/// holds the certificate's key.
#[derive(Debug)]
struct Verifier {
    roots: Option<Arc<RootCertStore>>,
    provider: Arc<CryptoProvider>,
    names: bool,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let Some(roots) = &self.roots else {
            return Ok(ServerCertVerified::assertion());
        };
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        if self.names {
            rustls::client::verify_server_name(&cert, server_name)?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// The name a TLS session is opened for: a DNS name (sent as SNI) or an IP address (not sent).
pub fn server_name(host: &str) -> Result<ServerName<'static>> {
    ServerName::try_from(host.to_string()).map_err(|_| {
        Error::InvalidInput(format!(
            "host '{host}' is neither a DNS name nor an IP address, for TLS"
        ))
    })
}

/// tokio-postgres' TLS over tokio-rustls. Records whether a handshake was started, for the
/// `prefer` mode's retry without TLS.
#[derive(Clone)]
pub struct MakeRustls {
    config: Arc<ClientConfig>,
    handshake_started: Arc<AtomicBool>,
}

impl MakeRustls {
    /// Connections with `config`.
    pub fn new(config: Arc<ClientConfig>) -> MakeRustls {
        MakeRustls {
            config,
            handshake_started: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Whether a connection made with this one started a TLS handshake.
    pub fn handshake_started(&self) -> bool {
        self.handshake_started.load(Ordering::Relaxed)
    }
}

/// One TLS session to be opened with tokio-postgres' socket.
pub struct RustlsConnect {
    config: Arc<ClientConfig>,
    name: Option<ServerName<'static>>,
    handshake_started: Arc<AtomicBool>,
}

impl<S> tokio_postgres::tls::MakeTlsConnect<S> for MakeRustls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> io::Result<RustlsConnect> {
        // A Unix socket has no name (""): its connection never gets as far as a handshake.
        Ok(RustlsConnect {
            config: self.config.clone(),
            name: ServerName::try_from(domain.to_string()).ok(),
            handshake_started: self.handshake_started.clone(),
        })
    }
}

impl<S> tokio_postgres::tls::TlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        self.handshake_started.store(true, Ordering::Relaxed);
        Box::pin(async move {
            let name = self
                .name
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no host name for TLS"))?;
            let stream = tokio_rustls::TlsConnector::from(self.config)
                .connect(name, stream)
                .await?;
            Ok(RustlsStream(stream))
        })
    }
}

/// A TLS session under a tokio-postgres connection.
pub struct RustlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsStream for RustlsStream<S> {
    fn channel_binding(&self) -> tokio_postgres::tls::ChannelBinding {
        // SCRAM-SHA-256 without channel binding (the `-PLUS` variant is not offered).
        tokio_postgres::tls::ChannelBinding::none()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn resolve(keywords: TlsKeywords, vars: &[(&str, &str)]) -> Result<TlsSettings> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        TlsSettings::resolve(keywords, &|k| map.get(k).cloned())
    }

    #[test]
    fn keywords_win_over_the_environment_and_defaults_are_under_home() {
        let s = resolve(TlsKeywords::default(), &[("HOME", "/home/u")]).unwrap();
        assert_eq!(s.mode, SslMode::Prefer);
        assert_eq!(s.root_cert, Some(RootCert::File("/home/u/.postgresql/root.crt".into())));
        assert_eq!(s.cert, Some("/home/u/.postgresql/postgresql.crt".into()));
        assert_eq!(s.key, Some("/home/u/.postgresql/postgresql.key".into()));
        let keywords = TlsKeywords {
            mode: Some("verify-ca".into()),
            key: Some("/k".into()),
            ..TlsKeywords::default()
        };
        let s = resolve(
            keywords,
            &[
                ("PGSSLMODE", "disable"),
                ("PGSSLKEY", "/env.key"),
                ("PGSSLCERT", "/env.crt"),
            ],
        )
        .unwrap();
        assert_eq!(s.mode, SslMode::VerifyCa);
        assert_eq!(
            (s.cert, s.key, s.root_cert),
            (Some("/env.crt".into()), Some("/k".into()), None)
        );
    }

    #[test]
    fn system_roots_mean_verify_full() {
        let system = || TlsKeywords {
            root_cert: Some("system".into()),
            ..TlsKeywords::default()
        };
        assert_eq!(resolve(system(), &[]).unwrap().mode, SslMode::VerifyFull);
        let err = resolve(system(), &[("PGSSLMODE", "require")]).unwrap_err();
        assert!(err.to_string().contains("only sslmode=verify-full"), "{err}");
        let err = resolve(
            TlsKeywords {
                mode: Some("sure".into()),
                ..TlsKeywords::default()
            },
            &[],
        )
        .unwrap_err();
        assert!(err.to_string().contains("sslmode 'sure'"), "{err}");
    }

    #[test]
    fn attempts_follow_libpq() {
        let with = |mode| TlsSettings {
            mode,
            ..TlsSettings::disabled()
        };
        assert_eq!(with(SslMode::VerifyFull).attempts(false), &[Attempt::Plain]);
        assert_eq!(
            with(SslMode::Prefer).attempts(true),
            &[Attempt::TlsIfOffered, Attempt::Plain]
        );
        assert_eq!(with(SslMode::Allow).attempts(true), &[Attempt::Plain, Attempt::Tls]);
        assert_eq!(with(SslMode::Require).attempts(true), &[Attempt::Tls]);
    }

    #[test]
    fn verification_needs_the_root_file_and_a_private_key() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("root.crt");
        let settings = TlsSettings {
            mode: SslMode::VerifyCa,
            root_cert: Some(RootCert::File(missing.clone())),
            ..TlsSettings::disabled()
        };
        let err = settings.client_config().unwrap_err().to_string();
        assert!(
            err.contains("does not exist") && err.contains("sslrootcert=system"),
            "{err}"
        );
        // require without the file: encrypted, unchecked.
        let settings = TlsSettings {
            mode: SslMode::Require,
            ..settings
        };
        settings.client_config().unwrap();

        let cert = dir.path().join("postgresql.crt");
        let key = dir.path().join("postgresql.key");
        std::fs::write(&cert, "").unwrap();
        let settings = TlsSettings {
            cert: Some(cert),
            key: Some(key.clone()),
            ..settings
        };
        let err = settings.client_config().unwrap_err().to_string();
        assert!(err.contains("private key file") && err.contains("does not"), "{err}");
        std::fs::write(
            &key,
            "-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = settings.client_config().unwrap_err().to_string();
        assert!(err.contains("mode 0644") && err.contains("chmod 0600"), "{err}");
    }
}
