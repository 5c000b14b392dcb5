//! Who may call the server: TLS (mutual TLS with a client CA) and a bearer
//! token.
//!
//! The token guards every call of the decoder service: Decode,
//! DecodeBatch, ListModels, GetStats and the admin call LoadModel (one
//! interceptor covers the whole service, so a call added to it is guarded too). Health checking and reflection stay
//! open: they say only which services run and what their protos are, and a
//! load balancer's health probe carries no credentials. Files are read and
//! checked at start-up, so a bad one stops `qecd serve` with a message that
//! names its flag and path instead of failing the first client.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use qecd_service::TlsFiles;
use tonic::service::Interceptor;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};
use tonic::{Request, Status};

/// How a server's clients prove who they are.
#[derive(Clone, Default)]
pub struct Security {
    /// TLS, when the server has a certificate.
    tls: Option<ServerTlsConfig>,
    /// True when clients must present a certificate signed by the client CA.
    mutual: bool,
    /// The bearer token every decoder call must carry.
    token: Option<Arc<[u8]>>,
}

impl Security {
    /// No TLS and no token: plaintext, anyone who reaches the port may call.
    pub fn none() -> Self {
        Self::default()
    }

    /// TLS from `tls` (`--tls-cert`, `--tls-key`, `--tls-client-ca`) and the
    /// token of `token_file` (`--token-file`), read and checked now.
    pub fn load(tls: Option<&TlsFiles>, token_file: Option<&Path>) -> Result<Self> {
        let mut security = Self::none();
        if let Some(files) = tls {
            let cert = read_pem("--tls-cert", &files.cert, "CERTIFICATE-----")?;
            let key = read_pem("--tls-key", &files.key, "PRIVATE KEY-----")?;
            let mut config = ServerTlsConfig::new().identity(Identity::from_pem(cert, key));
            if let Some(ca) = &files.client_ca {
                config =
                    config.client_ca_root(Certificate::from_pem(read_pem("--tls-client-ca", ca, "CERTIFICATE-----")?));
                security.mutual = true;
            }
            // Builds the rustls configuration now: a key that does not match
            // its certificate, or a certificate rustls cannot parse, fails here.
            tonic::transport::Server::builder().tls_config(config.clone()).map_err(|e| {
                anyhow::anyhow!(
                    "--tls-cert {} with --tls-key {}: {:#}",
                    files.cert.display(),
                    files.key.display(),
                    anyhow::Error::from(e)
                )
            })?;
            security.tls = Some(config);
        }
        if let Some(path) = token_file {
            security.token = Some(read_token(path)?.into_bytes().into());
        }
        Ok(security)
    }

    /// True when a client needs a token or a client certificate to call.
    pub fn authenticates(&self) -> bool {
        self.token.is_some() || self.mutual
    }

    /// True with TLS.
    pub fn has_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The TLS configuration of the server, if any.
    pub(crate) fn tls(&self) -> Option<ServerTlsConfig> {
        self.tls.clone()
    }

    /// The check of every decoder call.
    pub(crate) fn interceptor(&self) -> TokenCheck {
        TokenCheck { expected: self.token.as_ref().map(|t| [b"Bearer ".as_slice(), t].concat().into()) }
    }
}

/// A PEM file's text, which must hold a block whose label ends with `label_end`.
fn read_pem(flag: &str, path: &Path, label_end: &str) -> Result<Vec<u8>> {
    let pem = std::fs::read(path).with_context(|| format!("{flag} {}: cannot read it", path.display()))?;
    if !String::from_utf8_lossy(&pem).contains(label_end) {
        bail!("{flag} {}: no PEM block ending in `{label_end}` in it", path.display());
    }
    Ok(pem)
}

/// The token of `--token-file`: the file's text without surrounding whitespace.
fn read_token(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("--token-file {}: cannot read it as text", path.display()))?;
    let token = text.trim();
    if token.is_empty() {
        bail!("--token-file {} is empty: write the token clients must send in it", path.display());
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        bail!("--token-file {}: a token is printable ASCII without spaces (it goes in a header)", path.display());
    }
    Ok(token.to_string())
}

/// Checks `authorization: Bearer TOKEN` on every call it guards.
#[derive(Clone)]
pub(crate) struct TokenCheck {
    /// The whole header value a call must carry; `None`: no token asked.
    expected: Option<Arc<[u8]>>,
}

impl Interceptor for TokenCheck {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(expected) = &self.expected else { return Ok(request) };
        let Some(given) = request.metadata().get("authorization") else {
            return Err(Status::unauthenticated(
                "this server needs `authorization: Bearer TOKEN` metadata (the token of its --token-file)",
            ));
        };
        if !same_secret(given.as_bytes(), expected) {
            return Err(Status::unauthenticated("the `authorization` bearer token is not this server's"));
        }
        Ok(request)
    }
}

/// Compares two secrets in time that depends on their lengths only, not on
/// where they first differ.
fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    let mut diff = given.len() ^ expected.len();
    for i in 0..given.len().max(expected.len()) {
        let (a, b) = (given.get(i).copied().unwrap_or(0), expected.get(i).copied().unwrap_or(0));
        diff |= usize::from(a ^ b);
    }
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(security: &Security, header: Option<&str>) -> Result<(), tonic::Code> {
        let mut request = Request::new(());
        if let Some(h) = header {
            request.metadata_mut().insert("authorization", h.parse().unwrap());
        }
        security.interceptor().call(request).map(|_| ()).map_err(|s| s.code())
    }

    #[test]
    fn the_token_is_checked_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "  s3cret-token\n").unwrap();
        let security = Security::load(None, Some(&path)).unwrap();
        assert!(security.authenticates());
        assert_eq!(check(&security, Some("Bearer s3cret-token")), Ok(()));
        for wrong in [None, Some("Bearer s3cret-toke"), Some("Bearer s3cret-tokenx"), Some("s3cret-token"), Some("")] {
            assert_eq!(check(&security, wrong), Err(tonic::Code::Unauthenticated), "{wrong:?}");
        }
        assert_eq!(check(&Security::none(), None), Ok(()));
    }

    #[test]
    fn secrets_compare_equal_only_when_equal() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(same_secret(b"", b""));
        for (a, b) in [(&b"abc"[..], &b"abd"[..]), (b"abc", b"ab"), (b"", b"a"), (b"\0", b"")] {
            assert!(!same_secret(a, b), "{a:?} {b:?}");
        }
    }

    #[test]
    fn bad_files_name_their_flag_and_path() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty");
        std::fs::write(&empty, " \n").unwrap();
        let err = Security::load(None, Some(&empty)).err().unwrap().to_string();
        assert!(err.contains("--token-file") && err.contains("is empty"), "{err}");
        let missing = dir.path().join("missing.pem");
        let files = TlsFiles { cert: missing.clone(), key: missing.clone(), client_ca: None };
        let err = format!("{:#}", Security::load(Some(&files), None).err().unwrap());
        assert!(err.contains("--tls-cert") && err.contains("missing.pem"), "{err}");
        let files = TlsFiles { cert: empty.clone(), key: empty.clone(), client_ca: None };
        let err = format!("{:#}", Security::load(Some(&files), None).err().unwrap());
        assert!(err.contains("--tls-cert") && err.contains("no PEM block"), "{err}");
    }
}
