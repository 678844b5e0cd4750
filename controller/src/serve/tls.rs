//! HTTPS for the API: rustls, with the certificate chain and key from PEM
//! files; handshakes concurrent and time-limited.
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::AbortHandle;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use super::metrics as m;

/// TLS handshakes under way at once; a connection beyond is closed.
const HANDSHAKES: usize = 256;
/// How long a client has to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A listener whose handshakes run side by side, each in its own task with
/// a deadline: a client that connects and sends nothing holds one task, not
/// the listener.
pub struct TlsListener {
    local: SocketAddr,
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    accepting: AbortHandle,
}

impl TlsListener {
    pub fn new(tcp: TcpListener, cert: &Path, key: &Path) -> anyhow::Result<TlsListener> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .with_context(|| format!("serve.tls.cert {}", cert.display()))?
            .collect::<Result<_, _>>()
            .with_context(|| format!("serve.tls.cert {}", cert.display()))?;
        let key = PrivateKeyDer::from_pem_file(key).with_context(|| format!("serve.tls.key {}", key.display()))?;
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS versions")?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .context("serve.tls: the certificate and key do not go together")?;
        let local = tcp.local_addr()?;
        let (tx, ready) = mpsc::channel(HANDSHAKES);
        let accepting = tokio::spawn(accept_loop(tcp, TlsAcceptor::from(Arc::new(config)), tx)).abort_handle();
        Ok(TlsListener { local, ready, accepting })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

async fn accept_loop(tcp: TcpListener, acceptor: TlsAcceptor, ready: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>) {
    let permits = Arc::new(Semaphore::new(HANDSHAKES));
    while !ready.is_closed() {
        let (stream, addr) = match tcp.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            m::API_HANDSHAKES_FAILED.with_label_values(&["too_many"]).inc();
            tracing::debug!(peer = %addr, "{HANDSHAKES} TLS handshakes under way: connection closed");
            continue;
        };
        let (acceptor, ready) = (acceptor.clone(), ready.clone());
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => drop(ready.send((tls, addr)).await),
                Ok(Err(e)) => {
                    m::API_HANDSHAKES_FAILED.with_label_values(&["failed"]).inc();
                    tracing::debug!(peer = %addr, error = %e, "TLS handshake failed");
                }
                Err(_) => {
                    m::API_HANDSHAKES_FAILED.with_label_values(&["timed_out"]).inc();
                    tracing::debug!(peer = %addr, "TLS handshake timed out");
                }
            }
        });
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(c) => c,
            // the accepting task is gone only once the listener is dropped
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
