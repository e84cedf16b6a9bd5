//! The client's connections as this machine's kernel tracked them, so that a request failed
//! outside every fault window names where it went: the pod address its connection was
//! translated to, how far its handshake got, and that address's neighbour entries around it.
//! The real nodes' data path (kube-proxy's rules, the pod bridges) is this machine's, so
//! `conntrack -E` and `ip monitor neigh` here see all of it. Both need root, as the real
//! nodes do; without them the report says what is missing and judges nothing less.

use super::*;
use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

/// The netlink buffer asked of conntrack: the kernel drops events (ENOBUFS) when a burst
/// outruns the reader, and the default is a fraction of this.
const EVENT_BUFFER_BYTES: &str = "16777216";

/// How far a connection got, from its conntrack states.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Reached {
    /// The SYN went out (to `backend`) and nothing came back.
    SynSent,
    /// The pod answered the SYN; the client's ACK never completed the handshake.
    SynRecv,
    /// The handshake completed.
    Established,
}

/// One connection to the Service address, from its first conntrack event.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Connection {
    /// The first event's time, seconds since the epoch.
    pub(crate) at: f64,
    /// The client's port: the connection's key.
    pub(crate) port: u16,
    /// The pod address the Service address was translated to.
    pub(crate) backend: String,
    pub(crate) reached: Reached,
    /// Reset before any answer from the pod: nothing listened at its address and port.
    pub(crate) reset: bool,
    /// How long from the SYN to the pod's answer, when it answered.
    pub(crate) answered_after: Option<f64>,
    /// When conntrack dropped the entry, if it did while recorded.
    pub(crate) ended: Option<f64>,
}

/// One line of `conntrack -E -o timestamp`, as far as the report needs it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Event {
    pub(crate) at: f64,
    pub(crate) kind: String,
    pub(crate) state: String,
    pub(crate) port: u16,
    pub(crate) backend: String,
}

/// Reads `[1796568251.510608]  [NEW] tcp 6 120 SYN_SENT src=.. dst=.. sport=P dport=80
/// [UNREPLIED] src=BACKEND ...`; None for any other line (conntrack's warnings included).
pub(crate) fn parse_event(line: &str) -> Option<Event> {
    let rest = line.trim_start().strip_prefix('[')?;
    let (at, rest) = rest.split_once(']')?;
    let at: f64 = at.parse().ok()?;
    let mut words = rest.split_whitespace();
    let kind = words
        .next()?
        .trim_matches(|c| c == '[' || c == ']')
        .to_string();
    let mut state = String::new();
    let (mut port, mut backend, mut srcs) = (None, None, 0);
    for w in words {
        if let Some(v) = w.strip_prefix("src=") {
            srcs += 1;
            if srcs == 2 {
                backend = Some(v.to_string());
            }
        } else if let Some(v) = w.strip_prefix("sport=") {
            port = port.or(v.parse().ok());
        } else if srcs == 0 && w.chars().all(|c| c.is_ascii_uppercase() || c == '_') {
            state = w.to_string();
        }
    }
    Some(Event {
        at,
        kind,
        state,
        port: port?,
        backend: backend?,
    })
}

/// Folds events into connections, a connection starting at each NEW of its port.
#[derive(Default)]
pub(crate) struct Connections {
    pub(crate) done: Vec<Connection>,
    open: BTreeMap<u16, Connection>,
    /// conntrack's own notices that the kernel dropped events.
    pub(crate) events_lost: usize,
}

impl Connections {
    pub(crate) fn line(&mut self, line: &str) {
        if line.contains("ENOBUFS") {
            self.events_lost += 1;
        }
        if let Some(e) = parse_event(line) {
            self.event(e);
        }
    }

    pub(crate) fn event(&mut self, e: Event) {
        if e.kind == "NEW" {
            if let Some(old) = self.open.remove(&e.port) {
                self.done.push(old);
            }
            self.open.insert(
                e.port,
                Connection {
                    at: e.at,
                    port: e.port,
                    backend: e.backend,
                    reached: Reached::SynSent,
                    reset: false,
                    answered_after: None,
                    ended: None,
                },
            );
            return;
        }
        let Some(c) = self.open.get_mut(&e.port) else {
            return;
        };
        let reached = match e.state.as_str() {
            "SYN_SENT" | "CLOSE" | "" => Reached::SynSent,
            "SYN_RECV" => Reached::SynRecv,
            _ => Reached::Established,
        };
        if reached > c.reached {
            if c.answered_after.is_none() {
                c.answered_after = Some(e.at - c.at);
            }
            c.reached = reached;
        }
        if e.state == "CLOSE" && c.reached == Reached::SynSent {
            c.reset = true;
        }
        if e.kind == "DESTROY" {
            let mut c = self.open.remove(&e.port).expect("an open connection");
            c.ended = Some(e.at);
            self.done.push(c);
        }
    }

    /// Every connection, those still open included, in the order they began.
    pub(crate) fn all(&self) -> Vec<Connection> {
        let mut all: Vec<_> = (self.done.iter().chain(self.open.values()))
            .cloned()
            .collect();
        all.sort_by(|a, b| a.at.total_cmp(&b.at));
        all
    }
}

/// The connection of a request sent at `sent` (seconds since the epoch) that failed: the
/// first that began within `SENT_TO_SYN` of it and did not complete its handshake; the
/// client paces its requests 50 ms apart, so at most one such connection is there.
pub(crate) fn connection_of(all: &[Connection], sent: f64) -> Option<&Connection> {
    const SENT_TO_SYN: f64 = 0.2;
    (all.iter())
        .filter(|c| c.at >= sent - 0.01 && c.at <= sent + SENT_TO_SYN)
        .find(|c| c.reached != Reached::Established)
}

/// The longest an unanswered SYN's entry lives: the kernel's default, which a cluster may
/// lower (e2e/cluster/realnet does).
const SYN_SENT_LIFETIME: f64 = 120.0;

/// Connections whose SYN was never answered and whose entry was still in the table at
/// `sent`. A new SYN from the same source port matches such an entry, keeps its translation
/// to the pod it named, and begins no connection of its own: the request goes to that pod.
pub(crate) fn unanswered_then(all: &[Connection], sent: f64) -> Vec<&Connection> {
    (all.iter())
        .filter(|c| c.reached == Reached::SynSent && !c.reset)
        .filter(|c| c.at < sent && sent - c.at <= SYN_SENT_LIFETIME)
        .filter(|c| c.ended.is_none_or(|end| end > sent))
        .collect()
}

/// What happened to one failed request sent at `sent`, in a line of the report.
pub(crate) fn describe(
    c: Option<&Connection>,
    unanswered: &[&Connection],
    sent: f64,
    neighbour: &[(f64, String)],
) -> String {
    let Some(c) = c else {
        let mut line = "no tracked connection began then (the SYN never reached conntrack, matched an entry already there, or its events were lost)".to_string();
        if let (Some(oldest), Some(newest)) = (unanswered.first(), unanswered.last()) {
            let mut backends: Vec<&str> = unanswered.iter().map(|c| c.backend.as_str()).collect();
            backends.sort();
            backends.dedup();
            line += &format!(
                "; {} unanswered SYNs were still in the table, sent {:.1} to {:.1} s before, to {}: a SYN from one of their source ports goes there again",
                unanswered.len(),
                sent - oldest.at,
                sent - newest.at,
                backends.join(", ")
            );
        }
        return line;
    };
    let how = match (c.reached, c.reset) {
        (Reached::SynSent, true) => "reset before the pod answered".to_string(),
        (Reached::SynSent, false) => "its SYN was never answered".to_string(),
        (Reached::SynRecv, _) => format!(
            "the pod answered after {:.2} s but the handshake never completed",
            c.answered_after.unwrap_or_default()
        ),
        (Reached::Established, _) => "established".into(),
    };
    let around: Vec<String> = (neighbour.iter())
        .filter(|(at, line)| {
            (at - c.at).abs() <= 10.0 && line.split_whitespace().any(|w| w == c.backend)
        })
        .map(|(at, line)| format!("{:+.1}s {}", at - c.at, line.trim()))
        .collect();
    format!(
        "client port {} to {}: {how}; neighbour events of {} within 10 s: {}",
        c.port,
        c.backend,
        c.backend,
        if around.is_empty() {
            "none".into()
        } else {
            around.join(" | ")
        }
    )
}

/// What the recorders saw, once stopped.
pub(crate) struct Recorded {
    pub(crate) connections: Connections,
    pub(crate) neighbour: Vec<(f64, String)>,
    pub(crate) missing: Vec<String>,
    /// Packets the network guard dropped while the recorders ran, if its counters could be
    /// read: any at all is a packet of the cluster's that was routed off its devices.
    pub(crate) guard_drops: Option<u64>,
    pub(crate) files: Vec<PathBuf>,
}

/// The report's lines: how the client's connections went as a whole, and for each request
/// failed outside every fault window, where its connection went and how far it got.
pub(crate) fn report(r: &Recorded, unexcused: &[traffic::Failure], origin: jiff::Timestamp) {
    let (tracked, neighbour) = (&r.connections, r.neighbour.as_slice());
    match r.guard_drops {
        Some(0) => println!("packets the network guard dropped: 0"),
        Some(n) => {
            println!(
                "packets the network guard dropped: {n}; its latest lines in the kernel's log:"
            );
            for line in guard_log(10) {
                println!("  {line}");
            }
        }
        None => println!("packets the network guard dropped: its counters could not be read"),
    }
    if !r.missing.is_empty() {
        println!(
            "client connections: not recorded ({})",
            r.missing.join("; ")
        );
        return;
    }
    let all = tracked.all();
    let slow: Vec<f64> = (all.iter())
        .filter_map(|c| c.answered_after)
        .filter(|d| *d > SLOW_ANSWER)
        .collect();
    println!(
        "client connections (conntrack): {} tracked, {} established, {} reset, {} never answered; {} answered after over {SLOW_ANSWER} s (slowest {:.2} s); {} notices of kernel events lost",
        all.len(),
        all.iter().filter(|c| c.reached == Reached::Established).count(),
        all.iter().filter(|c| c.reset).count(),
        all.iter().filter(|c| c.reached == Reached::SynSent && !c.reset).count(),
        slow.len(),
        slow.iter().copied().fold(0.0, f64::max),
        tracked.events_lost
    );
    println!("  every event: {:?}", r.files);
    let origin = origin.as_duration().as_secs_f64();
    for f in unexcused {
        println!(
            "  t={:.1}s {}: {}",
            f.at,
            f.why,
            describe(
                connection_of(&all, origin + f.at),
                &unanswered_then(&all, origin + f.at),
                origin + f.at,
                neighbour
            )
        );
    }
}

/// A handshake answered later than this was held up somewhere: the pod answers at once.
const SLOW_ANSWER: f64 = 0.5;

/// The two recorders, running until dropped.
pub(crate) struct Recorder {
    children: Vec<Child>,
    readers: Vec<std::thread::JoinHandle<()>>,
    connections: Arc<Mutex<Connections>>,
    /// Neighbour events, with the time they were read.
    neighbour: Arc<Mutex<Vec<(f64, String)>>>,
    /// Why a recorder could not start, if one could not.
    missing: Vec<String>,
    /// The packets the network guard had dropped when the recorders started.
    guard_drops_before: Option<u64>,
    /// Where every event line is kept for a person to read after the run.
    files: Vec<PathBuf>,
}

/// The network guard's table (e2e/cluster/realnet) and the prefix of its kernel log lines.
const GUARD_TABLE: &str = "perennial_guard";
const GUARD_LOG_PREFIX: &str = "perennial-guard: ";

/// The packets the guard's counted rules have dropped since the cluster started.
fn guard_drops() -> Option<u64> {
    let out = Command::new("nft")
        .args(["list", "table", "inet", GUARD_TABLE])
        .output()
        .ok()?;
    out.status.success().then_some(())?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut words = text.split_whitespace();
    let mut total = 0;
    while let Some(w) = words.next() {
        if w == "packets" {
            total += words.next()?.parse::<u64>().ok()?;
        }
    }
    Some(total)
}

/// The guard's latest lines in the kernel's log: the packets it dropped, whole.
fn guard_log(last: usize) -> Vec<String> {
    let out = Command::new("dmesg").output().ok();
    let text = out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    let lines: Vec<String> = (text.unwrap_or_default().lines())
        .filter(|l| l.contains(GUARD_LOG_PREFIX))
        .map(str::to_string)
        .collect();
    lines[lines.len().saturating_sub(last)..].to_vec()
}

fn now_epoch() -> f64 {
    jiff::Timestamp::now().as_duration().as_secs_f64()
}

impl Recorder {
    pub(crate) fn start(service: SocketAddr) -> Self {
        let mut r = Recorder {
            children: Vec::new(),
            readers: Vec::new(),
            connections: Arc::default(),
            neighbour: Arc::default(),
            missing: Vec::new(),
            guard_drops_before: guard_drops(),
            files: Vec::new(),
        };
        let dir = repo_root().join("target/chaos-network");
        let _ = std::fs::create_dir_all(&dir);
        let stamp = jiff::Timestamp::now().as_second();
        let keep = |name: &str, files: &mut Vec<PathBuf>| {
            let path = dir.join(format!("{name}-{stamp}.log"));
            let file = std::fs::File::create(&path).ok();
            if file.is_some() {
                files.push(path);
            }
            Mutex::new(file.map(std::io::BufWriter::new))
        };
        let conntrack_file = keep("conntrack", &mut r.files);
        let neighbour_file = keep("neighbour", &mut r.files);
        let (ip, port) = (service.ip().to_string(), service.port().to_string());
        let conntrack = [
            "-E",
            "-p",
            "tcp",
            "--orig-dst",
            &ip,
            "--orig-port-dst",
            &port,
        ]
        .into_iter()
        .chain(["-o", "timestamp", "--buffer-size", EVENT_BUFFER_BYTES]);
        let connections = r.connections.clone();
        r.follow("conntrack", conntrack, move |line| {
            if let Some(f) = lock(&conntrack_file).as_mut() {
                let _ = writeln!(f, "{line}");
            }
            lock(&connections).line(&line)
        });
        let neighbour = r.neighbour.clone();
        r.follow("ip", ["monitor", "neigh"].into_iter(), move |line| {
            let at = now_epoch();
            if let Some(f) = lock(&neighbour_file).as_mut() {
                let _ = writeln!(f, "[{at:.6}] {line}");
            }
            lock(&neighbour).push((at, line))
        });
        r
    }

    /// Runs `program` with `args`, each line of its output and of its errors to `each`.
    fn follow<'a>(
        &mut self,
        program: &str,
        args: impl Iterator<Item = &'a str>,
        each: impl Fn(String) + Send + Sync + 'static,
    ) {
        let child = Command::new(program)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) => {
                self.missing.push(format!("{program}: {e}"));
                return;
            }
        };
        let each = Arc::new(each);
        let stdout = (child.stdout.take()).map(|o| Box::new(o) as Box<dyn Read + Send>);
        let stderr = (child.stderr.take()).map(|e| Box::new(e) as Box<dyn Read + Send>);
        for out in [stdout, stderr].into_iter().flatten() {
            let each = each.clone();
            self.readers.push(std::thread::spawn(move || {
                for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                    each(line);
                }
            }));
        }
        self.children.push(child);
    }

    /// Ends both recorders' processes; their readers then reach the end of their output.
    fn end_children(&mut self) {
        for c in self.children.drain(..) {
            let mut c = c;
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops both recorders and waits for what they printed.
    pub(crate) fn stop(mut self) -> Recorded {
        self.end_children();
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        Recorded {
            connections: std::mem::take(&mut *lock(&self.connections)),
            neighbour: std::mem::take(&mut *lock(&self.neighbour)),
            missing: std::mem::take(&mut self.missing),
            guard_drops: (guard_drops().zip(self.guard_drops_before))
                .map(|(after, before)| after.saturating_sub(before)),
            files: std::mem::take(&mut self.files),
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.end_children();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NEW: &str = "[1796568251.510608]\t    [NEW] tcp      6 120 SYN_SENT src=10.213.0.1 dst=10.96.186.106 sport=44502 dport=80 [UNREPLIED] src=10.214.0.3 dst=10.214.0.1 sport=8080 dport=36886";

    fn line(at: &str, kind: &str, state: &str, port: u16, backend: &str) -> String {
        format!("[{at}]\t [{kind}] tcp      6 120 {state} src=10.213.0.1 dst=10.96.0.9 sport={port} dport=80 src={backend} dst=10.214.0.1 sport=8080 dport=1")
    }

    #[test]
    fn a_conntrack_event_line_gives_its_time_kind_state_client_port_and_pod_address() {
        assert_eq!(
            parse_event(NEW),
            Some(Event {
                at: 1796568251.510608,
                kind: "NEW".into(),
                state: "SYN_SENT".into(),
                port: 44502,
                backend: "10.214.0.3".into(),
            })
        );
        assert_eq!(
            parse_event("WARNING: We have hit ENOBUFS! We are losing events."),
            None
        );
        assert_eq!(parse_event(""), None);
    }

    #[test]
    fn connections_tell_an_unanswered_syn_a_refusal_and_a_handshake_apart_and_count_lost_events() {
        let mut c = Connections::default();
        for l in [
            line("10.0", "NEW", "SYN_SENT", 1000, "10.214.0.3"),
            line("10.001", "UPDATE", "SYN_RECV", 1000, "10.214.0.3"),
            line("10.002", "UPDATE", "ESTABLISHED", 1000, "10.214.0.3"),
            line("10.05", "NEW", "SYN_SENT", 1001, "10.214.0.4"),
            line("10.051", "DESTROY", "CLOSE", 1001, "10.214.0.4"),
            line("10.1", "NEW", "SYN_SENT", 1002, "10.214.0.5"),
            // A SYN that timed out on the client is destroyed with its entry, still SYN_SENT.
            line("130.1", "DESTROY", "SYN_SENT", 1002, "10.214.0.5"),
            "WARNING: We have hit ENOBUFS! We are losing events.".into(),
        ] {
            c.line(&l);
        }
        let all = c.all();
        assert_eq!(all.len(), 3);
        assert_eq!(all[0].reached, Reached::Established);
        assert!((all[0].answered_after.unwrap() - 0.001).abs() < 1e-6);
        assert_eq!((all[1].reached, all[1].reset), (Reached::SynSent, true));
        assert_eq!((all[2].reached, all[2].reset), (Reached::SynSent, false));
        assert_eq!(c.events_lost, 1);

        assert_eq!(connection_of(&all, 10.0).map(|c| c.port), Some(1001));
        assert_eq!(connection_of(&all, 10.09).map(|c| c.port), Some(1002));
        assert_eq!(connection_of(&all, 11.0), None);
        let neighbour = vec![
            (
                9.0,
                "10.214.0.5 dev pnbr0 lladdr 02:00:00:00:00:05 STALE".to_string(),
            ),
            (9.5, "10.214.0.6 dev pnbr0 FAILED".to_string()),
            (30.0, "10.214.0.5 dev pnbr0 FAILED".to_string()),
        ];
        let said = describe(connection_of(&all, 10.09), &[], 10.09, &neighbour);
        assert!(
            said.contains("to 10.214.0.5: its SYN was never answered"),
            "{said}"
        );
        assert!(
            said.contains("-1.1s 10.214.0.5 dev pnbr0 lladdr 02:00:00:00:00:05 STALE"),
            "{said}"
        );
        assert!(
            !said.contains("10.214.0.6") && !said.contains("FAILED"),
            "{said}"
        );
        assert!(describe(None, &[], 11.0, &neighbour).starts_with("no tracked connection"));
    }

    #[test]
    fn a_request_with_no_connection_of_its_own_names_the_unanswered_syns_still_in_the_table() {
        let mut c = Connections::default();
        for l in [
            // Sent while a dead pod was still a backend, never answered.
            line("100.0", "NEW", "SYN_SENT", 2000, "10.214.0.21"),
            line("100.5", "NEW", "SYN_SENT", 2010, "10.214.0.21"),
            // Answered at once: not a trap for a later SYN.
            line("101.0", "NEW", "SYN_SENT", 2020, "10.214.0.26"),
            line("101.001", "UPDATE", "ESTABLISHED", 2020, "10.214.0.26"),
            // Unanswered, but its entry went before the request.
            line("102.0", "NEW", "SYN_SENT", 2030, "10.214.0.22"),
            line("140.0", "DESTROY", "SYN_SENT", 2030, "10.214.0.22"),
        ] {
            c.line(&l);
        }
        let all = c.all();
        let sent = 156.0;
        assert_eq!(connection_of(&all, sent), None);
        let then = unanswered_then(&all, sent);
        assert_eq!(
            then.iter().map(|c| c.port).collect::<Vec<_>>(),
            [2000, 2010]
        );
        let said = describe(None, &then, sent, &[]);
        assert!(
            said.contains("2 unanswered SYNs were still in the table, sent 56.0 to 55.5 s before, to 10.214.0.21"),
            "{said}"
        );
        // Past the entries' lifetime, nothing is named.
        assert!(unanswered_then(&all, 100.0 + SYN_SENT_LIFETIME + 1.0).is_empty());
    }
}
