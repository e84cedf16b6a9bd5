//! `ledger`: each slot's failures and repairs, then the service's Events.

use jiff::Timestamp;

use super::snapshot::event_time;
use super::style::{age, state_tone, Style, Tone};
use super::Snapshot;

/// How many of the newest Events the ledger shows.
pub const EVENTS_SHOWN: usize = 15;

/// The ledger, ending in a newline.
pub fn render(snapshot: &Snapshot, now: Timestamp, style: Style) -> String {
    let svc = &snapshot.service;
    let status = svc.status.clone().unwrap_or_default();
    let supervision = &svc.spec.supervision;
    let mut out = vec![format!(
        "{}: restart intensity {} repairs in {} s per slot, escalation {}",
        style.paint(Tone::Bold, &snapshot.name()),
        supervision.max_restarts,
        supervision.period_seconds,
        serde_json::to_string(&supervision.escalation)
            .unwrap_or_default()
            .replace(['[', ']', '"'], "")
            .replace(',', " → ")
    )];
    if status.replica_statuses.is_empty() {
        out.push("  no slot reported yet".into());
    }
    for r in &status.replica_statuses {
        out.push(String::new());
        out.push(format!(
            "slot {}  {}  pod {} on node {}",
            r.ordinal,
            style.paint(state_tone(&r.state), &r.state),
            r.pod.as_deref().unwrap_or("-"),
            r.node.as_deref().unwrap_or("-")
        ));
        let times: Vec<String> = r
            .repairs
            .iter()
            .map(|t| format!("{} ago", age(now, t)))
            .collect();
        out.push(format!(
            "  repairs in window: {}{}{}",
            r.restarts_in_window,
            if times.is_empty() {
                String::new()
            } else {
                format!(" ({})", times.join(", "))
            },
            (r.escalation.as_ref())
                .map(|e| format!("; last rung {e}"))
                .unwrap_or_default()
        ));
        match &r.last_failure {
            Some(f) => {
                let recovered = (f.recovered_at.as_ref())
                    .map(|t| format!(", recovered {} ago", age(now, t)))
                    .unwrap_or_else(|| ", not recovered".into());
                let tone = if f.recovered_at.is_some() {
                    Tone::Faint
                } else {
                    Tone::Bad
                };
                out.push(format!(
                    "  last failure: {}",
                    style.paint(
                        tone,
                        &format!(
                            "{} {} ago{recovered}: {}",
                            f.reason,
                            age(now, &f.at),
                            f.message
                        )
                    )
                ));
            }
            None => out.push("  last failure: none in the ledger".into()),
        }
        if let Some(n) = &r.avoid_node {
            out.push(format!(
                "  avoids node {n} ({})",
                r.avoid_node_reason.as_deref().unwrap_or("?")
            ));
        }
        if let Some(w) = &r.waiting_for {
            out.push(format!("  waiting for {w}"));
        }
    }
    out.push(String::new());
    out.push(style.paint(Tone::Bold, "Events (newest last)"));
    if snapshot.events.is_empty() {
        out.push("  none kept by the API server".into());
    }
    let skip = snapshot.events.len().saturating_sub(EVENTS_SHOWN);
    for e in snapshot.events.iter().skip(skip) {
        let when = event_time(e)
            .map(|t| {
                age(
                    now,
                    &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(t),
                )
            })
            .unwrap_or_else(|| "?".into());
        let kind = e.type_.as_deref().unwrap_or("Normal");
        let tone = if kind == "Warning" {
            Tone::Bad
        } else {
            Tone::Faint
        };
        let count = e
            .count
            .filter(|c| *c > 1)
            .map(|c| format!(" (×{c})"))
            .unwrap_or_default();
        out.push(format!(
            "  {when:>7} ago  {}  {}{count}: {}",
            style.paint(tone, kind),
            e.reason.as_deref().unwrap_or("-"),
            e.message.as_deref().unwrap_or("")
        ));
    }
    let mut text = out.join("\n");
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::fixtures::{node_loss, NOW};
    use serde_json::json;

    #[test]
    fn the_ledger_tells_each_slots_repairs_and_failures_and_the_newest_events() {
        let mut snap = node_loss();
        snap.events = (0..20)
            .map(|i| {
                serde_json::from_value(json!({
                    "metadata": {"name": format!("e{i}"), "namespace": "shop"},
                    "involvedObject": {"kind": "ResilientService", "name": "web"},
                    "type": if i == 19 { "Warning" } else { "Normal" },
                    "reason": format!("R{i}"), "message": format!("event {i}"), "count": if i == 19 { 3 } else { 1 },
                    "lastTimestamp": format!("2026-01-01T11:{:02}:00Z", 30 + i)
                }))
                .unwrap()
            })
            .collect();
        let text = render(&snap, NOW.parse().unwrap(), Style::PLAIN);
        assert!(text.contains(
            "slot 1  Repairing  pod web-1-c on node kwok-3\n  repairs in window: 1 (30s ago); last rung Reschedule\n  \
             last failure: NodeLost 42s ago, not recovered: node kwok-2 stopped renewing its lease 41 s ago\n  \
             avoids node kwok-2 (NodeLost)\n  waiting for pod web-1-c to be Ready\n"
        ), "{text}");
        assert!(text.contains(
            "last failure: CrashLoopBackOff 20m0s ago, recovered 10m0s ago: app exited 1"
        ));
        assert!(text.contains("slot 0  Ready  pod web-0-a on node kwok-1\n  repairs in window: 0\n  last failure: none in the ledger\n"));
        // The newest EVENTS_SHOWN, oldest of them first, the last with its count.
        assert!(
            !text.contains("event 4\n") && text.contains("event 5\n"),
            "{text}"
        );
        assert!(
            text.ends_with("   11m0s ago  Warning  R19 (×3): event 19\n"),
            "{text}"
        );
    }
}
