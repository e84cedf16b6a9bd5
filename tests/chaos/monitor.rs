//! The monitor: the namespace's pods, services and claims, and every invariant at every event.

use super::*;

#[derive(Clone, Debug)]
pub(crate) struct Violation {
    pub(crate) at: f64,
    pub(crate) until: Option<f64>,
    pub(crate) kind: &'static str,
    pub(crate) subject: String,
    pub(crate) details: String,
}

/// An involuntary fault that hit a service: the floor is not checked until it has as many
/// Ready slots again as it had then (`level`) and no pod on a lost node.
pub(crate) struct Disturbance {
    pub(crate) since: f64,
    pub(crate) level: usize,
}

/// A claim deleted under onVolumeLost: Recreate whose node was not lost, to be explained.
pub(crate) struct Deletion {
    pub(crate) at: f64,
    pub(crate) service: String,
    pub(crate) slot: Option<i32>,
    pub(crate) what: String,
}

pub(crate) enum Seen {
    Pod(Box<watcher::Event<Pod>>),
    Service(Box<watcher::Event<ResilientService>>),
    Claim(Box<watcher::Event<PersistentVolumeClaim>>),
    Error(String),
}

/// The objects one watch reports, by key. A relist (the watch restarted) is swapped in
/// whole once complete; until then the last complete view stands.
pub(crate) struct Listed<K> {
    pub(crate) now: BTreeMap<String, K>,
    pub(crate) relist: Option<BTreeMap<String, K>>,
    pub(crate) listed: bool,
}

impl<K> Default for Listed<K> {
    fn default() -> Self {
        Self {
            now: BTreeMap::new(),
            relist: None,
            listed: false,
        }
    }
}

impl<K: Clone> Listed<K> {
    /// Applies `event`; returns what left: a deleted object, or what a relist no longer
    /// has (deleted while the watch was down).
    pub(crate) fn apply(&mut self, event: watcher::Event<K>, key: impl Fn(&K) -> String) -> Vec<K> {
        match event {
            watcher::Event::Init => {
                self.relist = Some(BTreeMap::new());
                Vec::new()
            }
            watcher::Event::InitApply(o) => {
                self.relist
                    .get_or_insert_with(BTreeMap::new)
                    .insert(key(&o), o);
                Vec::new()
            }
            watcher::Event::InitDone => {
                let fresh = self.relist.take().unwrap_or_default();
                let gone = self
                    .now
                    .iter()
                    .filter(|(k, _)| !fresh.contains_key(*k))
                    .map(|(_, o)| o.clone())
                    .collect();
                self.now = fresh;
                self.listed = true;
                gone
            }
            watcher::Event::Apply(o) => {
                self.now.insert(key(&o), o);
                Vec::new()
            }
            watcher::Event::Delete(o) => {
                self.now.remove(&key(&o));
                vec![o]
            }
        }
    }
}

/// Breaches by key, as (kind, subject, details), found in one look.
pub(crate) type Found = BTreeMap<String, (&'static str, String, String)>;

/// Ends the episodes of `open` that `found` no longer has, and opens one violation for each
/// breach in `found` not already open: a breach that lasts is one violation.
pub(crate) fn settle_episodes(
    open: &mut BTreeMap<String, usize>,
    violations: &mut Vec<Violation>,
    found: Found,
    now: f64,
    verbose: bool,
) {
    open.retain(|key, i| {
        let goes_on = found.contains_key(key);
        if !goes_on {
            violations[*i].until = Some(now);
        }
        goes_on
    });
    for (key, (kind, subject, details)) in found {
        if open.contains_key(&key) {
            continue;
        }
        if verbose {
            println!("[{now:7.1}s] VIOLATION {kind} {subject}: {details}");
        }
        violations.push(Violation {
            at: now,
            until: None,
            kind,
            subject,
            details,
        });
        open.insert(key, violations.len() - 1);
    }
}

pub(crate) struct Clock(pub(crate) Instant);

impl Default for Clock {
    fn default() -> Self {
        Clock(Instant::now())
    }
}

/// The namespace's pods, services and claims as the watches report them, and the verdicts.
#[derive(Default)]
pub(crate) struct Monitor {
    pub(crate) clock: Clock,
    /// Prints each breach as it opens (the soak; not the checks of the checks).
    pub(crate) verbose: bool,
    pub(crate) pods: Listed<Pod>,
    pub(crate) services: Listed<ResilientService>,
    /// By uid: a claim made again under its name is another claim.
    pub(crate) claims: Listed<PersistentVolumeClaim>,
    pub(crate) claims_deleted: BTreeSet<String>,
    pub(crate) lost_nodes: BTreeSet<String>,
    /// When each node lost during the soak came back.
    pub(crate) back_at: BTreeMap<String, f64>,
    /// (service, slot, time) of every RebuildStorage rung the ledgers showed.
    pub(crate) rungs: Vec<(String, i32, f64)>,
    pub(crate) unexplained: Vec<Deletion>,
    pub(crate) disturbed: BTreeMap<String, Disturbance>,
    /// Uids of pods an involuntary fault touched: killed, or on a node while it was lost.
    pub(crate) touched: BTreeSet<String>,
    /// Per service whose floor is being checked: the most Ready slots seen since.
    pub(crate) floor_base: BTreeMap<String, usize>,
    /// Template changes made by the soak, by service: the generation they made.
    pub(crate) voluntary: BTreeMap<String, i64>,
    /// The last changes of each service's pods.
    pub(crate) history: BTreeMap<String, VecDeque<String>>,
    /// Breaches in progress: key to index in `violations`.
    pub(crate) open: BTreeMap<String, usize>,
    pub(crate) violations: Vec<Violation>,
    pub(crate) rebuilt: Vec<String>,
    pub(crate) events: u64,
    pub(crate) watch_errors: u64,
    pub(crate) floor_checks: u64,
    /// The least (Ready slots - floor) seen in a rollout, and where.
    pub(crate) tightest_floor: Option<(i32, String)>,
    /// The most (live pods - ceiling) seen, and where.
    pub(crate) closest_ceiling: Option<(i32, String)>,
    pub(crate) exclusions: usize,
    pub(crate) excluded_seconds: f64,
    /// Every involuntary fault's window that has closed: (service, from, to).
    pub(crate) closed_windows: Vec<(String, f64, f64)>,
}

impl Monitor {
    pub(crate) fn t(&self) -> f64 {
        self.clock.0.elapsed().as_secs_f64()
    }

    pub(crate) fn listed(&self) -> bool {
        self.pods.listed && self.services.listed && self.claims.listed
    }

    pub(crate) fn apply(&mut self, seen: Seen) {
        self.events += 1;
        match seen {
            Seen::Pod(e) => {
                self.remember(&e);
                self.pods.apply(*e, |p| p.name_any());
            }
            Seen::Service(e) => {
                if let watcher::Event::Apply(svc) | watcher::Event::InitApply(svc) = &*e {
                    let t = self.t();
                    for r in svc.status.iter().flat_map(|s| &s.replica_statuses) {
                        if r.escalation.as_deref() == Some("RebuildStorage") {
                            self.rungs.push((svc.name_any(), r.ordinal, t));
                        }
                    }
                }
                self.services.apply(*e, |s| s.name_any());
            }
            Seen::Claim(e) => {
                let leaving = match &*e {
                    watcher::Event::Apply(c) | watcher::Event::InitApply(c)
                        if c.metadata.deletion_timestamp.is_some() =>
                    {
                        vec![c.clone()]
                    }
                    _ => Vec::new(),
                };
                let gone = self.claims.apply(*e, |c| c.uid().unwrap_or_default());
                for claim in leaving.into_iter().chain(gone) {
                    self.claim_deleted(&claim);
                }
            }
            Seen::Error(e) => {
                self.watch_errors += 1;
                if self.watch_errors <= 5 {
                    println!("[{:7.1}s] watch error (retried): {e}", self.t());
                }
            }
        }
    }

    /// Keeps the last few changes of each service's pods, for a breach's details.
    pub(crate) fn remember(&mut self, event: &watcher::Event<Pod>) {
        let (pod, gone) = match event {
            watcher::Event::Apply(p) => (p, false),
            watcher::Event::Delete(p) => (p, true),
            _ => return,
        };
        let Some(service) = label(pod, LABEL_SERVICE) else {
            return;
        };
        let now = describe_pods(&[pod], &self.lost_nodes);
        let before = self
            .pods
            .now
            .get(&pod.name_any())
            .map(|p| describe_pods(&[p], &self.lost_nodes));
        if !gone && before.as_ref() == Some(&now) {
            return;
        }
        let line = format!("{:.1}s {now}{}", self.t(), if gone { " gone" } else { "" });
        let history = self.history.entry(service.to_string()).or_default();
        history.push_back(line);
        if history.len() > 12 {
            history.pop_front();
        }
    }

    /// A claim is being deleted while its service exists. Nothing scales down and no
    /// service is deleted, so only onVolumeLost: Recreate allows it, and only for a volume
    /// lost with its node (lost now, or back less than REBUILD_GRACE ago: the operator may
    /// act on the loss it saw a moment before the node came back) or for the RebuildStorage
    /// rung of the slot's ladder (judged at the end, from the ledger the status shows).
    pub(crate) fn claim_deleted(&mut self, claim: &PersistentVolumeClaim) {
        let uid = claim.uid().unwrap_or_default();
        if !self.claims_deleted.insert(uid.clone()) {
            return;
        }
        let labels = claim.labels();
        let service = labels.get(LABEL_SERVICE).cloned().unwrap_or_default();
        let slot = labels.get(LABEL_SLOT).and_then(|s| s.parse().ok());
        let Some(svc) = self
            .services
            .now
            .get(&service)
            .filter(|s| s.metadata.deletion_timestamp.is_none())
        else {
            return;
        };
        let volume = claim.spec.as_ref().and_then(|s| s.volume_name.clone());
        // Volumes are named <node>-pv-<n>.
        let node = volume
            .as_deref()
            .and_then(|v| v.rsplit_once("-pv-"))
            .map(|(n, _)| n.to_string());
        let t = self.t();
        let back = |n: &str| self.back_at.get(n).map(|b| t - b);
        let (lost, where_) = match &node {
            Some(n) if self.lost_nodes.contains(n) => (true, format!("on node {n}, lost now")),
            Some(n) => match back(n) {
                Some(ago) => (
                    ago <= REBUILD_GRACE.as_secs_f64(),
                    format!("on node {n}, back {ago:.0} s ago"),
                ),
                None => (false, format!("on node {n}, never lost")),
            },
            None => (false, "not bound".to_string()),
        };
        let what = format!(
            "claim {} (uid {}, volume {volume:?}, {where_})",
            claim.name_any(),
            &uid[..8.min(uid.len())],
        );
        let policy = svc.spec.repair.storage.on_volume_lost;
        let deletion = Deletion {
            at: t,
            service,
            slot,
            what,
        };
        match policy {
            VolumeLostPolicy::Recreate if lost => {
                self.rebuilt.push(format!("t={t:.1}s {}", deletion.what))
            }
            VolumeLostPolicy::Recreate => self.unexplained.push(deletion),
            VolumeLostPolicy::Retain => {
                if self.verbose {
                    println!(
                        "[{t:7.1}s] VIOLATION claim-deleted {}: {}",
                        deletion.service, deletion.what
                    );
                }
                self.violations.push(Violation {
                    at: t,
                    until: Some(t),
                    kind: "claim-deleted",
                    subject: deletion.service,
                    details: format!(
                        "{} deleted while its service exists, with onVolumeLost: Retain and no scale-down",
                        deletion.what
                    ),
                });
            }
        }
    }

    /// Rebuilds under onVolumeLost: Recreate of volumes whose node was not lost: allowed if
    /// the slot's ledger showed the RebuildStorage rung around that time, breaches if not.
    pub(crate) fn judge_rebuilds(&mut self) {
        for d in std::mem::take(&mut self.unexplained) {
            let rung = self.rungs.iter().any(|(s, slot, at)| {
                *s == d.service && Some(*slot) == d.slot && (at - d.at).abs() <= 60.0
            });
            if rung {
                self.rebuilt
                    .push(format!("t={:.1}s {} (RebuildStorage)", d.at, d.what));
                continue;
            }
            self.violations.push(Violation {
                at: d.at,
                until: Some(d.at),
                kind: "claim-deleted",
                subject: d.service,
                details: format!(
                    "{} deleted although its node was not lost and the slot took no RebuildStorage rung: onVolumeLost: Recreate covers volumes lost with their node",
                    d.what
                ),
            });
        }
    }

    pub(crate) fn pods_of(&self, service: &str) -> Vec<&Pod> {
        self.pods
            .now
            .values()
            .filter(|p| label(p, LABEL_SERVICE) == Some(service))
            .collect()
    }

    pub(crate) fn ready_slots(pods: &[&Pod], replicas: i32) -> usize {
        (0..replicas)
            .filter(|s| {
                pods.iter()
                    .any(|p| slot_of(p) == Some(*s) && ready(p) && !terminating(p))
            })
            .count()
    }

    /// Every invariant on the state as it is now. A breach is an episode, recorded once
    /// from the first state that shows it to the first that no longer does.
    pub(crate) fn check(&mut self) {
        if !self.listed() {
            return;
        }
        let now = self.t();
        let mut found = Found::new();
        for (name, svc) in &self.services.now {
            let shape = Shape::of(svc);
            let pods: Vec<&Pod> = self
                .pods
                .now
                .values()
                .filter(|p| label(p, LABEL_SERVICE) == Some(name.as_str()))
                .collect();
            let describe = |pods: &[&Pod]| describe_pods(pods, &self.lost_nodes);

            let alive = pods.iter().filter(|p| live(p)).count() as i32;
            let over = alive - shape.ceiling;
            if self.closest_ceiling.as_ref().is_none_or(|(o, _)| over > *o) {
                self.closest_ceiling = Some((over, name.clone()));
            }
            if over > 0 {
                let details = format!(
                    "{alive} live pods, ceiling {} (replicas {}): {}",
                    shape.ceiling,
                    shape.replicas,
                    describe(&pods)
                );
                found.insert(
                    format!("ceiling/{name}"),
                    ("surge-ceiling", name.clone(), details),
                );
            }

            if shape.stateful {
                let mut by_slot: BTreeMap<i32, Vec<&Pod>> = BTreeMap::new();
                for p in pods.iter().filter(|p| !ended(p)) {
                    if let Some(s) = slot_of(p) {
                        by_slot.entry(s).or_default().push(p);
                    }
                }
                for (slot, shared) in by_slot.iter().filter(|(_, v)| v.len() > 1) {
                    found.insert(
                        format!("slot/{name}/{slot}"),
                        (
                            "stateful-slot-shared",
                            format!("{name} slot {slot}"),
                            describe(shared),
                        ),
                    );
                }
            }

            // Involuntary faults in effect: a pod on a lost node, or a pod a fault touched
            // (killed, or on a node while it was lost) still leaving, gone unready or lost.
            for p in pods.iter().filter(|p| !ended(p)) {
                if node_of(p).is_some_and(|n| self.lost_nodes.contains(n)) {
                    self.touched.insert(p.uid().unwrap_or_default());
                }
            }
            let in_effect = pods.iter().any(|p| {
                self.touched.contains(&p.uid().unwrap_or_default())
                    && (terminating(p)
                        || !ready(p)
                        || node_of(p).is_some_and(|n| self.lost_nodes.contains(n)))
            });
            let ready_slots = Self::ready_slots(&pods, shape.replicas);
            if in_effect && !self.disturbed.contains_key(name) {
                let level = ready_slots;
                self.disturbed
                    .insert(name.clone(), Disturbance { since: now, level });
                self.exclusions += 1;
            }
            let recovered = self
                .disturbed
                .get(name)
                .is_some_and(|d| !in_effect && ready_slots >= d.level);
            if let Some(d) = recovered.then(|| self.disturbed.remove(name)).flatten() {
                self.excluded_seconds += now - d.since;
                self.closed_windows.push((name.clone(), d.since, now));
            }

            if self.voluntary.get(name).is_some_and(|g| settled(svc, *g)) {
                self.voluntary.remove(name);
            }
            let rolling = self.voluntary.contains_key(name) || status_rolling(svc);
            if !rolling || shape.recreate || self.disturbed.contains_key(name) {
                self.floor_base.remove(name);
                continue;
            }
            // A rollout that begins below the floor (after an earlier failure) cannot be
            // held to it, only to never losing Ready slots it has while below it.
            let base = self.floor_base.entry(name.clone()).or_insert(ready_slots);
            *base = (*base).max(ready_slots);
            let floor = shape.floor.min(*base as i32);
            self.floor_checks += 1;
            let margin = ready_slots as i32 - floor;
            if self
                .tightest_floor
                .as_ref()
                .is_none_or(|(m, _)| margin < *m)
            {
                self.tightest_floor = Some((margin, name.clone()));
            }
            if margin < 0 {
                let s = svc.status.clone().unwrap_or_default();
                let details = format!(
                    "{ready_slots}/{} slots Ready during a rollout, floor {floor} (spec {}): {}; current {:?}, update {:?}, rollout {:?}; last pod changes: {:?}",
                    shape.replicas,
                    shape.floor,
                    describe(&pods),
                    s.current_revision,
                    s.update_revision,
                    s.rollout.as_ref().map(|r| (&r.progress, &r.waiting_for)),
                    self.history.get(name)
                );
                found.insert(
                    format!("floor/{name}"),
                    ("availability-floor", name.clone(), details),
                );
            }
        }
        settle_episodes(
            &mut self.open,
            &mut self.violations,
            found,
            now,
            self.verbose,
        );
    }

    /// An involuntary fault is about to hit `service` (its pod `victim`, when one is
    /// killed): the floor waits for its recovery.
    pub(crate) fn involuntary(&mut self, service: &str, victim: Option<&str>) {
        if let Some(uid) = victim
            .and_then(|v| self.pods.now.get(v))
            .and_then(|p| p.uid())
        {
            self.touched.insert(uid);
        }
        let replicas = self
            .services
            .now
            .get(service)
            .map_or(0, |s| s.spec.replicas.max(0));
        let level = Self::ready_slots(&self.pods_of(service), replicas);
        let since = self.t();
        if !self.disturbed.contains_key(service) {
            self.disturbed
                .insert(service.to_string(), Disturbance { since, level });
            self.exclusions += 1;
        }
    }

    /// `node` is about to be lost: every service with a pod there is disturbed now, while
    /// its pods there still look Ready.
    pub(crate) fn node_lost(&mut self, node: &str) {
        let hit: BTreeSet<String> = self
            .pods
            .now
            .values()
            .filter(|p| !ended(p) && node_of(p) == Some(node))
            .filter_map(|p| label(p, LABEL_SERVICE).map(str::to_string))
            .collect();
        for service in hit {
            self.involuntary(&service, None);
        }
        self.lost_nodes.insert(node.to_string());
    }

    /// The windows of involuntary faults on `service` up to `now`, one still open included.
    pub(crate) fn fault_windows(&self, service: &str, now: f64) -> Vec<(f64, f64)> {
        let open = self.disturbed.get(service).map(|d| (d.since, now));
        (self.closed_windows.iter())
            .filter(|(s, _, _)| s == service)
            .map(|(_, from, to)| (*from, *to))
            .chain(open)
            .collect()
    }

    pub(crate) fn node_back(&mut self, node: &str) {
        if self.lost_nodes.remove(node) {
            let t = self.t();
            self.back_at.insert(node.to_string(), t);
        }
    }

    /// The pod to kill in `slot` of `service`: one not already leaving.
    pub(crate) fn victim(&self, service: &str, slot: i32) -> Option<String> {
        self.pods_of(service)
            .into_iter()
            .find(|p| slot_of(p) == Some(slot) && !terminating(p))
            .map(|p| p.name_any())
    }

    /// The pod whose container to kill in `slot` of `service`, or else in another slot: one
    /// not leaving, whose container runs, on a node that is not down.
    pub(crate) fn running_victim(&self, service: &str, slot: i32) -> Option<String> {
        let running = |p: &&Pod| {
            !terminating(p)
                && node_of(p).is_some_and(|n| !self.lost_nodes.contains(n))
                && (p.status.as_ref())
                    .and_then(|s| s.container_statuses.as_ref())
                    .and_then(|cs| cs.first())
                    .and_then(|c| c.state.as_ref())
                    .is_some_and(|s| s.running.is_some())
        };
        let pods = self.pods_of(service);
        (pods.into_iter().filter(running))
            .min_by_key(|p| slot_of(p) != Some(slot))
            .map(|p| p.name_any())
    }

    pub(crate) fn generation(&self, service: &str) -> i64 {
        self.services
            .now
            .get(service)
            .and_then(|s| s.metadata.generation)
            .unwrap_or(0)
    }

    /// Services a person would turn to once the faults stop: a bad template with
    /// rollback: Manual, or a rollout stopped for a person after a failure the faults
    /// caused. A bad template with rollback: Automatic stays: its rollback is awaited.
    pub(crate) fn need_a_new_template(&self) -> Vec<String> {
        self.services
            .now
            .iter()
            .filter(|(_, s)| {
                let bad = s
                    .spec
                    .template
                    .metadata
                    .as_ref()
                    .and_then(|m| m.labels.as_ref())
                    .is_some_and(|l| l.contains_key(CHAOS_LABEL));
                let manual = s.spec.update.rollback == RollbackPolicy::Manual;
                let stopped = s
                    .status
                    .as_ref()
                    .is_some_and(|st| st.reason.as_deref() == Some("RolloutFailed"));
                (bad && manual) || stopped
            })
            .map(|(n, _)| n.clone())
            .collect()
    }
}

pub(crate) fn spawn_monitor(
    ns: &TestNamespace,
    monitor: Arc<Mutex<Monitor>>,
) -> tokio::task::JoinHandle<()> {
    pub(crate) fn watch<K>(
        api: Api<K>,
        wrap: fn(watcher::Event<K>) -> Seen,
    ) -> BoxStream<'static, Seen>
    where
        K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
        K::DynamicType: Default,
    {
        watcher(api, watcher::Config::default())
            .default_backoff()
            .map(move |e| match e {
                Ok(e) => wrap(e),
                Err(e) => Seen::Error(e.to_string()),
            })
            .boxed()
    }
    let mut all = stream::select_all(vec![
        watch(ns.api::<Pod>(), |e| Seen::Pod(Box::new(e))),
        watch(ns.api::<ResilientService>(), |e| Seen::Service(Box::new(e))),
        watch(ns.api::<PersistentVolumeClaim>(), |e| {
            Seen::Claim(Box::new(e))
        }),
    ]);
    tokio::spawn(async move {
        while let Some(seen) = all.next().await {
            let mut m = lock(&monitor);
            m.apply(seen);
            m.check();
        }
    })
}
