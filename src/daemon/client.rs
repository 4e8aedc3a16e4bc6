//! The client side of the control socket: `orchd --status` and `orchd --plan`.
use std::path::Path;

pub fn status(_config: &Path, _json: bool) -> u8 {
    eprintln!("orchd: --status is not available yet");
    1
}

pub fn plan(_config: &Path) -> u8 {
    eprintln!("orchd: --plan is not available yet");
    1
}
