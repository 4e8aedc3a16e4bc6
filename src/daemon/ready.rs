//! Telling the world orchd is ready: the ready line and systemd's `sd_notify`.

/// What the ready line counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct ReadyCounts {
    pub pools: usize,
    pub ready: usize,
    pub failed: usize,
    pub completed: usize,
}

/// `ready: 3 pool(s), 9 instance(s) ready, 1 failed`: the failed count always (a
/// fixed shape for whoever parses it), one-shot jobs done only when there are some.
impl std::fmt::Display for ReadyCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ready: {} pool(s), {} instance(s) ready, {} failed",
            self.pools, self.ready, self.failed
        )?;
        if self.completed > 0 {
            write!(f, ", {} completed", self.completed)?;
        }
        Ok(())
    }
}

/// Tell systemd about our state when it asked (`NOTIFY_SOCKET`); otherwise a no-op.
pub fn notify_systemd(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sock = match std::os::unix::net::UnixDatagram::unbound() {
        Ok(s) => s,
        Err(e) => {
            log::debug!("sd_notify: {e}");
            return;
        }
    };
    let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
    let res = if let Some(name) = bytes.strip_prefix(b"@") {
        #[cfg(target_os = "linux")]
        {
            use std::os::linux::net::SocketAddrExt;
            std::os::unix::net::SocketAddr::from_abstract_name(name)
                .and_then(|addr| sock.send_to_addr(state.as_bytes(), &addr))
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = name;
            Err(std::io::Error::from(std::io::ErrorKind::Unsupported))
        }
    } else {
        sock.send_to(state.as_bytes(), &path)
    };
    if let Err(e) = res {
        log::warn!("sd_notify {state}: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::ReadyCounts;

    #[test]
    fn ready_line_counts_ready_and_failed() {
        let c = ReadyCounts {
            pools: 3,
            ready: 9,
            failed: 1,
            completed: 0,
        };
        assert_eq!(
            c.to_string(),
            "ready: 3 pool(s), 9 instance(s) ready, 1 failed"
        );
        let c = ReadyCounts {
            failed: 0,
            completed: 2,
            ..c
        };
        assert_eq!(
            c.to_string(),
            "ready: 3 pool(s), 9 instance(s) ready, 0 failed, 2 completed"
        );
    }
}
