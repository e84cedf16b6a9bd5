//! The operator's client of the API server.
//!
//! kube's own client speaks HTTP/1.1 only: each request in flight holds a connection of its
//! own, and one that finds none idle opens another, with its TLS handshake. At 10,000 pods
//! the operator held 660 connections to the API server at once. This client offers HTTP/2
//! as well, as client-go does: the API server answers on one connection that carries every
//! request and watch at once. It falls back to HTTP/1.1 with a bounded idle pool when a
//! server or proxy in between offers no HTTP/2.
//!
//! Requests are rate limited, `qps` sustained and `burst` at once, so that a storm of
//! passes cannot overwhelm the API server.

use std::time::Duration;

use hyper_rustls::{FixedServerNameResolver, HttpsConnectorBuilder};
use hyper_timeout::TimeoutConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use kube::client::retry::RetryPolicy;
use kube::client::{ClientBuilder, ConfigExt, RustlsTlsError};
use kube::{Client, Config};
use tower::limit::RateLimitLayer;
use tower::retry::RetryLayer;
use tower::{BoxError, ServiceBuilder};

/// How often an HTTP/2 connection with requests open is pinged, and how long an answer may
/// take before the connection is taken for dead and its watches start again. client-go
/// checks its connection after 30 s without a frame and waits 15 s for the answer.
const PING_EVERY: Duration = Duration::from_secs(30);
const PING_TIMEOUT: Duration = Duration::from_secs(15);
/// Idle HTTP/1.1 connections kept for reuse (client-go keeps 25); more are closed as their
/// requests end.
const IDLE_CONNECTIONS: usize = 25;
const IDLE_FOR: Duration = Duration::from_secs(90);

/// Builds a client limited to `burst` requests per `burst / qps` seconds: on average `qps`,
/// with room for a burst.
pub fn client(config: Config, qps: u32, burst: u32) -> Result<Client, kube::Error> {
    let qps = qps.max(1);
    let burst = burst.max(qps);
    let window = Duration::from_secs_f64(f64::from(burst) / f64::from(qps));
    let limit = RateLimitLayer::new(u64::from(burst), window);
    if config.proxy_url.is_some() {
        // kube's own client reaches the proxies it was built for and names those it cannot.
        return Ok(ClientBuilder::try_from(config)?.with_layer(&limit).build());
    }

    let mut tcp = HttpConnector::new();
    tcp.enforce_http(false);
    let tls = HttpsConnectorBuilder::new()
        .with_tls_config(config.rustls_client_config()?)
        .https_or_http();
    let tls = match &config.tls_server_name {
        Some(name) => {
            let name = rustls::pki_types::ServerName::try_from(name.clone())
                .map_err(|e| kube::Error::RustlsTls(RustlsTlsError::InvalidServerName(e)))?;
            tls.with_server_name_resolver(FixedServerNameResolver::new(name))
        }
        None => tls,
    };
    let mut connector =
        TimeoutConnector::new(tls.enable_http1().enable_http2().wrap_connector(tcp));
    connector.set_connect_timeout(config.connect_timeout);
    connector.set_read_timeout(config.read_timeout);
    connector.set_write_timeout(config.write_timeout);
    connector.set_reset_reader_on_write(config.reset_reader_on_write);

    let transport = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(IDLE_FOR)
        .pool_max_idle_per_host(IDLE_CONNECTIONS)
        .http2_keep_alive_interval(PING_EVERY)
        .http2_keep_alive_timeout(PING_TIMEOUT)
        .build(connector);

    let retry = config
        .default_retry
        .then(|| RetryLayer::new(RetryPolicy::server_retry()));
    let service = ServiceBuilder::new()
        .layer(limit)
        .layer(config.base_uri_layer())
        .option_layer(retry)
        .option_layer(config.auth_layer()?)
        .layer(config.extra_headers_layer()?)
        .map_err(BoxError::from)
        .service(transport);
    Ok(Client::new(service, config.default_namespace))
}
