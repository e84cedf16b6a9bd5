//! What the API server says about ResilientServices with no operator running: raw objects
//! sent as JSON (so that specs the Rust types could never express can be sent too), their
//! rejections, and a table of cases each expecting one message.

use std::time::Duration;

use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::ApiResource;
use perennial::api::ResilientService;
use serde_json::{json, Value};

use super::{install_crd, wait_for, TestNamespace};

const SERVED: Duration = Duration::from_secs(30);

/// A client for raw JSON objects of the CRD.
pub fn raw_api(ns: &TestNamespace) -> Api<DynamicObject> {
    let resource = ApiResource::erase::<ResilientService>(&());
    Api::namespaced_with(ns.client.clone(), &ns.name, &resource)
}

/// Installs the CRD and waits until the namespace's endpoint for it answers.
pub async fn ready(ns: &TestNamespace) -> Api<DynamicObject> {
    install_crd(&ns.client).await;
    let api = raw_api(ns);
    wait_for("ResilientServices to be served", SERVED, || {
        let api = api.clone();
        async move {
            api.list(&ListParams::default())
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
    })
    .await;
    api
}

/// The smallest valid spec: a pod template and nothing else.
pub fn minimal_spec() -> Value {
    json!({
        "template": {
            "metadata": {"labels": {"app.kubernetes.io/name": "probe"}},
            "spec": {"containers": [{"name": "app", "image": "registry.example/app:1"}]}
        }
    })
}

/// A claim template named `name`: 1Gi of `local` storage, ReadWriteOnce.
pub fn claim(name: &str) -> Value {
    json!({
        "metadata": {"name": name},
        "spec": {
            "storageClassName": "local",
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "1Gi"}}
        }
    })
}

/// `base` with `patch` applied as a JSON merge patch (RFC 7386): objects merge, `null`
/// removes a field, anything else replaces.
pub fn merged(base: &Value, patch: &Value) -> Value {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            let mut out = b.clone();
            for (key, value) in p {
                if value.is_null() {
                    out.remove(key);
                } else {
                    let next = merged(out.get(key).unwrap_or(&Value::Null), value);
                    out.insert(key.clone(), next);
                }
            }
            Value::Object(out)
        }
        (_, p) => p.clone(),
    }
}

/// A ResilientService named `name` with `spec`, as raw JSON.
pub fn object(name: &str, spec: Value) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "perennial.dev/v1alpha1",
        "kind": "ResilientService",
        "metadata": {"name": name},
        "spec": spec
    }))
    .expect("a well-formed object")
}

/// Creates the object; `Err` carries the server's message when it refuses it as invalid.
pub async fn create(
    api: &Api<DynamicObject>,
    name: &str,
    spec: Value,
) -> Result<DynamicObject, String> {
    match api
        .create(&PostParams::default(), &object(name, spec))
        .await
    {
        Ok(created) => Ok(created),
        Err(kube::Error::Api(s)) if s.code == 422 => Err(s.message),
        Err(other) => panic!("creating {name} failed for another reason than validation: {other}"),
    }
}

/// Merge-patches the object's spec; `Err` carries the server's message when it is invalid.
pub async fn patch_spec(
    api: &Api<DynamicObject>,
    name: &str,
    spec_patch: Value,
) -> Result<(), String> {
    let patch = json!({"spec": spec_patch});
    match api
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 422 => Err(s.message),
        Err(other) => panic!("patching {name} failed for another reason than validation: {other}"),
    }
}

/// The part of a rejection after `... "name" is invalid: `, which is what the user needs.
pub fn reason(message: &str) -> &str {
    message
        .split_once(" is invalid: ")
        .map_or(message, |(_, rest)| rest)
}

/// One spec the server must refuse: `patch` merged into a valid base, and the text the
/// rejection must contain.
pub struct Case {
    pub name: &'static str,
    pub patch: Value,
    pub expect: &'static str,
    /// Text that must not appear: complaints about fields the case did not break.
    pub absent: Vec<&'static str>,
}

pub fn case(name: &'static str, patch: Value, expect: &'static str) -> Case {
    Case {
        name,
        patch,
        expect,
        absent: Vec::new(),
    }
}

impl Case {
    pub fn without(mut self, text: &'static str) -> Self {
        self.absent.push(text);
        self
    }
}

/// Never part of a good rejection: a CEL rule that failed to evaluate, or the path-less
/// echo of a failed `allOf`.
pub const NOISE: [&str; 3] = [
    "no such key",
    "no such overload",
    "must validate all the schemas",
];

/// Creates each case's spec (`base` with the case's patch) under `prefix-<i>` and checks
/// its rejection; prints the table of cases and messages, and returns what went wrong.
/// Creates the valid `base` as a control, then every case; fails naming each case the API
/// server accepted or refused with another message.
pub async fn assert_rejections(
    api: &Api<DynamicObject>,
    prefix: &str,
    base: &Value,
    cases: &[Case],
) {
    create(api, "control", base.clone())
        .await
        .unwrap_or_else(|m| panic!("the base spec is rejected: {m}"));
    let failures = check_rejections(api, prefix, base, cases).await;
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

pub async fn check_rejections(
    api: &Api<DynamicObject>,
    prefix: &str,
    base: &Value,
    cases: &[Case],
) -> Vec<String> {
    let mut rows = Vec::new();
    let mut failures = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        let spec = merged(base, &c.patch);
        match create(api, &format!("{prefix}-{i}"), spec).await {
            Ok(_) => failures.push(format!("{}: accepted, expected \"{}\"", c.name, c.expect)),
            Err(message) => {
                let shown = reason(&message).to_string();
                if !message.contains(c.expect) {
                    failures.push(format!(
                        "{}: expected \"{}\", got \"{shown}\"",
                        c.name, c.expect
                    ));
                }
                for text in c.absent.iter().chain(NOISE.iter()) {
                    if message.contains(text) {
                        failures.push(format!("{}: \"{text}\" in \"{shown}\"", c.name));
                    }
                }
                rows.push((c.name, shown));
            }
        }
    }
    let width = rows.iter().map(|(n, _)| n.len()).max().unwrap_or(0);
    println!("{:width$}  MESSAGE", "CASE");
    for (name, message) in &rows {
        println!("{name:width$}  {message}");
    }
    failures
}
