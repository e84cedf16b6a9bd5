//! Injecting the faults.

use super::*;

pub(crate) struct Chaos {
    pub(crate) client: Client,
    pub(crate) namespace: String,
    pub(crate) lease: String,
    pub(crate) origin: Instant,
    pub(crate) profiles: Vec<Profile>,
    pub(crate) nodes: Vec<String>,
    pub(crate) real_nodes: Vec<String>,
    /// Control-plane restarts, (from, to) on the soak's clock: the Service's endpoints
    /// reach the proxy through the API server, so requests may fail while it is away.
    pub(crate) control_plane_windows: Vec<(f64, f64)>,
    pub(crate) monitor: Arc<Mutex<Monitor>>,
    pub(crate) fleet: Arc<Mutex<Fleet>>,
    pub(crate) lost: Arc<Mutex<BTreeSet<String>>>,
    pub(crate) images: BTreeMap<String, u32>,
    pub(crate) injected: BTreeMap<Kind, usize>,
    pub(crate) modes: BTreeMap<&'static str, usize>,
    pub(crate) failed: Vec<String>,
    pub(crate) untainted: usize,
    pub(crate) handed_again: usize,
    pub(crate) relaunched: Vec<String>,
}

impl Chaos {
    pub(crate) fn t(&self) -> f64 {
        self.origin.elapsed().as_secs_f64()
    }

    pub(crate) fn services(&self) -> Api<ResilientService> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Starts again any control-plane process that stopped on its own, as the kubelet of
    /// a real control plane would: not the operator's doing, so not a violation, but
    /// recorded.
    pub(crate) async fn keep_control_plane(&mut self) {
        let stopped = blocking(|| {
            CONTROL_PLANE
                .iter()
                .filter_map(|c| match relaunch_if_stopped(c) {
                    Ok(false) => None,
                    Ok(true) => Some(format!("{c} had stopped; relaunched")),
                    Err(e) => Some(format!("{c}: {e}")),
                })
                .collect::<Vec<_>>()
        })
        .await;
        for what in stopped {
            let line = format!("t={:.1}s {what}", self.t());
            println!("[{:7.1}s] control plane: {what}", self.t());
            self.relaunched.push(line);
        }
    }

    /// Waits until `deadline`, keeping the control plane running meanwhile.
    pub(crate) async fn wait_until(&mut self, deadline: tokio::time::Instant) {
        loop {
            self.keep_control_plane().await;
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return;
            }
            tokio::time::sleep((deadline - now).min(Duration::from_secs(2))).await;
        }
    }

    /// Every service's name with its UID and creation time: what a store that lost data,
    /// or came back from an older copy, would change.
    async fn service_identities(&self) -> Result<BTreeMap<String, String>, String> {
        let list = (self.services().list(&Default::default()).await)
            .map_err(|e| format!("list the services before the restart: {e}"))?;
        Ok((list.items.iter())
            .map(|s| {
                let uid = s.metadata.uid.clone().unwrap_or_default();
                let created = s
                    .metadata
                    .creation_timestamp
                    .as_ref()
                    .map(|t| t.0.to_string());
                (
                    s.name_any(),
                    format!("{uid} {}", created.unwrap_or_default()),
                )
            })
            .collect())
    }

    /// After a store restart, every service is there as it was: a violation if not.
    async fn assert_data_kept(&mut self, before: &BTreeMap<String, String>) {
        let after = match self.service_identities().await {
            Ok(after) => after,
            Err(e) => {
                self.failed
                    .push(format!("t={:.1}s etcd-restart: {e}", self.t()));
                return;
            }
        };
        let lost: Vec<&String> = (before.iter())
            .filter(|(name, id)| after.get(*name) != Some(id))
            .map(|(name, _)| name)
            .collect();
        if !lost.is_empty() {
            let at = self.t();
            lock(&self.monitor).violations.push(Violation {
                at,
                until: None,
                kind: "data-lost",
                subject: "etcd".into(),
                details: format!("after the restart these services are gone or new: {lost:?}"),
            });
        }
    }

    pub(crate) async fn inject(&mut self, fault: &Fault) -> Result<String, String> {
        match fault {
            Fault::PodKill { service, slot } => {
                let name = self.profiles[*service].name;
                let victim = {
                    let mut m = lock(&self.monitor);
                    let victim = m
                        .victim(name, *slot)
                        .ok_or(format!("{name} has no pod in slot {slot} to kill"))?;
                    m.involuntary(name, Some(&victim));
                    victim
                };
                let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace);
                pods.delete(&victim, &DeleteParams::default())
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(format!("deleted pod {victim}"))
            }
            Fault::Rollout { service } => {
                let name = self.profiles[*service].name;
                self.set_template(name, None).await
            }
            Fault::BadRollout { service, mode } => {
                let name = self.profiles[*service].name;
                let out = self.set_template(name, Some(mode)).await?;
                *self.modes.entry(mode).or_default() += 1;
                Ok(out)
            }
            Fault::NodeLost { node } => {
                let node = self.nodes[*node].clone();
                lock(&self.lost).insert(node.clone());
                lock(&self.monitor).node_lost(&node);
                let n = node.clone();
                blocking(move || try_fault("node-lost", Some(&n))).await?;
                Ok(format!("{node} stops heartbeating"))
            }
            Fault::NodeBack { node } => {
                let node = self.nodes[*node].clone();
                self.bring_back(&node).await
            }
            Fault::OperatorKill { leader } => {
                let holder = Api::<Lease>::namespaced(self.client.clone(), &self.namespace)
                    .get_opt(&self.lease)
                    .await
                    .ok()
                    .flatten()
                    .and_then(|l| l.spec?.holder_identity);
                let pids = lock(&self.fleet).pids();
                let leading = pids.iter().copied().find(|pid| {
                    holder
                        .as_deref()
                        .is_some_and(|h| h.ends_with(&format!("-{pid}")))
                });
                let (pid, role) = match (leader, leading) {
                    (true, Some(pid)) => (pid, "the leader"),
                    (false, Some(l)) => (
                        pids.iter().copied().find(|p| *p != l).unwrap_or(l),
                        "the standby",
                    ),
                    (_, None) => (
                        *pids.first().ok_or("no operator process runs")?,
                        "no leader known",
                    ),
                };
                lock(&self.fleet).kill(pid, role);
                Ok(format!("SIGKILL pid {pid} ({role}); a new process starts"))
            }
            Fault::ApiServerRestart => self.restart("apiserver-restart").await,
            Fault::EtcdRestart => {
                let before = self.service_identities().await?;
                let out = self.restart("etcd-restart").await?;
                self.assert_data_kept(&before).await;
                Ok(out)
            }
            Fault::ControllerManagerRestart => self.restart("controller-manager-restart").await,
            Fault::ContainerKill { service, slot } => {
                // The scheduled service's container, else another real service's when its
                // pods are all on a node that is down.
                let first = self.profiles[*service].name;
                let others = (self.profiles.iter()).filter(|p| p.real && p.name != first);
                let names: Vec<&str> = std::iter::once(first)
                    .chain(others.map(|p| p.name))
                    .collect();
                let victim = {
                    let mut m = lock(&self.monitor);
                    let (name, victim) = (names.iter())
                        .find_map(|n| Some((*n, m.running_victim(n, *slot)?)))
                        .ok_or(format!(
                            "no real service has a running container on a node that is up: {names:?}"
                        ))?;
                    m.involuntary(name, Some(&victim));
                    victim
                };
                let target = format!("{}/{victim}", self.namespace);
                blocking(move || try_fault("container-kill", Some(&target))).await
            }
            Fault::RealNodeDown { node, partition } => {
                let node = self.real_nodes[*node].clone();
                lock(&self.lost).insert(node.clone());
                lock(&self.monitor).node_lost(&node);
                let what = if *partition {
                    "node-partition"
                } else {
                    "node-crash"
                };
                let n = node.clone();
                blocking(move || try_fault(what, Some(&n))).await
            }
            Fault::RealNodeBack { node } => {
                let node = self.real_nodes[*node].clone();
                self.bring_back(&node).await
            }
        }
    }

    /// A control-plane restart, its window recorded for the client's requests.
    async fn restart(&mut self, what: &'static str) -> Result<String, String> {
        let from = self.t();
        let out = blocking(move || try_fault(what, None)).await;
        self.control_plane_windows.push((from, self.t()));
        out
    }

    /// A new template for `service`: a new image, with the chaos `mode` or without any (the
    /// test application on the real nodes alternates between two images that answer with
    /// their version). The rollout counts as voluntary from before the change reaches the
    /// server.
    pub(crate) async fn set_template(
        &mut self,
        service: &str,
        mode: Option<&str>,
    ) -> Result<String, String> {
        let n = self.images.entry(service.to_string()).or_insert(1);
        *n += 1;
        let real = self.profiles.iter().find(|p| p.name == service && p.real);
        let (image, container) = if let Some(profile) = real {
            let image = [TESTAPP_V1_IMAGE, TESTAPP_V2_IMAGE][(*n as usize + 1) % 2].to_string();
            let container = profile.real_container(&image);
            (image, container)
        } else {
            let image = format!("example/{service}:{n}");
            (image.clone(), json!({"name": "app", "image": image}))
        };
        let body = json!({"spec": {"template": {
            "metadata": {"labels": {CHAOS_LABEL: mode}},
            "spec": {"containers": [container]}
        }}});
        {
            let mut m = lock(&self.monitor);
            let next = m.generation(service) + 1;
            m.voluntary.insert(service.to_string(), next);
        }
        match self
            .services()
            .patch(service, &PatchParams::default(), &Patch::Merge(&body))
            .await
        {
            Ok(svc) => {
                let generation = svc.metadata.generation.unwrap_or_default();
                lock(&self.monitor)
                    .voluntary
                    .insert(service.to_string(), generation);
                Ok(format!(
                    "{service} to {image}{} (generation {generation})",
                    mode.map(|m| format!(", {CHAOS_LABEL}={m}"))
                        .unwrap_or_default()
                ))
            }
            Err(e) => {
                lock(&self.monitor).voluntary.remove(service);
                Err(e.to_string())
            }
        }
    }

    pub(crate) async fn bring_back(&mut self, node: &str) -> Result<String, String> {
        let n = node.to_string();
        blocking(move || try_fault("node-back", Some(&n))).await?;
        // `fault node-back` waits for KWOK's fresh Lease, but a node that does not
        // heartbeat is not back whatever the script said: hand it over once more, the
        // Lease first, and count it, since it means the harness failed.
        let mut handed_again = false;
        if !self.heartbeating(node).await {
            if self.real_nodes.iter().any(|r| r == node) {
                return Err(format!(
                    "real node {node} does not heartbeat after node-back"
                ));
            }
            self.hand_to_kwok(node).await?;
            if !self.heartbeating(node).await {
                return Err(format!("{node} does not heartbeat after node-back"));
            }
            self.handed_again += 1;
            handed_again = true;
        }
        let untainted = untaint(&self.client, node).await?;
        lock(&self.lost).remove(node);
        lock(&self.monitor).node_back(node);
        if untainted {
            self.untainted += 1;
        }
        Ok(format!(
            "{node} heartbeats again{}{}",
            if handed_again {
                " (handed to KWOK a second time)"
            } else {
                ""
            },
            if untainted {
                " (out-of-service taint removed)"
            } else {
                ""
            }
        ))
    }

    /// Whether KWOK renews `node`'s Lease within NODE_BACK_TIMEOUT.
    pub(crate) async fn heartbeating(&self, node: &str) -> bool {
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), "kube-node-lease");
        let deadline = Instant::now() + NODE_BACK_TIMEOUT;
        while Instant::now() < deadline {
            let renewed = leases
                .get_opt(node)
                .await
                .ok()
                .flatten()
                .and_then(|l| l.spec)
                .filter(|s| s.holder_identity.as_deref() != Some("perennial-fault-node-lost"))
                .and_then(|s| s.renew_time)
                .is_some_and(|t| jiff::Timestamp::now().as_second() - t.0.as_second() < 15);
            if renewed {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        false
    }

    /// Takes `node` from KWOK, deletes its Lease, and gives it back.
    pub(crate) async fn hand_to_kwok(&self, node: &str) -> Result<(), String> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), "kube-node-lease");
        let annotate =
            |value: Value| json!({"metadata": {"annotations": {"kwok.x-k8s.io/node": value}}});
        nodes
            .patch(
                node,
                &PatchParams::default(),
                &Patch::Merge(annotate(Value::Null)),
            )
            .await
            .map_err(|e| e.to_string())?;
        match leases.delete(node, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.to_string()),
        }
        nodes
            .patch(
                node,
                &PatchParams::default(),
                &Patch::Merge(annotate(json!("fake"))),
            )
            .await
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Ends every fault: lost nodes back, out-of-service taints gone, and what a person
    /// would fix fixed (see `need_a_new_template`). Retried while the API server may still
    /// be coming back.
    pub(crate) async fn revert(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let lost: Vec<String> = lock(&self.lost).iter().cloned().collect();
            let mut left = 0;
            for node in &lost {
                match self.bring_back(node).await {
                    Ok(what) => println!("[{:7.1}s] revert: {what}", self.t()),
                    Err(e) => {
                        left += 1;
                        println!("[{:7.1}s] revert: node-back {node} failed: {e}", self.t());
                    }
                }
            }
            for node in self
                .nodes
                .iter()
                .chain(&self.real_nodes)
                .cloned()
                .collect::<Vec<_>>()
            {
                match untaint(&self.client, &node).await {
                    Ok(true) => {
                        self.untainted += 1;
                        println!(
                            "[{:7.1}s] revert: removed the out-of-service taint of {node}",
                            self.t()
                        );
                    }
                    Ok(false) => {}
                    Err(_) => left += 1,
                }
            }
            let bad = lock(&self.monitor).need_a_new_template();
            for service in bad {
                match self.set_template(&service, None).await {
                    Ok(what) => println!("[{:7.1}s] revert: {what}", self.t()),
                    Err(e) => {
                        left += 1;
                        println!("[{:7.1}s] revert: {service}: {e}", self.t());
                    }
                }
            }
            if left == 0 || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}
