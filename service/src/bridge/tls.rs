//! TLS on a bridge connection (rustls with the ring provider), for either end.
//!
//! A connection's socket is read by one thread and written by others, while
//! a TLS session is one state machine for both directions. So the session is
//! kept as a codec beside the socket, not wrapped around it: whoever holds
//! its lock seals plaintext into records ([`Tls::seal`]) or opens records
//! into plaintext ([`Tls::open`]), and moves the bytes on the raw socket
//! itself. On the server the lock is the [`Writer`](super::writer)'s: the
//! senders seal under it as they encode, and the reader opens what it read
//! under it, so TLS adds no thread and no hop between socket and decoder,
//! only the cipher work and the lock.

use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, ClientConnection, Connection, RootCertStore, ServerConfig, ServerConnection};

use crate::TlsFiles;

/// One end's TLS session, used as a codec (see the module doc).
pub struct Tls {
    conn: Connection,
}

impl Tls {
    /// The server's end of a new connection.
    pub fn server(config: &Arc<ServerConfig>) -> Result<Self> {
        Ok(Self::new(ServerConnection::new(config.clone())?.into()))
    }

    /// The client's end of a new connection to `server_name`.
    pub fn client(config: &Arc<ClientConfig>, server_name: ServerName<'static>) -> Result<Self> {
        Ok(Self::new(ClientConnection::new(config.clone(), server_name)?.into()))
    }

    fn new(mut conn: Connection) -> Self {
        // Sealed records are taken out at once, so rustls need not bound them:
        // a frame (up to 64 KiB of payload) is sealed whole.
        conn.set_buffer_limit(None);
        Self { conn }
    }

    /// Runs the handshake on a blocking socket (its read timeout bounds each wait).
    pub fn handshake<S: Read + Write>(&mut self, socket: &mut S) -> io::Result<()> {
        while self.conn.is_handshaking() {
            self.conn.complete_io(socket)?;
        }
        while self.conn.wants_write() {
            self.conn.write_tls(socket)?;
        }
        Ok(())
    }

    /// Seals `plain` into records appended to `out`.
    pub fn seal(&mut self, plain: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        self.conn.writer().write_all(plain)?;
        self.pending(out)
    }

    /// Opens the records in `cipher` (any split of the byte stream, possibly
    /// empty), appending their plaintext to `plain` and what the session has
    /// to send in return (a key update, an alert) to `out`. `Ok(true)` once
    /// the peer has sent close_notify: it sends no more.
    pub fn open(&mut self, mut cipher: &[u8], plain: &mut Vec<u8>, out: &mut Vec<u8>) -> io::Result<bool> {
        loop {
            if !cipher.is_empty() {
                self.conn.read_tls(&mut cipher)?;
            }
            let state = match self.conn.process_new_packets() {
                Ok(state) => state,
                Err(e) => {
                    let _ = self.pending(out); // the alert that says why
                    return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                }
            };
            let n = state.plaintext_bytes_to_read();
            let start = plain.len();
            plain.resize(start + n, 0);
            self.conn.reader().read_exact(&mut plain[start..])?;
            if cipher.is_empty() {
                self.pending(out)?;
                return Ok(state.peer_has_closed());
            }
        }
    }

    /// Appends close_notify to `out`: this end sends no more.
    pub fn close(&mut self, out: &mut Vec<u8>) -> io::Result<()> {
        self.conn.send_close_notify();
        self.pending(out)
    }

    /// Moves what the session has to send into `out`.
    fn pending(&mut self, out: &mut Vec<u8>) -> io::Result<()> {
        while self.conn.wants_write() {
            self.conn.write_tls(out)?;
        }
        Ok(())
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certificates(path: &Path, flag: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| anyhow!("{flag} {}: {e}", path.display()))?;
    anyhow::ensure!(!certs.is_empty(), "{flag} {}: no PEM certificate in it", path.display());
    Ok(certs)
}

fn private_key(path: &Path, flag: &str) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| anyhow!("{flag} {}: {e}", path.display()))
}

fn roots(path: &Path, flag: &str) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(path, flag)? {
        roots.add(cert).with_context(|| format!("{flag} {}", path.display()))?;
    }
    Ok(roots)
}

/// The bridge's server configuration: its certificate, and with a client
/// CA, mutual TLS (a client without a certificate that CA signed is refused).
pub fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>> {
    let builder = ServerConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    let builder = match &files.client_ca {
        Some(ca) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(roots(ca, "--tls-client-ca")?.into(), provider())
                    .build()
                    .context("--tls-client-ca")?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder
        .with_single_cert(certificates(&files.cert, "--tls-cert")?, private_key(&files.key, "--tls-key")?)
        .context("--tls-cert and --tls-key")?;
    Ok(Arc::new(config))
}

/// What a client trusts and, for mutual TLS, presents (PEM files).
#[derive(Clone, Debug)]
pub struct ClientTls {
    /// The CA that signed the bridge's certificate.
    pub ca: std::path::PathBuf,
    /// The client's certificate chain and private key, for a bridge that asks for one.
    pub identity: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

/// A client configuration from `tls`.
pub fn client_config(tls: &ClientTls) -> Result<Arc<ClientConfig>> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(&tls.ca, "--tls-ca")?);
    let config = match &tls.identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(certificates(cert, "--tls-cert")?, private_key(key, "--tls-key")?)
            .context("--tls-cert and --tls-key")?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}
