//! The Helm chart (charts/perennial): what it renders, and releases of it installed for a
//! test and uninstalled when the test ends.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use super::{helm, kubectl_with, repo_root, unique_suffix};

/// The release name every test installs (each in a namespace of its own).
pub const RELEASE: &str = "perennial";
/// The leader Lease the chart names for that release.
pub const LEASE: &str = "perennial-leader";
/// The Kubernetes version `helm template` renders for (the local control plane's).
pub const KUBE_VERSION: &str = "1.36.0";

/// The chart's directory.
pub fn chart() -> &'static str {
    static DIR: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DIR.get_or_init(|| repo_root().join("charts/perennial").display().to_string())
}

/// `values` (JSON is YAML) in a file of its own for `helm -f`, removed when dropped.
struct ValuesFile(String);

impl ValuesFile {
    fn new(values: &Value) -> Self {
        let dir = repo_root().join("target/chart-values");
        std::fs::create_dir_all(&dir).expect("create the values directory");
        let path = dir.join(format!("values-{}.json", unique_suffix()));
        std::fs::write(&path, values.to_string()).expect("write the values");
        Self(path.display().to_string())
    }
}

impl Drop for ValuesFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Runs `helm COMMAND RELEASE CHART --namespace NAMESPACE -f VALUES EXTRA`.
fn helm_with_values(
    command: &str,
    namespace: &str,
    values: &Value,
    extra: &[&str],
) -> (bool, String, String) {
    let file = ValuesFile::new(values);
    let mut args = vec![
        command,
        RELEASE,
        chart(),
        "--namespace",
        namespace,
        "-f",
        &file.0,
    ];
    args.extend_from_slice(extra);
    helm(&args)
}

/// What the chart renders for a release in `namespace` with `values`.
pub fn render(namespace: &str, values: &Value, include_crds: bool) -> String {
    let mut extra = vec!["--kube-version", KUBE_VERSION];
    if include_crds {
        extra.push("--include-crds");
    }
    let (ok, out, err) = helm_with_values("template", namespace, values, &extra);
    assert!(ok, "helm template failed: {err}");
    out
}

/// The documents of a multi-document YAML stream, empty ones dropped.
pub fn documents(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|doc| Value::deserialize(doc).expect("the chart renders valid YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

/// An installed release, uninstalled when the guard drops, also when a test fails: its
/// ClusterRole and its Roles in other namespaces outlive the release namespace.
pub struct Release {
    namespace: String,
    installed: bool,
}

impl Release {
    /// `helm install` into `namespace` (which exists) with `values`; returns the release and
    /// helm's stderr, where the API server's warnings land.
    pub fn install(namespace: &str, values: &Value) -> (Self, String) {
        let (ok, out, err) = helm_with_values("install", namespace, values, &[]);
        assert!(ok, "helm install failed: {err}\n{out}");
        (
            Self {
                namespace: namespace.to_string(),
                installed: true,
            },
            err,
        )
    }

    pub fn uninstall(&mut self) {
        let (ok, out, err) = helm(&["uninstall", RELEASE, "--namespace", &self.namespace]);
        assert!(ok, "helm uninstall failed: {err}\n{out}");
        self.installed = false;
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        if self.installed {
            let _ = helm(&["uninstall", RELEASE, "--namespace", &self.namespace]);
        }
    }
}

/// A file removed when the guard drops (the impersonating kubeconfig holds a token).
pub struct TempFile(pub PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `kubectl auth can-i` with `kubeconfig`: "yes" or "no".
pub fn can_i(kubeconfig: &Path, args: &[&str]) -> String {
    let mut all = vec!["auth", "can-i"];
    all.extend_from_slice(args);
    let (_, out, _) = kubectl_with(kubeconfig, &all);
    out.trim().to_string()
}

/// Lines of the operator log that tell of a request the API server refused.
pub fn refusals(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.to_lowercase().contains("forbidden") || l.contains("code: 403"))
        .map(str::to_string)
        .collect()
}
