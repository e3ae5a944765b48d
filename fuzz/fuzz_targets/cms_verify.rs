//! `smime verify` parsing: CMS (DER/BER/PEM) and S/MIME input never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::time::{Duration, SystemTime};

fuzz_target!(|data: &[u8]| {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let _ = smime::cms::verify::verify_detached(data, Some(&b"content"[..]), None, now);
    let _ = smime::cms::verify::verify_detached::<&[u8]>(data, None, None, now);
    let _ = smime::cms::verify::encapsulated_content(data);
});
