//! `max_rss` (SPEC section 10): an instance whose RSS stays above the limit for two
//! checks in a row is restarted like a hung one.
//!
//! The shell runs a check every [`RSS_CHECK_EVERY`](crate::config::RSS_CHECK_EVERY),
//! and only while [`checks_needed`] (idle stays idle otherwise), reads each
//! instance's RSS (it already does for status), and feeds it to that instance's
//! [`RssWatch`].

/// Checks in a row over the limit that restart an instance.
pub const CHECKS_OVER: u32 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RssVerdict {
    /// At or below the limit (or no limit).
    Fine,
    /// Above the limit, not yet for [`CHECKS_OVER`] checks: status reason
    /// `rss above max_rss`.
    Over,
    /// Above the limit for [`CHECKS_OVER`] checks in a row: restart.
    Restart,
}

/// One instance's run of checks over the limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RssWatch {
    over: u32,
}

impl RssWatch {
    /// One check: the instance's `rss` in bytes against the pool's `max_rss`. After
    /// `Restart` the run starts again (the shell replaces the instance anyway).
    pub fn check(&mut self, rss: u64, limit: Option<u64>) -> RssVerdict {
        match limit {
            Some(l) if rss > l => {
                self.over += 1;
                if self.over >= CHECKS_OVER {
                    self.over = 0;
                    RssVerdict::Restart
                } else {
                    RssVerdict::Over
                }
            }
            _ => {
                self.over = 0;
                RssVerdict::Fine
            }
        }
    }

    /// Whether the last check was over the limit (for the status reason).
    pub fn is_over(&self) -> bool {
        self.over > 0
    }
}

/// Whether RSS checks must run: some pool sets `max_rss`.
pub fn checks_needed(limits: impl IntoIterator<Item = Option<u64>>) -> bool {
    limits.into_iter().any(|l| l.is_some())
}

/// The reason logged with the restart.
pub fn restart_reason(rss: u64, limit: u64) -> String {
    format!(
        "rss {} above max_rss {} for {CHECKS_OVER} checks in a row",
        crate::config::describe_size(rss as usize),
        crate::config::describe_size(limit as usize)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn two_checks_in_a_row_over_the_limit_restart() {
        let mut w = RssWatch::default();
        let l = Some(100 * MIB);
        assert_eq!(w.check(50 * MIB, l), RssVerdict::Fine);
        assert_eq!(w.check(150 * MIB, l), RssVerdict::Over);
        assert!(w.is_over());
        assert_eq!(w.check(150 * MIB, l), RssVerdict::Restart);
        assert!(!w.is_over());
    }

    #[test]
    fn a_dip_below_the_limit_resets_the_run() {
        let mut w = RssWatch::default();
        let l = Some(100 * MIB);
        assert_eq!(w.check(101 * MIB, l), RssVerdict::Over);
        assert_eq!(w.check(100 * MIB, l), RssVerdict::Fine);
        assert_eq!(w.check(101 * MIB, l), RssVerdict::Over);
        assert_eq!(w.check(u64::MAX, None), RssVerdict::Fine);
    }

    #[test]
    fn checks_only_while_some_pool_sets_a_limit() {
        assert!(!checks_needed([None, None]));
        assert!(checks_needed([None, Some(MIB)]));
        assert!(!checks_needed(std::iter::empty()));
    }

    #[test]
    fn reason_uses_config_sizes() {
        assert_eq!(
            restart_reason(600 * MIB, 512 * MIB),
            "rss 600MiB above max_rss 512MiB for 2 checks in a row"
        );
    }
}
