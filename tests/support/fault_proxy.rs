//! toxiproxy between one operator and the API server: latency, a bandwidth limit,
//! connection resets and blackholes for that operator alone, while every other client
//! (the tests, a standby operator, the controller manager) talks to the server directly.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kube::config::Kubeconfig;

use super::{operator_kubeconfig, repo_root, toxiproxy_bin, unique_suffix};

/// The proxy's name in toxiproxy.
const PROXY: &str = "apiserver";
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A toxiproxy server of a test's own and the kubeconfig of the operator's identity that
/// dials the API server through it; stopped when the guard drops.
pub struct FaultProxy {
    child: Child,
    api: String,
    /// The operator's kubeconfig, its server address replaced by the proxy's.
    pub kubeconfig: PathBuf,
    pub log: PathBuf,
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port on loopback");
    listener.local_addr().expect("its address").port()
}

impl FaultProxy {
    /// Starts toxiproxy on loopback with one proxy towards the API server.
    pub fn start() -> Self {
        let dir = repo_root().join("target/operator-logs");
        std::fs::create_dir_all(&dir).expect("create the log directory");
        let suffix = unique_suffix();
        let log = dir.join(format!("toxiproxy-{suffix}.log"));
        let out = std::fs::File::create(&log).expect("create the toxiproxy log");
        let api_port = free_port();
        let child = Command::new(toxiproxy_bin("toxiproxy-server"))
            .args(["-host", "127.0.0.1", "-port", &api_port.to_string()])
            .stdout(out.try_clone().expect("clone the log handle"))
            .stderr(out)
            .spawn()
            .expect("start toxiproxy-server");
        let this = Self {
            child,
            api: format!("http://127.0.0.1:{api_port}"),
            kubeconfig: dir.join(format!("operator-via-proxy-{suffix}.kubeconfig")),
            log,
        };
        let started = Instant::now();
        while this.cli(&["list"]).is_err() {
            assert!(
                started.elapsed() < START_TIMEOUT,
                "toxiproxy did not answer within {START_TIMEOUT:?}; log {}",
                this.log.display()
            );
            std::thread::sleep(Duration::from_millis(100)); // polling a condition
        }
        let mut kubeconfig =
            Kubeconfig::read_from(operator_kubeconfig()).expect("read the operator kubeconfig");
        let cluster = (kubeconfig.clusters.iter_mut())
            .find_map(|c| c.cluster.as_mut())
            .expect("a cluster in the operator kubeconfig");
        let server = cluster.server.clone().expect("a server address");
        let upstream = server.trim_start_matches("https://").to_string();
        let listen = format!("127.0.0.1:{}", free_port());
        this.cli(&[
            "create",
            "--listen",
            &listen,
            "--upstream",
            &upstream,
            PROXY,
        ])
        .expect("create the proxy");
        // The server certificate names 127.0.0.1, whatever the port: TLS passes through.
        cluster.server = Some(format!("https://{listen}"));
        let text = serde_yaml::to_string(&kubeconfig).expect("serialize the kubeconfig");
        std::fs::write(&this.kubeconfig, text).expect("write the kubeconfig");
        this
    }

    fn cli(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new(toxiproxy_bin("toxiproxy-cli"))
            .arg("--host")
            .arg(&self.api)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("run toxiproxy-cli: {e}"))?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        if out.status.success() && !text.contains("Failed") {
            Ok(text)
        } else {
            Err(text)
        }
    }

    /// Adds the toxic `name` of `kind` (latency, bandwidth, reset_peer, timeout, ...) with
    /// `attributes`, on the data coming back from the API server.
    pub fn add(&self, name: &str, kind: &str, attributes: &[(&str, &str)]) {
        self.add_on(name, kind, attributes, "--downstream");
    }

    /// Adds the toxic on the data going to the API server as well as on what comes back,
    /// as `NAME-up` and `NAME-down`: a blackhole lets nothing through either way.
    pub fn add_both_ways(&self, name: &str, kind: &str, attributes: &[(&str, &str)]) {
        self.add_on(&format!("{name}-up"), kind, attributes, "--upstream");
        self.add_on(&format!("{name}-down"), kind, attributes, "--downstream");
    }

    fn add_on(&self, name: &str, kind: &str, attributes: &[(&str, &str)], direction: &str) {
        let mut args = vec![
            "toxic",
            "add",
            "--type",
            kind,
            "--toxicName",
            name,
            direction,
        ];
        let attrs: Vec<String> = attributes.iter().map(|(k, v)| format!("{k}={v}")).collect();
        for a in &attrs {
            args.extend(["--attribute", a.as_str()]);
        }
        args.push(PROXY);
        self.cli(&args)
            .unwrap_or_else(|e| panic!("add toxic {name}: {e}"));
    }

    /// Resets every connection through the proxy at once, as a load balancer that drops
    /// its connections does: the proxy is disabled (which closes them) and enabled again.
    pub fn reset_all(&self) {
        for _ in 0..2 {
            self.cli(&["toggle", PROXY])
                .unwrap_or_else(|e| panic!("toggle the proxy: {e}"));
        }
    }

    /// Removes the toxic `name`.
    pub fn remove(&self, name: &str) {
        self.cli(&["toxic", "remove", "--toxicName", name, PROXY])
            .unwrap_or_else(|e| panic!("remove toxic {name}: {e}"));
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
