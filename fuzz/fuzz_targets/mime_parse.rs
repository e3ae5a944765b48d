//! S/MIME entity parsing never panics, on any bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = smime::mime::sniff(data);
    let _ = smime::mime::parse(data);
    let _ = smime::mime::prepare_for_signing(data);
});
