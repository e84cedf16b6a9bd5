//! The operator binary as a process of a test's own, watching the test's namespace.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::harness::cluster_dir;
use super::{install_crd, repo_root, strip_ansi, unique_suffix, TestNamespace};

/// Alone: no leader election, metrics on a free port.
const ALONE: [&str; 3] = ["--leader-elect=false", "--metrics-addr", "127.0.0.1:0"];

/// The kubeconfig of the operator's own identity (user perennial-operator).
pub fn operator_kubeconfig() -> PathBuf {
    cluster_dir().join("operator.kubeconfig")
}

/// An operator process watching one namespace, stopped when the guard drops. Its log is
/// kept in target/operator-logs/ for a failing test to be read.
pub struct Operator {
    pub child: std::process::Child,
    pub log: PathBuf,
}

impl Operator {
    /// The CRD first, as Helm installs it, then an operator for the test's namespace alone.
    pub async fn with_crd(ns: &TestNamespace) -> Self {
        install_crd(&ns.client).await;
        Self::start(&ns.name)
    }

    /// One operator for `namespace`, alone.
    pub fn start(namespace: &str) -> Self {
        Self::start_with(namespace, &ALONE)
    }

    /// An operator for `namespace` with extra arguments.
    pub fn start_with(namespace: &str, extra: &[&str]) -> Self {
        Self::spawn(namespace, &operator_kubeconfig(), extra, &[])
    }

    /// An operator for `namespace` that connects with `kubeconfig` rather than the
    /// operator's own identity, with extra arguments.
    pub fn start_with_kubeconfig(namespace: &str, kubeconfig: &Path, extra: &[&str]) -> Self {
        Self::spawn(namespace, kubeconfig, extra, &[])
    }

    fn spawn(namespace: &str, kubeconfig: &Path, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let dir = repo_root().join("target/operator-logs");
        std::fs::create_dir_all(&dir).expect("create the operator log directory");
        let log = dir.join(format!("{namespace}-{}.log", unique_suffix()));
        let out = std::fs::File::create(&log).expect("create the operator log");
        let child = Command::new(env!("CARGO_BIN_EXE_perennial"))
            .args(["run", "--namespaces", namespace])
            .args(extra)
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .env(
                "RUST_LOG",
                std::env::var("PERENNIAL_TEST_LOG")
                    .unwrap_or_else(|_| "info,perennial=debug".into()),
            )
            .envs(env.iter().copied())
            .stdout(out.try_clone().expect("clone the log handle"))
            .stderr(out)
            .spawn()
            .expect("start the operator");
        Self { child, log }
    }

    /// What the operator has logged so far.
    pub fn output(&self) -> String {
        strip_ansi(&std::fs::read_to_string(&self.log).unwrap_or_default())
    }

    /// Sends the operator SIGTERM, as a pod's termination does, and returns at once.
    pub fn terminate(&self) {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "SIGTERM to the operator: {sent}");
    }

    /// Asks the operator to stop as a pod's termination does (SIGTERM) and waits until it
    /// has exited: passes under way finish their writes first, and a heap-profiling build
    /// writes its profile.
    pub async fn stop(&mut self, timeout: std::time::Duration) -> std::process::ExitStatus {
        if let Some(status) = self.child.try_wait().expect("poll the operator") {
            return status;
        }
        self.terminate();
        let child = &mut self.child;
        super::wait_for("the operator to exit on SIGTERM", timeout, || {
            let exited = child.try_wait();
            async move {
                exited
                    .map_err(|e| e.to_string())?
                    .ok_or_else(|| "still running".to_string())
            }
        })
        .await
    }

    /// Panics unless the process still runs and has logged no panic.
    pub fn assert_sound(&mut self, after: &str) {
        let exited = self.child.try_wait().expect("poll the operator");
        let output = self.output();
        assert!(
            exited.is_none(),
            "the operator exited ({exited:?}) after {after}; log {}",
            self.log.display()
        );
        assert!(
            !output.contains("panicked at"),
            "the operator panicked after {after}: {}",
            output
                .lines()
                .find(|l| l.contains("panicked at"))
                .unwrap_or_default()
        );
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An operator for `namespace` alone, with `env` added to its environment.
pub fn operator_with_env(namespace: &str, env: &[(&str, &str)]) -> Operator {
    Operator::spawn(namespace, &operator_kubeconfig(), &ALONE, env)
}
