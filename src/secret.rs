//! The cluster secret: 32 random bytes that admit a node to a cluster.
//!
//! Every other key is derived from it with HKDF-SHA256 under a distinct
//! label, so no two uses share key material: the gossip sealing keys
//! ([`crate::membership`]) and the seed of the cluster's certificate
//! authority for mutual TLS ([`crate::rpc`]). Rotating the secret means
//! restarting every node with the new file.
//!
//! On disk the secret is 64 hex digits and a newline, written by
//! `meshd keygen` with mode 0600.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};

/// Length of a cluster secret in bytes.
pub const SECRET_BYTES: usize = 32;

/// Salt for every derivation, naming the protocol generation.
const HKDF_SALT: &[u8] = b"coordmesh secret v1";

/// What an open cluster (no `--cluster-key`) derives its TLS authority
/// from. It is public: it keeps one code path for QUIC, and it makes keyed
/// and open nodes refuse each other, but it protects nothing.
const OPEN_CLUSTER_IKM: &[u8] = b"coordmesh open cluster: no secret";

/// A cluster secret. `Debug` never prints the bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterSecret {
    bytes: [u8; SECRET_BYTES],
    open: bool,
}

/// Why a cluster secret could not be made or loaded.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The key file could not be read. Check the path and permissions.
    #[error("cannot read cluster key {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The key file does not hold 64 hex digits. Make one with
    /// `meshd keygen`.
    #[error("cluster key {} is not 64 hex digits (make one with `meshd keygen`)", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
    },
    /// The output file exists; a secret is never overwritten (nodes still
    /// using it would be locked out). Remove it first if that is intended.
    #[error("{} already exists; refusing to overwrite a cluster key", path.display())]
    Exists {
        /// The file.
        path: PathBuf,
    },
    /// Writing the key file failed.
    #[error("cannot write cluster key {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The operating system's random source failed.
    #[error("the system random source failed")]
    Random,
}

impl ClusterSecret {
    /// A new random secret from the operating system's CSPRNG.
    pub fn generate() -> Result<ClusterSecret, SecretError> {
        let mut bytes = [0u8; SECRET_BYTES];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| SecretError::Random)?;
        Ok(ClusterSecret { bytes, open: false })
    }

    /// A secret from raw bytes (for embedders that keep it elsewhere).
    pub fn from_bytes(bytes: [u8; SECRET_BYTES]) -> ClusterSecret {
        ClusterSecret { bytes, open: false }
    }

    /// The well-known stand-in of an open cluster (see the module docs).
    pub fn open_cluster() -> ClusterSecret {
        let mut bytes = [0u8; SECRET_BYTES];
        derive(OPEN_CLUSTER_IKM, b"open", &mut bytes);
        ClusterSecret { bytes, open: true }
    }

    /// True for [`ClusterSecret::open_cluster`]: anyone may join.
    pub fn is_open(&self) -> bool {
        self.open
    }

    /// Parses the file format: 64 hex digits, surrounding whitespace ignored.
    pub fn parse_hex(text: &str) -> Option<ClusterSecret> {
        let text = text.trim();
        if text.len() != SECRET_BYTES * 2 || !text.is_ascii() {
            return None;
        }
        let mut bytes = [0u8; SECRET_BYTES];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(ClusterSecret { bytes, open: false })
    }

    /// The file format: 64 lowercase hex digits and a newline.
    pub fn to_hex(&self) -> String {
        let mut out = String::with_capacity(SECRET_BYTES * 2 + 1);
        for byte in self.bytes {
            out.push_str(&format!("{byte:02x}"));
        }
        out.push('\n');
        out
    }

    /// Loads a key file written by `meshd keygen`.
    pub fn load(path: &Path) -> Result<ClusterSecret, SecretError> {
        let text = std::fs::read_to_string(path).map_err(|source| SecretError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        ClusterSecret::parse_hex(&text).ok_or_else(|| SecretError::Malformed {
            path: path.to_path_buf(),
        })
    }

    /// Writes the secret to a new file with mode 0600. Refuses to replace
    /// an existing file.
    pub fn write_new(&self, path: &Path) -> Result<(), SecretError> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|source| match source.kind() {
                std::io::ErrorKind::AlreadyExists => SecretError::Exists {
                    path: path.to_path_buf(),
                },
                _ => SecretError::Write {
                    path: path.to_path_buf(),
                    source,
                },
            })?;
        file.write_all(self.to_hex().as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|source| SecretError::Write {
                path: path.to_path_buf(),
                source,
            })
    }

    /// Fills `out` with key material for one purpose, named by `label`.
    pub(crate) fn derive(&self, label: &[u8], out: &mut [u8]) {
        derive(&self.bytes, label, out);
    }
}

impl fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.open {
            f.write_str("ClusterSecret(open)")
        } else {
            f.write_str("ClusterSecret(..)")
        }
    }
}

/// A length that ring's HKDF accepts as an output key type.
struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

fn derive(ikm: &[u8], label: &[u8], out: &mut [u8]) {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, HKDF_SALT).extract(ikm);
    let info = [label];
    // Invariant: every caller asks for at most 255 * 32 bytes (a key or a
    // seed), the only case in which `expand` and `fill` can fail.
    prk.expand(&info, Len(out.len()))
        .and_then(|okm| okm.fill(out))
        .expect("HKDF output length within 255 * hash length");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_rejects_garbage() {
        let secret = ClusterSecret::generate().unwrap();
        let text = secret.to_hex();
        assert_eq!(text.len(), 65);
        assert_eq!(ClusterSecret::parse_hex(&text), Some(secret));
        for bad in ["", "zz", &"0".repeat(63), &"g".repeat(64), &"é".repeat(32)] {
            assert_eq!(ClusterSecret::parse_hex(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn derivations_differ_by_label_and_by_secret() {
        let a = ClusterSecret::from_bytes([1; 32]);
        let b = ClusterSecret::from_bytes([2; 32]);
        let (mut x, mut y, mut z) = ([0u8; 32], [0u8; 32], [0u8; 32]);
        a.derive(b"one", &mut x);
        a.derive(b"two", &mut y);
        b.derive(b"one", &mut z);
        assert_ne!(x, y);
        assert_ne!(x, z);
        let mut again = [0u8; 32];
        a.derive(b"one", &mut again);
        assert_eq!(x, again, "derivation is deterministic");
        assert_ne!(ClusterSecret::open_cluster(), a);
    }

    #[test]
    fn debug_hides_the_bytes() {
        let secret = ClusterSecret::from_bytes([0xab; 32]);
        assert!(!format!("{secret:?}").contains("ab"));
    }

    #[test]
    fn key_file_is_private_and_never_overwritten() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster.key");
        let secret = ClusterSecret::generate().unwrap();
        secret.write_new(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(ClusterSecret::load(&path).unwrap(), secret);
        let again = ClusterSecret::generate().unwrap().write_new(&path);
        assert!(matches!(again, Err(SecretError::Exists { .. })));
        assert_eq!(ClusterSecret::load(&path).unwrap(), secret);
    }
}
