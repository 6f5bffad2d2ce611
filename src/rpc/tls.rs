//! Mutual TLS from the cluster secret.
//!
//! The secret deterministically yields an Ed25519 key (HKDF, label `rpc
//! ca`), and from it every node builds the same self-signed authority
//! certificate (same subject, same key: the same trust anchor). At start a
//! node makes a fresh leaf key and a leaf certificate signed by that
//! authority. Both sides of every QUIC connection present their leaf and
//! accept only leaves chaining to the authority, so a process without the
//! secret cannot complete a handshake either way. TLS 1.3 only: the
//! certificates travel encrypted.

use std::sync::Arc;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ED25519,
};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::secret::ClusterSecret;

/// The name every leaf certifies and every client expects. It carries no
/// cluster or node detail (it travels in clear in the TLS ClientHello).
pub(crate) const SERVER_NAME: &str = "mesh-peer";
/// ALPN: refuses anything that is not this protocol.
const ALPN: &[u8] = b"coordmesh-rpc/1";

/// Why TLS could not be set up (a bug or an unusable crypto library, never
/// a peer's doing).
#[derive(Debug, thiserror::Error)]
#[error("TLS setup failed: {0}")]
pub(crate) struct TlsError(String);

fn err(e: impl std::fmt::Display) -> TlsError {
    TlsError(e.to_string())
}

/// The client and server halves for one node's endpoint.
pub(crate) struct TlsConfigs {
    pub(crate) server: quinn::ServerConfig,
    pub(crate) client: quinn::ClientConfig,
}

/// PKCS#8 v1 wrapping of an Ed25519 seed (RFC 8410 §7): a fixed prefix,
/// then the 32 seed bytes.
fn ed25519_pkcs8(seed: &[u8; 32]) -> Vec<u8> {
    const PREFIX: [u8; 16] = [
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    let mut der = PREFIX.to_vec();
    der.extend_from_slice(seed);
    der
}

fn authority(secret: &ClusterSecret) -> Result<(CertificateParams, KeyPair), TlsError> {
    let mut seed = [0u8; 32];
    secret.derive(b"rpc ca", &mut seed);
    let der = PrivatePkcs8KeyDer::from(ed25519_pkcs8(&seed));
    let key = KeyPair::from_pkcs8_der_and_sign_algo(&der, &PKCS_ED25519).map_err(err)?;
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, "mesh authority");
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    Ok((params, key))
}

/// Builds this node's TLS configuration with a fresh leaf key.
pub(crate) fn configs(
    secret: &ClusterSecret,
    transport: Arc<quinn::TransportConfig>,
) -> Result<TlsConfigs, TlsError> {
    let (ca_params, ca_key) = authority(secret)?;
    let ca_cert = ca_params.self_signed(&ca_key).map_err(err)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let leaf_key = KeyPair::generate_for(&PKCS_ED25519).map_err(err)?;
    let mut leaf_params = CertificateParams::new(vec![SERVER_NAME.to_string()]).map_err(err)?;
    leaf_params.distinguished_name = DistinguishedName::new();
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).map_err(err)?;

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca_cert.der().clone()).map_err(err)?;
    let roots = Arc::new(roots);
    let chain = vec![leaf.der().clone()];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));

    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        roots.clone(),
        provider.clone(),
    )
    .build()
    .map_err(err)?;
    let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(err)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(err)?;
    server.alpn_protocols = vec![ALPN.to_vec()];
    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(err)?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(err)?;
    client.alpn_protocols = vec![ALPN.to_vec()];

    let mut server = quinn::ServerConfig::with_crypto(Arc::new(
        QuicServerConfig::try_from(server).map_err(err)?,
    ));
    server.transport_config(transport.clone());
    let mut client =
        quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(client).map_err(err)?));
    client.transport_config(transport);
    Ok(TlsConfigs { server, client })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_node_derives_the_same_authority() {
        let secret = ClusterSecret::from_bytes([9; 32]);
        let (p1, k1) = authority(&secret).unwrap();
        let (_, k2) = authority(&secret).unwrap();
        assert_eq!(k1.public_key_raw(), k2.public_key_raw());
        let (_, other) = authority(&ClusterSecret::from_bytes([10; 32])).unwrap();
        assert_ne!(k1.public_key_raw(), other.public_key_raw());
        assert!(p1.self_signed(&k1).is_ok());
    }
}
