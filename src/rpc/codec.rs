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

use serde::Serialize;
use serde::de::DeserializeOwned;

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
pub const WIRE_VERSION: u16 = 7;
/// Largest frame (after the length prefix) a node sends or accepts.
pub const FRAME_BYTES_MAX: usize = 1 << 20;
// A prune round's tombstones, and the forget that names them, fit a frame.
const _: () = assert!(4 * crate::locks::table::PRUNE_BYTES_MAX <= FRAME_BYTES_MAX);
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
    let prefix: [u8; LENGTH_BYTES] = bytes
        .get(..LENGTH_BYTES)
        .and_then(|p| p.try_into().ok())
        .ok_or(FrameError::Truncated)?;
    let len = frame_len(prefix)?;
    let content = bytes
        .get(LENGTH_BYTES..LENGTH_BYTES + len)
        .ok_or(FrameError::Truncated)?;
    Ok((decode(content)?, LENGTH_BYTES + len))
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
}
