//! The seeded schedule: every fault and its offset, drawn from the seed before anything runs.

use super::*;

pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in 0..n (the modulo bias is below 2^-40 for the small n used here).
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    /// Uniform in [lo, hi).
    pub(crate) fn between(&mut self, (lo, hi): (f64, f64)) -> f64 {
        lo + (hi - lo) * ((self.next() >> 11) as f64 / (1u64 << 53) as f64)
    }
}

pub(crate) fn clock_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    // A seed short enough to type back.
    Rng(nanos ^ u64::from(std::process::id())).next() % 1_000_000_000
}

pub(crate) fn env_number(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value} is not a whole number")),
    )
}

// ------------------------------------------------------------------------------------------
// The schedule: every fault and its offset, drawn from the seed before anything runs

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Kind {
    PodKill,
    Rollout,
    BadRollout,
    NodeLost,
    NodeBack,
    OperatorKill,
    ApiServerRestart,
    EtcdRestart,
    ControllerManagerRestart,
    ContainerKill,
    NodeCrash,
    NodePartition,
    RealNodeBack,
}

impl Kind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::PodKill => "pod-kill",
            Kind::Rollout => "rollout",
            Kind::BadRollout => "bad-rollout",
            Kind::NodeLost => "node-lost",
            Kind::NodeBack => "node-back",
            Kind::OperatorKill => "operator-kill",
            Kind::ApiServerRestart => "apiserver-restart",
            Kind::EtcdRestart => "etcd-restart",
            Kind::ControllerManagerRestart => "controller-manager-restart",
            Kind::ContainerKill => "container-kill",
            Kind::NodeCrash => "node-crash",
            Kind::NodePartition => "node-partition",
            Kind::RealNodeBack => "real-node-back",
        }
    }
}

/// Kinds drawn after every kind has had its turn, with their weights.
pub(crate) const WEIGHTS: [(Kind, usize); 11] = [
    (Kind::PodKill, 6),
    (Kind::Rollout, 4),
    (Kind::BadRollout, 3),
    (Kind::NodeLost, 2),
    (Kind::OperatorKill, 2),
    (Kind::ApiServerRestart, 1),
    (Kind::EtcdRestart, 1),
    (Kind::ControllerManagerRestart, 1),
    (Kind::ContainerKill, 2),
    (Kind::NodeCrash, 1),
    (Kind::NodePartition, 1),
];

#[derive(Clone, Debug)]
pub(crate) enum Fault {
    PodKill {
        service: usize,
        slot: i32,
    },
    Rollout {
        service: usize,
    },
    BadRollout {
        service: usize,
        mode: &'static str,
    },
    NodeLost {
        node: usize,
    },
    NodeBack {
        node: usize,
    },
    OperatorKill {
        leader: bool,
    },
    ApiServerRestart,
    EtcdRestart,
    ControllerManagerRestart,
    /// SIGKILL of the main process of a real pod's container; its kubelet restarts it.
    ContainerKill {
        service: usize,
        slot: i32,
    },
    /// A real node goes down: crashed (kubelet, containerd and containers killed) or
    /// partitioned (the kubelet stops, its containers run on).
    RealNodeDown {
        node: usize,
        partition: bool,
    },
    RealNodeBack {
        node: usize,
    },
}

impl Fault {
    pub(crate) fn kind(&self) -> Kind {
        match self {
            Fault::PodKill { .. } => Kind::PodKill,
            Fault::Rollout { .. } => Kind::Rollout,
            Fault::BadRollout { .. } => Kind::BadRollout,
            Fault::NodeLost { .. } => Kind::NodeLost,
            Fault::NodeBack { .. } => Kind::NodeBack,
            Fault::OperatorKill { .. } => Kind::OperatorKill,
            Fault::ApiServerRestart => Kind::ApiServerRestart,
            Fault::EtcdRestart => Kind::EtcdRestart,
            Fault::ControllerManagerRestart => Kind::ControllerManagerRestart,
            Fault::ContainerKill { .. } => Kind::ContainerKill,
            Fault::RealNodeDown {
                partition: false, ..
            } => Kind::NodeCrash,
            Fault::RealNodeDown {
                partition: true, ..
            } => Kind::NodePartition,
            Fault::RealNodeBack { .. } => Kind::RealNodeBack,
        }
    }

    pub(crate) fn describe(&self, profiles: &[Profile]) -> String {
        match self {
            Fault::PodKill { service, slot } => {
                format!("pod-kill {} slot {slot}", profiles[*service].name)
            }
            Fault::Rollout { service } => format!("rollout {}", profiles[*service].name),
            Fault::BadRollout { service, mode } => {
                format!("bad-rollout {} ({mode})", profiles[*service].name)
            }
            Fault::NodeLost { node } => format!("node-lost node #{node}"),
            Fault::NodeBack { node } => format!("node-back node #{node}"),
            Fault::OperatorKill { leader: true } => "operator-kill (the leader)".into(),
            Fault::OperatorKill { leader: false } => "operator-kill (the standby)".into(),
            Fault::ApiServerRestart => "apiserver-restart".into(),
            Fault::EtcdRestart => "etcd-restart".into(),
            Fault::ControllerManagerRestart => "controller-manager-restart".into(),
            Fault::ContainerKill { service, slot } => {
                format!("container-kill {} slot {slot}", profiles[*service].name)
            }
            Fault::RealNodeDown { node, partition } => format!(
                "{} real node #{node}",
                if *partition {
                    "node-partition"
                } else {
                    "node-crash"
                }
            ),
            Fault::RealNodeBack { node } => format!("node-back real node #{node}"),
        }
    }
}

pub(crate) struct Step {
    pub(crate) at: f64,
    pub(crate) fault: Fault,
}

/// The faults of a `seconds` long phase. Every kind comes once first, in a random order
/// (so that even a short run sees each), then kinds are drawn by weight among those that
/// may come now: at most MAX_LOST_NODES KWOK nodes lost at once and one real node down,
/// control-plane restarts at least CONTROL_PLANE_SPACING apart. A first turn that may not
/// come yet waits for its time. Bad templates go to KWOK services (their misbehaviour is
/// KWOK's), container kills to real ones.
pub(crate) fn schedule(rng: &mut Rng, seconds: f64, profiles: &[Profile]) -> Vec<Step> {
    let mut deck: Vec<Kind> = WEIGHTS.iter().map(|(k, _)| *k).collect();
    for i in (1..deck.len()).rev() {
        deck.swap(i, rng.below(i + 1));
    }
    let mut waiting: Vec<Kind> = Vec::new();
    let mut steps = Vec::new();
    let mut lost: Vec<(usize, f64)> = Vec::new();
    let mut real_down: Option<(usize, f64)> = None;
    let mut last_control_plane = f64::NEG_INFINITY;
    let kwok: Vec<usize> = (0..profiles.len()).filter(|i| !profiles[*i].real).collect();
    let real: Vec<usize> = (0..profiles.len()).filter(|i| profiles[*i].real).collect();
    let mut t = rng.between(GAP_SECONDS);
    // The served service rolls out first, before any fault, so that even a short run counts
    // the client's requests through a rolling update outside a fault window.
    if let Some(service) = profiles.iter().position(|p| p.name == SERVED) {
        steps.push(Step {
            at: t,
            fault: Fault::Rollout { service },
        });
        t += GAP_SECONDS.1;
    }
    while t < seconds - 3.0 {
        if let Some((node, back)) = real_down.filter(|(_, back)| *back <= t) {
            steps.push(Step {
                at: back,
                fault: Fault::RealNodeBack { node },
            });
            real_down = None;
        }
        lost.retain(|&(node, back)| {
            let due = back <= t;
            if due {
                steps.push(Step {
                    at: back,
                    fault: Fault::NodeBack { node },
                });
            }
            !due
        });
        let allowed = |k: Kind| match k {
            Kind::NodeLost => lost.len() < MAX_LOST_NODES,
            Kind::NodeCrash | Kind::NodePartition => real_down.is_none(),
            Kind::ApiServerRestart | Kind::EtcdRestart | Kind::ControllerManagerRestart => {
                t - last_control_plane >= CONTROL_PLANE_SPACING
            }
            _ => true,
        };
        let kind = if let Some(i) = waiting.iter().position(|k| allowed(*k)) {
            waiting.remove(i)
        } else {
            loop {
                match deck.pop() {
                    Some(k) if allowed(k) => break k,
                    Some(k) => waiting.push(k),
                    None => {
                        let open: Vec<(Kind, usize)> = WEIGHTS
                            .iter()
                            .copied()
                            .filter(|(k, _)| allowed(*k))
                            .collect();
                        let mut x = rng.below(open.iter().map(|(_, w)| w).sum());
                        break open
                            .iter()
                            .find(|(_, w)| {
                                let hit = x < *w;
                                x = x.saturating_sub(*w);
                                hit
                            })
                            .map_or(Kind::PodKill, |(k, _)| *k);
                    }
                }
            }
        };
        let service = rng.below(profiles.len());
        let fault = match kind {
            Kind::PodKill => Fault::PodKill {
                service,
                slot: rng.below(profiles[service].replicas as usize) as i32,
            },
            Kind::Rollout => Fault::Rollout { service },
            Kind::BadRollout => Fault::BadRollout {
                service: kwok[service % kwok.len()],
                mode: CHAOS_MODES[rng.below(CHAOS_MODES.len())],
            },
            Kind::ContainerKill => {
                let service = real[service % real.len()];
                Fault::ContainerKill {
                    service,
                    slot: rng.below(profiles[service].replicas as usize) as i32,
                }
            }
            Kind::NodeCrash | Kind::NodePartition => {
                let node = rng.below(REAL_NODE_COUNT);
                real_down = Some((node, t + rng.between(NODE_LOST_SECONDS)));
                Fault::RealNodeDown {
                    node,
                    partition: kind == Kind::NodePartition,
                }
            }
            Kind::NodeLost => {
                let free: Vec<usize> = (0..NODES)
                    .filter(|n| lost.iter().all(|(l, _)| l != n))
                    .collect();
                let node = free[rng.below(free.len())];
                lost.push((node, t + rng.between(NODE_LOST_SECONDS)));
                Fault::NodeLost { node }
            }
            Kind::OperatorKill => Fault::OperatorKill {
                leader: rng.below(10) < 7,
            },
            Kind::ApiServerRestart => {
                last_control_plane = t;
                Fault::ApiServerRestart
            }
            Kind::EtcdRestart => {
                last_control_plane = t;
                Fault::EtcdRestart
            }
            Kind::ControllerManagerRestart => {
                last_control_plane = t;
                Fault::ControllerManagerRestart
            }
            Kind::NodeBack | Kind::RealNodeBack => {
                unreachable!("node-back is scheduled with its loss")
            }
        };
        steps.push(Step { at: t, fault });
        t += rng.between(GAP_SECONDS);
    }
    // Nodes still lost when the phase ends come back with the other reverts.
    if let Some((node, back)) = real_down.filter(|(_, back)| *back < seconds) {
        steps.push(Step {
            at: back,
            fault: Fault::RealNodeBack { node },
        });
    }
    for (node, back) in lost {
        if back < seconds {
            steps.push(Step {
                at: back,
                fault: Fault::NodeBack { node },
            });
        }
    }
    steps.sort_by(|a, b| a.at.total_cmp(&b.at));
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_node_faults_hit_one_real_node_at_a_time_kills_and_bad_templates_go_where_they_act_and_the_served_service_rolls_before_any_fault(
    ) {
        let profiles = profiles();
        for seed in 0..200 {
            let plan = schedule(&mut Rng(seed), 600.0, &profiles);
            let mut down: Option<usize> = None;
            let mut kinds = BTreeSet::new();
            for step in &plan {
                kinds.insert(step.fault.kind());
                match &step.fault {
                    Fault::RealNodeDown { node, .. } => {
                        assert!(down.is_none(), "seed {seed}: two real nodes down");
                        assert!(*node < REAL_NODE_COUNT);
                        down = Some(*node);
                    }
                    Fault::RealNodeBack { node } => {
                        assert_eq!(down, Some(*node), "seed {seed}: back without down");
                        down = None;
                    }
                    Fault::ContainerKill { service, slot } => {
                        assert!(profiles[*service].real, "seed {seed}: kill of a fake pod");
                        assert!(*slot < profiles[*service].replicas);
                    }
                    Fault::BadRollout { service, .. } => {
                        assert!(
                            !profiles[*service].real,
                            "seed {seed}: bad template on real nodes"
                        );
                    }
                    _ => {}
                }
            }
            assert!(
                matches!(plan[0].fault, Fault::Rollout { service } if profiles[service].name == SERVED),
                "seed {seed}: {}",
                plan[0].fault.describe(&profiles)
            );
            for kind in [Kind::ContainerKill, Kind::NodeCrash, Kind::NodePartition] {
                assert!(kinds.contains(&kind), "seed {seed}: no {}", kind.name());
            }
        }
    }
}
