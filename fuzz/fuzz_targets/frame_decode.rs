//! The tunnel frame decoder on arbitrary bytes, fed in arbitrary pieces: never panics, and every
//! frame it accepts encodes and decodes back to itself.
#![no_main]

use burrow_protocol::{Frame, TunnelCodec};
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::{Decoder, Encoder};

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let cut = usize::from(split).min(rest.len());
    let mut codec = TunnelCodec::default();
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for piece in [&rest[..cut], &rest[cut..]] {
        buf.extend_from_slice(piece);
        while let Ok(Some(frame)) = codec.decode(&mut buf) {
            frames.push(frame);
        }
    }
    let _ = codec.decode_eof(&mut buf);
    for frame in frames {
        roundtrip(frame);
    }
});

fn roundtrip(frame: Frame) {
    let mut codec = TunnelCodec::default();
    let mut out = BytesMut::new();
    let expected = format!("{frame:?}");
    if codec.encode(frame, &mut out).is_err() {
        return;
    }
    let again = codec.decode(&mut out).expect("re-decodes").expect("a whole frame");
    assert_eq!(format!("{again:?}"), expected);
}
