//! Config parsing never panics, and every error it reports has a position inside the
//! file (or none, for whole-file problems).
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(errors) = orchd::config::parse_str(Path::new("/tmp/fuzz.toml"), text) {
        let lines = text.lines().count().max(1) + 1;
        for e in errors.iter() {
            assert!(e.line <= lines, "{e}");
        }
    }
});
