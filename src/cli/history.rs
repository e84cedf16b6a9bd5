//! `history`: the recorded revisions, what each changed and what became of it.

use k8s_openapi::api::core::v1::PodTemplateSpec;
use kube::ResourceExt;
use serde_json::Value;

use super::style::{columns, paint_row, Style, Tone};
use super::Snapshot;
use crate::api::{ANNOTATION_BAD_REVISION, ANNOTATION_INVALID_TEMPLATE, ANNOTATION_RESTARTED_AT};
use crate::build;

/// One revision as `history` and `get` show it.
#[derive(Clone, Debug, PartialEq)]
pub struct RevisionRow {
    pub number: i64,
    pub name: String,
    /// `stable`, `update`, both, or neither.
    pub roles: Vec<&'static str>,
    pub verdict: RevisionVerdict,
    /// What this revision changed from the one before it.
    pub change: String,
    /// `container=image` of each container.
    pub images: String,
}

/// What became of a revision.
#[derive(Clone, Debug, PartialEq)]
pub enum RevisionVerdict {
    /// Every replica runs it.
    Serving,
    /// It is being rolled out.
    RollingOut,
    /// It failed and was rolled back (or aborted), with the reason.
    Failed(String),
    /// The API server refused its pods, with the server's message.
    Refused(String),
    /// An older revision, kept for undo.
    Superseded,
}

impl RevisionVerdict {
    pub fn text(&self) -> String {
        match self {
            RevisionVerdict::Serving => "serving".into(),
            RevisionVerdict::RollingOut => "rolling out".into(),
            RevisionVerdict::Failed(why) => format!("failed: {why}"),
            RevisionVerdict::Refused(why) => format!("refused: {why}"),
            RevisionVerdict::Superseded => "superseded".into(),
        }
    }

    pub fn tone(&self) -> Tone {
        match self {
            RevisionVerdict::Serving => Tone::Good,
            RevisionVerdict::RollingOut => Tone::Busy,
            RevisionVerdict::Failed(_) | RevisionVerdict::Refused(_) => Tone::Bad,
            RevisionVerdict::Superseded => Tone::Faint,
        }
    }
}

/// Every recorded revision, oldest first.
pub fn rows(snapshot: &Snapshot) -> Vec<RevisionRow> {
    let status = snapshot.service.status.clone().unwrap_or_default();
    // Changes are told against the revision numbered before: an undo reuses an old
    // number, so the order of numbers is not always the order of rollouts.
    let mut previous: Option<(i64, PodTemplateSpec)> = None;
    let mut rows = Vec::new();
    for r in &snapshot.revisions {
        let name = r.name_any();
        let template = build::recorded_template(r);
        let stable = status.current_revision.as_deref() == Some(&name);
        let update = status.update_revision.as_deref() == Some(&name);
        let roles = [("stable", stable), ("update", update)]
            .into_iter()
            .filter_map(|(role, is)| is.then_some(role))
            .collect();
        let annotations = r.annotations();
        let verdict = if let Some(why) = annotations.get(ANNOTATION_BAD_REVISION) {
            RevisionVerdict::Failed(why.clone())
        } else if let Some(why) = annotations.get(ANNOTATION_INVALID_TEMPLATE) {
            RevisionVerdict::Refused(why.clone())
        } else if update && !stable {
            RevisionVerdict::RollingOut
        } else if stable {
            RevisionVerdict::Serving
        } else {
            RevisionVerdict::Superseded
        };
        let change = match (&previous, &template) {
            (_, None) => "not a template this operator recorded".to_string(),
            (None, Some(_)) => "first recorded revision".to_string(),
            (Some((number, before)), Some(now)) => {
                format!("from #{number}: {}", describe_change(before, now))
            }
        };
        rows.push(RevisionRow {
            number: r.revision,
            name,
            roles,
            verdict,
            change,
            images: template.as_ref().map(images).unwrap_or_default(),
        });
        if let Some(t) = template {
            previous = Some((r.revision, t));
        }
    }
    rows
}

/// `container=image` of each container (init containers too, marked).
pub fn images(template: &PodTemplateSpec) -> String {
    let Some(spec) = &template.spec else {
        return String::new();
    };
    let init = (spec.init_containers.iter().flatten())
        .map(|c| format!("init {}={}", c.name, c.image.as_deref().unwrap_or("?")));
    let main = (spec.containers.iter())
        .map(|c| format!("{}={}", c.name, c.image.as_deref().unwrap_or("?")));
    init.chain(main).collect::<Vec<_>>().join(", ")
}

/// What changed from `before` to `after`, briefly: images by container, then the other
/// fields of each container, of the pod spec and of the metadata that differ.
pub fn describe_change(before: &PodTemplateSpec, after: &PodTemplateSpec) -> String {
    let b = serde_json::to_value(before).unwrap_or_default();
    let a = serde_json::to_value(after).unwrap_or_default();
    let mut parts = Vec::new();
    for (list, prefix) in [("initContainers", "init "), ("containers", "")] {
        parts.extend(container_changes(
            &b["spec"][list],
            &a["spec"][list],
            prefix,
        ));
    }
    let spec_keys = differing_keys(&b["spec"], &a["spec"], &["containers", "initContainers"]);
    if !spec_keys.is_empty() {
        parts.push(format!("spec: {}", spec_keys.join(", ")));
    }
    let annotations = differing_keys(
        &b["metadata"]["annotations"],
        &a["metadata"]["annotations"],
        &[],
    );
    if annotations.iter().any(|k| k == ANNOTATION_RESTARTED_AT) {
        parts.push("restart".to_string());
    }
    let others: Vec<String> = (annotations.into_iter())
        .filter(|k| k != ANNOTATION_RESTARTED_AT)
        .collect();
    if !others.is_empty() {
        parts.push(format!("annotations: {}", others.join(", ")));
    }
    let labels = differing_keys(&b["metadata"]["labels"], &a["metadata"]["labels"], &[]);
    if !labels.is_empty() {
        parts.push(format!("labels: {}", labels.join(", ")));
    }
    if parts.is_empty() {
        "same template".to_string()
    } else {
        parts.join("; ")
    }
}

fn container_changes(before: &Value, after: &Value, prefix: &str) -> Vec<String> {
    let by_name = |v: &Value| -> Vec<(String, Value)> {
        (v.as_array().into_iter().flatten())
            .map(|c| (c["name"].as_str().unwrap_or("?").to_string(), c.clone()))
            .collect()
    };
    let (b, a) = (by_name(before), by_name(after));
    let mut out = Vec::new();
    for (name, now) in &a {
        match b.iter().find(|(n, _)| n == name) {
            None => out.push(format!("{prefix}{name} added")),
            Some((_, was)) => {
                if was["image"] != now["image"] {
                    out.push(format!(
                        "{prefix}{name}: {} → {}",
                        was["image"].as_str().unwrap_or("?"),
                        now["image"].as_str().unwrap_or("?")
                    ));
                }
                let keys = differing_keys(was, now, &["image"]);
                if !keys.is_empty() {
                    out.push(format!("{prefix}{name}: {}", keys.join(", ")));
                }
            }
        }
    }
    for (name, _) in &b {
        if !a.iter().any(|(n, _)| n == name) {
            out.push(format!("{prefix}{name} removed"));
        }
    }
    out
}

/// The keys whose values differ between two JSON objects (a missing object is empty).
fn differing_keys(before: &Value, after: &Value, skip: &[&str]) -> Vec<String> {
    let empty = serde_json::Map::new();
    let b = before.as_object().unwrap_or(&empty);
    let a = after.as_object().unwrap_or(&empty);
    let mut keys: Vec<String> = (b.keys().chain(a.keys()))
        .filter(|k| !skip.contains(&k.as_str()) && b.get(*k) != a.get(*k))
        .cloned()
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

/// The `history` table.
pub fn render(snapshot: &Snapshot, style: Style) -> String {
    let rows = rows(snapshot);
    if rows.is_empty() {
        return format!("{} has no recorded revision yet\n", snapshot.name());
    }
    let header = ["REVISION", "NAME", "ROLE", "VERDICT", "CHANGE"];
    let cells: Vec<Vec<(String, Tone)>> = (rows.iter())
        .map(|r| {
            vec![
                (r.number.to_string(), Tone::Bold),
                (r.name.clone(), Tone::Bold),
                (r.roles.join(", "), Tone::Bold),
                (r.verdict.text(), r.verdict.tone()),
                (r.change.clone(), Tone::Bold),
            ]
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &cells {
        for (w, (text, _)) in widths.iter_mut().zip(row) {
            *w = (*w).max(text.chars().count());
        }
    }
    let mut out = columns(&header.map(|h| (h.to_string(), h.chars().count())), &widths);
    out.push('\n');
    for row in cells {
        let painted = paint_row(style, row);
        out.push_str(&columns(&painted, &widths));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn template(v: Value) -> PodTemplateSpec {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn history_lists_each_revision_with_its_role_verdict_and_change_from_the_one_before() {
        let text = render(&crate::cli::fixtures::node_loss(), Style::PLAIN);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0].split_whitespace().collect::<Vec<_>>(),
            ["REVISION", "NAME", "ROLE", "VERDICT", "CHANGE"]
        );
        assert!(
            lines[1].starts_with("1  ")
                && lines[1].ends_with(
                    "superseded                                           first recorded revision"
                ),
            "{text}"
        );
        assert!(
            lines[2].contains(
                "failed: CrashLoopBackOff: app exited 1 (4 restarts)  from #1: app: web:1 → web:2"
            ),
            "{text}"
        );
        assert!(
            lines[3].contains("stable, update  serving")
                && lines[3].ends_with("from #2: app: web:2 → web:3"),
            "{text}"
        );
    }

    #[test]
    fn a_new_image_is_told_as_the_container_and_both_images() {
        let a = template(json!({"spec": {"containers": [{"name": "app", "image": "web:1"}]}}));
        let b = template(json!({"spec": {"containers": [{"name": "app", "image": "web:2"}]}}));
        assert_eq!(describe_change(&a, &b), "app: web:1 → web:2");
    }

    #[test]
    fn other_changes_name_the_fields_that_differ() {
        let a = template(json!({"spec": {"containers": [{"name": "app", "image": "web:1"}]}}));
        let b = template(json!({
            "metadata": {"annotations": {"perennial.dev/restarted-at": "now", "team": "x"}},
            "spec": {"nodeSelector": {"disk": "ssd"},
                     "containers": [{"name": "app", "image": "web:1", "env": [{"name": "A", "value": "1"}]},
                                    {"name": "sidecar", "image": "proxy:1"}]}
        }));
        assert_eq!(
            describe_change(&a, &b),
            "app: env; sidecar added; spec: nodeSelector; restart; annotations: team"
        );
        assert_eq!(
            describe_change(&b, &a),
            "app: env; sidecar removed; spec: nodeSelector; restart; annotations: team"
        );
        assert_eq!(describe_change(&a, &a), "same template");
    }
}
