//! Choosing an instance for a message.
//!
//! Candidates are the instances that may receive new messages (running, not draining),
//! in instance order. Round-robin and least-busy only pick instances below
//! `max_inflight`; hash and broadcast pin a message to instances regardless of their
//! load (it then waits in that instance's backlog), because moving a key to another
//! instance just because one is busy would break stickiness.

/// One instance that may receive new messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    /// The instance index (`ORCHD_INSTANCE`).
    pub index: u32,
    /// Messages written to it and not yet answered.
    pub inflight: u32,
    /// Whether it is below `max_inflight`.
    pub has_room: bool,
}

/// Round-robin: the first candidate with room at or after `cursor` (in index order,
/// wrapping); advances the cursor past it. Returns a position in `cands`.
pub fn round_robin(cands: &[Candidate], cursor: &mut u32) -> Option<usize> {
    if cands.is_empty() {
        return None;
    }
    let start = cands.iter().position(|c| c.index >= *cursor).unwrap_or(0);
    let n = cands.len();
    for k in 0..n {
        let i = (start + k) % n;
        if cands[i].has_room {
            *cursor = cands[i].index.wrapping_add(1);
            return Some(i);
        }
    }
    None
}

/// Least-busy: the candidate with room and the fewest in flight; ties go round-robin
/// from `cursor` so that an idle pool still spreads its work.
pub fn least_busy(cands: &[Candidate], cursor: &mut u32) -> Option<usize> {
    let min = cands
        .iter()
        .filter(|c| c.has_room)
        .map(|c| c.inflight)
        .min()?;
    let start = cands.iter().position(|c| c.index >= *cursor).unwrap_or(0);
    let n = cands.len();
    (0..n)
        .map(|k| (start + k) % n)
        .find(|&i| cands[i].has_room && cands[i].inflight == min)
        .inspect(|&i| *cursor = cands[i].index.wrapping_add(1))
}

/// A stable 64-bit hash of a key (FNV-1a, then a finalizer): the same in every run and
/// on every machine, so a key maps to the same instance across orchd restarts.
pub fn key_hash(key: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in key {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(h)
}

fn mix(mut z: u64) -> u64 {
    // splitmix64 finalizer
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Rendezvous (highest random weight) hashing: the instance index with the highest
/// score for this key. Adding or removing one instance moves only the keys that
/// instance wins or held (about 1/n of them). Returns a position in `indexes`.
pub fn rendezvous(key: u64, indexes: impl IntoIterator<Item = u32>) -> Option<usize> {
    indexes
        .into_iter()
        .enumerate()
        .max_by_key(|&(_, idx)| (mix(key ^ mix(u64::from(idx) + 1)), idx))
        .map(|(pos, _)| pos)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(index: u32, inflight: u32, has_room: bool) -> Candidate {
        Candidate {
            index,
            inflight,
            has_room,
        }
    }

    #[test]
    fn round_robin_cycles_and_skips_full() {
        let cands = [c(0, 0, true), c(1, 0, false), c(2, 0, true)];
        let mut cur = 0;
        let picks: Vec<_> = (0..4)
            .map(|_| round_robin(&cands, &mut cur).map(|i| cands[i].index))
            .collect();
        assert_eq!(picks, [Some(0), Some(2), Some(0), Some(2)]);
        assert_eq!(round_robin(&[c(0, 1, false)], &mut cur), None);
        assert_eq!(round_robin(&[], &mut cur), None);
    }

    #[test]
    fn round_robin_survives_gaps_in_indexes() {
        // Instance 1 is in backoff: the cursor pointing at it moves on to 2.
        let cands = [c(0, 0, true), c(2, 0, true)];
        let mut cur = 1;
        assert_eq!(round_robin(&cands, &mut cur), Some(1));
        assert_eq!(round_robin(&cands, &mut cur), Some(0));
    }

    #[test]
    fn least_busy_prefers_fewest_then_rotates() {
        let cands = [c(0, 3, true), c(1, 1, true), c(2, 1, true), c(3, 0, false)];
        let mut cur = 0;
        assert_eq!(least_busy(&cands, &mut cur), Some(1));
        assert_eq!(least_busy(&cands, &mut cur), Some(2));
        assert_eq!(least_busy(&cands, &mut cur), Some(1));
        assert_eq!(least_busy(&[c(0, 5, false)], &mut cur), None);
    }

    #[test]
    fn hash_is_stable_and_spreads() {
        assert_eq!(key_hash(b"user42"), key_hash(b"user42"));
        let mut counts = [0u32; 4];
        for i in 0..4000 {
            let k = key_hash(format!("key{i}").as_bytes());
            counts[rendezvous(k, 0..4).unwrap()] += 1;
        }
        for n in counts {
            assert!((800..1200).contains(&n), "{counts:?}");
        }
    }

    #[test]
    fn rendezvous_moves_few_keys_on_scale_change() {
        let keys: Vec<u64> = (0..4000)
            .map(|i| key_hash(format!("k{i}").as_bytes()))
            .collect();
        let before: Vec<u32> = keys
            .iter()
            .map(|&k| rendezvous(k, 0..4).unwrap() as u32)
            .collect();
        let after: Vec<u32> = keys
            .iter()
            .map(|&k| rendezvous(k, 0..5).unwrap() as u32)
            .collect();
        let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
        // Ideal is 1/5 of the keys; all moved keys go to the new instance.
        assert!(moved < 1000, "{moved}");
        assert!(before.iter().zip(&after).all(|(a, b)| a == b || *b == 4));
        assert_eq!(rendezvous(1, std::iter::empty()), None);
    }
}
