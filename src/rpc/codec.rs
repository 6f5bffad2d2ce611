//! Frames: the only place bytes become messages. Sans-io, so it can be
//! property-tested and fuzzed on its own.
//!
//! ```text
//! frame = length (u32, BE; bytes that follow) | wire version (u16, BE) | postcard body
//! ```
//!
//! A frame is at most [`FRAME_BYTES_MAX`] long; its length is checked
//! before any of the body is read or buffered, so a hostile length costs
//! nothing.
//!
//! A request or an answer may carry a whole lock table (a promise, a
//! recovery copy, a new term's first batch), which can be far larger than
//! a frame. Such a message travels as several frames ([`Chunked`]): a
//! head (the message without its lock entries, and how many chunk frames
//! follow), then the entries, at most [`CHUNK_BYTES`] of them per chunk
//! frame. The whole is bounded by [`MESSAGE_BYTES_MAX`].
//!
//! ```text
//! message = frame(Head { chunks, body }) | chunks × frame(Vec<Entry>)
//! ```

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::locks::Entry;

/// Version of the frame format and message enums. 2: recovery answers
/// tell what a voter remembers (E7), lock entries carry versions, quiet
/// times and the request ids of the grants they ended. 3: the voter
/// protocol has messages of its own (`Request::Voter`, `Response::Voter`),
/// out of the client lock messages, and promises and recovery answers
/// carry a `VoterSnapshot`. 4: lock entries name their namespace (user
/// lock or idempotency claim) and carry a claim's facts. 5: lock entries
/// carry the epoch that wrote them; anti-entropy walks (`Page`, `Ids`,
/// `Fetch`). 6: a voter's snapshot carries its life; `Life` and `Copy`
/// (completions settled out of the lock copies into the records). 7: a
/// replication batch carries its id; `Forget` (tombstones every voter
/// holds, pruned) and the voter's floor in its snapshot; `Answer::Stale`.
/// 8: requests and answers are a head and chunk frames of lock entries.
/// 9: heartbeat rounds go to voters only, and the other members learn
/// the leader from its gossiped claim (`membership::KEY_LEADS`): a member
/// of an earlier version would get neither, so versions refuse each other.
/// 10: a grant's entry carries the run its holder is bound to (K5).
/// 11: a heartbeat names the voters whose acks the leader had lately, and
/// they count it toward their reach marks instead of probing it.
/// 12: a candidate asks for a pre-vote (`PreVote`, `WouldPromise`, the
/// refusal `Leading`) before it promises itself an epoch.
pub const WIRE_VERSION: u16 = 12;
/// Largest frame (after the length prefix) a node sends or accepts.
pub const FRAME_BYTES_MAX: usize = 1 << 20;
// A prune round's tombstones, and the forget that names them, fit a frame.
const _: () = assert!(4 * crate::locks::table::PRUNE_BYTES_MAX <= FRAME_BYTES_MAX);
/// A chunk frame holds entries up to this many bytes (one larger entry
/// goes alone in its chunk).
pub const CHUNK_BYTES: usize = 256 * 1024;
/// Largest message (a head and its chunk frames, length prefixes
/// included) a node sends or accepts: what it buffers for one request or
/// answer. A table of 100,000 locks held (the table's bound) with the
/// longest names and request ids is about 45 MB.
pub const MESSAGE_BYTES_MAX: usize = 64 << 20;
// One entry alone (a claim's is the largest, within the claims' byte
// bound) fits a chunk frame.
const _: () = assert!(crate::locks::claim::CLAIM_BYTES_MAX + 16 <= FRAME_BYTES_MAX);
/// Bytes of the length prefix.
pub const LENGTH_BYTES: usize = 4;
const VERSION_BYTES: usize = 2;

/// Why bytes did not make a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Fewer bytes than the frame says it has.
    #[error("frame truncated")]
    Truncated,
    /// The frame exceeds [`FRAME_BYTES_MAX`].
    #[error("frame of {len} bytes exceeds the bound of {max}")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// A wire version this build does not read.
    #[error("wire version {theirs}, expected {WIRE_VERSION}")]
    Version {
        /// The frame's version.
        theirs: u16,
    },
    /// The body is not a valid encoding of the expected message (or has
    /// bytes left over).
    #[error("malformed frame body")]
    Malformed,
}

/// Encodes `value` as one frame, length prefix included.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, FrameError> {
    let mut out = vec![0u8; LENGTH_BYTES];
    out.extend_from_slice(&WIRE_VERSION.to_be_bytes());
    // Serializing our own types into a Vec fails only on a serde error
    // that postcard raises for unsupported types, which none of ours use.
    let mut out = postcard::to_extend(value, out).map_err(|_| FrameError::Malformed)?;
    let len = out.len() - LENGTH_BYTES;
    if len > FRAME_BYTES_MAX {
        return Err(FrameError::TooLarge {
            len,
            max: FRAME_BYTES_MAX,
        });
    }
    // Invariant: len <= FRAME_BYTES_MAX < u32::MAX.
    out[..LENGTH_BYTES].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(out)
}

/// A message that may carry more lock entries than fit one frame: they
/// travel in chunk frames after it.
pub trait Chunked {
    /// The message's lock entries, if it is of a kind that has them.
    fn entries_mut(&mut self) -> Option<&mut Vec<Entry>>;
}

/// The first frame of a chunked message.
#[derive(Debug, Serialize, Deserialize)]
pub struct Head<T> {
    /// Chunk frames that follow.
    pub chunks: u32,
    /// The message, its lock entries taken out.
    pub body: T,
}

/// Takes `value`'s lock entries out and encodes them as chunk frames:
/// how many, and the frames, concatenated.
pub fn take_chunks<T: Chunked>(value: &mut T) -> Result<(u32, Vec<u8>), FrameError> {
    let entries = match value.entries_mut() {
        Some(entries) => std::mem::take(entries),
        None => return Ok((0, Vec::new())),
    };
    let mut out = Vec::new();
    let mut chunks = 0u32;
    let mut body = Vec::new();
    let mut count = 0usize;
    let mut one = Vec::new();
    for entry in &entries {
        one.clear();
        one = postcard::to_extend(entry, one).map_err(|_| FrameError::Malformed)?;
        if count > 0 && body.len() + one.len() > CHUNK_BYTES {
            push_chunk(&mut out, count, &body)?;
            chunks += 1;
            body.clear();
            count = 0;
        }
        body.extend_from_slice(&one);
        count += 1;
    }
    if count > 0 {
        push_chunk(&mut out, count, &body)?;
        chunks += 1;
    }
    if out.len() > MESSAGE_BYTES_MAX {
        return Err(FrameError::TooLarge {
            len: out.len(),
            max: MESSAGE_BYTES_MAX,
        });
    }
    Ok((chunks, out))
}

/// Appends one chunk frame: `count` entries, already encoded in `body`,
/// as postcard encodes a `Vec<Entry>` (its length, then its elements).
fn push_chunk(out: &mut Vec<u8>, count: usize, body: &[u8]) -> Result<(), FrameError> {
    let count = postcard::to_stdvec(&count).map_err(|_| FrameError::Malformed)?;
    let len = VERSION_BYTES + count.len() + body.len();
    if len > FRAME_BYTES_MAX {
        return Err(FrameError::TooLarge {
            len,
            max: FRAME_BYTES_MAX,
        });
    }
    // Invariant: len <= FRAME_BYTES_MAX < u32::MAX.
    out.extend_from_slice(&(len as u32).to_be_bytes());
    out.extend_from_slice(&WIRE_VERSION.to_be_bytes());
    out.extend_from_slice(&count);
    out.extend_from_slice(body);
    Ok(())
}

/// Encodes `value` as a chunked message: its head frame, then its chunk
/// frames.
pub fn encode_chunked<T: Serialize + Chunked>(mut value: T) -> Result<Vec<u8>, FrameError> {
    let (chunks, frames) = take_chunks(&mut value)?;
    let mut out = encode(&Head {
        chunks,
        body: &value,
    })?;
    if out.len() + frames.len() > MESSAGE_BYTES_MAX {
        return Err(FrameError::TooLarge {
            len: out.len() + frames.len(),
            max: MESSAGE_BYTES_MAX,
        });
    }
    out.extend_from_slice(&frames);
    Ok(out)
}

/// Puts a chunked message's entries back together, one chunk frame at a
/// time, within [`MESSAGE_BYTES_MAX`].
#[derive(Debug)]
pub struct Joiner {
    left: u32,
    bytes: usize,
    entries: Vec<Entry>,
}

impl Joiner {
    /// For the head `body` that announced `chunks` chunk frames and took
    /// `head_bytes` (its length prefix included). A head whose kind
    /// carries no entries, or that carries entries of its own, has no
    /// chunks.
    pub fn new<T: Chunked>(
        body: &mut T,
        chunks: u32,
        head_bytes: usize,
    ) -> Result<Joiner, FrameError> {
        if chunks > 0 && !body.entries_mut().is_some_and(|e| e.is_empty()) {
            return Err(FrameError::Malformed);
        }
        Ok(Joiner {
            left: chunks,
            bytes: head_bytes,
            entries: Vec::new(),
        })
    }

    /// Chunk frames still to come.
    pub fn left(&self) -> u32 {
        self.left
    }

    /// Takes one chunk frame's content (what follows its length prefix).
    pub fn push(&mut self, content: &[u8]) -> Result<(), FrameError> {
        if self.left == 0 {
            return Err(FrameError::Malformed);
        }
        self.bytes = self.bytes.saturating_add(LENGTH_BYTES + content.len());
        if self.bytes > MESSAGE_BYTES_MAX {
            return Err(FrameError::TooLarge {
                len: self.bytes,
                max: MESSAGE_BYTES_MAX,
            });
        }
        let entries: Vec<Entry> = decode(content)?;
        if entries.is_empty() {
            return Err(FrameError::Malformed);
        }
        self.entries.extend(entries);
        self.left -= 1;
        Ok(())
    }

    /// Puts the entries into `value`, once every chunk frame came.
    pub fn finish<T: Chunked>(self, value: &mut T) -> Result<(), FrameError> {
        if self.left > 0 {
            return Err(FrameError::Truncated);
        }
        if self.entries.is_empty() {
            return Ok(());
        }
        match value.entries_mut() {
            // A head carries no entries of its own.
            Some(slot) if slot.is_empty() => {
                *slot = self.entries;
                Ok(())
            }
            _ => Err(FrameError::Malformed),
        }
    }
}

/// Decodes a whole chunked message from the start of `bytes` (its head
/// frame and chunk frames); returns it and the bytes it took.
pub fn decode_chunked<T: DeserializeOwned + Chunked>(
    bytes: &[u8],
) -> Result<(T, usize), FrameError> {
    let (head, used) = decode_frame::<Head<T>>(bytes)?;
    let mut value = head.body;
    let more = join_chunks(&mut value, head.chunks, used, &bytes[used..])?;
    Ok((value, used + more))
}

/// Puts into `value` (a head that took `head_bytes`) the entries of the
/// `chunks` chunk frames at the start of `rest`; the bytes they took.
pub fn join_chunks<T: Chunked>(
    value: &mut T,
    chunks: u32,
    head_bytes: usize,
    rest: &[u8],
) -> Result<usize, FrameError> {
    let mut joiner = Joiner::new(value, chunks, head_bytes)?;
    let mut used = 0;
    while joiner.left() > 0 {
        let (content, len) = next_frame(&rest[used..])?;
        joiner.push(content)?;
        used += len;
    }
    joiner.finish(value)?;
    Ok(used)
}

/// The content of the frame at the start of `bytes`, and the bytes the
/// frame took (its length prefix included).
pub fn next_frame(bytes: &[u8]) -> Result<(&[u8], usize), FrameError> {
    let prefix: [u8; LENGTH_BYTES] = bytes
        .get(..LENGTH_BYTES)
        .and_then(|p| p.try_into().ok())
        .ok_or(FrameError::Truncated)?;
    let len = frame_len(prefix)?;
    let content = bytes
        .get(LENGTH_BYTES..LENGTH_BYTES + len)
        .ok_or(FrameError::Truncated)?;
    Ok((content, LENGTH_BYTES + len))
}

/// Reads a length prefix; the frame's remaining length, if allowed.
pub fn frame_len(prefix: [u8; LENGTH_BYTES]) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len > FRAME_BYTES_MAX {
        return Err(FrameError::TooLarge {
            len,
            max: FRAME_BYTES_MAX,
        });
    }
    if len < VERSION_BYTES {
        return Err(FrameError::Truncated);
    }
    Ok(len)
}

/// Decodes a frame's content (what follows the length prefix).
pub fn decode<T: DeserializeOwned>(content: &[u8]) -> Result<T, FrameError> {
    if content.len() < VERSION_BYTES {
        return Err(FrameError::Truncated);
    }
    let (version, body) = content.split_at(VERSION_BYTES);
    let theirs = u16::from_be_bytes([version[0], version[1]]);
    if theirs != WIRE_VERSION {
        return Err(FrameError::Version { theirs });
    }
    match postcard::take_from_bytes::<T>(body) {
        Ok((value, [])) => Ok(value),
        _ => Err(FrameError::Malformed),
    }
}

/// Decodes one whole frame, length prefix included, from the start of
/// `bytes`; returns the message and the bytes the frame took.
pub fn decode_frame<T: DeserializeOwned>(bytes: &[u8]) -> Result<(T, usize), FrameError> {
    let (content, used) = next_frame(bytes)?;
    Ok((decode(content)?, used))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::ids::NodeId;
    use crate::rpc::message::*;

    fn node() -> impl Strategy<Value = NodeId> {
        any::<u64>().prop_map(NodeId)
    }

    fn ping() -> impl Strategy<Value = Ping> {
        proptest::collection::vec(any::<u8>(), 0..256).prop_map(|payload| Ping { payload })
    }

    fn request() -> impl Strategy<Value = RequestEnvelope> {
        (node(), ping()).prop_map(|(from, p)| RequestEnvelope {
            from,
            request: Request::Ping(p),
        })
    }

    fn rejection() -> impl Strategy<Value = Rejection> {
        prop_oneof![
            any::<u16>().prop_map(|supported| Rejection::Version { supported }),
            any::<u32>().prop_map(|max| Rejection::TooLarge { max }),
            Just(Rejection::Malformed),
            Just(Rejection::Unsupported),
            Just(Rejection::ShuttingDown),
        ]
    }

    fn response() -> impl Strategy<Value = ResponseEnvelope> {
        prop_oneof![
            (node(), any::<u64>(), ping()).prop_map(|(id, generation, p)| Ok(Response::Pong(
                Pong {
                    id,
                    generation: crate::ids::Generation(generation),
                    payload: p.payload
                }
            ))),
            rejection().prop_map(Err),
        ]
    }

    fn message() -> impl Strategy<Value = MessageEnvelope> {
        (node(), ping()).prop_map(|(from, p)| MessageEnvelope {
            from,
            message: Message::Ping(p),
        })
    }

    fn round_trips<T>(value: &T) -> Result<(), TestCaseError>
    where
        T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
    {
        let frame = encode(value).unwrap();
        let (back, used) = decode_frame::<T>(&frame).unwrap();
        prop_assert_eq!(&back, value);
        prop_assert_eq!(used, frame.len());
        // Any truncation is detected, never misread.
        for cut in [0, 1, LENGTH_BYTES, frame.len() - 1] {
            prop_assert!(decode_frame::<T>(&frame[..cut]).is_err());
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn requests_round_trip(value in request()) { round_trips(&value)?; }

        #[test]
        fn responses_round_trip(value in response()) { round_trips(&value)?; }

        #[test]
        fn messages_round_trip(value in message()) { round_trips(&value)?; }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_frame::<RequestEnvelope>(&bytes);
            let _ = decode_frame::<ResponseEnvelope>(&bytes);
            let _ = decode_frame::<MessageEnvelope>(&bytes);
            let _ = decode::<RequestEnvelope>(&bytes);
        }

        #[test]
        fn a_valid_prefix_with_garbage_never_panics(
            value in request(),
            garbage in proptest::collection::vec(any::<u8>(), 1..64),
        ) {
            let mut frame = encode(&value).unwrap();
            let keep = frame.len().min(LENGTH_BYTES + 2 + garbage.len() / 2);
            frame.truncate(keep);
            frame.extend_from_slice(&garbage);
            let _ = decode_frame::<RequestEnvelope>(&frame);
        }
    }

    #[test]
    fn oversize_length_is_refused_before_reading_the_body() {
        let prefix = ((FRAME_BYTES_MAX + 1) as u32).to_be_bytes();
        assert_eq!(
            frame_len(prefix),
            Err(FrameError::TooLarge {
                len: FRAME_BYTES_MAX + 1,
                max: FRAME_BYTES_MAX
            })
        );
        let big = RequestEnvelope {
            from: NodeId(1),
            request: Request::Ping(Ping {
                payload: vec![0; FRAME_BYTES_MAX],
            }),
        };
        assert!(matches!(encode(&big), Err(FrameError::TooLarge { .. })));
    }

    #[test]
    fn another_version_is_named() {
        let mut frame = encode(&MessageEnvelope {
            from: NodeId(3),
            message: Message::Ping(Ping { payload: vec![] }),
        })
        .unwrap();
        let other = WIRE_VERSION + 1;
        frame[LENGTH_BYTES..LENGTH_BYTES + 2].copy_from_slice(&other.to_be_bytes());
        assert_eq!(
            decode_frame::<MessageEnvelope>(&frame),
            Err(FrameError::Version { theirs: other })
        );
    }

    #[test]
    fn trailing_bytes_are_malformed() {
        let mut frame = encode(&RequestEnvelope {
            from: NodeId(1),
            request: Request::Ping(Ping { payload: vec![1] }),
        })
        .unwrap();
        frame.push(0);
        let len = (frame.len() - LENGTH_BYTES) as u32;
        frame[..LENGTH_BYTES].copy_from_slice(&len.to_be_bytes());
        assert_eq!(
            decode_frame::<RequestEnvelope>(&frame),
            Err(FrameError::Malformed)
        );
    }

    fn lock_entry(i: usize) -> crate::locks::Entry {
        use crate::ids::{Epoch, Token};
        use crate::locks::{Entry, EntryState, Name};
        Entry {
            name: Name::lock(format!("held-lock-{i:06}")),
            token: Token((3 << 32) + i as u64),
            state: EntryState::held(30_000, NodeId(2), Some(format!("req-{i}")), 1),
            claim: None,
            written: Epoch(3),
        }
    }

    fn snapshot_answer(entries: usize) -> ResponseEnvelope {
        Ok(Response::Copy(VoterSnapshot {
            locks: (0..entries).map(lock_entry).collect(),
            ..VoterSnapshot::default()
        }))
    }

    /// The frames of a chunked message at the start of `bytes`: each
    /// frame's length (prefix included).
    fn frames(mut bytes: &[u8]) -> Vec<usize> {
        let mut lens = Vec::new();
        while !bytes.is_empty() {
            let (_, used) = next_frame(bytes).unwrap();
            lens.push(used);
            bytes = &bytes[used..];
        }
        lens
    }

    /// A table far past one frame (100,000 held locks) crosses as a head
    /// and chunk frames, none over the frame bound, and comes back whole.
    #[test]
    fn a_table_past_one_frame_crosses_in_chunks() {
        let answer = snapshot_answer(100_000);
        let bytes = encode_chunked(answer.clone()).unwrap();
        assert!(bytes.len() > 4 * FRAME_BYTES_MAX, "{} bytes", bytes.len());
        let lens = frames(&bytes);
        assert!(lens.len() > 4, "{} frames", lens.len());
        assert!(lens.iter().all(|&l| l <= LENGTH_BYTES + FRAME_BYTES_MAX));
        assert!(
            lens[1..]
                .iter()
                .all(|&l| l <= LENGTH_BYTES + VERSION_BYTES + 10 + CHUNK_BYTES)
        );
        let (back, used) = decode_chunked::<ResponseEnvelope>(&bytes).unwrap();
        assert_eq!(used, bytes.len());
        assert_eq!(back, answer);
    }

    #[test]
    fn a_message_without_entries_is_one_frame() {
        let bytes = encode_chunked(snapshot_answer(0)).unwrap();
        assert_eq!(frames(&bytes).len(), 1);
        let ping = RequestEnvelope {
            from: NodeId(1),
            request: Request::Ping(Ping { payload: vec![1] }),
        };
        let bytes = encode_chunked(ping.clone()).unwrap();
        assert_eq!(frames(&bytes).len(), 1);
        assert_eq!(
            decode_chunked::<RequestEnvelope>(&bytes).unwrap(),
            (ping, bytes.len())
        );
    }

    /// A message cut anywhere, a chunk short or one too many, a chunk
    /// with no entries, and a head that keeps entries of its own while
    /// chunks follow are refused, never misread.
    #[test]
    fn a_chunked_message_cut_or_padded_is_refused() {
        let bytes = encode_chunked(snapshot_answer(20_000)).unwrap();
        let lens = frames(&bytes);
        assert!(lens.len() >= 3);
        let mut cut = 0;
        for len in &lens[..lens.len() - 1] {
            cut += len;
            assert_eq!(
                decode_chunked::<ResponseEnvelope>(&bytes[..cut]),
                Err(FrameError::Truncated)
            );
        }
        for cut in [1, lens[0] + 3, bytes.len() - 1] {
            assert!(decode_chunked::<ResponseEnvelope>(&bytes[..cut]).is_err());
        }
        // An extra chunk the head did not announce is left over: the
        // reader of a stream would find bytes after the message.
        let mut padded = bytes.clone();
        padded.extend_from_slice(&bytes[lens[0]..lens[0] + lens[1]]);
        assert_eq!(
            decode_chunked::<ResponseEnvelope>(&padded).unwrap().1,
            bytes.len()
        );
        // A chunk of no entries.
        let mut joiner = Joiner::new(&mut snapshot_answer(0), 1, 0).unwrap();
        let empty = encode(&Vec::<crate::locks::Entry>::new()).unwrap();
        assert_eq!(
            joiner.push(&empty[LENGTH_BYTES..]),
            Err(FrameError::Malformed)
        );
        // A head with entries of its own, and a chunk after it.
        let mut head_with_entries = encode(&Head {
            chunks: 1,
            body: snapshot_answer(1),
        })
        .unwrap();
        head_with_entries.extend_from_slice(&bytes[lens[0]..lens[0] + lens[1]]);
        assert_eq!(
            decode_chunked::<ResponseEnvelope>(&head_with_entries),
            Err(FrameError::Malformed)
        );
        // Chunks announced for a kind that carries no entries are refused
        // at the head, before any is read.
        let mut ping = RequestEnvelope {
            from: NodeId(1),
            request: Request::Ping(Ping { payload: vec![] }),
        };
        assert_eq!(
            Joiner::new(&mut ping, 1, 0).map(|_| ()),
            Err(FrameError::Malformed)
        );
        // More chunks than were announced are not taken.
        let mut joiner = Joiner::new(&mut snapshot_answer(0), 0, 0).unwrap();
        assert_eq!(
            joiner.push(&bytes[lens[0] + LENGTH_BYTES..lens[0] + lens[1]]),
            Err(FrameError::Malformed)
        );
    }

    /// A receiver buffers no more than the message bound, whatever the
    /// head announces.
    #[test]
    fn a_message_past_its_bound_is_refused_at_the_chunk_that_passes_it() {
        let bytes = encode_chunked(snapshot_answer(5_000)).unwrap();
        let lens = frames(&bytes);
        let chunk = &bytes[lens[0] + LENGTH_BYTES..lens[0] + lens[1]];
        let mut joiner = Joiner::new(
            &mut snapshot_answer(0),
            u32::MAX,
            MESSAGE_BYTES_MAX - lens[1] + 1,
        )
        .unwrap();
        assert!(matches!(
            joiner.push(chunk),
            Err(FrameError::TooLarge {
                max: MESSAGE_BYTES_MAX,
                ..
            })
        ));
        let mut joiner = Joiner::new(
            &mut snapshot_answer(0),
            u32::MAX,
            MESSAGE_BYTES_MAX - lens[1],
        )
        .unwrap();
        assert_eq!(joiner.push(chunk), Ok(()));
    }
}
