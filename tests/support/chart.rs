//! The Helm chart (charts/perennial): what it renders, and releases of it installed for a
//! test and uninstalled when the test ends.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{json, Value};

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

/// Runs `helm COMMAND RELEASE CHART_DIR --namespace NAMESPACE -f VALUES EXTRA`.
fn helm_with_values(
    command: &str,
    chart_dir: &str,
    namespace: &str,
    values: &Value,
    extra: &[&str],
) -> (bool, String, String) {
    let file = ValuesFile::new(values);
    let mut args = vec![
        command,
        RELEASE,
        chart_dir,
        "--namespace",
        namespace,
        "-f",
        &file.0,
    ];
    args.extend_from_slice(extra);
    helm(&args)
}

/// `values` for a test's release of the chart: `crds.install` is false unless `values` sets
/// it. The CRD is cluster-wide, so that at most one release may own it, and the tests share
/// the one `install_crd` applies.
pub fn test_values(values: &Value) -> Value {
    let mut values = values.clone();
    let object = values
        .as_object_mut()
        .expect("the chart's values are a mapping");
    let crds = object.entry("crds").or_insert_with(|| json!({}));
    if let Some(crds) = crds.as_object_mut() {
        crds.entry("install").or_insert(json!(false));
    }
    values
}

/// What the chart renders for a release in `namespace` with `values` (see `test_values`:
/// no CRD unless `values` asks for it).
pub fn render(namespace: &str, values: &Value) -> String {
    render_with_chart_defaults(namespace, &test_values(values))
}

/// What the chart renders with `values` over the chart's own defaults (its CRD included).
pub fn render_with_chart_defaults(namespace: &str, values: &Value) -> String {
    let (ok, out, err) = helm_with_values(
        "template",
        chart(),
        namespace,
        values,
        &["--kube-version", KUBE_VERSION],
    );
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
    /// `helm install` of the chart into `namespace` (which exists) with `values` (see
    /// `test_values`: no CRD unless `values` asks for it); returns the release and helm's
    /// stderr, where the API server's warnings land.
    pub fn install(namespace: &str, values: &Value) -> (Self, String) {
        Self::install_chart(chart(), namespace, &test_values(values))
    }

    /// `helm install` of the chart in `chart_dir` (another version of it) with `values` as
    /// they are.
    pub fn install_chart(chart_dir: &str, namespace: &str, values: &Value) -> (Self, String) {
        let (ok, out, err) = helm_with_values("install", chart_dir, namespace, values, &[]);
        assert!(ok, "helm install of {chart_dir} failed: {err}\n{out}");
        (
            Self {
                namespace: namespace.to_string(),
                installed: true,
            },
            err,
        )
    }

    /// `helm upgrade` of the release to the chart in `chart_dir` with `values` as they are
    /// and `extra` flags; returns (success, stdout, stderr).
    pub fn upgrade(
        &self,
        chart_dir: &str,
        values: &Value,
        extra: &[&str],
    ) -> (bool, String, String) {
        helm_with_values("upgrade", chart_dir, &self.namespace, values, extra)
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
