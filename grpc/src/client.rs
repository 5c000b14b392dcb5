//! A client's side of [`crate::security`]: the CA it trusts, the
//! certificate it shows for mutual TLS, and the bearer token it sends.

use std::path::Path;

use anyhow::{Context, Result, bail};
use bytes::{Buf, BufMut};
use tokio_stream::StreamExt;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::proto::decoder_client::DecoderClient;

/// A decoder client that sends its credentials with every call.
pub type Client = DecoderClient<InterceptedService<Channel, Bearer>>;

/// What a client proves itself with.
#[derive(Clone, Default)]
pub struct Credentials {
    /// TLS, trusting a CA and showing a certificate if it has one.
    tls: Option<ClientTlsConfig>,
    /// The bearer token.
    token: Bearer,
}

impl Credentials {
    /// Plaintext, no token.
    pub fn none() -> Self {
        Self::default()
    }

    /// TLS trusting `ca` (`--tls-ca`), showing `identity` (`--tls-cert`,
    /// `--tls-key`) for mutual TLS, and the token of `token_file`
    /// (`--token-file`, trimmed); each read now.
    pub fn load(ca: Option<&Path>, identity: Option<(&Path, &Path)>, token_file: Option<&Path>) -> Result<Self> {
        let read = |flag: &str, path: &Path| {
            std::fs::read(path).with_context(|| format!("{flag} {}: cannot read it", path.display()))
        };
        let mut tls = ca
            .map(|ca| {
                Ok::<_, anyhow::Error>(
                    ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read("--tls-ca", ca)?)),
                )
            })
            .transpose()?;
        if let Some((cert, key)) = identity {
            let config = tls.take().unwrap_or_default();
            tls = Some(config.identity(Identity::from_pem(read("--tls-cert", cert)?, read("--tls-key", key)?)));
        }
        let token = match token_file {
            Some(path) => Bearer::new(
                &std::fs::read_to_string(path)
                    .with_context(|| format!("--token-file {}: cannot read it", path.display()))?,
            )
            .with_context(|| format!("--token-file {}", path.display()))?,
            None => Bearer::default(),
        };
        Ok(Self { tls, token })
    }

    /// These credentials with `token` instead.
    pub fn with_token(self, token: &str) -> Result<Self> {
        Ok(Self { token: Bearer::new(token)?, ..self })
    }

    /// These credentials with TLS trusting the CA certificate `ca_pem`, and
    /// showing `identity_pem` (certificate, key) if given.
    pub fn with_tls(self, ca_pem: &[u8], identity_pem: Option<(&[u8], &[u8])>) -> Self {
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem));
        if let Some((cert, key)) = identity_pem {
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        Self { tls: Some(tls), ..self }
    }

    /// True with TLS: addresses are `https://`.
    pub fn has_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// True with a bearer token.
    pub fn has_token(&self) -> bool {
        self.token.0.is_some()
    }

    /// The same TLS, without the token.
    pub fn without_token(&self) -> Self {
        Self { tls: self.tls.clone(), token: Bearer::default() }
    }

    /// What adds the token to each call (nothing without one).
    pub fn bearer(&self) -> Bearer {
        self.token.clone()
    }

    /// A connection to `addr` (`http://HOST:PORT`, or `https://` with TLS;
    /// the scheme follows the credentials either way), with TLS but without
    /// the token: for clients other than the generated one.
    pub async fn channel(&self, addr: &str) -> Result<Channel> {
        let authority = addr.split_once("://").map_or(addr, |(_, rest)| rest);
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{authority}"))?;
        if let Some(tls) = &self.tls {
            endpoint = endpoint.tls_config(tls.clone())?;
        }
        endpoint.connect().await.with_context(|| format!("cannot connect to {scheme}://{authority}"))
    }

    /// Connects the generated client to `addr` ([`Credentials::channel`]),
    /// sending the token with every call.
    pub async fn connect(&self, addr: &str) -> Result<Client> {
        Ok(DecoderClient::with_interceptor(self.channel(addr).await?, self.token.clone()))
    }
}

/// Adds `authorization: Bearer TOKEN` to every call, when it has a token.
#[derive(Clone, Default)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Bearer {
    /// The header of `token` (surrounding whitespace ignored, as the server does).
    pub fn new(token: &str) -> Result<Self> {
        let token = token.trim();
        if token.is_empty() {
            bail!("the token is empty");
        }
        let value = format!("Bearer {token}").parse().context("a token is printable ASCII without spaces")?;
        Ok(Self(Some(value)))
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// The status a response stream ends with, after reading every message
/// before it; `None` when it ends with OK.
pub async fn final_status<T>(responses: &mut tonic::Streaming<T>) -> Option<tonic::Status> {
    while let Some(response) = responses.next().await {
        if let Err(status) = response {
            return Some(status);
        }
    }
    None
}

/// Sends message bytes as they are and hands replies back undecoded: for a
/// client that writes what it likes (the hostile clients of `qecd load
/// --hostile`, the undecodable-message tests), through
/// `tonic::client::Grpc::streaming`.
#[derive(Clone, Copy, Debug, Default)]
pub struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}
