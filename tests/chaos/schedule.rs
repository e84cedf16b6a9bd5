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
        }
    }
}

/// Kinds drawn after every kind has had its turn, with their weights.
pub(crate) const WEIGHTS: [(Kind, usize); 8] = [
    (Kind::PodKill, 6),
    (Kind::Rollout, 4),
    (Kind::BadRollout, 3),
    (Kind::NodeLost, 2),
    (Kind::OperatorKill, 2),
    (Kind::ApiServerRestart, 1),
    (Kind::EtcdRestart, 1),
    (Kind::ControllerManagerRestart, 1),
];

#[derive(Clone, Debug)]
pub(crate) enum Fault {
    PodKill { service: usize, slot: i32 },
    Rollout { service: usize },
    BadRollout { service: usize, mode: &'static str },
    NodeLost { node: usize },
    NodeBack { node: usize },
    OperatorKill { leader: bool },
    ApiServerRestart,
    EtcdRestart,
    ControllerManagerRestart,
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
        }
    }
}

pub(crate) struct Step {
    pub(crate) at: f64,
    pub(crate) fault: Fault,
}

/// The faults of a `seconds` long phase. Every kind comes once first, in a random order
/// (so that even a short run sees each), then kinds are drawn by weight among those that
/// may come now: at most MAX_LOST_NODES lost at once, control-plane restarts at least
/// CONTROL_PLANE_SPACING apart. A first turn that may not come yet waits for its time.
pub(crate) fn schedule(rng: &mut Rng, seconds: f64, profiles: &[Profile]) -> Vec<Step> {
    let mut deck: Vec<Kind> = WEIGHTS.iter().map(|(k, _)| *k).collect();
    for i in (1..deck.len()).rev() {
        deck.swap(i, rng.below(i + 1));
    }
    let mut waiting: Vec<Kind> = Vec::new();
    let mut steps = Vec::new();
    let mut lost: Vec<(usize, f64)> = Vec::new();
    let mut last_control_plane = f64::NEG_INFINITY;
    let mut t = rng.between(GAP_SECONDS);
    while t < seconds - 3.0 {
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
                service,
                mode: CHAOS_MODES[rng.below(CHAOS_MODES.len())],
            },
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
            Kind::NodeBack => unreachable!("node-back is scheduled with its loss"),
        };
        steps.push(Step { at: t, fault });
        t += rng.between(GAP_SECONDS);
    }
    // Nodes still lost when the phase ends come back with the other reverts.
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
