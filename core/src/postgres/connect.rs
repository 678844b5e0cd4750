//! The connections bascule opens itself (the export's snapshot, row counts,
//! SQL steps, heartbeats, restore tests): libpq's TLS fields honoured, over
//! rustls. The PostgreSQL programs bascule runs (`pg_dump`, `pg_restore`,
//! `pg_basebackup`) get the same fields and read them with libpq.
//!
//! | `sslmode` | TLS | the server's certificate |
//! |---|---|---|
//! | `disable` | never | |
//! | `allow`, `prefer` (the default) | when the server offers it | not checked |
//! | `require` | always | checked against `sslrootcert` when one is given (as libpq), else not |
//! | `verify-ca` | always | signed by `sslrootcert` |
//! | `verify-full` | always | signed by `sslrootcert` and naming the host |
//!
//! `sslrootcert` is a PEM file, or `system` for the machine's roots; without
//! it, `verify-ca` and `verify-full` use `~/.postgresql/root.crt` as libpq
//! does. `sslcert` and `sslkey` give a client certificate (PEM); the key file
//! must be readable by its owner only. TLS is never used over a unix socket.
// Parses what an operator passes: total, no panic.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing))]
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};
use tokio_rustls::rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use tokio_rustls::rustls::client::WebPkiServerVerifier;
use tokio_rustls::rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use tokio_rustls::rustls::{self, CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::dsn::{self, BadDsn};

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl std::str::FromStr for SslMode {
    type Err = BadDsn;
    fn from_str(s: &str) -> Result<SslMode, BadDsn> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "allow" | "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return Err(BadDsn::Tls(format!("sslmode {s:?}: one of disable, allow, prefer, require, verify-ca, verify-full"))),
        })
    }
}

/// The fields libpq reads for TLS; taken out before the rest goes to
/// tokio-postgres (which knows none but `sslmode`, and three of its values).
const TLS_FIELDS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

/// A connection to open: where and as whom, and how TLS is done.
#[derive(Clone)]
pub struct Connect {
    pg: tokio_postgres::Config,
    mode: SslMode,
    /// The TLS fields as given, for a libpq child's connection string.
    given: Vec<(String, String)>,
    root_cert: Option<String>,
    client_cert: Option<(PathBuf, PathBuf)>,
}

impl std::fmt::Debug for Connect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // tokio-postgres's Debug redacts the password
        f.debug_struct("Connect").field("pg", &self.pg).field("mode", &self.mode).finish_non_exhaustive()
    }
}

/// Why a connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The TLS settings could not be used (a file missing or unreadable).
    #[error("{0}")]
    Tls(String),
    #[error(transparent)]
    Pg(#[from] tokio_postgres::Error),
}

/// Percent-decoding of a URI's query value.
fn percent_decode(v: &str) -> Result<String, BadDsn> {
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok()).and_then(|h| u8::from_str_radix(h, 16).ok());
            out.push(hex.ok_or_else(|| BadDsn::Invalid(format!("{v:?}: a bad %-escape")))?);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| BadDsn::Invalid(format!("{v:?}: not UTF-8 once decoded")))
}

/// Splits the TLS fields out of a connection string: (the rest, the TLS fields).
fn split(text: &str) -> Result<(String, Vec<(String, String)>), BadDsn> {
    let is_tls = |k: &str| TLS_FIELDS.contains(&k);
    if dsn::is_uri(text) {
        let t = text.trim();
        let Some((base, query)) = t.split_once('?') else { return Ok((t.to_string(), Vec::new())) };
        let (mut rest, mut tls) = (Vec::new(), Vec::new());
        for part in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').ok_or_else(|| BadDsn::NoValue(part.to_string()))?;
            if is_tls(k) {
                tls.push((k.to_string(), percent_decode(v)?));
            } else {
                rest.push(part);
            }
        }
        let rest = if rest.is_empty() { base.to_string() } else { format!("{base}?{}", rest.join("&")) };
        return Ok((rest, tls));
    }
    let (tls, rest): (Vec<_>, Vec<_>) = dsn::fields(text)?.into_iter().partition(|(k, _)| is_tls(k));
    // the password stays in the fields given to tokio-postgres, never printed
    let rest = rest.into_iter().map(|(k, v)| format!("{k}='{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))).collect::<Vec<_>>();
    Ok((rest.join(" "), tls))
}

impl Connect {
    /// From a connection string as an operator writes it (fields or a URI).
    pub fn parse(text: &str) -> Result<Connect, BadDsn> {
        let (rest, tls) = split(text)?;
        let pg: tokio_postgres::Config = rest.parse().map_err(|e: tokio_postgres::Error| BadDsn::Invalid(e.to_string()))?;
        let mut c = Connect { pg, mode: SslMode::Prefer, given: tls.clone(), root_cert: None, client_cert: None };
        let (mut cert, mut key) = (None, None);
        for (k, v) in tls {
            match k.as_str() {
                "sslmode" => c.mode = v.parse()?,
                "sslrootcert" => c.root_cert = Some(v),
                "sslcert" => cert = Some(PathBuf::from(v)),
                _ => key = Some(PathBuf::from(v)),
            }
        }
        c.client_cert = match (cert, key) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => return Err(BadDsn::Tls("sslcert and sslkey go together: give both or neither".into())),
        };
        Ok(c)
    }

    /// A connection over a unix socket (no TLS) to a cluster bascule runs.
    pub fn local(pg: tokio_postgres::Config) -> Connect {
        Connect { pg, mode: SslMode::Disable, given: Vec::new(), root_cert: None, client_cert: None }
    }

    /// The TLS fields as given (`sslmode`, `sslrootcert`…), to hand on to a
    /// libpq program connecting to the same server.
    pub fn tls_fields(&self) -> &[(String, String)] {
        &self.given
    }

    pub fn password(&mut self, p: impl AsRef<[u8]>) -> &mut Connect {
        self.pg.password(p);
        self
    }

    pub fn mode(&self) -> SslMode {
        self.mode
    }

    /// The rest of the settings (user, database, host…).
    pub fn pg(&self) -> &tokio_postgres::Config {
        &self.pg
    }

    pub fn pg_mut(&mut self) -> &mut tokio_postgres::Config {
        &mut self.pg
    }

    /// Whether every host is a unix socket (where TLS is never used).
    fn unix_only(&self) -> bool {
        let hosts = self.pg.get_hosts();
        !hosts.is_empty() && hosts.iter().all(|h| matches!(h, tokio_postgres::config::Host::Unix(_)))
    }

    /// The rustls configuration for the mode.
    fn tls_config(&self) -> Result<ClientConfig, ConnectError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| ConnectError::Tls(format!("TLS versions: {e}")))?;
        let root = match (self.mode, &self.root_cert) {
            (SslMode::VerifyCa | SslMode::VerifyFull, None) => {
                let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
                Some(home.join(".postgresql/root.crt").display().to_string())
            }
            (SslMode::Prefer, _) => None,
            (_, r) => r.clone(),
        };
        let verifier: Arc<dyn ServerCertVerifier> = match root {
            None => Arc::new(Unverified(provider.clone())),
            Some(file) => {
                let roots = Arc::new(roots(&file)?);
                let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                    .build()
                    .map_err(|e| ConnectError::Tls(format!("sslrootcert {file}: {e}")))?;
                if self.mode == SslMode::VerifyFull {
                    webpki
                } else {
                    Arc::new(ChainOnly(webpki))
                }
            }
        };
        let builder = builder.dangerous().with_custom_certificate_verifier(verifier);
        match &self.client_cert {
            None => Ok(builder.with_no_client_auth()),
            Some((cert, key)) => {
                let text = crate::keys::read_private(key).map_err(|e| ConnectError::Tls(format!("sslkey: {e}")))?;
                let chain = pem_certs(cert, "sslcert")?;
                let key_der = PrivateKeyDer::from_pem_slice(text.as_bytes())
                    .map_err(|e| ConnectError::Tls(format!("sslkey {}: no private key in it ({e})", key.display())))?;
                builder
                    .with_client_auth_cert(chain, key_der)
                    .map_err(|e| ConnectError::Tls(format!("sslcert and sslkey do not go together: {e}")))
            }
        }
    }

    /// Opens the connection and drives it in a task; the task's handle ends
    /// with the connection.
    pub async fn connect(
        &self,
    ) -> Result<(tokio_postgres::Client, tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>), ConnectError> {
        use tokio_postgres::config::SslMode as Pg;
        let mut pg = self.pg.clone();
        if self.mode == SslMode::Disable || self.unix_only() {
            pg.ssl_mode(Pg::Disable);
            let (client, conn) = pg.connect(tokio_postgres::NoTls).await?;
            return Ok((client, tokio::spawn(conn)));
        }
        pg.ssl_mode(if self.mode == SslMode::Prefer { Pg::Prefer } else { Pg::Require });
        let tls = MakeRustls(Arc::new(self.tls_config()?));
        let (client, conn) = pg.connect(tls).await?;
        Ok((client, tokio::spawn(conn)))
    }
}

fn pem_certs(path: &Path, field: &str) -> Result<Vec<CertificateDer<'static>>, ConnectError> {
    let bad = |e: &dyn std::fmt::Display| ConnectError::Tls(format!("{field} {}: {e}", path.display()));
    let certs: Vec<_> = CertificateDer::pem_file_iter(path).map_err(|e| bad(&e))?.collect::<Result<_, _>>().map_err(|e| bad(&e))?;
    if certs.is_empty() {
        return Err(bad(&"no certificate in it"));
    }
    Ok(certs)
}

/// `sslrootcert`: a PEM file, or `system` (the machine's bundle, as OpenSSL
/// finds it: `SSL_CERT_FILE`, else Debian's file).
fn roots(file: &str) -> Result<RootCertStore, ConnectError> {
    let path = match file {
        "system" => std::env::var_os("SSL_CERT_FILE").map(PathBuf::from).unwrap_or_else(|| "/etc/ssl/certs/ca-certificates.crt".into()),
        f => PathBuf::from(f),
    };
    let mut store = RootCertStore::empty();
    for c in pem_certs(&path, "sslrootcert")? {
        store.add(c).map_err(|e| ConnectError::Tls(format!("sslrootcert {}: {e}", path.display())))?;
    }
    Ok(store)
}

/// `prefer`, or `require` without a root: encryption, no check of who
/// answers (what libpq does in those modes). Signatures of the handshake are
/// still checked.
#[derive(Debug)]
struct Unverified(Arc<CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to the root; the name is not compared.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // webpki checks the chain first, the name last: a name error means the chain held
        match self.0.verify_server_cert(end_entity, intermediates, name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. })) => {
                Ok(ServerCertVerified::assertion())
            }
            r => r,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// tokio-postgres's TLS hook, on rustls.
#[derive(Clone)]
struct MakeRustls(Arc<ClientConfig>);

impl<S> MakeTlsConnect<S> for MakeRustls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnect;
    type Error = rustls_pki_types::InvalidDnsNameError;

    fn make_tls_connect(&mut self, domain: &str) -> Result<RustlsConnect, Self::Error> {
        Ok(RustlsConnect { config: self.0.clone(), name: ServerName::try_from(domain.to_string())? })
    }
}

struct RustlsConnect {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
}

impl<S> TlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move { tokio_rustls::TlsConnector::from(self.config).connect(self.name, stream).await.map(RustlsStream) })
    }
}

struct RustlsStream<S>(tokio_rustls::client::TlsStream<S>);

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
    /// No `tls-server-end-point` binding: SCRAM runs without `-PLUS`.
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tls_fields_are_taken_out_of_both_forms() {
        let c = Connect::parse("host=db dbname=app sslmode=verify-full sslrootcert='/etc/ca dir/ca.pem' password='p w'").unwrap();
        assert_eq!(c.mode, SslMode::VerifyFull);
        assert_eq!(c.root_cert.as_deref(), Some("/etc/ca dir/ca.pem"));
        assert_eq!(c.pg.get_dbname(), Some("app"));
        assert_eq!(c.pg.get_password(), Some(&b"p w"[..]));
        assert!(!format!("{c:?}").contains("p w"), "{c:?}");
        let c = Connect::parse("postgresql://u@db:5433/app?sslmode=verify-ca&sslrootcert=%2Fetc%2Fca.pem&application_name=x").unwrap();
        assert_eq!((c.mode, c.root_cert.as_deref()), (SslMode::VerifyCa, Some("/etc/ca.pem")));
        assert_eq!(c.pg.get_application_name(), Some("x"));
        assert_eq!(Connect::parse("host=db").unwrap().mode, SslMode::Prefer);
        assert_eq!(Connect::parse("host=db sslmode=allow").unwrap().mode, SslMode::Prefer);
        assert!(matches!(Connect::parse("host=db sslmode=sometimes"), Err(BadDsn::Tls(_))));
        assert!(matches!(Connect::parse("host=db sslcert=/c.pem"), Err(BadDsn::Tls(_))));
        assert!(matches!(Connect::parse("postgresql://db/app?sslrootcert=%zz"), Err(BadDsn::Invalid(_))));
        // a value that looks like more fields stays one value
        let c = Connect::parse("host='x sslmode=disable' dbname=app").unwrap();
        assert_eq!(c.mode, SslMode::Prefer);
    }

    #[tokio::test]
    async fn files_that_cannot_be_used_say_which() {
        let d = tempfile::tempdir().unwrap();
        let e = Connect::parse(&format!("host=127.0.0.1 port=1 sslmode=verify-full sslrootcert={}/none.pem", d.path().display()))
            .unwrap()
            .connect()
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("sslrootcert") && e.contains("none.pem"), "{e}");
        let key = d.path().join("client.key");
        std::fs::write(&key, "x").unwrap();
        std::fs::write(d.path().join("client.pem"), "x").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let c = Connect::parse(&format!(
            "host=127.0.0.1 port=1 sslmode=require sslcert={0}/client.pem sslkey={0}/client.key",
            d.path().display()
        ))
        .unwrap();
        let e = c.tls_config().unwrap_err().to_string();
        assert!(e.contains("sslkey") && e.contains("chmod 600"), "{e}");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = c.tls_config().unwrap_err().to_string();
        assert!(e.contains("sslcert") && e.contains("client.pem"), "{e}");
    }
}
