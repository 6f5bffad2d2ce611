//! Arbitrary bytes through the RPC frame decoder, as every message type a
//! peer can send. It must never panic, and whatever decodes must survive
//! an encode and decode unchanged.
#![no_main]

use coordmesh::rpc::codec::{decode_frame, encode};
use coordmesh::rpc::message::{MessageEnvelope, RequestEnvelope, ResponseEnvelope};
use libfuzzer_sys::fuzz_target;

fn check<T>(data: &[u8])
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    if let Ok((value, used)) = decode_frame::<T>(data) {
        assert!(used <= data.len());
        let frame = encode(&value).expect("a decoded message encodes");
        let (again, _) = decode_frame::<T>(&frame).expect("an encoded message decodes");
        assert_eq!(again, value);
    }
}

fuzz_target!(|data: &[u8]| {
    check::<RequestEnvelope>(data);
    check::<ResponseEnvelope>(data);
    check::<MessageEnvelope>(data);
});
