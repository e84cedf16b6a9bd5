//! kubectl and Helm as the harness built them (matching the API server's version), run
//! against the local cluster.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use kube::config::Kubeconfig;

use super::harness::harness;
use super::kubeconfig_path;

/// The binary `name` from the directory of `e2e/cluster/build --print-dirs` that contains
/// `marker`.
fn built(marker: &str, name: &str) -> PathBuf {
    static DIRS: OnceLock<String> = OnceLock::new();
    let dirs = DIRS.get_or_init(|| harness(&["--print-dirs"], "build"));
    let dir = dirs
        .lines()
        .find(|l| l.contains(marker))
        .unwrap_or_else(|| panic!("build --print-dirs lists no {marker} directory"));
    Path::new(dir.trim()).join(name)
}

/// The kubectl the harness built.
pub fn kubectl_bin() -> PathBuf {
    built("/kubernetes-", "kubectl")
}

/// The Helm the harness built.
pub fn helm_bin() -> PathBuf {
    built("/helm-", "helm")
}

/// The promtool the harness built (it checks the chart's alerting rules and the metrics).
pub fn promtool_bin() -> PathBuf {
    built("/promtool-", "promtool")
}

/// A binary of the toxiproxy the harness built (`toxiproxy-server`, `toxiproxy-cli`).
pub fn toxiproxy_bin(name: &str) -> PathBuf {
    built("/toxiproxy-", name)
}

/// Runs `bin` with `--kubeconfig kubeconfig` and `args`, `stdin` as its input; returns
/// (success, stdout, stderr).
fn run(
    bin: &Path,
    kubeconfig: &Path,
    args: &[&str],
    stdin: Option<&str>,
) -> (bool, String, String) {
    let mut command = Command::new(bin);
    command.arg("--kubeconfig").arg(kubeconfig).args(args);
    output_of(command, stdin)
}

/// Runs `command` with `stdin` as its input; returns (success, stdout, stderr).
pub fn output_of(mut command: Command, stdin: Option<&str>) -> (bool, String, String) {
    command
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let program = command.get_program().to_string_lossy().into_owned();
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("stdin is piped")
            .write_all(input.as_bytes())
            .expect("write the input");
    }
    let out = child.wait_with_output().expect("the command finishes");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs kubectl against the local cluster as the admin; returns (success, stdout, stderr).
pub fn kubectl(args: &[&str]) -> (bool, String, String) {
    run(&kubectl_bin(), &kubeconfig_path(), args, None)
}

/// Runs kubectl with `stdin` as input.
pub fn kubectl_stdin(args: &[&str], stdin: &str) -> (bool, String, String) {
    run(&kubectl_bin(), &kubeconfig_path(), args, Some(stdin))
}

/// Runs kubectl with another identity's `kubeconfig`.
pub fn kubectl_with(kubeconfig: &Path, args: &[&str]) -> (bool, String, String) {
    run(&kubectl_bin(), kubeconfig, args, None)
}

/// Runs helm against the local cluster as the admin; returns (success, stdout, stderr).
pub fn helm(args: &[&str]) -> (bool, String, String) {
    run(&helm_bin(), &kubeconfig_path(), args, None)
}

/// Writes a kubeconfig that authenticates as the harness's admin but acts as `user`
/// (the kubeconfig's `as:` impersonation), readable by its owner only.
pub fn write_impersonating_kubeconfig(user: &str, path: &Path) {
    let mut kubeconfig =
        Kubeconfig::read_from(kubeconfig_path()).expect("read the admin kubeconfig");
    for named in &mut kubeconfig.auth_infos {
        if let Some(auth) = named.auth_info.as_mut() {
            auth.impersonate = Some(user.to_string());
        }
    }
    let text = serde_yaml::to_string(&kubeconfig).expect("serialize the kubeconfig");
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).expect("create the kubeconfig's directory");
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).expect("create the kubeconfig");
    file.write_all(text.as_bytes())
        .expect("write the kubeconfig");
}
