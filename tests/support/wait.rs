//! Waiting on a condition: polled until it holds, and on a timeout a panic that says what
//! was last seen, not only that time ran out.

use std::fmt::Debug;
use std::future::Future;
use std::time::{Duration, Instant};

use kube::api::Api;
use serde::de::DeserializeOwned;

/// Polls `check` until it returns `Ok`, or panics after `timeout` with the last reason it
/// gave.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let start = Instant::now();
    loop {
        match check().await {
            Ok(value) => return value,
            Err(last) if start.elapsed() >= timeout => {
                panic!("timed out after {timeout:?} waiting for {what}; last seen: {last}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Reads the object `name` until `check` accepts it; returns what `check` returned.
pub async fn wait_object<K, T>(
    api: &Api<K>,
    name: &str,
    what: &str,
    timeout: Duration,
    check: impl Fn(&K) -> Result<T, String>,
) -> T
where
    K: kube::Resource + Clone + DeserializeOwned + Debug,
    K::DynamicType: Default,
{
    let kind = K::kind(&K::DynamicType::default()).to_string();
    let check = &check;
    wait_for(&format!("{kind} {name}: {what}"), timeout, || async move {
        let object = api.get(name).await.map_err(|e| e.to_string())?;
        check(&object)
    })
    .await
}

/// Waits until the object `name` no longer exists.
pub async fn wait_gone<K>(api: &Api<K>, name: &str, timeout: Duration)
where
    K: kube::Resource + Clone + DeserializeOwned + Debug,
{
    wait_for(&format!("{name} to be gone"), timeout, || async move {
        match api.get_opt(name).await.map_err(|e| e.to_string())? {
            None => Ok(()),
            Some(_) => Err("still there".to_string()),
        }
    })
    .await
}
