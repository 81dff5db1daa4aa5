//! The admin listener: `/metrics` for Prometheus, `/healthz` and `/readyz` for load
//! balancers and orchestrators.
//!
//! A deliberately small HTTP/1.1 server: one `GET` per connection, a bounded request head
//! read within a timeout, `Connection: close`. It is meant for loopback or a management
//! network (see `admin.listen`), and nothing it serves changes rpcpin's state.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Mutex};
use tracing::{debug, warn};

use crate::backend::{Backends, Resolver};
use crate::metrics::metrics;
use crate::wire::epm::EPM;

/// The longest request head read.
const MAX_HEAD: usize = 8 * 1024;
/// How long a client may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Admin connections served at once; more wait in the accept queue.
const MAX_CONCURRENT: usize = 64;

/// What `/readyz` judges, kept current by the proxy: whether it drains, and the servers of
/// the configuration in force.
#[derive(Debug, Clone)]
pub struct Readiness {
    /// Set once rpcpin stops accepting (SIGTERM): load balancers must send no new clients.
    pub draining: bool,
    /// The servers' endpoint-mapper clients of the configuration in force.
    pub backends: Backends,
    /// `admin.ready_window`.
    pub window: Duration,
}

/// Serves the admin endpoints on `listener`, judging readiness by what `readiness` holds.
pub async fn serve(listener: TcpListener, readiness: watch::Receiver<Readiness>) {
    let probe = Arc::new(Mutex::new(()));
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                warn!(event = "accept_failed", listener = "admin", error = %e);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let ready = readiness.borrow().clone();
        let probe = probe.clone();
        tokio::spawn(async move {
            if let Err(e) = answer(stream, &ready, &probe).await {
                debug!(event = "admin_request_failed", peer = %peer, error = %e);
            }
            drop(permit);
        });
    }
}

async fn answer(mut stream: TcpStream, ready: &Readiness, probe: &Mutex<()>) -> anyhow::Result<()> {
    let head = tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream))
        .await
        .map_err(|_| anyhow::anyhow!("no request within {READ_TIMEOUT:?}"))??;
    let (status, content_type, body) = match parse_request_line(&head) {
        Some(("GET", "/metrics")) => (
            "200 OK",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics().encode(),
        ),
        Some(("GET", "/healthz")) => ("200 OK", TEXT, "ok\n".to_string()),
        Some(("GET", "/readyz")) => match readiness(ready, probe).await {
            Ok(body) => ("200 OK", TEXT, body),
            Err(body) => ("503 Service Unavailable", TEXT, body),
        },
        Some(("GET", _)) => ("404 Not Found", TEXT, "not found\n".to_string()),
        Some(_) => ("405 Method Not Allowed", TEXT, "only GET\n".to_string()),
        None => ("400 Bad Request", TEXT, "bad request\n".to_string()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    tokio::time::timeout(READ_TIMEOUT, stream.write_all(response.as_bytes())).await??;
    let _ = stream.shutdown().await;
    Ok(())
}

const TEXT: &str = "text/plain; charset=utf-8";

/// Reads up to the end of the request head (the blank line), at most [`MAX_HEAD`] bytes.
async fn read_head(stream: &mut TcpStream) -> anyhow::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.ends_with(b"\n\n") {
        if head.len() >= MAX_HEAD {
            anyhow::bail!("request head longer than {MAX_HEAD} bytes");
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            anyhow::bail!("closed before the end of the request head");
        }
        head.extend_from_slice(&chunk[..n]);
    }
    Ok(head)
}

/// The method and path of an HTTP/1.x request line (the query string dropped).
fn parse_request_line(head: &[u8]) -> Option<(&str, &str)> {
    let line = head.split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?.trim_end_matches('\r');
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || !version.starts_with("HTTP/1.") {
        return None;
    }
    Some((method, target.split('?').next()?))
}

/// Ready when not draining and every server's endpoint mapper answered an ept_map within
/// `admin.ready_window`; the stale ones are asked once (one probe at a time, the servers
/// together) and judged from that. With one server the answer is one line; with several,
/// a line per server follows the verdict. Either way the body is returned, ending in a
/// newline.
async fn readiness(ready: &Readiness, probe: &Mutex<()>) -> Result<String, String> {
    if ready.draining {
        return Err("draining\n".to_string());
    }
    let servers = ready.backends.all();
    let fresh = |r: &Resolver| {
        r.last_answer()
            .is_some_and(|at| at.elapsed() < ready.window)
    };
    let mut verdicts: Vec<Result<(), String>> = vec![Ok(()); servers.len()];
    if servers.iter().any(|r| !fresh(r)) {
        let _one = probe.lock().await;
        let mut probes = Vec::new();
        for (i, r) in servers.iter().enumerate().filter(|(_, r)| !fresh(r)) {
            probes.push((i, tokio::spawn(ask(r.clone(), ready.window))));
        }
        for (i, probe) in probes {
            verdicts[i] = probe
                .await
                .unwrap_or_else(|e| Err(format!("probe failed: {e}")));
        }
    }
    let ready = verdicts.iter().all(Result::is_ok);
    if let [verdict] = &verdicts[..] {
        return match verdict {
            Ok(()) => Ok("ready\n".to_string()),
            Err(why) => Err(format!("not ready: the backend's {why}\n")),
        };
    }
    let mut body = if ready { "ready\n" } else { "not ready\n" }.to_string();
    for (r, verdict) in servers.iter().zip(&verdicts) {
        let line = match verdict {
            Ok(()) => "ready".to_string(),
            Err(why) => format!("not ready: its {why}"),
        };
        body.push_str(&format!("backend {} ({}): {line}\n", r.name(), r.backend()));
    }
    if ready {
        Ok(body)
    } else {
        Err(body)
    }
}

/// Asks `server`'s endpoint mapper once: any answer, "not registered" included, shows it
/// works. The error completes "the backend's …" or "its …".
async fn ask(server: Arc<Resolver>, window: Duration) -> Result<(), String> {
    let started = Instant::now();
    match server.query(EPM).await {
        _ if server.last_answer().is_some_and(|at| at.elapsed() < window) => Ok(()),
        Ok(_) => Ok(()),
        Err(e) => Err(format!(
            "endpoint mapper did not answer ({e:#}, after {} ms)",
            started.elapsed().as_millis()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_request_line;

    #[test]
    fn request_lines() {
        assert_eq!(
            parse_request_line(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some(("GET", "/readyz"))
        );
        assert_eq!(
            parse_request_line(b"GET /metrics?x=1 HTTP/1.0\n\n"),
            Some(("GET", "/metrics"))
        );
        assert_eq!(parse_request_line(b"GET /readyz\r\n\r\n"), None);
        assert_eq!(parse_request_line(b"\xff\xfe\r\n\r\n"), None);
    }
}
