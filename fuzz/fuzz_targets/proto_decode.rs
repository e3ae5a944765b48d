//! Hostile socket bytes: the frame decoder and request/response decoding never panic, and
//! what decodes re-encodes to something that decodes the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smime_proto::{FrameDecoder, MAX_REQUEST_LEN, Request, Response};

fuzz_target!(|data: &[u8]| {
    let mut d = FrameDecoder::with_limit(MAX_REQUEST_LEN);
    if let Ok(Some(payload)) = d.feed(data) {
        if let Ok(req) = Request::decode(&payload) {
            let frame = req.encode_frame().expect("a decoded request re-encodes");
            assert_eq!(Request::decode(&frame[4..]).expect("re-decodes"), req);
        }
    }
    let _ = Response::decode(data);
});
