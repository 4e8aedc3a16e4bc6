//! A bounded HTTP/1.x request reader for `GET /metrics`, without I/O.
//!
//! The shell accepts a connection on the `metrics` address, feeds what it reads to the
//! connection's [`RequestReader`], and on [`Parse::Request`] writes
//! [`response`]`(…render…)`, or on [`Parse::Error`] writes [`error_response`], then
//! closes the connection once the output is flushed (every response says
//! `Connection: close`: no keep-alive, no pipelining to track). The reader never holds
//! more than [`MAX_REQUEST_BYTES`], whatever the client sends; a client that sends
//! too slowly is the shell's to cut off after [`REQUEST_TIMEOUT`], and at most
//! [`MAX_CONNECTIONS`] metrics connections are open at once.

use std::time::Duration;

/// The largest request head (request line and headers) accepted.
pub const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// How long a client may take to send its request head.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Metrics connections open at once; past it the listener stops accepting.
pub const MAX_CONNECTIONS: usize = 16;
/// The only path served.
pub const PATH: &str = "/metrics";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    /// As GET, without the body.
    Head,
}

/// A request for [`PATH`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub method: Method,
}

/// Why a request is refused; each has its status line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpError {
    /// Malformed request line or header.
    BadRequest,
    /// Another path than [`PATH`].
    NotFound,
    /// Another method than GET or HEAD.
    MethodNotAllowed,
    /// A request head over [`MAX_REQUEST_BYTES`].
    TooLarge,
    /// Not HTTP/1.0 or HTTP/1.1.
    VersionNotSupported,
}

impl HttpError {
    pub fn status(self) -> &'static str {
        match self {
            HttpError::BadRequest => "400 Bad Request",
            HttpError::NotFound => "404 Not Found",
            HttpError::MethodNotAllowed => "405 Method Not Allowed",
            HttpError::TooLarge => "431 Request Header Fields Too Large",
            HttpError::VersionNotSupported => "505 HTTP Version Not Supported",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parse {
    /// The request head is not complete yet: read more.
    NeedMore,
    Request(Request),
    Error(HttpError),
}

/// The request head of one connection, as it arrives.
#[derive(Debug, Default)]
pub struct RequestReader {
    buf: Vec<u8>,
    /// Bytes of `buf` already searched for the end of the head.
    scanned: usize,
    done: Option<Parse>,
}

impl RequestReader {
    pub fn new() -> RequestReader {
        RequestReader::default()
    }

    /// Bytes held (at most [`MAX_REQUEST_BYTES`]).
    pub fn held(&self) -> usize {
        self.buf.len()
    }

    /// Feeds bytes read from the connection. Once a result other than `NeedMore` is
    /// returned, later calls return it again and hold nothing more (a body or a
    /// second request after the head is ignored: the connection is closed after the
    /// response).
    pub fn feed(&mut self, data: &[u8]) -> Parse {
        if let Some(done) = self.done {
            return done;
        }
        let room = MAX_REQUEST_BYTES - self.buf.len();
        self.buf.extend_from_slice(&data[..data.len().min(room)]);
        // The head ends at the first empty line ("\r\n\r\n", or bare "\n\n").
        let from = self.scanned.saturating_sub(3);
        let end = head_end(&self.buf[from..]).map(|e| from + e);
        self.scanned = self.buf.len();
        let result = match end {
            Some(end) => parse_head(&self.buf[..end]),
            None if data.len() > room || self.buf.len() >= MAX_REQUEST_BYTES => {
                Parse::Error(HttpError::TooLarge)
            }
            None => Parse::NeedMore,
        };
        if result != Parse::NeedMore {
            self.done = Some(result);
            self.buf = Vec::new();
        }
        result
    }
}

/// The length of the head (up to and including its terminating empty line).
fn head_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    while let Some(nl) = memchr::memchr(b'\n', &buf[i..]) {
        let at = i + nl;
        let rest = &buf[at + 1..];
        if rest.starts_with(b"\n") {
            return Some(at + 2);
        }
        if rest.starts_with(b"\r\n") {
            return Some(at + 3);
        }
        i = at + 1;
    }
    None
}

fn parse_head(head: &[u8]) -> Parse {
    let Ok(text) = std::str::from_utf8(head) else {
        return Parse::Error(HttpError::BadRequest);
    };
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Parse::Error(HttpError::BadRequest);
    };
    if !version.starts_with("HTTP/") {
        return Parse::Error(HttpError::BadRequest);
    }
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Parse::Error(HttpError::VersionNotSupported);
    }
    for line in lines.filter(|l| !l.is_empty()) {
        let Some((name, _)) = line.split_once(':') else {
            return Parse::Error(HttpError::BadRequest);
        };
        if name.is_empty() || name.contains([' ', '\t']) {
            return Parse::Error(HttpError::BadRequest);
        }
    }
    let method = match method {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        m if !m.is_empty() && m.bytes().all(|b| b.is_ascii_uppercase()) => {
            return Parse::Error(HttpError::MethodNotAllowed)
        }
        _ => return Parse::Error(HttpError::BadRequest),
    };
    let path = target.split(['?', '#']).next().unwrap_or_default();
    if path != PATH {
        return Parse::Error(HttpError::NotFound);
    }
    Parse::Request(Request { method })
}

/// A `200 OK` response with `body` (left out for HEAD, its length still given).
pub fn response(request: Request, content_type: &str, body: &str) -> Vec<u8> {
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let mut out = Vec::with_capacity(head.len() + body.len());
    out.extend_from_slice(head.as_bytes());
    if request.method == Method::Get {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

/// The response to a refused request: its status, a one-line text body.
pub fn error_response(e: HttpError) -> Vec<u8> {
    let body = format!("{}\n", e.status());
    let allow = if e == HttpError::MethodNotAllowed {
        "Allow: GET, HEAD\r\n"
    } else {
        ""
    };
    format!(
        "HTTP/1.1 {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n{allow}Connection: close\r\n\r\n{body}",
        e.status(),
        body.len()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(bytes: &[u8]) -> Parse {
        RequestReader::new().feed(bytes)
    }

    const GET: Parse = Parse::Request(Request {
        method: Method::Get,
    });

    #[test]
    fn a_plain_scrape() {
        let req = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:9464\r\nUser-Agent: Prometheus/2.53\r\nAccept: text/plain\r\n\r\n";
        assert_eq!(parse(req), GET);
        assert_eq!(parse(b"GET /metrics?x=1 HTTP/1.0\n\n"), GET);
        assert_eq!(
            parse(b"HEAD /metrics HTTP/1.1\r\n\r\n"),
            Parse::Request(Request {
                method: Method::Head
            })
        );
    }

    #[test]
    fn byte_by_byte_needs_more_until_the_empty_line() {
        let req = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
        let mut r = RequestReader::new();
        for (i, b) in req.iter().enumerate() {
            let p = r.feed(std::slice::from_ref(b));
            if i + 1 < req.len() {
                assert_eq!(p, Parse::NeedMore, "at byte {i}");
            } else {
                assert_eq!(p, GET);
            }
        }
        // Done: more bytes change nothing and are not held.
        assert_eq!(r.feed(b"GET /other HTTP/1.1\r\n\r\n"), GET);
        assert_eq!(r.held(), 0);
    }

    #[test]
    fn refusals() {
        use HttpError::*;
        let cases: &[(&[u8], HttpError)] = &[
            (b"GET / HTTP/1.1\r\n\r\n", NotFound),
            (b"GET /metrics/x HTTP/1.1\r\n\r\n", NotFound),
            (b"POST /metrics HTTP/1.1\r\n\r\n", MethodNotAllowed),
            (b"GET /metrics HTTP/2.0\r\n\r\n", VersionNotSupported),
            (b"GET /metrics\r\n\r\n", BadRequest),
            (b"GET  /metrics HTTP/1.1\r\n\r\n", BadRequest),
            (b"GET /metrics FTP/1.1\r\n\r\n", BadRequest),
            (b"GET /metrics HTTP/1.1\r\nno colon\r\n\r\n", BadRequest),
            (b"GET /metrics HTTP/1.1\r\nBad Name: x\r\n\r\n", BadRequest),
            (b"\xff\xfe /metrics HTTP/1.1\r\n\r\n", BadRequest),
            (b"\r\n\r\n", BadRequest),
        ];
        for (req, want) in cases {
            assert_eq!(
                parse(req),
                Parse::Error(*want),
                "{:?}",
                String::from_utf8_lossy(req)
            );
        }
    }

    #[test]
    fn an_endless_header_is_cut_off_at_the_limit() {
        let mut r = RequestReader::new();
        assert_eq!(
            r.feed(b"GET /metrics HTTP/1.1\r\nX-Junk: "),
            Parse::NeedMore
        );
        let chunk = [b'a'; 1000];
        let mut result = Parse::NeedMore;
        for _ in 0..100 {
            result = r.feed(&chunk);
            assert!(r.held() <= MAX_REQUEST_BYTES);
            if result != Parse::NeedMore {
                break;
            }
        }
        assert_eq!(result, Parse::Error(HttpError::TooLarge));
        assert_eq!(r.held(), 0);
        // One huge read is refused at once too.
        assert_eq!(
            parse(&vec![b'a'; MAX_REQUEST_BYTES + 1]),
            Parse::Error(HttpError::TooLarge)
        );
    }

    #[test]
    fn a_head_of_exactly_the_limit_is_accepted() {
        let start = b"GET /metrics HTTP/1.1\r\nX: ";
        let pad = MAX_REQUEST_BYTES - start.len() - 4;
        let mut req = start.to_vec();
        req.extend(std::iter::repeat_n(b'a', pad));
        req.extend_from_slice(b"\r\n\r\n");
        assert_eq!(req.len(), MAX_REQUEST_BYTES);
        assert_eq!(parse(&req), GET);
    }

    #[test]
    fn the_terminator_split_over_reads_is_found() {
        let mut r = RequestReader::new();
        assert_eq!(r.feed(b"GET /metrics HTTP/1.1\r"), Parse::NeedMore);
        assert_eq!(r.feed(b"\n\r"), Parse::NeedMore);
        assert_eq!(r.feed(b"\n"), GET);
    }

    #[test]
    fn responses() {
        let get = Request {
            method: Method::Get,
        };
        let head = Request {
            method: Method::Head,
        };
        let r = String::from_utf8(response(get, "text/plain", "a 1\n")).unwrap();
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(r.contains("Content-Length: 4\r\n") && r.contains("Connection: close\r\n"));
        assert!(r.ends_with("\r\n\r\na 1\n"));
        let r = String::from_utf8(response(head, "text/plain", "a 1\n")).unwrap();
        assert!(r.ends_with("Content-Length: 4\r\nConnection: close\r\n\r\n"));
        let r = String::from_utf8(error_response(HttpError::MethodNotAllowed)).unwrap();
        assert!(r.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"));
        assert!(r.contains("Allow: GET, HEAD\r\n"));
    }
}
