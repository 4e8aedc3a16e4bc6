//! Listener addresses: parsing a route's `from` (and a unix socket's `mode`), and
//! telling when two addresses written differently are one socket or overlap on one
//! port, so that `--check` refuses what could never be bound.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Component, Path, PathBuf};

use super::model::Source;
use super::source::quote;
use super::validate::resolve;

/// `p` with `..` taken lexically (`/a/b/../c` is `/a/c`); only to compare paths.
fn lexical(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir => {
                if matches!(out.components().next_back(), Some(Component::Normal(_))) {
                    out.pop();
                } else if !out.has_root() {
                    out.push(c);
                }
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// The file a unix socket path names, to tell that two paths written differently
/// (`s.sock`, `sub/../s.sock`, a symlinked directory) are one socket: its directory
/// resolved by the file system when it exists, else `..` taken lexically.
pub(crate) fn socket_identity(p: &Path) -> PathBuf {
    if let (Some(dir), Some(name)) = (p.parent(), p.file_name()) {
        if let Ok(real) = std::fs::canonicalize(dir) {
            return real.join(name);
        }
    }
    lexical(p)
}

/// Whether listening on `a` and on `b` (two different addresses) conflicts: on the
/// same port, a wildcard address takes every address of its family, and `[::]` also
/// every IPv4 address (Linux's default dual-stack sockets, net.ipv6.bindv6only = 0,
/// which orchd does not change); an IPv4-mapped IPv6 address is its IPv4 address.
/// Port 0 never conflicts (each gets a port of its own).
pub(crate) fn tcp_overlap(a: SocketAddr, b: SocketAddr) -> bool {
    if a.port() != b.port() || a.port() == 0 || a == b {
        return false;
    }
    match (a.ip().to_canonical(), b.ip().to_canonical()) {
        (x, y) if x == y => true,
        (IpAddr::V4(x), IpAddr::V4(y)) => x.is_unspecified() || y.is_unspecified(),
        (IpAddr::V6(x), IpAddr::V6(y)) => x.is_unspecified() || y.is_unspecified(),
        (IpAddr::V6(x), IpAddr::V4(_)) | (IpAddr::V4(_), IpAddr::V6(x)) => x.is_unspecified(),
    }
}

/// Parses `from`. The error is an explanation to append to the generic message.
pub(crate) fn parse_source(s: &str, dir: &Path) -> Result<Source, String> {
    if s == "stdin" {
        return Ok(Source::Stdin);
    }
    if let Some(p) = s.strip_prefix("unix:") {
        if p.is_empty() {
            return Err("the path after \"unix:\" is empty".into());
        }
        if p.contains('\0') {
            return Err("the path contains a NUL character".into());
        }
        return Ok(Source::Unix(resolve(dir, p)));
    }
    let Some(rest) = s.strip_prefix("tcp://") else {
        return Err(String::new());
    };
    let (ip, port) = if let Some(r) = rest.strip_prefix('[') {
        let Some((host, after)) = r.split_once(']') else {
            return Err("missing \"]\" after the IPv6 address".into());
        };
        let Some(port) = after.strip_prefix(':') else {
            return Err("missing \":PORT\" after the address".into());
        };
        let Ok(ip) = host.parse::<Ipv6Addr>() else {
            return Err(format!("{} is not an IPv6 address", quote(host)));
        };
        (IpAddr::V6(ip), port)
    } else {
        let Some((host, port)) = rest.rsplit_once(':') else {
            return Err("missing \":PORT\" after the host".into());
        };
        let ip = if host.eq_ignore_ascii_case("localhost") {
            Ipv4Addr::LOCALHOST
        } else if let Ok(ip) = host.parse::<Ipv4Addr>() {
            ip
        } else if host.contains(':') {
            return Err("write IPv6 addresses in brackets, as in tcp://[::1]:7070".into());
        } else {
            return Err(format!(
                "{} is not an IPv4 address, [IPv6 address] or localhost (host names are not resolved)",
                quote(host)
            ));
        };
        (IpAddr::V4(ip), port)
    };
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "the port {} is not a number from 0 to 65535",
            quote(port)
        ));
    }
    match port.parse::<u16>() {
        Ok(port) => Ok(Source::Tcp(SocketAddr::new(ip, port))),
        Err(_) => Err(format!("the port {port} is not from 0 to 65535")),
    }
}

/// An octal mode string such as "0660" or "660" (also "0o660"), at most 0o777.
pub(crate) fn parse_mode(s: &str) -> Option<u32> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    if digits.is_empty() || digits.len() > 4 || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b))
    {
        return None;
    }
    u32::from_str_radix(digits, 8).ok().filter(|m| *m <= 0o777)
}
