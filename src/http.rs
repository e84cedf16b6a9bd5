//! The operator's own HTTP endpoints: /metrics (Prometheus text), /healthz (the process
//! runs) and /readyz (a leader with synced caches, or a standby ready to take over; never
//! a replica that found the wrong CRD installed, and the body says why not).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

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
    /// Why this replica will neither lead nor act yet (the installed CRD is not its own).
    blocked: Mutex<Option<String>>,
}

impl Health {
    /// Ready, or why not.
    pub fn readiness(&self) -> Result<(), String> {
        if let Some(why) = self
            .blocked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        {
            return Err(why);
        }
        // A standby is ready: ready to take over. A leader is ready once its caches are.
        if self.leading.load(Ordering::Acquire) && !self.synced.load(Ordering::Acquire) {
            return Err("caches not synced".into());
        }
        Ok(())
    }

    pub fn ready(&self) -> bool {
        self.readiness().is_ok()
    }

    /// Not ready, for `why`, until `unblock`.
    pub fn block(&self, why: String) {
        *self.blocked.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
    }

    pub fn unblock(&self) {
        *self.blocked.lock().unwrap_or_else(|e| e.into_inner()) = None;
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
                ("GET", "/readyz") => match health.readiness() {
                    Ok(()) => ("200 OK", "text/plain", "ok\n".to_string()),
                    Err(why) => ("503 Service Unavailable", "text/plain", format!("{why}\n")),
                },
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

    #[test]
    fn a_blocked_replica_is_not_ready_and_says_why_until_unblocked() {
        let h = Health::default();
        h.block("the CRD differs".into());
        assert_eq!(
            h.readiness(),
            Err("the CRD differs".into()),
            "also as a standby"
        );
        h.leading.store(true, Ordering::Release);
        h.synced.store(true, Ordering::Release);
        assert_eq!(h.readiness(), Err("the CRD differs".into()));
        h.unblock();
        assert_eq!(h.readiness(), Ok(()));
        h.synced.store(false, Ordering::Release);
        assert_eq!(h.readiness(), Err("caches not synced".into()));
    }

    #[tokio::test]
    async fn readyz_answers_503_with_the_reason_in_the_body() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let health = Arc::new(Health::default());
        health.block("apply the CRD".into());
        let server = tokio::spawn(serve(
            listener,
            Arc::new(Metrics::default()),
            health.clone(),
        ));
        let get = |path: &'static str| async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(format!("GET {path} HTTP/1.1\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        let blocked = get("/readyz").await;
        assert!(blocked.starts_with("HTTP/1.1 503 "), "{blocked}");
        assert!(blocked.ends_with("\r\n\r\napply the CRD\n"), "{blocked}");
        assert!(get("/healthz").await.starts_with("HTTP/1.1 200 "));
        health.unblock();
        let ready = get("/readyz").await;
        assert!(
            ready.starts_with("HTTP/1.1 200 ") && ready.ends_with("ok\n"),
            "{ready}"
        );
        server.abort();
    }
}
