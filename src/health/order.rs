//! Start and stop order from `depends_on` (SPEC section 10), on pool indexes.
//!
//! `deps[i]` lists the pools pool `i` depends on. Pools start in waves: a pool is in
//! the first wave after every pool it names; each wave is in file (index) order.
//! Stopping goes the other way round: the last wave stops first. When and whether a
//! dependency is *met* at run time (ready or completed) is [`gate`]'s business.

/// The start waves of the pools, or a dependency cycle (see [`cycles`]).
///
/// Every index of `deps` appears exactly once; an out-of-range dependency is ignored
/// (configs are validated before this runs).
pub fn start_waves(deps: &[Vec<usize>]) -> Result<Vec<Vec<usize>>, Vec<usize>> {
    let (order, remaining) = peel(deps);
    if remaining.iter().any(|&r| r) {
        return Err(cycles(deps).into_iter().next().unwrap_or_default());
    }
    let n = deps.len();
    let mut wave_of = vec![0usize; n];
    for &i in &order {
        wave_of[i] = deps[i]
            .iter()
            .filter(|&&d| d < n)
            .map(|&d| wave_of[d] + 1)
            .max()
            .unwrap_or(0);
    }
    let count = wave_of.iter().max().map_or(0, |&m| m + 1);
    let mut waves = vec![Vec::new(); count];
    for (i, &w) in wave_of.iter().enumerate() {
        waves[w].push(i);
    }
    Ok(waves)
}

/// Kahn's algorithm: the pools in an order where each comes after its dependencies,
/// and which pools could not be placed (those on, or waiting on, a cycle).
fn peel(deps: &[Vec<usize>]) -> (Vec<usize>, Vec<bool>) {
    let n = deps.len();
    let mut remaining = vec![true; n];
    let mut waiting_on: Vec<usize> = deps
        .iter()
        .map(|d| d.iter().filter(|&&x| x < n).count())
        .collect();
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, d) in deps.iter().enumerate() {
        for &x in d.iter().filter(|&&x| x < n) {
            dependents[x].push(i);
        }
    }
    let mut order = Vec::with_capacity(n);
    let mut free: Vec<usize> = (0..n).filter(|&i| waiting_on[i] == 0).collect();
    while let Some(i) = free.pop() {
        remaining[i] = false;
        order.push(i);
        for &j in &dependents[i] {
            waiting_on[j] -= 1;
            if waiting_on[j] == 0 {
                free.push(j);
            }
        }
    }
    (order, remaining)
}

/// The stop waves: the start waves in reverse (a pool stops before the pools it
/// depends on).
pub fn stop_waves(deps: &[Vec<usize>]) -> Result<Vec<Vec<usize>>, Vec<usize>> {
    let mut waves = start_waves(deps)?;
    waves.reverse();
    Ok(waves)
}

/// Dependency cycles, each as the pools along it (`[a, b]` for a → b → a; `[a]` for a
/// pool naming itself), rotated to start at its lowest index; every pool on a cycle
/// is named by at most one. Sorted by first pool. Linear in the size of the graph.
pub fn cycles(deps: &[Vec<usize>]) -> Vec<Vec<usize>> {
    let n = deps.len();
    // Peel off every pool that can start: what remains each still waits on another
    // remaining pool, so following any remaining dependency must run into a cycle.
    let (_, remaining) = peel(deps);

    // 0 = not walked, 1 = on the current walk, 2 = walked before.
    let mut mark = vec![0u8; n];
    let mut found = Vec::new();
    for start in 0..n {
        if !remaining[start] || mark[start] != 0 {
            continue;
        }
        let mut path = Vec::new();
        let mut at = start;
        while mark[at] == 0 {
            mark[at] = 1;
            path.push(at);
            match deps[at].iter().copied().find(|&x| x < n && remaining[x]) {
                Some(next) => at = next,
                None => break, // cannot happen for a remaining pool
            }
        }
        if mark[at] == 1 {
            if let Some(pos) = path.iter().position(|&p| p == at) {
                let mut cycle = path[pos..].to_vec();
                if let Some(min_pos) = cycle.iter().enumerate().min_by_key(|(_, &p)| p) {
                    let k = min_pos.0;
                    cycle.rotate_left(k);
                }
                found.push(cycle);
            }
        }
        for p in path {
            mark[p] = 2;
        }
    }
    found.sort();
    found
}

/// What a dependency pool is, for the pools waiting on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DepState {
    /// Every instance not held is ready (a pool of `count = 0` is ready).
    Ready,
    /// A `restart = "never"` pool whose instances all exited 0 (a migration).
    Completed,
    /// Starting, or some instance not yet ready.
    Pending,
    /// Some instance is `failed` (or exited non-zero with `restart = "never"`).
    Failed,
}

impl DepState {
    /// The state of a pool from counts over its instances that are not held:
    /// `total` of them, `ready`, `exited_ok` (exited 0 and not restarted), `failed`.
    pub fn of(total: usize, ready: usize, exited_ok: usize, failed: usize) -> DepState {
        debug_assert!(ready + exited_ok + failed <= total);
        if failed > 0 {
            DepState::Failed
        } else if total > 0 && exited_ok == total {
            DepState::Completed
        } else if ready == total {
            DepState::Ready
        } else {
            DepState::Pending
        }
    }

    pub fn is_met(self) -> bool {
        matches!(self, DepState::Ready | DepState::Completed)
    }

    /// The state of a pool from what each of its instances not held is.
    pub fn of_members(members: impl IntoIterator<Item = Member>) -> DepState {
        let (mut total, mut ready, mut ok, mut failed) = (0, 0, 0, 0);
        for m in members {
            total += 1;
            match m {
                Member::Ready => ready += 1,
                Member::Completed => ok += 1,
                Member::Failed => failed += 1,
                Member::Pending => {}
            }
        }
        DepState::of(total, ready, ok, failed)
    }
}

/// What one instance (not held) of a dependency pool is, for [`DepState::of_members`]
/// (see `Lifecycle::as_dependency`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Member {
    Ready,
    /// Exited 0 and not restarted (`restart = "never"`).
    Completed,
    /// `failed`, or exited non-zero (or could not start) with `restart = "never"`.
    Failed,
    /// Not yet any of these.
    Pending,
}

/// Whether a pool may start, given the state of each pool it depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate<'a> {
    Open,
    /// Waiting for this pool (the first unmet one): status reason `waiting for NAME`.
    Waiting(&'a str),
    /// This dependency is failed: status reason `waiting for NAME (failed)`.
    Blocked(&'a str),
}

/// The gate of a pool: blocked by the first failed dependency, else waiting on the
/// first one not met, else open.
pub fn gate<'a>(deps: impl IntoIterator<Item = (&'a str, DepState)>) -> Gate<'a> {
    let mut waiting = None;
    for (name, state) in deps {
        match state {
            DepState::Failed => return Gate::Blocked(name),
            s if !s.is_met() && waiting.is_none() => waiting = Some(name),
            _ => {}
        }
    }
    waiting.map_or(Gate::Open, Gate::Waiting)
}

impl Gate<'_> {
    /// The reason `status` shows beside the waiting pool's instances.
    pub fn reason(&self) -> Option<String> {
        match self {
            Gate::Open => None,
            Gate::Waiting(d) => Some(format!("waiting for {d}")),
            Gate::Blocked(d) => Some(format!("waiting for {d} (failed)")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn independent_pools_start_in_one_wave_in_file_order() {
        assert_eq!(
            start_waves(&[vec![], vec![], vec![]]),
            Ok(vec![vec![0, 1, 2]])
        );
        assert_eq!(start_waves(&[]), Ok(vec![]));
    }

    #[test]
    fn a_chain_starts_one_by_one_and_stops_the_other_way() {
        // 0 depends on 1, 1 on 2.
        let deps = [vec![1], vec![2], vec![]];
        assert_eq!(start_waves(&deps), Ok(vec![vec![2], vec![1], vec![0]]));
        assert_eq!(stop_waves(&deps), Ok(vec![vec![0], vec![1], vec![2]]));
    }

    #[test]
    fn a_diamond_makes_three_waves() {
        // app(0) -> api(1), worker(2); api, worker -> db(3)
        let deps = [vec![1, 2], vec![3], vec![3], vec![]];
        assert_eq!(start_waves(&deps), Ok(vec![vec![3], vec![1, 2], vec![0]]));
    }

    #[test]
    fn cycles_are_found_and_named_from_their_first_pool() {
        // 0 -> 1 -> 2 -> 1 ; 3 -> 3 ; 4 -> 0 (depends on a cycle, is not on one)
        let deps = [vec![1], vec![2], vec![1], vec![3], vec![0]];
        assert_eq!(cycles(&deps), vec![vec![1, 2], vec![3]]);
        let err = start_waves(&deps).unwrap_err();
        assert_eq!(err, vec![1, 2]);
        assert!(cycles(&[vec![1], vec![]]).is_empty());
    }

    #[test]
    fn a_long_cycle_is_rotated_to_its_lowest_pool() {
        let deps = [vec![], vec![], vec![4], vec![2], vec![3]];
        assert_eq!(cycles(&deps), vec![vec![2, 4, 3]]);
    }

    #[test]
    fn a_long_chain_is_linear_and_does_not_recurse() {
        let n = 100_000;
        let deps: Vec<Vec<usize>> = (0..n)
            .map(|i| if i + 1 < n { vec![i + 1] } else { vec![] })
            .collect();
        assert!(cycles(&deps).is_empty());
        assert_eq!(start_waves(&deps).map(|w| w.len()), Ok(n));
        let mut ring = deps.clone();
        ring[n - 1] = vec![0];
        assert_eq!(cycles(&ring)[0].len(), n);
    }

    /// Random small graphs: waves respect every dependency, and a reported cycle is
    /// made of real edges.
    #[test]
    fn random_graphs_give_valid_waves_or_real_cycles() {
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for _ in 0..2000 {
            let n = 1 + next(8) as usize;
            let deps: Vec<Vec<usize>> = (0..n)
                .map(|_| (0..next(3)).map(|_| next(n as u64) as usize).collect())
                .collect();
            match start_waves(&deps) {
                Ok(waves) => {
                    let mut wave_of = vec![usize::MAX; n];
                    for (w, pools) in waves.iter().enumerate() {
                        for &p in pools {
                            assert_eq!(wave_of[p], usize::MAX, "{deps:?}");
                            wave_of[p] = w;
                        }
                    }
                    for (i, d) in deps.iter().enumerate() {
                        for &x in d {
                            assert!(wave_of[x] < wave_of[i], "{deps:?} {waves:?}");
                        }
                    }
                    assert!(cycles(&deps).is_empty());
                }
                Err(cycle) => {
                    assert!(!cycle.is_empty(), "{deps:?}");
                    for (k, &p) in cycle.iter().enumerate() {
                        let to = cycle[(k + 1) % cycle.len()];
                        assert!(deps[p].contains(&to), "{deps:?} {cycle:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn dep_state_from_counts() {
        assert_eq!(DepState::of(0, 0, 0, 0), DepState::Ready);
        assert_eq!(DepState::of(3, 3, 0, 0), DepState::Ready);
        assert_eq!(DepState::of(3, 2, 0, 0), DepState::Pending);
        assert_eq!(DepState::of(2, 0, 2, 0), DepState::Completed);
        assert_eq!(DepState::of(2, 0, 1, 1), DepState::Failed);
    }

    #[test]
    fn dep_state_from_members() {
        use Member::*;
        assert_eq!(DepState::of_members([]), DepState::Ready);
        assert_eq!(DepState::of_members([Ready, Ready]), DepState::Ready);
        assert_eq!(DepState::of_members([Ready, Pending]), DepState::Pending);
        assert_eq!(
            DepState::of_members([Completed, Completed]),
            DepState::Completed
        );
        assert_eq!(DepState::of_members([Completed, Failed]), DepState::Failed);
    }

    #[test]
    fn gate_names_the_first_failed_then_the_first_waiting() {
        use DepState::*;
        assert_eq!(gate([("a", Ready), ("b", Completed)]), Gate::Open);
        let g = gate([("a", Pending), ("b", Failed)]);
        assert_eq!(g, Gate::Blocked("b"));
        assert_eq!(g.reason().as_deref(), Some("waiting for b (failed)"));
        let g = gate([("a", Ready), ("b", Pending), ("c", Pending)]);
        assert_eq!(g.reason().as_deref(), Some("waiting for b"));
    }
}
