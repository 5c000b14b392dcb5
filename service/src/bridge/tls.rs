//! TLS on a bridge connection (rustls with the ring provider), for either end.
//!
//! A connection's socket is read by one thread and written by others, while
//! a TLS session is one state machine for both directions. So the session is
//! kept as a codec beside the socket, not wrapped around it: whoever holds
//! its lock seals plaintext into records ([`Tls::seal`]) or opens records
//! into plaintext ([`Tls::open`]), and moves the bytes on the raw socket
//! itself. On the server the lock is the connection writer's: the
//! senders seal under it as they encode, and the reader opens what it read
//! under it, so TLS adds no thread and no hop between socket and decoder,
//! only the cipher work and the lock.
//!
//! The simpler alternative, a pump thread per connection that terminates TLS
//! and relays plaintext over a socket pair to the plain code path, would
//! cost a thread and a wake-up per frame each way. This design costs about
//! nothing measurable: `qecd replay` (d=3, neural, one stream, a round
//! every 100 µs, 1000 shots, 5 runs each on a busy 2-core VM) gave a
//! median ACK round trip of 35.2 µs in plain TCP and 36.5 µs over TLS 1.3,
//! within the runs' spread (29 to 42 µs for either).

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

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    /// A CA, a server certificate for 127.0.0.1 it signed, and a client's, as PEM files.
    fn pki(dir: &Path) -> (PathBuf, TlsFiles, (PathBuf, PathBuf)) {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        let write = |name: &str, pem: String| {
            let path = dir.join(name);
            std::fs::write(&path, pem).unwrap();
            path
        };
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let leaf = |name: &str, san: &str| {
            let key = KeyPair::generate().unwrap();
            let cert = CertificateParams::new(vec![san.to_string()]).unwrap().signed_by(&key, &ca).unwrap();
            (write(&format!("{name}.pem"), cert.pem()), write(&format!("{name}.key"), key.serialize_pem()))
        };
        let (cert, key) = leaf("server", "127.0.0.1");
        let client = leaf("client", "fpga.example");
        let ca = write("ca.pem", ca.pem());
        (ca.clone(), TlsFiles { cert, key, client_ca: Some(ca) }, client)
    }

    /// Opens `sealed` at `to`, handed over `chunk` bytes at a time: the
    /// plaintext, and what `to` sends back.
    fn deliver(to: &mut Tls, sealed: &[u8], chunk: usize) -> (Vec<u8>, Vec<u8>) {
        let (mut plain, mut back) = (Vec::new(), Vec::new());
        for piece in sealed.chunks(chunk.max(1)) {
            to.open(piece, &mut plain, &mut back).unwrap();
        }
        (plain, back)
    }

    #[test]
    fn records_in_any_split_open_to_the_frames_sealed_in_both_directions() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, files, client) = pki(dir.path());
        let server_config = server_config(&files).unwrap();
        let client_config = client_config(&ClientTls { ca, identity: Some(client) }).unwrap();
        let mut server = Tls::server(&server_config).unwrap();
        let mut client = Tls::client(&client_config, ServerName::from(std::net::IpAddr::from([127, 0, 0, 1]))).unwrap();
        // The handshake, by hand: each side's flight to the other until neither has one.
        let mut to_server = Vec::new();
        client.pending(&mut to_server).unwrap();
        while !to_server.is_empty() {
            let (_, to_client) = deliver(&mut server, &to_server, 1 << 20);
            (_, to_server) = deliver(&mut client, &to_client, 1 << 20);
        }
        assert!(!server.conn.is_handshaking() && !client.conn.is_handshaking());
        // A frame larger than one record (16 KiB) and than rustls' default buffer (64 KiB).
        let frame: Vec<u8> = (0..65_572u32).map(|i| (i * 7 % 251) as u8).collect();
        for chunk in [1, 7, 16_384, 1 << 20] {
            let mut sealed = Vec::new();
            client.seal(&frame, &mut sealed).unwrap();
            assert_eq!(deliver(&mut server, &sealed, chunk).0, frame, "split into {chunk}-byte pieces");
            let mut sealed = Vec::new();
            server.seal(&frame[..36], &mut sealed).unwrap();
            assert_eq!(deliver(&mut client, &sealed, chunk).0, &frame[..36]);
        }
        // close_notify ends the server's output, and the client sees the end.
        let mut bye = Vec::new();
        server.close(&mut bye).unwrap();
        let (mut plain, mut back) = (Vec::new(), Vec::new());
        assert!(client.open(&bye, &mut plain, &mut back).unwrap());
        assert!(plain.is_empty());
        // A flipped bit is an error, not plaintext, and the server says why.
        let mut sealed = Vec::new();
        client.seal(b"QECF", &mut sealed).unwrap();
        let last = sealed.len() - 1;
        sealed[last] ^= 1;
        let mut alert = Vec::new();
        assert!(server.open(&sealed, &mut Vec::new(), &mut alert).is_err());
        assert!(!alert.is_empty(), "no alert");
    }
}
