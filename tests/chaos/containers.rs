//! What each real node's containerd runs, as its own event stream tells it: the stateful
//! slot's invariant checked on the containers themselves. A pod may be deleted, force-deleted
//! or forgotten by the API server while its container runs on (a partitioned node's kubelet
//! stops, its containers do not), so the pods alone cannot prove that a claim never had two
//! running containers: only the runtime can.
//!
//! One thread per real node follows `ctr events` in order: a task started adds its container,
//! a task that exited or was deleted removes it. Every change is judged at once: two running
//! containers of different pods with one local volume mounted is a breach. The running set is
//! read again (`ctr tasks ls`) whenever the stream is (re)opened and after a second without
//! events, so that a containerd restart or a moment before the subscription took hold
//! loses nothing.

use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;

use super::*;

/// The kubelet's directory for a local volume inside a pod's: the volume's name follows it.
const LOCAL_VOLUME_DIR: &str = "/volumes/kubernetes.io~local-volume/";

/// A running container of the soak's namespace and the local volumes mounted into it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Running {
    pub(crate) pod: String,
    pub(crate) uid: String,
    pub(crate) volumes: Vec<String>,
}

/// What one real node's containerd reported.
pub(crate) enum Runtime {
    Started(String, Running),
    Ended(String),
    /// Everything running now, read whole: it replaces what the node had.
    Listed(Vec<(String, Running)>),
}

/// The running containers of every real node and the verdicts on them.
#[derive(Default)]
pub(crate) struct Containers {
    pub(crate) clock: Clock,
    pub(crate) verbose: bool,
    /// By node, then container id.
    pub(crate) running: BTreeMap<String, BTreeMap<String, Running>>,
    pub(crate) starts: u64,
    pub(crate) ends: u64,
    pub(crate) listings: u64,
    /// Local volumes seen mounted by a running container, and the most pods running on one.
    pub(crate) claims_seen: BTreeSet<String>,
    pub(crate) most_on_one_claim: usize,
    /// Breaches in progress: volume to index in `violations`.
    pub(crate) open: BTreeMap<String, usize>,
    pub(crate) violations: Vec<Violation>,
}

impl Containers {
    pub(crate) fn apply(&mut self, node: &str, seen: Runtime) {
        let on_node = self.running.entry(node.to_string()).or_default();
        match seen {
            Runtime::Started(id, running) => {
                self.starts += 1;
                on_node.insert(id, running);
            }
            Runtime::Ended(id) => {
                if on_node.remove(&id).is_some() {
                    self.ends += 1;
                }
            }
            Runtime::Listed(all) => {
                self.listings += 1;
                *on_node = all.into_iter().collect();
            }
        }
        self.check();
    }

    /// Two pods' containers running at once on one local volume is a breach; one pod's
    /// several containers are one pod.
    fn check(&mut self) {
        let mut pods_on: BTreeMap<&str, BTreeMap<&str, Vec<String>>> = BTreeMap::new();
        for (node, on_node) in &self.running {
            for (id, r) in on_node {
                for volume in &r.volumes {
                    pods_on
                        .entry(volume)
                        .or_default()
                        .entry(&r.uid)
                        .or_default()
                        .push(format!(
                            "{} (container {} on {node})",
                            r.pod,
                            &id[..12.min(id.len())]
                        ));
                }
            }
        }
        let now = self.clock.0.elapsed().as_secs_f64();
        let mut found = Found::new();
        for (volume, pods) in &pods_on {
            self.claims_seen.insert(volume.to_string());
            self.most_on_one_claim = self.most_on_one_claim.max(pods.len());
            if pods.len() > 1 {
                let details = pods.values().flatten().cloned().collect::<Vec<_>>();
                let details = format!(
                    "two pods' containers running with it mounted: {}",
                    details.join(", ")
                );
                found.insert(
                    volume.to_string(),
                    ("claim-run-twice", volume.to_string(), details),
                );
            }
        }
        settle_episodes(
            &mut self.open,
            &mut self.violations,
            found,
            now,
            self.verbose,
        );
    }
}

/// An application container of `namespace` from `ctr containers info`'s JSON; a sandbox,
/// another namespace's container or one without the kubelet's labels is none.
pub(crate) fn running_of(info: &Value, namespace: &str) -> Option<Running> {
    let labels = &info["Labels"];
    let label = |k: &str| labels[k].as_str();
    if label("io.cri-containerd.kind") != Some("container")
        || label("io.kubernetes.pod.namespace") != Some(namespace)
    {
        return None;
    }
    let volumes = (info["Spec"]["mounts"].as_array().into_iter().flatten())
        .filter_map(|m| m["source"].as_str())
        .filter_map(|s| {
            Some(
                s.split_once(LOCAL_VOLUME_DIR)?
                    .1
                    .split('/')
                    .next()?
                    .to_string(),
            )
        })
        .collect();
    Some(Running {
        pod: label("io.kubernetes.pod.name")?.to_string(),
        uid: label("io.kubernetes.pod.uid")?.to_string(),
        volumes,
    })
}

/// A task event of one line of `ctr events` (`<date> <time> <zone> UTC <namespace> <topic>
/// <json>`): the container started, or the container's own process ended (an exec's end is
/// not the container's).
pub(crate) enum TaskEvent {
    Start(String),
    End(String),
}

pub(crate) fn task_event(line: &str) -> Option<TaskEvent> {
    let mut words = line.splitn(7, ' ');
    let (namespace, topic, body) = (words.nth(4)?, words.next()?, words.next()?);
    if namespace != "k8s.io" {
        return None;
    }
    let body: Value = serde_json::from_str(body).ok()?;
    let container = body["container_id"].as_str()?.to_string();
    match topic {
        "/tasks/start" => Some(TaskEvent::Start(container)),
        "/tasks/exit" if body["id"].as_str().is_none_or(|id| id == container) => {
            Some(TaskEvent::End(container))
        }
        "/tasks/delete" => Some(TaskEvent::End(container)),
        _ => None,
    }
}

/// How often the running set is read whole while events flow: a start that came before
/// the subscription took hold is found within this.
const RELIST_AFTER: Duration = Duration::from_secs(2);

/// Follows every real node's containerd until dropped.
pub(crate) struct ContainerWatch {
    stop: Arc<AtomicBool>,
    /// Each node's `ctr events`, killed when the watch is dropped.
    children: Vec<Arc<Mutex<Option<Child>>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl ContainerWatch {
    pub(crate) fn start(nodes: &[String], namespace: &str, state: Arc<Mutex<Containers>>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let children: Vec<_> = nodes.iter().map(|_| Arc::default()).collect();
        let threads = (nodes.iter().zip(&children))
            .map(|(node, child)| {
                let follower = Follower {
                    node: node.clone(),
                    socket: node_socket(node),
                    namespace: namespace.to_string(),
                    state: state.clone(),
                    known: BTreeMap::new(),
                };
                let (stop, child) = (stop.clone(), Arc::clone(child));
                std::thread::spawn(move || follower.run(&stop, &child))
            })
            .collect();
        Self {
            stop,
            children,
            threads,
        }
    }
}

impl Drop for ContainerWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for child in &self.children {
            if let Some(child) = lock(child).as_mut() {
                let _ = child.kill();
            }
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

struct Follower {
    node: String,
    socket: PathBuf,
    namespace: String,
    state: Arc<Mutex<Containers>>,
    /// `ctr containers info` read once per container: None for one not of the soak.
    known: BTreeMap<String, Option<Running>>,
}

impl Follower {
    fn ctr(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .args(["-n", "k8s.io"])
            .args(args)
            .output()
            .map_err(|e| format!("run ctr: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn info(&mut self, id: &str) -> Option<Running> {
        if let Some(known) = self.known.get(id) {
            return known.clone();
        }
        let info: Value =
            serde_json::from_str(&self.ctr(&["containers", "info", id]).ok()?).ok()?;
        let running = running_of(&info, &self.namespace);
        self.known.insert(id.to_string(), running.clone());
        running
    }

    /// Every running container of the soak on the node, or an error while containerd is down.
    fn list(&mut self) -> Result<Vec<(String, Running)>, String> {
        let tasks = self.ctr(&["tasks", "ls"])?;
        let ids: Vec<String> = (tasks.lines().skip(1))
            .filter_map(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                (cols.len() == 3 && cols[2] == "RUNNING").then(|| cols[0].to_string())
            })
            .collect();
        Ok(ids
            .into_iter()
            .filter_map(|id| Some((id.clone(), self.info(&id)?)))
            .collect())
    }

    fn apply(&self, seen: Runtime) {
        lock(&self.state).apply(&self.node, seen);
    }

    fn run(mut self, stop: &AtomicBool, child_slot: &Mutex<Option<Child>>) {
        while !stop.load(Ordering::SeqCst) {
            let child = Command::new("ctr")
                .arg("--address")
                .arg(&self.socket)
                .arg("events")
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn();
            let Ok(mut child) = child else {
                std::thread::sleep(Duration::from_millis(500));
                continue;
            };
            let stdout = child.stdout.take().expect("a piped stdout");
            *lock(child_slot) = Some(child);
            let (tx, rx) = mpsc::channel();
            let reader = std::thread::spawn(move || {
                for line in std::io::BufReader::new(stdout)
                    .lines()
                    .map_while(Result::ok)
                {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
            'stream: loop {
                // What came before is applied, then the whole is read: what the listing
                // shows is at least as new as every event applied.
                while let Ok(line) = rx.try_recv() {
                    self.follow(&line);
                }
                match self.list() {
                    Ok(all) => self.apply(Runtime::Listed(all)),
                    // containerd is down: on a crashed node its containers went with it, and
                    // nothing starts there before it answers again and is read whole.
                    Err(_) => break,
                }
                let listed = Instant::now();
                while listed.elapsed() < RELIST_AFTER {
                    match rx.recv_timeout(Duration::from_millis(500)) {
                        Ok(line) => self.follow(&line),
                        Err(mpsc::RecvTimeoutError::Timeout) => {}
                        Err(mpsc::RecvTimeoutError::Disconnected) => break 'stream,
                    }
                    if stop.load(Ordering::SeqCst) {
                        break 'stream;
                    }
                }
            }
            if let Some(mut child) = lock(child_slot).take() {
                let _ = child.kill();
                let _ = child.wait();
            }
            let _ = reader.join();
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn follow(&mut self, line: &str) {
        match task_event(line) {
            Some(TaskEvent::Start(id)) => {
                if let Some(running) = self.info(&id) {
                    self.apply(Runtime::Started(id, running));
                }
            }
            Some(TaskEvent::End(id)) => self.apply(Runtime::Ended(id)),
            None => {}
        }
    }
}
