//! A client whose requests are rate limited: `qps` sustained, `burst` at once, so that a
//! storm of reconciles cannot overwhelm the API server.

use std::time::Duration;

use kube::client::ClientBuilder;
use kube::{Client, Config};
use tower::limit::RateLimitLayer;

/// Builds a client limited to `burst` requests per `burst / qps` seconds: on average `qps`,
/// with room for a burst.
pub fn client(config: Config, qps: u32, burst: u32) -> Result<Client, kube::Error> {
    let qps = qps.max(1);
    let burst = burst.max(qps);
    let window = Duration::from_secs_f64(f64::from(burst) / f64::from(qps));
    let builder = ClientBuilder::try_from(config)?;
    Ok(builder
        .with_layer(&RateLimitLayer::new(u64::from(burst), window))
        .build())
}
