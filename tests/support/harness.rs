//! The harness of the local control plane (`e2e/cluster`): its state directory, its faults,
//! and its processes.

use std::path::PathBuf;
use std::process::{Command, Output};

use super::{kubeconfig_path, repo_root};

/// The cluster's state directory, where the kubeconfig, the logs and the pid files live.
pub fn cluster_dir() -> PathBuf {
    kubeconfig_path()
        .parent()
        .expect("the kubeconfig lives in the cluster's state directory")
        .to_path_buf()
}

fn run_script(script: &str, args: &[&str]) -> std::io::Result<Output> {
    Command::new(repo_root().join("e2e/cluster").join(script))
        .args(args)
        .env("PERENNIAL_CLUSTER_DIR", cluster_dir())
        .output()
}

/// Runs `e2e/cluster/SCRIPT ARGS`, panicking unless it succeeds; returns its stdout.
pub(super) fn harness(args: &[&str], script: &str) -> String {
    let out = run_script(script, args).unwrap_or_else(|e| panic!("run e2e/cluster/{script}: {e}"));
    assert!(
        out.status.success(),
        "e2e/cluster/{script} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn fault_args<'a>(what: &'a str, node: Option<&'a str>) -> Vec<&'a str> {
    let mut args = vec![what];
    args.extend(node);
    args
}

/// Injects a fault with the harness (`e2e/cluster/fault WHAT [NODE]`).
pub fn fault(what: &str, node: Option<&str>) {
    harness(&fault_args(what, node), "fault");
}

/// Injects a fault with the harness like `fault`, but returns what the harness said instead
/// of panicking: for a soak that records a fault it could not inject (the API server may be
/// restarting) and keeps going.
pub fn try_fault(what: &str, node: Option<&str>) -> Result<String, String> {
    let args = fault_args(what, node);
    let out = run_script("fault", &args).map_err(|e| format!("run e2e/cluster/fault: {e}"))?;
    let said = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if out.status.success() {
        Ok(said)
    } else {
        Err(format!("e2e/cluster/fault {args:?} failed: {said}"))
    }
}

/// The local control plane's processes, as `e2e/cluster/lib.sh` names them.
pub const CONTROL_PLANE: [&str; 5] = [
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kwok",
];

/// Starts `component` of the local control plane again from its saved command line when it
/// no longer runs, as a kubelet restarts a static pod; returns whether it had to. Some exit
/// on purpose and rely on being restarted: kube-scheduler exits when it finds its cache
/// corrupted, which an API server restart can bring about.
pub fn relaunch_if_stopped(component: &str) -> Result<bool, String> {
    let script = r#". "$0" || exit 2
[ -f "$STATE_DIR/pids/$1.cmd" ] || { echo "$1 was never started by e2e/cluster/up" >&2; exit 2; }
if component_pid "$1" >/dev/null; then echo running; else launch "$1" && echo relaunched; fi"#;
    let out = Command::new("bash")
        .arg("-c")
        .arg(script)
        .arg(repo_root().join("e2e/cluster/lib.sh"))
        .arg(component)
        .env("PERENNIAL_CLUSTER_DIR", cluster_dir())
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("run bash: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim() == "relaunched")
}
