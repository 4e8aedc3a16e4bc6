//! Framing never panics, never yields a line over the limit or containing `\n`, and
//! yields the same lines however the input is split into reads.
#![no_main]

use libfuzzer_sys::fuzz_target;
use orchd::framing::{Frame, LineBuf};

fn frames(chunks: &[&[u8]], max: usize) -> Vec<Option<Vec<u8>>> {
    let mut lb = LineBuf::new(max);
    let mut out = Vec::new();
    for c in chunks {
        lb.extend(c);
        while let Some(f) = lb.next_frame() {
            out.push(match f {
                Frame::Line(l) => {
                    assert!(l.len() <= max && !l.contains(&b'\n'));
                    Some(l.to_vec())
                }
                Frame::TooLong => None,
            });
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let max = 1 + data[0] as usize % 64;
    let split = data[1] as usize % data.len().max(1);
    let body = &data[2..];
    let split = split.min(body.len());
    let whole = frames(&[body], max);
    let parts = frames(&[&body[..split], &body[split..]], max);
    let bytes: Vec<&[u8]> = body.chunks(1).collect();
    let single = frames(&bytes, max);
    // Splits may only differ in *when* an over-long line is noticed, not in the
    // complete lines delivered.
    let lines = |v: &[Option<Vec<u8>>]| v.iter().flatten().cloned().collect::<Vec<_>>();
    assert_eq!(lines(&whole), lines(&parts));
    assert_eq!(lines(&whole), lines(&single));
});
