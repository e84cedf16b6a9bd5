//! Operators taking part in leader election, and what their metrics endpoint says.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;

use super::{wait_for, Operator, TestNamespace};

const TIMEOUT: Duration = Duration::from_secs(120);

/// An operator taking part in leader election on the test's own lease, with short lease
/// timings so that a takeover fits in a test.
pub fn elector(ns: &str, lease: &str) -> Operator {
    elector_with(ns, lease, &SHORT_LEASE)
}

/// Lease timings short enough for a takeover to fit in a test: a lease of 6 s, renewed
/// every 2 s, given up after 4 s without a renewal.
pub const SHORT_LEASE: [&str; 6] = [
    "--lease-duration-seconds",
    "6",
    "--lease-renew-seconds",
    "2",
    "--lease-renew-deadline-seconds",
    "4",
];

/// An operator taking part in leader election on `lease`, with `timings` (none: the
/// defaults).
pub fn elector_with(ns: &str, lease: &str, timings: &[&str]) -> Operator {
    let mut args = vec![
        "--leader-elect=true",
        "--lease-namespace",
        ns,
        "--lease-name",
        lease,
    ];
    args.extend_from_slice(timings);
    args.extend(["--metrics-addr", "127.0.0.1:0"]);
    Operator::start_with(ns, &args)
}

/// The address an operator serves metrics on, from its log.
pub async fn metrics_addr(op: &Operator) -> String {
    wait_for(
        "the operator to log its metrics address",
        TIMEOUT,
        || async {
            let log = std::fs::read_to_string(&op.log).unwrap_or_default();
            let plain: String = strip_ansi(&log);
            plain
                .lines()
                .find(|l| l.contains("serving /metrics"))
                .and_then(|l| l.split("addr=").nth(1))
                .map(|a| a.split_whitespace().next().unwrap_or_default().to_string())
                .ok_or_else(|| "not yet".to_string())
        },
    )
    .await
}

pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

pub async fn scrape(addr: &str) -> String {
    get(addr, "/metrics").await
}

/// The whole answer (status line, headers and body) of `GET path`; empty when nothing
/// answers.
pub async fn get(addr: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return String::new();
    };
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
    let _ = s.write_all(request.as_bytes()).await;
    let mut body = String::new();
    let _ = s.read_to_string(&mut body).await;
    body
}

/// The value of a metric line that starts with `prefix` (name and labels).
pub fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

pub async fn holder(ns: &TestNamespace, lease: &str) -> Option<String> {
    let leases: Api<Lease> = ns.api();
    leases
        .get_opt(lease)
        .await
        .ok()
        .flatten()
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
        .filter(|h| !h.is_empty())
}
