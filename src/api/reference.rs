//! The field reference (`docs/reference.md`), generated from the CRD: one Markdown table per
//! object level of `spec` and `status`, with each field's type, default, validation (OpenAPI
//! keywords and CEL rules with their messages), whether it is required, and its doc comment.
//!
//! Pure: it reads the CustomResourceDefinition that `perennial crd` prints and nothing else,
//! so the page cannot say what the API server does not enforce.

use std::fmt::Write;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::{Map, Value};

/// Embedded Kubernetes types whose fields the page does not repeat: (field path, the type's
/// name, where the Kubernetes documentation describes it).
const EMBEDDED: [(&str, &str, &str); 3] = [
    (
        "spec.template",
        "PodTemplateSpec",
        "https://kubernetes.io/docs/reference/kubernetes-api/workload-resources/pod-template-v1/#PodTemplateSpec",
    ),
    (
        "spec.volumeClaimTemplates[*].spec",
        "PersistentVolumeClaimSpec",
        "https://kubernetes.io/docs/reference/kubernetes-api/config-and-storage-resources/persistent-volume-claim-v1/#PersistentVolumeClaimSpec",
    ),
    (
        "status.conditions[*]",
        "Condition",
        "https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#typical-status-properties",
    ),
];

/// One field, as a table row.
struct Row {
    path: String,
    type_: String,
    default: String,
    validation: Vec<String>,
    required: bool,
    description: String,
}

/// One object level: its fields, and the rules on the object as a whole.
struct Section {
    path: String,
    description: String,
    rules: Vec<String>,
    rows: Vec<Row>,
}

/// The reference page of `crd` as Markdown.
pub fn markdown(crd: &CustomResourceDefinition) -> String {
    let crd = serde_json::to_value(crd).unwrap_or_default();
    let spec = &crd["spec"];
    let names = &spec["names"];
    let group = text(&spec["group"]);
    let kind = text(&names["kind"]);
    let mut out = String::new();
    let _ = writeln!(out, "# {kind} reference\n");
    let _ = writeln!(
        out,
        "<!-- Generated from the Rust types by `make crds` (`perennial crd --reference`); do not edit. -->\n"
    );
    for version in spec["versions"].as_array().into_iter().flatten() {
        version_page(&mut out, &group, spec, names, version);
    }
    out
}

fn version_page(out: &mut String, group: &str, spec: &Value, names: &Value, version: &Value) {
    let kind = text(&names["kind"]);
    let version_name = text(&version["name"]);
    let mut aliases = vec![format!("plural {}", code(&text(&names["plural"])))];
    let short: Vec<String> = strings(&names["shortNames"])
        .iter()
        .map(|s| code(s))
        .collect();
    if !short.is_empty() {
        aliases.push(format!("short name {}", short.join(", ")));
    }
    let categories: Vec<String> = strings(&names["categories"])
        .iter()
        .map(|s| code(s))
        .collect();
    if !categories.is_empty() {
        aliases.push(format!("category {}", categories.join(", ")));
    }
    let scope = if text(&spec["scope"]) == "Namespaced" {
        "namespaced"
    } else {
        "cluster-scoped"
    };
    let _ = writeln!(
        out,
        "`apiVersion: {group}/{version_name}`, `kind: {kind}`: a {scope} resource ({}).",
        aliases.join(", ")
    );
    let subresources = &version["subresources"];
    if subresources.get("status").is_some() {
        let _ = write!(out, "Its status is a subresource of its own.");
    }
    if let Some(scale) = subresources.get("scale") {
        let _ = write!(
            out,
            " The scale subresource (`kubectl scale`, a HorizontalPodAutoscaler) sets `{}`, reads `{}` and selects pods by `{}`.",
            text(&scale["specReplicasPath"]),
            text(&scale["statusReplicasPath"]),
            text(&scale["labelSelectorPath"])
        );
    }
    let _ = writeln!(out, "\n");
    let root = &version["schema"]["openAPIV3Schema"];
    let description = one_line(&text(&root["description"]));
    if !description.is_empty() {
        let _ = writeln!(out, "{description}\n");
    }
    let _ = writeln!(
        out,
        "Each table below lists the fields of one object. *Default* is what the API server fills in \
         when the field is absent; *Validation* is what it checks when the object is created or \
         changed, a CEL rule shown by the message a rejection carries. The fields of embedded \
         Kubernetes types are not repeated: their row links to the Kubernetes documentation.\n"
    );

    let object_rules: Vec<String> = own_rules(root)
        .map(|r| {
            format!(
                "- {}",
                one_line(&text(&r["message"]))
                    .replace('<', "&lt;")
                    .replace('>', "&gt;")
            )
        })
        .collect();
    if !object_rules.is_empty() {
        let _ = writeln!(
            out,
            "Rules on the whole object:

{}
",
            object_rules.join("\n")
        );
    }

    if let Some(columns) = version["additionalPrinterColumns"].as_array() {
        let _ = writeln!(out, "## Columns of `kubectl get`\n");
        let _ = writeln!(out, "| Column | Type | JSON path | Description |");
        let _ = writeln!(out, "|---|---|---|---|");
        for c in columns {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} |",
                cell(&text(&c["name"])),
                cell(&text(&c["type"])),
                code(&text(&c["jsonPath"])),
                cell(&one_line(&text(&c["description"])))
            );
        }
        let _ = writeln!(out);
    }

    let required = strings(&root["required"]);
    for part in ["spec", "status"] {
        let Some(schema) = root["properties"].get(part) else {
            continue;
        };
        let mut sections = Vec::new();
        let mut pathed = Vec::new();
        collect(part, schema, &mut sections, &mut pathed);
        attach_pathed_rules(&mut sections, pathed);
        // The root's doc is often the resource's own, said above already.
        if let Some(first) = sections
            .first_mut()
            .filter(|s| s.description == description)
        {
            first.description.clear();
        }
        for (i, section) in sections.iter().enumerate() {
            render(
                out,
                section,
                i == 0,
                i == 0 && required.iter().any(|r| r == part),
            );
        }
        if part == "spec" {
            out.push_str(&super::template::reference::section(
                schema, validation, rule_text,
            ));
        }
    }
}

/// Walks one object level and the levels below it, depth first.
fn collect(
    path: &str,
    schema: &Value,
    sections: &mut Vec<Section>,
    pathed: &mut Vec<(String, String)>,
) {
    let required = strings(&schema["required"]);
    let mut section = Section {
        path: path.to_string(),
        description: one_line(&text(&schema["description"])),
        rules: Vec::new(),
        rows: Vec::new(),
    };
    for rule in own_rules(schema) {
        match rule.get("fieldPath").and_then(Value::as_str) {
            // Below the root, the parent's walk has taken these already.
            Some(field) if !path.contains('.') => {
                pathed.push((format!("{path}{field}"), rule_text(rule)))
            }
            Some(_) => {}
            None => section.rules.push(rule_text(rule)),
        }
    }
    let properties = sorted(&schema["properties"]);
    let mut below = Vec::new();
    for (name, property) in &properties {
        let child = format!("{path}.{name}");
        section
            .rows
            .push(row(&child, property, required.contains(name)));
        // Rules on a field that carry a fieldPath name a field below it.
        let items = format!("{child}[*]");
        let on_field = own_rules(property).map(|r| (child.as_str(), r));
        let on_items = own_rules(&property["items"]).map(|r| (items.as_str(), r));
        for (owner, rule) in on_field.chain(on_items) {
            if let Some(field) = rule.get("fieldPath").and_then(Value::as_str) {
                pathed.push((format!("{owner}{field}"), rule_text(rule)));
            }
        }
        if embedded(&child).is_some() {
            continue;
        }
        if has_properties(property) {
            below.push((child, (*property).clone()));
        } else if property["type"] == "array"
            && has_properties(&property["items"])
            && embedded(&items).is_none()
        {
            below.push((items, property["items"].clone()));
        }
    }
    sections.push(section);
    for (child, property) in below {
        collect(&child, &property, sections, pathed);
    }
}

/// A rule that names a field (`fieldPath`) goes to that field's row, or to the row of the
/// nearest field above it that the page lists.
fn attach_pathed_rules(sections: &mut [Section], pathed: Vec<(String, String)>) {
    for (target, message) in pathed {
        let mut best: Option<(usize, usize)> = None;
        for (s, section) in sections.iter().enumerate() {
            for (r, row) in section.rows.iter().enumerate() {
                let covers = target == row.path
                    || target.starts_with(&format!("{}.", row.path))
                    || target.starts_with(&format!("{}[", row.path));
                let longer =
                    best.is_none_or(|(bs, br)| sections[bs].rows[br].path.len() < row.path.len());
                if covers && longer {
                    best = Some((s, r));
                }
            }
        }
        match best {
            Some((s, r)) => sections[s].rows[r].validation.push(message),
            None => {
                if let Some(first) = sections.first_mut() {
                    first.rules.push(message);
                }
            }
        }
    }
}

fn row(path: &str, schema: &Value, required: bool) -> Row {
    let mut validation = validation(schema);
    // The rules of an array's items hold for each item: they belong on the array's row too.
    for rule in own_rules(schema).chain(own_rules(&schema["items"])) {
        if rule.get("fieldPath").is_none() {
            validation.push(rule_text(rule));
        }
    }
    let mut description = one_line(&text(&schema["description"]));
    if let Some((name, url)) = embedded(path).or_else(|| embedded(&format!("{path}[*]"))) {
        description.push_str(&format!(
            " The fields of `{name}` are described in the [Kubernetes documentation]({url})."
        ));
    }
    Row {
        path: path.to_string(),
        type_: type_of(path, schema),
        default: default_of(schema),
        validation,
        required,
        description: description.trim().to_string(),
    }
}

fn render(out: &mut String, section: &Section, root: bool, required: bool) {
    let heading = if root { "##" } else { "###" };
    let _ = writeln!(out, "{heading} `{}`\n", section.path);
    if !section.description.is_empty() {
        let _ = writeln!(out, "{}\n", section.description);
    }
    if required {
        let _ = writeln!(out, "Required.\n");
    }
    if !section.rules.is_empty() {
        let _ = writeln!(out, "Rules on the whole object:\n");
        for rule in &section.rules {
            let _ = writeln!(out, "- {rule}");
        }
        let _ = writeln!(out);
    }
    let _ = writeln!(
        out,
        "| Field | Type | Default | Validation | Required | Description |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|");
    for r in &section.rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} |",
            code(&r.path),
            r.type_,
            r.default,
            r.validation.join("<br>"),
            if r.required { "yes" } else { "" },
            cell(&r.description)
        );
    }
    let _ = writeln!(out);
}

/// The type as a person reads it: integer or string, the values of an enum, array of X,
/// map of string to X, or a link to the object's own table.
fn type_of(path: &str, schema: &Value) -> String {
    if let Some((name, url)) = embedded(path) {
        return format!("object: [`{name}`]({url})");
    }
    if schema["x-kubernetes-int-or-string"] == true {
        return "integer or string".to_string();
    }
    if let Some(values) = schema["enum"].as_array() {
        let values: Vec<String> = values.iter().map(|v| code(&scalar(v))).collect();
        return format!("enum: {}", values.join(", "));
    }
    match schema["type"].as_str().unwrap_or_default() {
        "array" => format!(
            "array of {}",
            type_of(&format!("{path}[*]"), &schema["items"])
        ),
        "object" if has_properties(schema) => {
            format!("object ([fields](#{}))", anchor(path))
        }
        "object" if schema.get("additionalProperties").is_some() => format!(
            "map of string to {}",
            type_of(&format!("{path}.*"), &schema["additionalProperties"])
        ),
        "string" => match schema["format"].as_str() {
            Some(format) => format!("string ({format})"),
            None => "string".to_string(),
        },
        "" => "any".to_string(),
        other => other.to_string(),
    }
}

/// What the OpenAPI keywords check, in words.
fn validation(schema: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let int_or_string = schema["x-kubernetes-int-or-string"] == true;
    // An int-or-string has number keywords for its integers and string keywords for its
    // strings: each says which.
    let (number, string, string_of) = if int_or_string {
        ("integer ", "string ", "string of ")
    } else {
        ("", "", "")
    };
    if let Some(range) = bounds(&schema["minimum"], &schema["maximum"], "") {
        out.push(format!("{number}{range}"));
    }
    if let Some(length) = bounds(&schema["minLength"], &schema["maxLength"], " characters") {
        out.push(format!("{string_of}{length}"));
    }
    if let Some(pattern) = schema["pattern"].as_str() {
        out.push(format!("{string}matching {}", code(pattern)));
    }
    if let Some(items) = bounds(&schema["minItems"], &schema["maxItems"], " items") {
        out.push(items);
    }
    if let Some(n) = schema["maxProperties"].as_f64() {
        out.push(format!("at most {} entries", number_text(n)));
    }
    match schema["x-kubernetes-list-type"].as_str() {
        Some("set") => out.push("no duplicates".to_string()),
        Some("map") => {
            let keys: Vec<String> = strings(&schema["x-kubernetes-list-map-keys"])
                .iter()
                .map(|k| code(k))
                .collect();
            out.push(format!("one item per {}", keys.join(" and ")));
        }
        _ => {}
    }
    out
}

/// "a to b", or one bound alone, followed by `unit`; None without either bound. A count
/// (a unit given) reads "at least a" and "at most b", a number "≥ a" and "≤ b".
fn bounds(min: &Value, max: &Value, unit: &str) -> Option<String> {
    let (at_least, at_most) = if unit.is_empty() {
        ("≥ ", "≤ ")
    } else {
        ("at least ", "at most ")
    };
    match (min.as_f64(), max.as_f64()) {
        (Some(a), Some(b)) => Some(format!("{} to {}{unit}", number_text(a), number_text(b))),
        (Some(a), None) => Some(format!("{at_least}{}{unit}", number_text(a))),
        (None, Some(b)) => Some(format!("{at_most}{}{unit}", number_text(b))),
        (None, None) => None,
    }
}

fn default_of(schema: &Value) -> String {
    match schema.get("default") {
        None | Some(Value::Null) => String::new(),
        Some(Value::Object(fields)) if fields_defaults_only(schema, fields) => {
            "each field's default".to_string()
        }
        Some(Value::Array(items)) if items.iter().all(|i| !i.is_object() && !i.is_array()) => {
            let items: Vec<String> = items.iter().map(scalar).collect();
            code(&format!("[{}]", items.join(", ")))
        }
        Some(Value::String(s)) if s.is_empty() => code("\"\""),
        Some(v @ (Value::Object(_) | Value::Array(_))) => code(&v.to_string()),
        Some(v) => code(&scalar(v)),
    }
}

/// Whether an object's default only repeats the defaults of its fields.
fn fields_defaults_only(schema: &Value, fields: &Map<String, Value>) -> bool {
    fields
        .iter()
        .all(|(k, v)| schema["properties"][k].get("default") == Some(v))
}

/// A CEL rule as the message a rejection carries. A message computed by an expression is
/// shown as its string literals, with `…` where the rejected value fills it in.
fn rule_text(rule: &Value) -> String {
    if let Some(message) = rule.get("message").and_then(Value::as_str) {
        return format!("CEL: {}", cell(message));
    }
    match rule
        .get("messageExpression")
        .and_then(Value::as_str)
        .and_then(literal_template)
    {
        Some(message) => format!("CEL: {}", cell(&message)),
        None => format!("CEL: rule {}", code(&text(&rule["rule"]))),
    }
}

/// The string literals of a CEL concatenation (`'a' + x + 'b'`), with `…` for the rest;
/// None when it has no literal.
fn literal_template(expression: &str) -> Option<String> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let (mut quote, mut depth, mut escaped) = (None, 0i32, false);
    for c in expression.chars() {
        match quote {
            Some(q) => {
                if c == q && !escaped {
                    quote = None;
                }
                escaped = c == '\\' && !escaped;
            }
            None => match c {
                '\'' | '"' => quote = Some(c),
                '(' | '[' | '{' => depth += 1,
                ')' | ']' | '}' => depth -= 1,
                '+' if depth == 0 => {
                    parts.push(std::mem::take(&mut current));
                    continue;
                }
                _ => {}
            },
        }
        current.push(c);
    }
    parts.push(current);
    let mut found = false;
    let mut out = String::new();
    for part in parts {
        let part = part.trim();
        let literal = ['\'', '"'].into_iter().find_map(|q| {
            let inner = part.strip_prefix(q)?.strip_suffix(q)?;
            (!inner.replace(&format!("\\{q}"), "").contains(q))
                .then(|| inner.replace(&format!("\\{q}"), &q.to_string()))
        });
        match literal {
            Some(text) => {
                found = true;
                out.push_str(&text);
            }
            None => out.push('…'),
        }
    }
    found.then_some(out)
}

/// The CEL rules written on `schema` itself.
fn own_rules(schema: &Value) -> impl Iterator<Item = &Value> {
    schema["x-kubernetes-validations"]
        .as_array()
        .into_iter()
        .flatten()
}

fn embedded(path: &str) -> Option<(&'static str, &'static str)> {
    EMBEDDED
        .iter()
        .find(|(p, _, _)| *p == path)
        .map(|(_, name, url)| (*name, *url))
}

fn has_properties(schema: &Value) -> bool {
    schema["properties"]
        .as_object()
        .is_some_and(|p| !p.is_empty())
}

fn sorted(properties: &Value) -> Vec<(String, &Value)> {
    let mut out: Vec<(String, &Value)> = properties
        .as_object()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v)).collect())
        .unwrap_or_default();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn text(value: &Value) -> String {
    value.as_str().unwrap_or_default().to_string()
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// A scalar as written in YAML: strings without quotes, whole numbers without a fraction.
fn scalar(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n
            .as_f64()
            .filter(|_| !n.is_i64() && !n.is_u64())
            .map(number_text)
            .unwrap_or_else(|| n.to_string()),
        other => other.to_string(),
    }
}

fn number_text(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e15 {
        format!("{}", n as i64)
    } else {
        n.to_string()
    }
}

/// Doc comments are wrapped; a table cell is one line.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Text for a table cell: a `|` would end the cell.
fn cell(s: &str) -> String {
    s.replace('|', "\\|")
}

/// A code span, safe in a table cell.
fn code(s: &str) -> String {
    let s = s.replace('|', "\\|");
    if s.contains('`') {
        format!("`` {s} ``")
    } else {
        format!("`{s}`")
    }
}

/// The anchor GitHub gives the heading of `path`.
fn anchor(path: &str) -> String {
    path.to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == '-' || *c == '_')
        .collect()
}

#[cfg(test)]
mod tests {
    use kube::CustomResourceExt;

    use super::*;
    use crate::api::ResilientService;

    fn page() -> String {
        markdown(&ResilientService::crd())
    }

    /// The page without its section on `spec.template` at admission: the field tables.
    fn field_tables() -> String {
        let page = page();
        let start = page
            .find("## `spec.template` at admission")
            .expect("the admission section");
        let end = page[start..]
            .find("\n## `status`")
            .map_or(page.len(), |e| start + e);
        format!("{}{}", &page[..start], &page[end..])
    }

    /// The table row of `path`, split into its six cells.
    fn row_of(page: &str, path: &str) -> Vec<String> {
        let start = format!("| `{path}` |");
        let line = page
            .lines()
            .find(|l| l.starts_with(&start))
            .unwrap_or_else(|| panic!("no row for {path}"));
        split_cells(line)
    }

    fn split_cells(line: &str) -> Vec<String> {
        let mut cells = Vec::new();
        let mut current = String::new();
        let mut escaped = false;
        for c in line.trim().trim_start_matches('|').chars() {
            match c {
                '|' if !escaped => cells.push(std::mem::take(&mut current).trim().to_string()),
                _ => current.push(c),
            }
            escaped = c == '\\';
        }
        cells
    }

    #[test]
    fn replicas_row_shows_its_type_range_default_and_doc() {
        let cells = row_of(&page(), "spec.replicas");
        assert_eq!(cells[1], "integer");
        assert_eq!(cells[2], "`1`");
        assert_eq!(cells[3], "0 to 10000");
        assert_eq!(cells[4], "");
        assert!(
            cells[5].starts_with("Number of replicas to keep alive."),
            "{cells:?}"
        );
    }

    #[test]
    fn enum_field_lists_its_values_in_declaration_order_and_its_default() {
        let cells = row_of(&page(), "spec.repair.fencing");
        assert_eq!(
            cells[1],
            "enum: `WaitForEvidence`, `TaintOutOfService`, `None`"
        );
        assert_eq!(cells[2], "`WaitForEvidence`");
    }

    #[test]
    fn cel_rule_messages_appear_on_the_field_they_name() {
        let page = page();
        // A rule of the spec with a fieldPath lands on that field's row.
        let partition = row_of(&page, "spec.update.partition");
        assert_eq!(
            partition[3],
            "≥ 0<br>CEL: spec.update.partition must be between 0 and spec.replicas"
        );
        // A rule on an object lands on the object's row.
        let budget = row_of(&page, "spec.disruptionBudget");
        assert!(
            budget[3].contains(
                "CEL: spec.disruptionBudget: set either maxUnavailable or quorum: true, not both"
            ),
            "{budget:?}"
        );
        // A rule naming a field inside an embedded type lands on the embedded type's row.
        let template = row_of(&page, "spec.template");
        assert!(
            template[3].contains("is reserved for the operator"),
            "{template:?}"
        );
    }

    #[test]
    fn count_or_percent_fields_show_both_forms_with_the_pattern_escaped() {
        let cells = row_of(&page(), "spec.update.maxSurge");
        assert_eq!(cells[1], "integer or string");
        assert_eq!(cells[2], "`1`");
        assert_eq!(
            cells[3],
            r"integer ≥ 0<br>string of at most 4 characters<br>string matching `^(100\|[1-9]?[0-9])%$`"
        );
    }

    #[test]
    fn arrays_maps_and_objects_say_what_they_hold() {
        let page = page();
        let escalation = row_of(&page, "spec.supervision.escalation");
        assert_eq!(
            escalation[1],
            "array of enum: `Restart`, `Reschedule`, `RebuildStorage`, `Quarantine`"
        );
        assert_eq!(
            escalation[2],
            "`[Restart, Reschedule, RebuildStorage, Quarantine]`"
        );
        assert_eq!(escalation[3], "1 to 4 items<br>no duplicates");
        assert_eq!(
            row_of(&page, "status.domains")[1],
            "map of string to integer"
        );
        assert_eq!(
            row_of(&page, "spec.update")[1],
            "object ([fields](#specupdate))"
        );
        assert!(page.contains("\n### `spec.update`\n"));
        assert_eq!(row_of(&page, "spec.update")[2], "each field's default");
        assert_eq!(
            row_of(&page, "status.replicaStatuses")[3],
            "one item per `ordinal`"
        );
    }

    #[test]
    fn required_fields_are_marked() {
        let page = page();
        assert_eq!(row_of(&page, "spec.template")[4], "yes");
        assert_eq!(row_of(&page, "status.replicaStatuses[*].ordinal")[4], "yes");
        assert_eq!(row_of(&page, "spec.paused")[4], "");
        let name = row_of(&page, "spec.volumeClaimTemplates[*].metadata.name");
        assert_eq!(name[4], "yes");
        assert_eq!(
            name[3],
            "1 to 40 characters<br>matching `^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`"
        );
    }

    #[test]
    fn embedded_kubernetes_types_are_linked_not_expanded() {
        let page = field_tables();
        assert!(row_of(&page, "spec.template")[1].contains("[`PodTemplateSpec`]("));
        assert!(row_of(&page, "spec.volumeClaimTemplates[*].spec")[1]
            .contains("[`PersistentVolumeClaimSpec`]("));
        assert!(
            row_of(&page, "status.conditions")[1].starts_with("array of object: [`Condition`](")
        );
        for inside in [
            "| `spec.template.",
            "| `spec.volumeClaimTemplates[*].spec.",
            "| `status.conditions[*].",
        ] {
            assert!(!page.contains(inside), "{inside} is expanded");
        }
    }

    #[test]
    fn a_computed_message_reads_as_its_literals_with_the_value_left_out() {
        assert_eq!(
            literal_template("'the key ' + ['a', 'b'].filter(k, k in x)[0] + ' is taken'"),
            Some("the key … is taken".to_string())
        );
        assert_eq!(
            literal_template("\"it\\\"s \" + self.name"),
            Some("it\"s …".to_string())
        );
        assert_eq!(literal_template("self.name + self.kind"), None);
        let template = row_of(&page(), "spec.template");
        assert!(
            template[3].contains(
                "CEL: spec.template.metadata.labels: the key … is reserved for the operator"
            ),
            "{template:?}"
        );
    }

    #[test]
    fn every_field_table_row_has_six_cells() {
        let page = field_tables();
        let rows: Vec<&str> = page
            .lines()
            .filter(|l| l.starts_with("| `spec") || l.starts_with("| `status"))
            .collect();
        assert!(rows.len() > 60, "only {} rows", rows.len());
        for line in rows {
            assert_eq!(split_cells(line).len(), 6, "{line}");
        }
    }
}
