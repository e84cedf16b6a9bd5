//! Nodes and volumes of the soak's own.

use super::*;

/// A local volume only `node` can use, labelled as the soak's own.
pub(crate) fn local_volume(name: &str, node: &str) -> PersistentVolume {
    let mut pv = support::nodes::local_volume(name, node);
    pv.metadata
        .labels
        .get_or_insert_with(Default::default)
        .insert(GROUP_LABEL.into(), "volume".into());
    pv
}

/// Local volumes of the soak's nodes, deleted when the guard drops.
pub(crate) struct Volumes(pub(crate) Vec<String>);

impl Drop for Volumes {
    fn drop(&mut self) {
        for chunk in self.0.chunks(40) {
            let mut args = vec!["delete", "pv", "--wait=false", "--ignore-not-found"];
            args.extend(chunk.iter().map(String::as_str));
            let _ = kubectl(&args);
        }
    }
}

/// Leaves the cluster as the soak found it when dropped, also when the test fails: every
/// node still lost back (the nodes are deleted next, but a lost node must never outlive a
/// failing soak), and every control-plane process that stopped running again.
pub(crate) struct Restore(pub(crate) Arc<Mutex<BTreeSet<String>>>);

impl Drop for Restore {
    fn drop(&mut self) {
        let lost = std::mem::take(&mut *lock(&self.0));
        for node in lost {
            if let Err(e) = try_fault("node-back", Some(&node)) {
                println!("cleanup: {e}");
            }
            let _ = kubectl(&["taint", "node", &node, &format!("{OUT_OF_SERVICE_TAINT}-")]);
        }
        for component in CONTROL_PLANE {
            match relaunch_if_stopped(component) {
                Ok(true) => println!("cleanup: {component} had stopped; relaunched"),
                Ok(false) => {}
                Err(e) => println!("cleanup: {component}: {e}"),
            }
        }
    }
}

/// Removes the out-of-service taint from `node`; true when it had one, as a person does once
/// a fenced node is repaired. The operator removes its own fence too once the node is back
/// (repair.onNodeRecovered: RemoveFence); racing it here checks that it leaves alone a fence
/// a person already removed.
pub(crate) async fn untaint(client: &Client, node: &str) -> Result<bool, String> {
    let api: Api<Node> = Api::all(client.clone());
    for _ in 0..5 {
        let n = api.get(node).await.map_err(|e| e.to_string())?;
        let taints = n
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default();
        if !taints.iter().any(|t| t.key == OUT_OF_SERVICE_TAINT) {
            return Ok(false);
        }
        let kept: Vec<_> = taints
            .into_iter()
            .filter(|t| t.key != OUT_OF_SERVICE_TAINT)
            .collect();
        let patch = json!({
            "metadata": {"resourceVersion": n.resource_version()},
            "spec": {"taints": kept}
        });
        match api
            .patch(node, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => return Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(e) => return Err(e.to_string()),
        }
    }
    Err(format!("node {node}: conflicts on every try"))
}

pub(crate) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("a blocking task does not panic")
}
