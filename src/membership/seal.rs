//! Sealed gossip datagrams, sans-io: the caller passes the wall-clock time
//! and the bytes; nothing here reads a clock or a socket.
//!
//! Each process start opens a *session*: 16 random bytes, and a
//! ChaCha20-Poly1305 key derived from the cluster secret and the session id
//! (HKDF). The nonce is the session's datagram counter, which only grows,
//! so a (key, nonce) pair is never used twice, across restarts included.
//!
//! ```text
//! datagram = version (1) | session (16) | counter (8, BE)          header, authenticated
//!          | seal( sent_at_unix_ms (8, BE) | chitchat bytes ) | tag (16)
//! ```
//!
//! A receiver accepts a datagram only if it authenticates, if its counter
//! was not seen before within the session's window of the last
//! [`REPLAY_WINDOW`] counters, and if it was sealed within
//! [`FRESHNESS_MS`] of the receiver's clock. The freshness bound covers what
//! the window cannot: sessions forgotten (receiver restarted, or evicted
//! beyond [`SESSIONS_MAX`]). A datagram recorded less than
//! [`FRESHNESS_MS`] ago can still be replayed once to a receiver that
//! forgot its session; chitchat ignores such stale state (versions only
//! grow), so this residue costs nothing but a wasted datagram.

use std::collections::HashMap;
use std::ops::Range;

use ring::aead::{self, Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

use crate::secret::ClusterSecret;

/// Format version in the first byte of every sealed datagram.
const SEAL_VERSION: u8 = 1;
const SESSION_BYTES: usize = 16;
const HEADER_BYTES: usize = 1 + SESSION_BYTES + 8;
const TIMESTAMP_BYTES: usize = 8;
const TAG_BYTES: usize = 16;
/// Bytes sealing adds to a datagram.
pub(crate) const SEAL_OVERHEAD_BYTES: usize = HEADER_BYTES + TIMESTAMP_BYTES + TAG_BYTES;
/// How many of a session's most recent counters are remembered; a datagram
/// reordered further back than this is dropped as a possible replay.
pub(crate) const REPLAY_WINDOW: u64 = 1024;
/// Sessions (peer process starts) remembered at once. A cluster has far
/// fewer live sessions; sessions unseen for twice [`FRESHNESS_MS`] go
/// first, then the least recently seen.
pub(crate) const SESSIONS_MAX: usize = 4096;
/// Largest accepted difference between a datagram's seal time and the
/// receiver's clock, either way. Bounds clock skew between nodes too.
pub(crate) const FRESHNESS_MS: u64 = 30_000;

/// Why a datagram was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rejection {
    /// Too short, or an unknown format version.
    Malformed,
    /// Failed authentication: another key, or altered in transit.
    Unauthenticated,
    /// Its counter was already seen, or lies before the replay window.
    Replayed,
    /// Sealed too long ago (or in the future) by the receiver's clock.
    Stale,
}

/// Seals this process's outgoing datagrams.
pub(crate) struct Sealer {
    session: [u8; SESSION_BYTES],
    key: LessSafeKey,
    counter: u64,
}

impl Sealer {
    /// A new session with a random id.
    pub(crate) fn new(secret: &ClusterSecret) -> Sealer {
        let mut session = [0u8; SESSION_BYTES];
        // The OS CSPRNG does not fail on Linux once booted; if it ever
        // did, a fixed session id would risk nonce reuse, so stop here.
        SystemRandom::new()
            .fill(&mut session)
            .expect("the system random source must work");
        Sealer::with_session(secret, session)
    }

    fn with_session(secret: &ClusterSecret, session: [u8; SESSION_BYTES]) -> Sealer {
        Sealer {
            session,
            key: session_key(secret, &session),
            counter: 0,
        }
    }

    /// Seals `payload` into `out` (cleared first). `None` when the sealed
    /// datagram would exceed `max_bytes`, or (never in practice) when the
    /// session's counter is exhausted.
    pub(crate) fn seal(
        &mut self,
        now_unix_ms: u64,
        payload: &[u8],
        max_bytes: usize,
        out: &mut Vec<u8>,
    ) -> Option<()> {
        if payload.len() + SEAL_OVERHEAD_BYTES > max_bytes {
            return None;
        }
        let counter = self.counter;
        self.counter = self.counter.checked_add(1)?;
        out.clear();
        out.push(SEAL_VERSION);
        out.extend_from_slice(&self.session);
        out.extend_from_slice(&counter.to_be_bytes());
        out.extend_from_slice(&now_unix_ms.to_be_bytes());
        out.extend_from_slice(payload);
        let (header, body) = out.split_at_mut(HEADER_BYTES);
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce(counter), Aad::from(&*header), body)
            // Invariant: ChaCha20-Poly1305 fails only beyond 256 GiB.
            .expect("a datagram is far below the AEAD length limit");
        out.extend_from_slice(tag.as_ref());
        Some(())
    }
}

/// Opens datagrams from peers, remembering each session's counters.
pub(crate) struct Opener {
    secret: ClusterSecret,
    sessions: HashMap<[u8; SESSION_BYTES], Session>,
}

struct Session {
    key: LessSafeKey,
    window: ReplayWindow,
    last_seen_ms: u64,
}

impl Opener {
    pub(crate) fn new(secret: &ClusterSecret) -> Opener {
        Opener {
            secret: secret.clone(),
            sessions: HashMap::new(),
        }
    }

    /// Authenticates and decrypts `datagram` in place; returns where the
    /// chitchat bytes lie within it.
    pub(crate) fn open(
        &mut self,
        now_unix_ms: u64,
        datagram: &mut [u8],
    ) -> Result<Range<usize>, Rejection> {
        let len = datagram.len();
        if datagram.len() < SEAL_OVERHEAD_BYTES || datagram[0] != SEAL_VERSION {
            return Err(Rejection::Malformed);
        }
        let (header, body) = datagram.split_at_mut(HEADER_BYTES);
        let mut session_id = [0u8; SESSION_BYTES];
        session_id.copy_from_slice(&header[1..1 + SESSION_BYTES]);
        let mut counter_bytes = [0u8; 8];
        counter_bytes.copy_from_slice(&header[1 + SESSION_BYTES..]);
        let counter = u64::from_be_bytes(counter_bytes);

        let known = self.sessions.get(&session_id);
        if let Some(session) = known
            && !session.window.is_new(counter)
        {
            return Err(Rejection::Replayed);
        }
        // An unknown session costs one key derivation; it is remembered
        // only once a datagram of it authenticates.
        let fresh_key;
        let key = match known {
            Some(session) => &session.key,
            None => {
                fresh_key = session_key(&self.secret, &session_id);
                &fresh_key
            }
        };
        let plain = key
            .open_in_place(nonce(counter), Aad::from(&*header), body)
            .map_err(|_| Rejection::Unauthenticated)?;
        let mut sent_at = [0u8; TIMESTAMP_BYTES];
        sent_at.copy_from_slice(&plain[..TIMESTAMP_BYTES]);
        if u64::from_be_bytes(sent_at).abs_diff(now_unix_ms) > FRESHNESS_MS {
            return Err(Rejection::Stale);
        }
        if known.is_none() {
            self.make_room(now_unix_ms);
            self.sessions.insert(
                session_id,
                Session {
                    key: session_key(&self.secret, &session_id),
                    window: ReplayWindow::default(),
                    last_seen_ms: now_unix_ms,
                },
            );
        }
        if let Some(session) = self.sessions.get_mut(&session_id) {
            session.window.mark(counter);
            session.last_seen_ms = session.last_seen_ms.max(now_unix_ms);
        }
        Ok(HEADER_BYTES + TIMESTAMP_BYTES..len - TAG_BYTES)
    }

    /// Sessions currently remembered.
    #[cfg(test)]
    fn sessions(&self) -> usize {
        self.sessions.len()
    }

    fn make_room(&mut self, now_unix_ms: u64) {
        if self.sessions.len() < SESSIONS_MAX {
            return;
        }
        self.sessions
            .retain(|_, s| now_unix_ms.saturating_sub(s.last_seen_ms) <= 2 * FRESHNESS_MS);
        while self.sessions.len() >= SESSIONS_MAX {
            let oldest = self
                .sessions
                .iter()
                .min_by_key(|(_, s)| s.last_seen_ms)
                .map(|(id, _)| *id);
            match oldest {
                Some(id) => self.sessions.remove(&id),
                None => break,
            };
        }
    }
}

fn session_key(secret: &ClusterSecret, session: &[u8; SESSION_BYTES]) -> LessSafeKey {
    let mut label = Vec::with_capacity(16 + SESSION_BYTES);
    label.extend_from_slice(b"gossip session ");
    label.extend_from_slice(session);
    let mut key = [0u8; 32];
    secret.derive(&label, &mut key);
    // Invariant: a 32-byte key is ChaCha20-Poly1305's only key length.
    LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &key).expect("32-byte key"))
}

fn nonce(counter: u64) -> Nonce {
    let mut bytes = [0u8; aead::NONCE_LEN];
    bytes[4..].copy_from_slice(&counter.to_be_bytes());
    Nonce::assume_unique_for_key(bytes)
}

/// The counters seen in the last [`REPLAY_WINDOW`] of one session (the
/// sliding bitmap of RFC 6479).
#[derive(Default)]
struct ReplayWindow {
    /// Highest counter seen plus one; 0 before the first.
    top: u64,
    bits: [u64; (REPLAY_WINDOW / 64) as usize],
}

impl ReplayWindow {
    fn is_new(&self, counter: u64) -> bool {
        if counter >= self.top {
            return true;
        }
        if self.top - counter > REPLAY_WINDOW {
            return false;
        }
        !self.bit(counter)
    }

    fn mark(&mut self, counter: u64) {
        if counter >= self.top {
            let advance = counter + 1 - self.top;
            if advance >= REPLAY_WINDOW {
                self.bits = Default::default();
            } else {
                for c in self.top..=counter {
                    self.clear(c);
                }
            }
            self.top = counter + 1;
        }
        let (word, bit) = Self::slot(counter);
        self.bits[word] |= 1 << bit;
    }

    fn bit(&self, counter: u64) -> bool {
        let (word, bit) = Self::slot(counter);
        self.bits[word] & (1 << bit) != 0
    }

    fn clear(&mut self, counter: u64) {
        let (word, bit) = Self::slot(counter);
        self.bits[word] &= !(1 << bit);
    }

    fn slot(counter: u64) -> (usize, u32) {
        let index = counter % REPLAY_WINDOW;
        ((index / 64) as usize, (index % 64) as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000_000;
    const MAX: usize = crate::net::DATAGRAM_BYTES_MAX;

    fn secret() -> ClusterSecret {
        ClusterSecret::from_bytes([7; 32])
    }

    fn sealed(sealer: &mut Sealer, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        sealer.seal(NOW, payload, MAX, &mut out).unwrap();
        out
    }

    #[test]
    fn sealed_datagram_opens_once() {
        let mut sealer = Sealer::new(&secret());
        let mut opener = Opener::new(&secret());
        let datagram = sealed(&mut sealer, b"hello cluster");
        assert_eq!(datagram.len(), 13 + SEAL_OVERHEAD_BYTES);
        let mut copy = datagram.clone();
        let plain = opener.open(NOW, &mut copy).unwrap();
        assert_eq!(&copy[plain], b"hello cluster");
        let mut replay = datagram.clone();
        assert_eq!(opener.open(NOW, &mut replay), Err(Rejection::Replayed));
    }

    #[test]
    fn any_altered_byte_is_rejected() {
        let mut sealer = Sealer::new(&secret());
        let datagram = sealed(&mut sealer, b"payload");
        for i in 0..datagram.len() {
            let mut opener = Opener::new(&secret());
            let mut bad = datagram.clone();
            bad[i] ^= 0x01;
            let got = opener.open(NOW, &mut bad);
            let want = if i == 0 {
                Rejection::Malformed
            } else {
                Rejection::Unauthenticated
            };
            assert_eq!(got, Err(want), "byte {i}");
            assert_eq!(opener.sessions(), 0, "a forged datagram opens no session");
        }
    }

    #[test]
    fn another_secret_cannot_open_or_forge() {
        let mut sealer = Sealer::new(&ClusterSecret::from_bytes([8; 32]));
        let mut opener = Opener::new(&secret());
        let mut datagram = sealed(&mut sealer, b"x");
        assert_eq!(
            opener.open(NOW, &mut datagram),
            Err(Rejection::Unauthenticated)
        );
        let mut short = vec![SEAL_VERSION; SEAL_OVERHEAD_BYTES - 1];
        assert_eq!(opener.open(NOW, &mut short), Err(Rejection::Malformed));
    }

    #[test]
    fn reordering_within_the_window_is_accepted_and_replays_are_not() {
        let mut sealer = Sealer::new(&secret());
        let mut opener = Opener::new(&secret());
        let all: Vec<Vec<u8>> = (0..3000).map(|i| sealed(&mut sealer, &[i as u8])).collect();
        // Deliver 1000..2000, then 980..1000 late but within the window
        // of 1024 below the highest counter seen (1999).
        for i in (1000..2000).chain(980..1000) {
            let mut d = all[i].clone();
            assert!(opener.open(NOW, &mut d).is_ok(), "datagram {i}");
        }
        // Never seen, but too far back to tell from a replay.
        let mut d = all[975].clone();
        assert_eq!(opener.open(NOW, &mut d), Err(Rejection::Replayed));
        for i in [980, 999, 1500, 1999] {
            let mut d = all[i].clone();
            assert_eq!(opener.open(NOW, &mut d), Err(Rejection::Replayed), "{i}");
        }
        // Jump ahead: the window slides; what fell out of it is refused,
        // what is inside and unseen is accepted once.
        let mut d = all[2999].clone();
        assert!(opener.open(NOW, &mut d).is_ok());
        let mut old = all[1975].clone();
        assert_eq!(opener.open(NOW, &mut old), Err(Rejection::Replayed));
        for want in [Ok(()), Err(Rejection::Replayed)] {
            let mut inside = all[2500].clone();
            assert_eq!(opener.open(NOW, &mut inside).map(|_| ()), want);
        }
    }

    #[test]
    fn stale_and_future_datagrams_are_rejected() {
        let mut sealer = Sealer::new(&secret());
        let mut opener = Opener::new(&secret());
        for sent_at in [NOW - FRESHNESS_MS - 1, NOW + FRESHNESS_MS + 1] {
            let mut d = Vec::new();
            sealer.seal(sent_at, b"x", MAX, &mut d).unwrap();
            assert_eq!(opener.open(NOW, &mut d), Err(Rejection::Stale));
        }
        let mut d = Vec::new();
        sealer.seal(NOW - FRESHNESS_MS, b"x", MAX, &mut d).unwrap();
        assert!(opener.open(NOW, &mut d).is_ok(), "the bound is inclusive");
    }

    #[test]
    fn a_restart_is_a_new_session_with_its_own_counters() {
        let mut opener = Opener::new(&secret());
        for _ in 0..3 {
            let mut sealer = Sealer::new(&secret());
            let mut d = sealed(&mut sealer, b"first");
            assert!(
                opener.open(NOW, &mut d).is_ok(),
                "counter 0 of a new session"
            );
        }
        assert_eq!(opener.sessions(), 3);
    }

    #[test]
    fn sessions_are_bounded() {
        let mut opener = Opener::new(&secret());
        for i in 0..SESSIONS_MAX + 10 {
            let mut id = [0u8; SESSION_BYTES];
            id[..8].copy_from_slice(&(i as u64).to_be_bytes());
            let mut sealer = Sealer::with_session(&secret(), id);
            let mut d = Vec::new();
            sealer.seal(NOW + i as u64, b"x", MAX, &mut d).unwrap();
            assert!(opener.open(NOW + i as u64, &mut d).is_ok());
        }
        assert_eq!(opener.sessions(), SESSIONS_MAX);
    }

    proptest::proptest! {
        /// Arbitrary bytes never panic the opener and never open.
        #[test]
        fn arbitrary_bytes_never_open(mut bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let mut opener = Opener::new(&secret());
            proptest::prop_assert!(opener.open(NOW, &mut bytes).is_err());
        }
    }

    #[test]
    fn oversize_payload_is_refused_not_truncated() {
        let mut sealer = Sealer::new(&secret());
        let mut out = Vec::new();
        let payload = vec![0u8; MAX - SEAL_OVERHEAD_BYTES + 1];
        assert_eq!(sealer.seal(NOW, &payload, MAX, &mut out), None);
        assert!(sealer.seal(NOW, &payload[1..], MAX, &mut out).is_some());
        assert_eq!(out.len(), MAX);
    }
}
