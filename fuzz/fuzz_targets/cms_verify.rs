//! `smime verify` parsing: CMS (DER/BER/PEM) and S/MIME input never panic, and an opaque
//! signature taken apart as a stream (`cms::detach`) verifies like the original.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::time::{Duration, SystemTime};

fuzz_target!(|data: &[u8]| {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let _ = smime::cms::verify::verify_detached(data, Some(&b"content"[..]), None, now);
    let whole = smime::cms::verify::verify_detached::<&[u8]>(data, None, None, now);
    let _ = smime::cms::verify::encapsulated_content(data);
    let mut content = Vec::new();
    if let Ok(d) = smime::cms::detach::detach(data, &mut content) {
        let split = if d.had_content {
            smime::cms::verify::verify_detached(&d.cms, Some(content.as_slice()), None, now)
        } else {
            smime::cms::verify::verify_detached::<&[u8]>(&d.cms, None, None, now)
        };
        // Taking the content out must not turn a bad signature into a good one.
        assert!(whole.is_ok() || split.is_err() || !d.had_content);
    }
});
