//! A small blocking HTTP/1.1 client for the daemon's API, over a Unix
//! socket (the local CLI) or TCP (VMMs and peers). One request per
//! connection; no async runtime, so a VMM process can use it and still fork.
//! Over TCP it speaks mutual TLS when given the cluster's credentials
//! ([`Client::with_transport`]); peer daemons accept nothing else.

use serde::de::DeserializeOwned;
use serde::Serialize;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Unix(PathBuf),
    Tcp(String),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "{}", p.display()),
            Endpoint::Tcp(a) => write!(f, "{a}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the daemon at {endpoint}: {source}")]
    Connect {
        endpoint: String,
        #[source]
        source: std::io::Error,
    },
    #[error("talking to the daemon at {endpoint} failed: {source}")]
    Io {
        endpoint: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the daemon at {endpoint} sent a malformed answer: {why}")]
    Malformed { endpoint: String, why: String },
    #[error("the daemon at {endpoint} answered {status}: {message}")]
    Status {
        endpoint: String,
        status: u16,
        message: String,
    },
}

trait Stream: Read + Write {}
impl<T: Read + Write> Stream for T {}

pub struct Client {
    endpoint: Endpoint,
    timeout: Duration,
    transport: sf_tls::Transport,
}

/// Largest answer accepted.
const MAX_RESPONSE: u64 = 16 << 20;

impl Client {
    pub fn new(endpoint: Endpoint) -> Client {
        Client {
            endpoint,
            timeout: Duration::from_secs(10),
            transport: sf_tls::Transport::Plain,
        }
    }

    /// TCP endpoints go over `t` (mutual TLS with the cluster's
    /// credentials, or plain TCP in insecure mode).
    pub fn with_transport(mut self, t: sf_tls::Transport) -> Client {
        self.transport = t;
        self
    }

    pub fn with_timeout(mut self, t: Duration) -> Client {
        self.timeout = t;
        self
    }

    fn connect(&self) -> Result<Box<dyn Stream>, ClientError> {
        let err = |source| ClientError::Connect {
            endpoint: self.endpoint.to_string(),
            source,
        };
        Ok(match &self.endpoint {
            Endpoint::Unix(p) => {
                let s = UnixStream::connect(p).map_err(err)?;
                s.set_read_timeout(Some(self.timeout)).map_err(err)?;
                s.set_write_timeout(Some(self.timeout)).map_err(err)?;
                Box::new(s)
            }
            Endpoint::Tcp(a) => {
                let addr = a.parse().map_err(|_| {
                    err(std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        format!("{a:?} is not ip:port"),
                    ))
                })?;
                let s = self.transport.connect(addr, self.timeout).map_err(err)?;
                s.tcp().set_read_timeout(Some(self.timeout)).map_err(err)?;
                s.tcp().set_write_timeout(Some(self.timeout)).map_err(err)?;
                Box::new(s)
            }
        })
    }

    /// One request; returns the status and the body.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<(u16, Vec<u8>), ClientError> {
        let ep = self.endpoint.to_string();
        let io = |source| ClientError::Io {
            endpoint: ep.clone(),
            source,
        };
        let mut s = self.connect()?;
        let body = body.unwrap_or_default();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: snowflock\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).map_err(io)?;
        s.write_all(body).map_err(io)?;
        s.flush().map_err(io)?;
        let mut raw = Vec::new();
        match s.take(MAX_RESPONSE).read_to_end(&mut raw) {
            Ok(_) => {}
            // A TLS peer that closes without close_notify: the answer is
            // judged by its own framing below.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
            Err(e) => return Err(io(e)),
        }
        parse_response(&raw).map_err(|why| ClientError::Malformed { endpoint: ep, why })
    }

    /// A JSON request whose 2xx answer is JSON; other statuses become
    /// [`ClientError::Status`] with the daemon's error message.
    pub fn call<B: Serialize, R: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&B>,
    ) -> Result<R, ClientError> {
        let ep = self.endpoint.to_string();
        let bytes = body.map(|b| serde_json::to_vec(b).expect("API types serialize"));
        let (status, resp) = self.request(method, path, bytes.as_deref())?;
        if !(200..300).contains(&status) {
            let message = serde_json::from_slice::<crate::ErrorBody>(&resp)
                .map(|e| e.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&resp).into_owned());
            return Err(ClientError::Status {
                endpoint: ep,
                status,
                message,
            });
        }
        serde_json::from_slice(&resp).map_err(|e| ClientError::Malformed {
            endpoint: ep,
            why: e.to_string(),
        })
    }

    pub fn get<R: DeserializeOwned>(&self, path: &str) -> Result<R, ClientError> {
        self.call::<(), R>("GET", path, None)
    }

    pub fn post<B: Serialize, R: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<R, ClientError> {
        self.call("POST", path, Some(body))
    }
}

/// Status and body of a raw HTTP/1.1 response (Content-Length, chunked, or
/// until close).
pub fn parse_response(raw: &[u8]) -> Result<(u16, Vec<u8>), String> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no header end")?;
    let head = std::str::from_utf8(&raw[..split]).map_err(|_| "header is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or("empty answer")?;
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or("bad status line")?;
    let mut chunked = false;
    let mut length = None;
    for l in lines {
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        match k.trim().to_ascii_lowercase().as_str() {
            "transfer-encoding" => chunked = v.trim().eq_ignore_ascii_case("chunked"),
            "content-length" => length = v.trim().parse::<usize>().ok(),
            _ => {}
        }
    }
    let body = &raw[split + 4..];
    if chunked {
        return Ok((status, dechunk(body)?));
    }
    match length {
        Some(n) if n <= body.len() => Ok((status, body[..n].to_vec())),
        Some(n) => Err(format!("body is {} bytes, header says {n}", body.len())),
        None => Ok((status, body.to_vec())),
    }
}

fn dechunk(mut b: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let nl = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("chunk size line")?;
        let size_str = std::str::from_utf8(&b[..nl]).map_err(|_| "chunk size")?;
        let size = usize::from_str_radix(size_str.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| "chunk size")?;
        b = &b[nl + 2..];
        if size == 0 {
            return Ok(out);
        }
        if b.len() < size + 2 {
            return Err("truncated chunk".into());
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_parse_in_every_framing() {
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"),
            Ok((200, b"{}".to_vec()))
        );
        assert_eq!(
            parse_response(b"HTTP/1.1 404 Not Found\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n1\r\nd\r\n0\r\n\r\n"),
            Ok((404, b"abcd".to_vec()))
        );
        assert_eq!(
            parse_response(b"HTTP/1.1 204 No Content\r\n\r\n"),
            Ok((204, vec![]))
        );
        assert!(parse_response(b"garbage").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nab").is_err());
        assert!(
            parse_response(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n").is_err()
        );
    }

    #[test]
    fn an_absent_daemon_is_a_clear_error() {
        let c = Client::new(Endpoint::Unix("/nonexistent/snowflock.sock".into()));
        let e = c.get::<crate::Health>("/v1/health").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("cannot reach the daemon at /nonexistent/snowflock.sock"),
            "{e}"
        );
    }
}
