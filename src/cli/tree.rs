//! `get`: the service as a tree a person reads at a glance.

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

use super::history;
use super::style::{age, columns, duration, paint_row, state_tone, Style, Tone};
use super::verdict::{judge, Verdict};
use super::Snapshot;
use crate::api::{condition, ReplicaStatus, LABEL_REVISION, LABEL_SLOT};

const BRANCH: &str = "├── ";
const LAST: &str = "└── ";
const UNDER_BRANCH: &str = "│   ";
const UNDER_LAST: &str = "    ";

/// The whole tree, ending in a newline.
pub fn render(snapshot: &Snapshot, now: Timestamp, style: Style) -> String {
    let svc = &snapshot.service;
    let status = svc.status.clone().unwrap_or_default();
    let mut out = Vec::new();
    let title = format!(
        "{} {}",
        style.paint(Tone::Bold, &snapshot.name()),
        style.paint(
            Tone::Faint,
            &format!(
                "(ResilientService, namespace {})",
                svc.namespace().unwrap_or_default()
            )
        )
    );
    out.push(title);
    let degraded = (status.conditions.iter())
        .find(|c| c.type_ == condition::DEGRADED && c.status == "True")
        .map(|c| format!("{}: {}", c.reason, c.message));
    let (word, tone, message) = match (judge(snapshot), degraded) {
        (Verdict::Failed(m), _) => ("Failing", Tone::Bad, m),
        (_, Some(m)) => ("Degraded", Tone::Bad, m),
        // No rollout, yet on its way: a repair is what it waits for.
        (Verdict::Waiting(m), None) if status.rollout.is_none() && repairing(&status) => {
            ("Repairing", Tone::Busy, m)
        }
        (Verdict::Waiting(m), None) => ("Progressing", Tone::Busy, m),
        (Verdict::Done(m), None) => ("Healthy", Tone::Good, m),
        (Verdict::Degraded(m), None) => ("Degraded", Tone::Bad, m),
    };
    out.push(format!(
        "  Status:      {} {message}",
        style.paint(tone, word)
    ));
    out.push(format!(
        "  Replicas:    {} desired · {} current · {} ready · {} available · {} updated",
        svc.spec.replicas,
        status.replicas,
        status.ready_replicas,
        status.available_replicas,
        status.updated_replicas
    ));
    out.push(format!("  Conditions:  {}", conditions(snapshot, style)));
    if svc.spec.paused {
        out.push(format!(
            "  Paused:      {}",
            style.paint(
                Tone::Busy,
                "yes: no pod moves to a new revision until resumed"
            )
        ));
    }
    out.push(format!("  Rollout:     {}", rollout(snapshot, now)));
    if !status.domains.is_empty() {
        let domains: Vec<String> = (status.domains.iter())
            .map(|(d, n)| format!("{d} {n}"))
            .collect();
        out.push(format!(
            "  Domains:     {} ({} ready per domain)",
            domains.join(" · "),
            svc.spec.redundancy.topology_key
        ));
    }
    out.push(String::new());
    out.push(style.paint(Tone::Bold, "Revisions"));
    out.extend(revisions(snapshot, style));
    out.push(style.paint(Tone::Bold, "Slots"));
    out.extend(slots(snapshot, now, style));
    let mut text = out.join("\n");
    text.push('\n');
    text
}

fn repairing(status: &crate::api::ResilientServiceStatus) -> bool {
    (status.replica_statuses.iter()).any(|r| r.state != "Ready")
}

fn conditions(snapshot: &Snapshot, style: Style) -> String {
    let status = snapshot.service.status.clone().unwrap_or_default();
    let mut parts = Vec::new();
    for type_ in [
        condition::AVAILABLE,
        condition::PROGRESSING,
        condition::DEGRADED,
        condition::ROLLED_BACK,
    ] {
        let Some(c) = status.conditions.iter().find(|c| c.type_ == type_) else {
            parts.push(format!("{type_} ?"));
            continue;
        };
        // True is good news for the first two conditions and bad news for the others.
        let good_when_true = type_ == condition::AVAILABLE || type_ == condition::PROGRESSING;
        let good = (c.status == "True") == good_when_true;
        let (mark, tone) = if good {
            ("✔", Tone::Good)
        } else {
            ("✖", Tone::Bad)
        };
        parts.push(format!(
            "{type_} {} {}",
            style.paint(tone, &format!("{mark} {}", c.status)),
            style.paint(Tone::Faint, &format!("({})", c.reason))
        ));
    }
    parts.join(" · ")
}

fn rollout(snapshot: &Snapshot, now: Timestamp) -> String {
    let svc = &snapshot.service;
    let status = svc.status.clone().unwrap_or_default();
    let Some(r) = &status.rollout else {
        return match &status.update_revision {
            Some(update) if status.current_revision.as_ref() == Some(update) => {
                format!("none: every replica runs {update}")
            }
            Some(update) => format!(
                "none going on; {update} is not rolled out ({})",
                status.reason.as_deref().unwrap_or("see Status")
            ),
            None => "none".into(),
        };
    };
    let mut parts = vec![format!(
        "{} → {} since {}",
        status.current_revision.as_deref().unwrap_or("?"),
        r.revision,
        age(now, &r.started_at)
    )];
    if !r.progress.is_empty() {
        parts.push(format!("new/available {}", r.progress));
    }
    if let (Some(step), Some(canary)) = (r.canary_step, &svc.spec.update.canary) {
        let of = canary.steps.len();
        let what = (canary.steps.get(step.max(0) as usize))
            .map(|s| match (&s.replicas, &s.pause) {
                (Some(n), _) => format!(
                    "replicas {}",
                    serde_json::to_string(n)
                        .unwrap_or_default()
                        .trim_matches('"')
                ),
                (_, Some(p)) => match p.seconds {
                    Some(secs) => format!("pause {}", duration(i64::from(secs))),
                    None => "pause until promoted".into(),
                },
                _ => "?".into(),
            })
            .unwrap_or_else(|| "done".into());
        parts.push(format!("canary step {} of {of} ({what})", step + 1));
    }
    if let Some(w) = &r.waiting_for {
        parts.push(format!("waiting for {w}"));
    }
    parts.join(" · ")
}

fn revisions(snapshot: &Snapshot, style: Style) -> Vec<String> {
    let rows = history::rows(snapshot);
    // Newest first: the one rolling out, then what undo would go back to.
    let shown: Vec<_> = rows.iter().rev().collect();
    if shown.is_empty() {
        return vec![format!("{LAST}none recorded yet")];
    }
    let widths = [
        shown
            .iter()
            .map(|r| r.number.to_string().len() + 1)
            .max()
            .unwrap_or(0),
        shown.iter().map(|r| r.name.len()).max().unwrap_or(0),
        shown
            .iter()
            .map(|r| r.roles.join(", ").len())
            .max()
            .unwrap_or(0),
        shown
            .iter()
            .map(|r| r.verdict.text().chars().count())
            .max()
            .unwrap_or(0),
        0,
    ];
    let count = shown.len();
    let mut lines = Vec::new();
    for (i, r) in shown.into_iter().enumerate() {
        let verdict = r.verdict.text();
        let roles = r.roles.join(", ");
        let line = columns(
            &[
                (format!("#{}", r.number), r.number.to_string().len() + 1),
                (r.name.clone(), r.name.len()),
                (style.paint(Tone::Bold, &roles), roles.len()),
                (
                    style.paint(r.verdict.tone(), &verdict),
                    verdict.chars().count(),
                ),
                (r.images.clone(), r.images.len()),
            ],
            &widths,
        );
        lines.push(format!(
            "{}{line}",
            if i + 1 == count { LAST } else { BRANCH }
        ));
    }
    lines
}

fn slots(snapshot: &Snapshot, now: Timestamp, style: Style) -> Vec<String> {
    let status = snapshot.service.status.clone().unwrap_or_default();
    let max_restarts = snapshot.service.spec.supervision.max_restarts;
    let entries: Vec<&ReplicaStatus> = status.replica_statuses.iter().collect();
    if entries.is_empty() {
        return vec![format!("{LAST}none reported yet")];
    }
    let row = |r: &ReplicaStatus| -> Vec<(String, Tone)> {
        let node = r.node.clone().unwrap_or_else(|| "-".into());
        let zone = (r.node.as_ref())
            .and_then(|n| snapshot.zones.get(n).cloned())
            .unwrap_or_else(|| "-".into());
        vec![
            (format!("slot {}", r.ordinal), Tone::Bold),
            (
                r.pod.clone().unwrap_or_else(|| "(no pod)".into()),
                Tone::Bold,
            ),
            (r.state.clone(), state_tone(&r.state)),
            (r.revision.clone().unwrap_or_else(|| "-".into()), Tone::Bold),
            (format!("node {node}"), Tone::Bold),
            (format!("zone {zone}"), Tone::Bold),
            (
                format!("restarts {}/{max_restarts}", r.restarts_in_window),
                if r.restarts_in_window > 0 {
                    Tone::Busy
                } else {
                    Tone::Bold
                },
            ),
            (
                format!("rung {}", r.escalation.as_deref().unwrap_or("-")),
                Tone::Bold,
            ),
        ]
    };
    let rows: Vec<Vec<(String, Tone)>> = entries.iter().map(|r| row(r)).collect();
    let mut widths = vec![0; rows[0].len()];
    for cells in &rows {
        for (w, (text, _)) in widths.iter_mut().zip(cells) {
            *w = (*w).max(text.chars().count());
        }
    }
    let count = entries.len();
    let mut lines = Vec::new();
    for (i, (entry, cells)) in entries.iter().zip(rows).enumerate() {
        let last = i + 1 == count;
        let painted = paint_row(style, cells);
        lines.push(format!(
            "{}{}",
            if last { LAST } else { BRANCH },
            columns(&painted, &widths)
        ));
        let indent = if last { UNDER_LAST } else { UNDER_BRANCH };
        let mut details = Vec::new();
        if let Some(f) = &entry.last_failure {
            let recovered = (f.recovered_at.as_ref())
                .map(|t| format!(", recovered {} ago", age(now, t)))
                .unwrap_or_default();
            let tone = if f.recovered_at.is_some() {
                Tone::Faint
            } else {
                Tone::Bad
            };
            details.push(style.paint(
                tone,
                &format!(
                    "last failure {} {} ago{recovered}: {}",
                    f.reason,
                    age(now, &f.at),
                    f.message
                ),
            ));
        }
        if let Some(w) = &entry.waiting_for {
            details.push(format!("waiting for {w}"));
        }
        if let Some(n) = &entry.avoid_node {
            details.push(format!(
                "avoids node {n} ({})",
                entry.avoid_node_reason.as_deref().unwrap_or("?")
            ));
        }
        for pod in other_pods(snapshot, entry) {
            details.push(style.paint(Tone::Faint, &pod));
        }
        let n = details.len();
        for (j, d) in details.into_iter().enumerate() {
            let branch = if j + 1 == n { LAST } else { BRANCH };
            lines.push(format!("{indent}{branch}{d}"));
        }
    }
    lines
}

/// The slot's pods besides the one the ledger names: a surge pod, one that drains or
/// terminates.
fn other_pods(snapshot: &Snapshot, entry: &ReplicaStatus) -> Vec<String> {
    let slot = entry.ordinal.to_string();
    (snapshot.pods.iter())
        .filter(|p| p.labels().get(LABEL_SLOT) == Some(&slot))
        .filter(|p| Some(p.name_any()) != entry.pod)
        .map(|p| {
            format!(
                "also pod {} ({}, {})",
                p.name_any(),
                p.labels()
                    .get(LABEL_REVISION)
                    .map(String::as_str)
                    .unwrap_or("?"),
                pod_phase(p)
            )
        })
        .collect()
}

fn pod_phase(p: &Pod) -> String {
    if p.metadata.deletion_timestamp.is_some() {
        return "Terminating".into();
    }
    let status = p.status.as_ref();
    let ready = (status
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten())
    .any(|c| c.type_ == "Ready" && c.status == "True");
    match (status.and_then(|s| s.phase.clone()), ready) {
        (_, true) => "Ready".into(),
        (Some(phase), false) => phase,
        (None, false) => "Pending".into(),
    }
}

#[cfg(test)]
mod tests;
