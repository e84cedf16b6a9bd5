//! The operator's own HTTP endpoints: /metrics (Prometheus text), /healthz (the process
//! runs) and /readyz (a leader with synced caches, or a standby ready to take over).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::metrics::Metrics;

/// What the probes report.
#[derive(Default)]
pub struct Health {
    /// This replica leads (or leader election is off).
    pub leading: AtomicBool,
    /// Every watch cache has its first full list.
    pub synced: AtomicBool,
}

impl Health {
    pub fn ready(&self) -> bool {
        // A standby is ready: ready to take over. A leader is ready once its caches are.
        !self.leading.load(Ordering::Acquire) || self.synced.load(Ordering::Acquire)
    }
}

/// Serves until the process ends. Requests are tiny GETs; anything else gets 404/405.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, health: Arc<Health>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let metrics = metrics.clone();
        let health = health.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            let n = match tokio::time::timeout(
                std::time::Duration::from_secs(5),
                stream.read(&mut buf),
            )
            .await
            {
                Ok(Ok(n)) => n,
                _ => return,
            };
            let request = String::from_utf8_lossy(&buf[..n]);
            let mut parts = request.split_whitespace();
            let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            let (status, content_type, body) = match (method, path.split('?').next().unwrap_or(""))
            {
                ("GET", "/metrics") => (
                    "200 OK",
                    "text/plain; version=0.0.4; charset=utf-8",
                    metrics.render(),
                ),
                ("GET", "/healthz") => ("200 OK", "text/plain", "ok\n".to_string()),
                ("GET", "/readyz") if health.ready() => {
                    ("200 OK", "text/plain", "ok\n".to_string())
                }
                ("GET", "/readyz") => (
                    "503 Service Unavailable",
                    "text/plain",
                    "caches not synced\n".to_string(),
                ),
                ("GET", _) => ("404 Not Found", "text/plain", "not found\n".to_string()),
                _ => (
                    "405 Method Not Allowed",
                    "text/plain",
                    "method not allowed\n".to_string(),
                ),
            };
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.write_all(body.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

/// Binds the metrics address; a clear error when it is taken.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leader_is_ready_only_once_its_caches_are_synced_and_a_standby_is_ready() {
        let h = Health::default();
        assert!(h.ready(), "a standby is ready to take over");
        h.leading.store(true, Ordering::Release);
        assert!(!h.ready(), "a leader without synced caches is not ready");
        h.synced.store(true, Ordering::Release);
        assert!(h.ready());
    }
}
