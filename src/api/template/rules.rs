//! The rules themselves: for each pod field a template can get wrong, the check the API
//! server's pod validation makes, as an OpenAPI keyword or a CEL rule. Messages follow the
//! pod validation's own wording where it is clear, since users search for it.

use serde_json::{json, Value};

use super::{node, Change, Constraint};

/// Limits the CEL rules need so that the API server can price them; a pod has none of its
/// own. Each is far above what a pod holds in practice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bounds {
    /// Items of `containers` and of `initContainers`, each.
    pub containers: u32,
    /// Items of `volumes`.
    pub volumes: u32,
    /// Items of a container's `volumeMounts`.
    pub volume_mounts: u32,
    /// Items of a container's `ports`.
    pub ports: u32,
    /// Entries of a container's `resources.requests` and of its `resources.limits`, each.
    pub resources: u32,
    /// Characters of a quantity written as a string (`500m`, `1Gi`).
    pub quantity_length: u32,
}

/// The bounds in force.
pub const fn bounds() -> Bounds {
    Bounds {
        containers: 32,
        volumes: 96,
        volume_mounts: 64,
        ports: 128,
        resources: 32,
        quantity_length: 64,
    }
}

/// A DNS-1123 label: what container, volume and port-less names must be.
const DNS_LABEL: &str = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
/// A DNS-1123 subdomain, or empty (the field is then unset for the API server).
const DNS_SUBDOMAIN_OR_EMPTY: &str =
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*)?$";
/// An IANA service name: 1 to 15 of a-z, 0-9 and single inner hyphens, at least one letter.
const PORT_NAME: &str = "^([0-9]+-?)*[a-z]([a-z0-9]|-[a-z0-9])*$";
/// The same, or empty: a container port's name is optional.
const PORT_NAME_OR_EMPTY: &str = "^(([0-9]+-?)*[a-z]([a-z0-9]|-[a-z0-9])*)?$";
/// A label value: empty, or alphanumerics with `-`, `_` and `.` inside.
const LABEL_VALUE: &str = "^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$";
/// An image reference without leading or trailing whitespace.
const IMAGE: &str = r"^\S([\s\S]*\S)?$";
/// An environment variable name: printable ASCII other than `=`.
const ENV_NAME: &str = "^[ -<>-~]+$";
/// The largest user or group ID the API server accepts.
const MAX_ID: i64 = 2_147_483_647;

/// The container lists of a template; ephemeral containers are refused outright.
const CONTAINER_LISTS: [&str; 2] = ["containers", "initContainers"];
/// The probes of a container.
const PROBES: [&str; 3] = ["livenessProbe", "readinessProbe", "startupProbe"];

/// An `x-kubernetes-validations` entry.
struct Cel(Value);

impl Cel {
    fn new(rule: impl Into<String>) -> Self {
        Self(json!({ "rule": rule.into() }))
    }
    fn message(mut self, message: &str) -> Self {
        self.0["message"] = json!(message);
        self
    }
    fn message_expression(mut self, expression: impl Into<String>) -> Self {
        self.0["messageExpression"] = json!(expression.into());
        self
    }
    /// Where the server reports the failure, relative to the rule's object.
    fn field(mut self, path: &str) -> Self {
        self.0["fieldPath"] = json!(path);
        self
    }
    /// The kind of error: FieldValueRequired, FieldValueForbidden, FieldValueDuplicate.
    fn reason(mut self, reason: &str) -> Self {
        self.0["reason"] = json!(reason);
        self
    }
}

fn keywords(path: impl Into<String>, keywords: Value) -> Constraint {
    Constraint {
        path: path.into(),
        change: Change::Keywords(keywords),
    }
}

fn require(path: impl Into<String>, property: &'static str) -> Constraint {
    Constraint {
        path: path.into(),
        change: Change::Require(property),
    }
}

fn rule(path: impl Into<String>, cel: Cel) -> Constraint {
    Constraint {
        path: path.into(),
        change: Change::Rule(cel.0),
    }
}

/// Every constraint on the template; `schema` is k8s-openapi's, read for the names of the
/// volume sources.
pub(super) fn constraints(schema: &Value) -> Vec<Constraint> {
    let mut out = vec![
        // A template without a pod spec has no containers either.
        require("", "spec"),
        keywords(
            "metadata.labels{}",
            json!({"maxLength": 63, "pattern": LABEL_VALUE}),
        ),
    ];
    out.extend(pod(schema));
    for list in CONTAINER_LISTS {
        out.extend(container(&format!("spec.{list}[]")));
    }
    out.extend(init_container("spec.initContainers[]"));
    out
}

/// Rules of the pod spec as a whole, its volumes and scheduling fields.
fn pod(schema: &Value) -> Vec<Constraint> {
    let b = bounds();
    let mut out = vec![
        keywords(
            "spec.containers",
            json!({
                "minItems": 1,
                "maxItems": b.containers,
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["name"],
            }),
        ),
        keywords(
            "spec.initContainers",
            json!({
                "maxItems": b.containers,
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["name"],
            }),
        ),
        rule(
            "spec",
            Cel::new("!has(self.initContainers) || !has(self.containers) || self.initContainers.all(i, !self.containers.exists(c, c.name == i.name))")
                .message_expression("'the name ' + self.initContainers.map(i, i.name).filter(n, self.containers.exists(c, c.name == n))[0] + ' is taken by a container: names must be unique across containers and initContainers'")
                .field(".initContainers"),
        ),
        rule(
            "spec",
            Cel::new("!has(self.ephemeralContainers) || size(self.ephemeralContainers) == 0")
                .message("cannot be set on create: ephemeral containers are added to a running pod (kubectl debug), never in a template")
                .field(".ephemeralContainers")
                .reason("FieldValueForbidden"),
        ),
        rule(
            "spec",
            Cel::new("!has(self.restartPolicy) || self.restartPolicy == 'Always' || self.restartPolicy == ''")
                .message("must be Always: a replica must never exit; its containers restart in place, and the operator replaces a pod that ends")
                .field(".restartPolicy"),
        ),
        rule(
            "spec",
            Cel::new("!has(self.activeDeadlineSeconds)")
                .message("is not supported: a replica's pod runs until the operator replaces it, and a deadline would have it killed (a Deployment's template refuses it too)")
                .field(".activeDeadlineSeconds")
                .reason("FieldValueForbidden"),
        ),
        keywords(
            "spec.dnsPolicy",
            json!({"enum": ["ClusterFirstWithHostNet", "ClusterFirst", "Default", "None", ""]}),
        ),
        rule(
            "spec",
            Cel::new("!has(self.dnsPolicy) || self.dnsPolicy != 'None' || (has(self.dnsConfig) && has(self.dnsConfig.nameservers) && size(self.dnsConfig.nameservers) > 0)")
                .message("must provide at least one nameserver in dnsConfig.nameservers when dnsPolicy is None")
                .field(".dnsConfig")
                .reason("FieldValueRequired"),
        ),
        keywords("spec.dnsConfig.nameservers", json!({"maxItems": 3})),
        keywords("spec.dnsConfig.searches", json!({"maxItems": 32})),
        keywords("spec.os.name", json!({"enum": ["linux", "windows"]})),
        keywords("spec.nodeSelector{}", json!({"maxLength": 63, "pattern": LABEL_VALUE})),
        keywords(
            "spec.tolerations[].effect",
            json!({"enum": ["NoSchedule", "PreferNoSchedule", "NoExecute", ""]}),
        ),
        keywords(
            "spec.topologySpreadConstraints",
            json!({
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["topologyKey", "whenUnsatisfiable"],
            }),
        ),
        keywords("spec.topologySpreadConstraints[].maxSkew", json!({"minimum": 1})),
        keywords(
            "spec.topologySpreadConstraints[].topologyKey",
            json!({"minLength": 1}),
        ),
        keywords("spec.topologySpreadConstraints[].minDomains", json!({"minimum": 1})),
        keywords(
            "spec.topologySpreadConstraints[].whenUnsatisfiable",
            json!({"enum": ["DoNotSchedule", "ScheduleAnyway"]}),
        ),
        keywords(
            "spec.topologySpreadConstraints[].nodeAffinityPolicy",
            json!({"enum": ["Honor", "Ignore"]}),
        ),
        keywords(
            "spec.topologySpreadConstraints[].nodeTaintsPolicy",
            json!({"enum": ["Honor", "Ignore"]}),
        ),
        keywords(
            "spec.volumes",
            json!({
                "maxItems": b.volumes,
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["name"],
            }),
        ),
        keywords("spec.volumes[].name", json!({"maxLength": 63, "pattern": DNS_LABEL})),
    ];
    for name in [
        "serviceAccountName",
        "priorityClassName",
        "runtimeClassName",
        "nodeName",
    ] {
        out.push(keywords(
            format!("spec.{name}"),
            json!({"maxLength": 253, "pattern": DNS_SUBDOMAIN_OR_EMPTY}),
        ));
    }
    if let Some(sources) = volume_sources(schema) {
        let count = sources
            .iter()
            .map(|s| format!("(has(self.{s}) ? 1 : 0)"))
            .collect::<Vec<_>>()
            .join(" + ");
        out.push(rule(
            "spec.volumes[]",
            Cel::new(format!("{count} <= 1"))
                .message("may not specify more than 1 volume type")
                .reason("FieldValueForbidden"),
        ));
    }
    out.extend(pod_security("spec.securityContext"));
    out
}

/// The volume sources (every property of a volume but its name).
fn volume_sources(schema: &Value) -> Option<Vec<String>> {
    let volume = node(schema, "spec.volumes[]")?;
    let properties = volume.get("properties")?.as_object()?;
    Some(
        properties
            .keys()
            .filter(|k| k.as_str() != "name")
            .cloned()
            .collect(),
    )
}

/// Rules of one container (of `containers` or `initContainers`, at `at`).
fn container(at: &str) -> Vec<Constraint> {
    let b = bounds();
    let mut out = vec![
        keywords(format!("{at}.name"), json!({"maxLength": 63, "pattern": DNS_LABEL})),
        require(at, "image"),
        keywords(format!("{at}.image"), json!({"pattern": IMAGE})),
        keywords(
            format!("{at}.imagePullPolicy"),
            json!({"enum": ["Always", "Never", "IfNotPresent", ""]}),
        ),
        keywords(
            format!("{at}.terminationMessagePolicy"),
            json!({"enum": ["File", "FallbackToLogsOnError", ""]}),
        ),
        keywords(format!("{at}.env[].name"), json!({"pattern": ENV_NAME})),
        keywords(format!("{at}.ports"), json!({"maxItems": b.ports})),
        keywords(
            format!("{at}.ports[].containerPort"),
            json!({"minimum": 1, "maximum": 65535}),
        ),
        keywords(
            format!("{at}.ports[].hostPort"),
            json!({"minimum": 0, "maximum": 65535}),
        ),
        keywords(
            format!("{at}.ports[].protocol"),
            json!({"enum": ["TCP", "UDP", "SCTP", ""]}),
        ),
        keywords(
            format!("{at}.ports[].name"),
            json!({"maxLength": 15, "pattern": PORT_NAME_OR_EMPTY}),
        ),
        rule(
            at,
            Cel::new("!has(self.ports) || self.ports.all(p, !has(p.name) || p.name == '' || self.ports.exists_one(q, has(q.name) && q.name == p.name))")
                .message_expression("'the port name ' + self.ports.filter(p, has(p.name) && p.name != '' && !self.ports.exists_one(q, has(q.name) && q.name == p.name))[0].name + ' is used by more than one port of the container'")
                .field(".ports"),
        ),
        keywords(
            format!("{at}.volumeMounts"),
            json!({
                "maxItems": b.volume_mounts,
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["mountPath"],
            }),
        ),
        keywords(format!("{at}.volumeMounts[].name"), json!({"minLength": 1})),
        keywords(format!("{at}.volumeMounts[].mountPath"), json!({"minLength": 1})),
        keywords(
            format!("{at}.volumeMounts[].mountPropagation"),
            json!({"enum": ["None", "HostToContainer", "Bidirectional"]}),
        ),
        rule(
            format!("{at}.volumeMounts[]"),
            Cel::new("!has(self.subPath) || self.subPath == '' || !has(self.subPathExpr) || self.subPathExpr == ''")
                .message("subPathExpr and subPath are mutually exclusive")
                .field(".subPathExpr"),
        ),
        rule(
            at,
            Cel::new("!has(self.volumeMounts) || !self.volumeMounts.exists(m, has(m.mountPropagation) && m.mountPropagation == 'Bidirectional') || (has(self.securityContext) && has(self.securityContext.privileged) && self.securityContext.privileged)")
                .message("Bidirectional mount propagation is available only to privileged containers")
                .field(".volumeMounts")
                .reason("FieldValueForbidden"),
        ),
    ];
    for probe in PROBES {
        out.extend(probe_rules(&format!("{at}.{probe}"), probe));
    }
    for hook in ["postStart", "preStop"] {
        out.extend(handler(
            &format!("{at}.lifecycle.{hook}"),
            &["exec", "httpGet", "tcpSocket", "sleep"],
        ));
        out.push(keywords(
            format!("{at}.lifecycle.{hook}.sleep.seconds"),
            json!({"minimum": 0}),
        ));
    }
    out.extend(resources(&format!("{at}.resources")));
    out.extend(container_security(&format!("{at}.securityContext")));
    out
}

/// What only an init container has to follow: probes and hooks belong to sidecars.
fn init_container(at: &str) -> Vec<Constraint> {
    vec![rule(
        at,
        Cel::new("(has(self.restartPolicy) && self.restartPolicy == 'Always') || !(has(self.livenessProbe) || has(self.readinessProbe) || has(self.startupProbe) || has(self.lifecycle))")
            .message("livenessProbe, readinessProbe, startupProbe and lifecycle may be set only on init containers with restartPolicy: Always (sidecars)")
            .reason("FieldValueForbidden"),
    )]
}

/// A probe: one handler, non-negative timings, and the thresholds the kind allows.
fn probe_rules(at: &str, kind: &str) -> Vec<Constraint> {
    let mut out = handler(at, &["exec", "httpGet", "tcpSocket", "grpc"]);
    for field in [
        "initialDelaySeconds",
        "timeoutSeconds",
        "periodSeconds",
        "failureThreshold",
    ] {
        out.push(keywords(format!("{at}.{field}"), json!({"minimum": 0})));
    }
    out.push(keywords(
        format!("{at}.grpc.port"),
        json!({"minimum": 1, "maximum": 65535}),
    ));
    if kind == "readinessProbe" {
        out.push(keywords(
            format!("{at}.successThreshold"),
            json!({"minimum": 0}),
        ));
        out.push(rule(
            at,
            Cel::new("!has(self.terminationGracePeriodSeconds)")
                .message("must not be set for readinessProbes")
                .field(".terminationGracePeriodSeconds"),
        ));
    } else {
        // 0 is defaulted to 1; anything above cannot mean anything for liveness or startup.
        out.push(keywords(
            format!("{at}.successThreshold"),
            json!({"minimum": 0, "maximum": 1}),
        ));
        out.push(keywords(
            format!("{at}.terminationGracePeriodSeconds"),
            json!({"minimum": 1}),
        ));
    }
    out
}

/// A probe or lifecycle hook at `at`: exactly one of `kinds`, each well formed.
fn handler(at: &str, kinds: &[&str]) -> Vec<Constraint> {
    let count = kinds
        .iter()
        .map(|k| format!("(has(self.{k}) ? 1 : 0)"))
        .collect::<Vec<_>>()
        .join(" + ");
    let listed = match kinds {
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
        [] => String::new(),
    };
    let port = json!({
        "minimum": 1,
        "maximum": 65535,
        "maxLength": 15,
        "pattern": PORT_NAME,
    });
    vec![
        rule(
            at,
            Cel::new(format!("{count} >= 1"))
                .message(&format!("must specify a handler type: one of {listed}"))
                .reason("FieldValueRequired"),
        ),
        rule(
            at,
            Cel::new(format!("{count} <= 1"))
                .message("may not specify more than 1 handler type")
                .reason("FieldValueForbidden"),
        ),
        require(format!("{at}.exec"), "command"),
        keywords(format!("{at}.exec.command"), json!({"minItems": 1})),
        keywords(format!("{at}.httpGet.port"), port.clone()),
        keywords(
            format!("{at}.httpGet.scheme"),
            json!({"enum": ["HTTP", "HTTPS", ""]}),
        ),
        keywords(format!("{at}.tcpSocket.port"), port),
    ]
}

/// Requests and limits: quantities, not negative, a request no more than its limit.
fn resources(at: &str) -> Vec<Constraint> {
    let b = bounds();
    let mut out = Vec::new();
    for map in ["requests", "limits"] {
        out.push(keywords(
            format!("{at}.{map}"),
            json!({"maxProperties": b.resources}),
        ));
        out.push(keywords(
            format!("{at}.{map}{{}}"),
            json!({"maxLength": b.quantity_length}),
        ));
        out.push(rule(
            at,
            Cel::new(format!("!has(self.{map}) || self.{map}.all(k, isQuantity(string(self.{map}[k])))"))
                .message_expression(format!("'the value of ' + self.{map}.filter(k, !isQuantity(string(self.{map}[k])))[0] + ' is not a quantity (such as 250m, 2, 512Mi or 1Gi)'"))
                .field(&format!(".{map}")),
        ));
        out.push(rule(
            at,
            Cel::new(format!("!has(self.{map}) || self.{map}.all(k, !isQuantity(string(self.{map}[k])) || !quantity(string(self.{map}[k])).isLessThan(quantity('0')))"))
                .message_expression(format!("'the value of ' + self.{map}.filter(k, isQuantity(string(self.{map}[k])) && quantity(string(self.{map}[k])).isLessThan(quantity('0')))[0] + ' must be greater than or equal to 0'"))
                .field(&format!(".{map}")),
        ));
    }
    let above = "isQuantity(string(self.requests[k])) && isQuantity(string(self.limits[k])) && quantity(string(self.requests[k])).compareTo(quantity(string(self.limits[k]))) > 0";
    out.push(rule(
        at,
        Cel::new(format!("!has(self.requests) || !has(self.limits) || self.requests.all(k, !(k in self.limits) || !({above}))"))
            .message_expression(format!("'the request for ' + self.requests.filter(k, k in self.limits && {above})[0] + ' must be less than or equal to its limit'"))
            .field(".requests"),
    ));
    out
}

/// A pod's securityContext.
fn pod_security(at: &str) -> Vec<Constraint> {
    let id = json!({"minimum": 0, "maximum": MAX_ID});
    let mut out = vec![
        keywords(format!("{at}.runAsUser"), id.clone()),
        keywords(format!("{at}.runAsGroup"), id.clone()),
        keywords(format!("{at}.fsGroup"), id.clone()),
        keywords(format!("{at}.supplementalGroups[]"), id),
        keywords(
            format!("{at}.fsGroupChangePolicy"),
            json!({"enum": ["OnRootMismatch", "Always"]}),
        ),
    ];
    out.extend(profiles(at));
    out
}

/// A container's securityContext.
fn container_security(at: &str) -> Vec<Constraint> {
    let id = json!({"minimum": 0, "maximum": MAX_ID});
    let mut out = vec![
        keywords(format!("{at}.runAsUser"), id.clone()),
        keywords(format!("{at}.runAsGroup"), id),
        rule(
            at,
            Cel::new("!has(self.privileged) || !self.privileged || !has(self.allowPrivilegeEscalation) || self.allowPrivilegeEscalation")
                .message("cannot set allowPrivilegeEscalation to false and privileged to true"),
        ),
    ];
    out.extend(profiles(at));
    out
}

/// The seccomp and AppArmor profiles of a securityContext: a known type, and a localhost
/// profile exactly when the type is Localhost.
fn profiles(at: &str) -> Vec<Constraint> {
    let mut out = Vec::new();
    // seccomp takes an empty localhost profile; AppArmor does not.
    for (profile, what, given) in [
        ("seccompProfile", "seccomp", "has(self.localhostProfile)"),
        (
            "appArmorProfile",
            "AppArmor",
            "has(self.localhostProfile) && self.localhostProfile != ''",
        ),
    ] {
        let p = format!("{at}.{profile}");
        out.push(keywords(
            format!("{p}.type"),
            json!({"enum": ["Localhost", "RuntimeDefault", "Unconfined"]}),
        ));
        out.push(rule(
            &p,
            Cel::new(format!("self.type != 'Localhost' || ({given})"))
                .message(&format!("must be set when {what} type is Localhost"))
                .field(".localhostProfile")
                .reason("FieldValueRequired"),
        ));
        out.push(rule(
            &p,
            Cel::new("self.type == 'Localhost' || !has(self.localhostProfile)")
                .message(&format!("can only be set when {what} type is Localhost"))
                .field(".localhostProfile"),
        ));
    }
    out
}

/// The rule on `spec` that every volume mount of the containers in `list` names a volume of
/// the template or a claim template (the operator adds the claims' volumes to each pod).
pub fn volume_mounts_rule(list: &str) -> kube::core::Rule {
    use kube::core::{Message, Rule};
    let known = "((has(self.template.spec.volumes) && self.template.spec.volumes.exists(v, v.name == m.name)) || (has(self.volumeClaimTemplates) && self.volumeClaimTemplates.exists(t, t.metadata.name == m.name)))";
    let containers = format!("self.template.spec.{list}");
    let bad = format!("has(c.volumeMounts) && c.volumeMounts.exists(m, !{known})");
    // One pass over the mounts, names picked by map before filter and never joined to
    // other strings inside it: the API server prices such a string as unbounded, and a
    // second pass (for the container's name) at the rule's cost again. The rule failed, so
    // some container has a mount to name; `+ ['']` keeps the others' empty.
    let unknown = format!(
        "{containers}.map(c, has(c.volumeMounts) ? (c.volumeMounts.map(m, {known} ? '' : m.name).filter(n, n != '') + [''])[0] : '').filter(n, n != '')[0]"
    );
    Rule::new(format!(
        "!has(self.template.spec) || !has({containers}) || !{containers}.exists(c, {bad})"
    ))
    .message(Message::Expression(format!(
        "'the volume mount ' + {unknown} + ' names no volume of spec.template.spec.volumes and no claim template of spec.volumeClaimTemplates'"
    )))
    .field_path(format!(".template.spec.{list}"))
}
