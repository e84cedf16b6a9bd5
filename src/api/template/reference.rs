//! The reference page's table of what admission checks in `spec.template`: every field of
//! the template's schema in the CRD that carries an OpenAPI keyword or a CEL rule beyond its
//! type, and every field the CRD requires that Kubernetes' own schema does not.

use std::fmt::Write;

use serde_json::Value;

/// One checked field: its path, whether the schema or a CEL rule checks it, and the check.
struct Check {
    path: String,
    by: &'static str,
    rule: String,
}

/// The section, from the schema of `spec` in the CRD (its rules that name a field of the
/// template, and the template's schema) and k8s-openapi's schema of the template;
/// `describe` puts a schema's keywords into words, `rule_text` a CEL rule.
pub(crate) fn section(
    spec: &Value,
    describe: impl Fn(&Value) -> Vec<String>,
    rule_text: impl Fn(&Value) -> String,
) -> String {
    let base = super::base_schema();
    let mut checks = Vec::new();
    walk(
        "spec.template",
        &spec["properties"]["template"],
        &base,
        &describe,
        &rule_text,
        &mut checks,
    );
    for rule in spec["x-kubernetes-validations"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let Some(at) = rule["fieldPath"]
            .as_str()
            .filter(|f| f.starts_with(".template."))
        else {
            continue;
        };
        checks.push(Check {
            path: format!("spec{at}"),
            by: "CEL",
            rule: rule_text(rule).trim_start_matches("CEL: ").to_string(),
        });
    }
    let b = super::bounds();
    let mut out = String::new();
    let _ = writeln!(out, "## `spec.template` at admission\n");
    let _ = writeln!(
        out,
        "Beyond its types, `spec.template` is checked for what the API server's pod validation \
         would refuse in the pods made from it, so that a template that could never become a \
         pod is refused when the ResilientService is created or changed, with a message naming \
         the field. Two rules are a workload controller's rather than the pod's, as in a \
         Deployment's template: `restartPolicy` must be `Always` and `activeDeadlineSeconds` may \
         not be set, since a replica must never exit.\n"
    );
    let _ = writeln!(
        out,
        "Some limits exist only so that the API server can price the CEL rules; a pod has none \
         of them: at most {} `containers` and {} `initContainers`, {} `volumes`, {} \
         `volumeMounts` and {} `ports` per container, {} entries in a container's \
         `resources.requests` and in its `resources.limits`, and {} characters in a quantity \
         written as a string.\n",
        b.containers,
        b.containers,
        b.volumes,
        b.volume_mounts,
        b.ports,
        b.resources,
        b.quantity_length
    );
    let _ = writeln!(
        out,
        "What needs the cluster (feature gates, admission plugins, the objects a pod names) and \
         the rest of the pod validation are left to the API server when the operator creates a \
         pod: a pod it refuses as invalid marks its revision (annotation \
         `perennial.dev/invalid-template`), no pod of that revision is asked for again, and the \
         service is `Degraded` with reason `InvalidTemplate` and the server's message until \
         `spec.template` changes.\n"
    );
    let _ = writeln!(out, "| Field | Checked by | Check |");
    let _ = writeln!(out, "|---|---|---|");
    for (path, by, rules) in rows(&checks) {
        let _ = writeln!(out, "| `{path}` | {by} | {} |", rules.join("<br>"));
    }
    let _ = writeln!(out);
    out
}

/// Fields that carry the same checks, each set written once: `{containers,initContainers}`.
const ALIKE: [&[&str]; 5] = [
    &["containers", "initContainers"],
    &["livenessProbe", "readinessProbe", "startupProbe"],
    &["postStart", "preStop"],
    &["httpGet", "tcpSocket"],
    &["requests", "limits"],
];

/// The table's rows: checks that differ only in a field of an ALIKE set become one, and the
/// checks of one field by one kind share a row.
fn rows(checks: &[Check]) -> Vec<(String, &'static str, Vec<String>)> {
    // (path with each ALIKE field as a placeholder, by, rule) -> the fields seen at each
    // placeholder, in order.
    let mut merged: Vec<(String, &'static str, String, Vec<Vec<String>>)> = Vec::new();
    for c in checks {
        let mut key = Vec::new();
        let mut alike = Vec::new();
        for segment in c.path.split('.') {
            let (name, suffix) = segment.split_at(segment.find('[').unwrap_or(segment.len()));
            match ALIKE.iter().position(|set| set.contains(&name)) {
                Some(set) => {
                    key.push(format!("#{set}{suffix}"));
                    alike.push(name.to_string());
                }
                None => key.push(segment.to_string()),
            }
        }
        let key = key.join(".");
        match merged
            .iter_mut()
            .find(|(k, by, rule, _)| *k == key && *by == c.by && *rule == c.rule)
        {
            Some((_, _, _, seen)) => {
                for (i, name) in alike.into_iter().enumerate() {
                    if !seen[i].contains(&name) {
                        seen[i].push(name);
                    }
                }
            }
            None => merged.push((
                key,
                c.by,
                c.rule.clone(),
                alike.into_iter().map(|n| vec![n]).collect(),
            )),
        }
    }
    let mut out: Vec<(String, &'static str, Vec<String>)> = Vec::new();
    for (key, by, rule, seen) in merged {
        let mut fields = seen.into_iter();
        let path = key
            .split('.')
            .map(|segment| match segment.strip_prefix('#') {
                Some(rest) => {
                    let suffix = &rest[rest.find('[').unwrap_or(rest.len())..];
                    let names = fields.next().unwrap_or_default();
                    if names.len() == 1 {
                        format!("{}{suffix}", names[0])
                    } else {
                        format!("{{{}}}{suffix}", names.join(","))
                    }
                }
                None => segment.to_string(),
            })
            .collect::<Vec<_>>()
            .join(".");
        match out.iter_mut().find(|(p, b, _)| *p == path && *b == by) {
            Some((_, _, rules)) => rules.push(rule),
            None => out.push((path, by, vec![rule])),
        }
    }
    out
}

/// Collects the checks at `path` and below, depth first, properties in name order.
fn walk(
    path: &str,
    crd: &Value,
    base: &Value,
    describe: &impl Fn(&Value) -> Vec<String>,
    rule_text: &impl Fn(&Value) -> String,
    checks: &mut Vec<Check>,
) {
    if let Some(values) = crd["enum"].as_array() {
        let values: Vec<String> = values
            .iter()
            .map(|v| match v.as_str() {
                Some("") => "`\"\"`".to_string(),
                Some(s) => format!("`{s}`"),
                None => format!("`{v}`"),
            })
            .collect();
        checks.push(Check {
            path: path.to_string(),
            by: "schema",
            rule: format!("one of {}", values.join(", ")),
        });
    }
    for words in describe(crd) {
        checks.push(Check {
            path: path.to_string(),
            by: "schema",
            rule: words,
        });
    }
    let required = names(&crd["required"]);
    let base_required = names(&base["required"]);
    for name in required.iter().filter(|r| !base_required.contains(r)) {
        checks.push(Check {
            path: format!("{path}.{name}"),
            by: "schema",
            rule: "required".to_string(),
        });
    }
    for rule in crd["x-kubernetes-validations"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let at = rule["fieldPath"].as_str().unwrap_or_default();
        checks.push(Check {
            path: format!("{path}{at}"),
            by: "CEL",
            rule: rule_text(rule).trim_start_matches("CEL: ").to_string(),
        });
    }
    if let Some(properties) = crd["properties"].as_object() {
        let mut names: Vec<&String> = properties.keys().collect();
        names.sort();
        for name in names {
            walk(
                &format!("{path}.{name}"),
                &properties[name],
                &base["properties"][name],
                describe,
                rule_text,
                checks,
            );
        }
    }
    for (key, suffix) in [("items", "[*]"), ("additionalProperties", ".*")] {
        if crd[key].is_object() {
            walk(
                &format!("{path}{suffix}"),
                &crd[key],
                &base[key],
                describe,
                rule_text,
                checks,
            );
        }
    }
}

fn names(value: &Value) -> Vec<String> {
    value
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect()
}
