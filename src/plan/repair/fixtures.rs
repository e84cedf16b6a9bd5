//! A service and what was judged of it, for the tests of the repair steps.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::api::{ReplicaStatus, ResilientService};
use crate::build::{pod_name, revision_name};
use crate::health::{Assessment, ClaimView, PodState, PodView, RevisionView, ServiceState};

pub fn now() -> Timestamp {
    Timestamp::from_second(1_800_000_000).unwrap()
}

pub fn ago(seconds: i64) -> Timestamp {
    Timestamp::from_second(now().as_second() - seconds).unwrap()
}

/// `replicas` replicas, with one ReadWriteOnce claim each when `storage`.
pub fn service(replicas: i32, storage: bool) -> ResilientService {
    let mut spec = serde_json::json!({
        "replicas": replicas,
        "template": {"spec": {"containers": [{"name": "app", "image": "example/app:1"}]}},
    });
    if storage {
        spec["volumeClaimTemplates"] = serde_json::json!([{
            "metadata": {"name": "data"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}
        }]);
    }
    serde_json::from_value(serde_json::json!({
        "apiVersion": "perennial.dev/v1alpha1", "kind": "ResilientService",
        "metadata": {"name": "web", "namespace": "shop", "uid": "u-1", "generation": 1},
        "spec": spec,
    }))
    .expect("a valid service")
}

/// Every slot Ready on node-<slot % 3>, with its claim when the service has storage.
pub fn converged(svc: &ResilientService) -> Assessment {
    let rev = revision_name(svc);
    let replicas = svc.spec.replicas;
    Assessment {
        now: now(),
        pods: (0..replicas)
            .map(|slot| PodView {
                name: pod_name(svc, slot, &rev),
                slot,
                revision: rev.clone(),
                node: Some(format!("node-{}", slot % 3)),
                state: PodState::Ready { since: ago(1000) },
                serving: Default::default(),
                avoids: None,
            })
            .collect(),
        strays: vec![],
        claims: svc
            .spec
            .volume_claim_templates
            .iter()
            .flat_map(|t| {
                (0..replicas).map(move |slot| ClaimView {
                    name: format!("{}-web-{slot}", t.metadata.name),
                    slot,
                    template: t.metadata.name.clone(),
                    deleting: false,
                    lost_with: None,
                })
            })
            .collect(),
        revisions: vec![RevisionView {
            name: rev.clone(),
            number: 1,
            bad: false,
            intact: true,
            in_place_key: None,
        }],
        refused: Default::default(),
        service: ServiceState::Ours { up_to_date: true },
        budget_up_to_date: Some(true),
        node_domains: Default::default(),
        nodes_total: 3,
        nodes_lost: 0,
        node_recheck_seconds: None,
        nodes_back: Default::default(),
        fences: vec![],
    }
}

pub fn lost(fenced: bool) -> PodState {
    lost_for(41, fenced)
}

pub fn lost_for(seconds: i64, fenced: bool) -> PodState {
    PodState::OnLostNode {
        message: format!("node node-1 has not renewed its lease for {seconds} s"),
        fenced,
        deleting: false,
    }
}

pub fn crash() -> PodState {
    PodState::CrashLooping {
        reason: "CrashLoopBackOff".into(),
        message: "container app restarted 3 times".into(),
        restarts: 3,
    }
}

/// Records repairs of `slot`, `ages` seconds ago, in the service's ledger.
pub fn with_repairs(svc: &mut ResilientService, slot: i32, ages: &[i64]) {
    let mut status = svc.status.clone().unwrap_or_default();
    status.replica_statuses.push(ReplicaStatus {
        ordinal: slot,
        repairs: ages.iter().map(|a| Time(ago(*a))).collect(),
        ..Default::default()
    });
    svc.status = Some(status);
}
