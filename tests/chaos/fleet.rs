//! Two operator processes with leader election, restarted when they stop, and their output.

use super::*;

pub(crate) struct Fleet {
    pub(crate) namespace: String,
    pub(crate) lease: String,
    pub(crate) origin: Instant,
    pub(crate) running: Vec<Operator>,
    pub(crate) logs: Vec<PathBuf>,
    pub(crate) killed: Vec<String>,
    /// (time, what, whether it was a leader that lost its lease: expected once the API
    /// server is gone longer than the renew deadline).
    pub(crate) exited: Vec<(f64, String, bool)>,
}

impl Fleet {
    pub(crate) fn new(namespace: &str, lease: &str, origin: Instant) -> Self {
        Self {
            namespace: namespace.to_string(),
            lease: lease.to_string(),
            origin,
            running: Vec::new(),
            logs: Vec::new(),
            killed: Vec::new(),
            exited: Vec::new(),
        }
    }

    pub(crate) fn start(&mut self) {
        let op = elector(&self.namespace, &self.lease);
        self.logs.push(op.log.clone());
        self.running.push(op);
    }

    /// Two processes run, as a Deployment of two keeps them: one that stopped on its own
    /// (a leader that could not renew its lease exits) is recorded and replaced.
    pub(crate) fn keep_two(&mut self) {
        let t = self.origin.elapsed().as_secs_f64();
        let mut i = 0;
        while i < self.running.len() {
            match self.running[i].child.try_wait() {
                Ok(Some(status)) => {
                    let op = self.running.remove(i);
                    let last = std::fs::read_to_string(&op.log)
                        .unwrap_or_default()
                        .lines()
                        .last()
                        .map(strip_ansi)
                        .unwrap_or_default();
                    let line = format!(
                        "t={t:.1}s pid {} exited on its own ({status}); last line: {last}",
                        op.child.id()
                    );
                    println!("[{t:7.1}s] operator {line}");
                    let lease_lost = last.contains("lost the leader lease");
                    self.exited.push((t, line, lease_lost));
                }
                _ => i += 1,
            }
        }
        while self.running.len() < 2 {
            self.start();
        }
    }

    /// SIGKILLs the process `pid` and starts its replacement.
    pub(crate) fn kill(&mut self, pid: u32, role: &str) {
        let t = self.origin.elapsed().as_secs_f64();
        if let Some(i) = self.running.iter().position(|o| o.child.id() == pid) {
            let mut op = self.running.remove(i);
            let _ = op.child.kill();
            let _ = op.child.wait();
            self.killed.push(format!("t={t:.1}s pid {pid} ({role})"));
        }
        self.keep_two();
    }

    pub(crate) fn pids(&self) -> Vec<u32> {
        self.running.iter().map(|o| o.child.id()).collect()
    }

    pub(crate) fn stop_all(&mut self) {
        for mut op in self.running.drain(..) {
            let _ = op.child.kill();
            let _ = op.child.wait();
        }
    }
}

// ------------------------------------------------------------------------------------------
// The operators' output: panics, lines per second, reconciles per service

#[derive(Default)]
pub(crate) struct LogFile {
    pub(crate) offset: u64,
    pub(crate) partial: String,
    /// Per one-second tick: (time, lines at INFO or above, reconciles by service).
    pub(crate) ticks: Vec<(f64, usize, BTreeMap<String, usize>)>,
    pub(crate) lines: usize,
}

#[derive(Default)]
pub(crate) struct Logs {
    pub(crate) files: BTreeMap<PathBuf, LogFile>,
    pub(crate) panics: Vec<String>,
}

impl Logs {
    /// Reads what each log gained since the last scan: one tick.
    pub(crate) fn scan(&mut self, paths: &[PathBuf], t: f64) {
        for path in paths {
            let file = self.files.entry(path.clone()).or_default();
            let mut text = String::new();
            if let Ok(mut f) = std::fs::File::open(path) {
                if f.seek(SeekFrom::Start(file.offset)).is_ok() {
                    let mut bytes = Vec::new();
                    if let Ok(n) = f.read_to_end(&mut bytes) {
                        file.offset += n as u64;
                        text = String::from_utf8_lossy(&bytes).into_owned();
                    }
                }
            }
            let mut info = 0;
            let mut reconciles: BTreeMap<String, usize> = BTreeMap::new();
            let buffered = std::mem::take(&mut file.partial) + &text;
            let mut lines: Vec<&str> = buffered.split('\n').collect();
            file.partial = lines.pop().unwrap_or_default().to_string();
            for raw in lines {
                file.lines += 1;
                let line = strip_ansi(raw);
                if line.contains("panicked at") {
                    self.panics
                        .push(format!("t={t:.1}s {}: {line}", path.display()));
                }
                let level = line.split_whitespace().nth(1).unwrap_or_default();
                if matches!(level, "INFO" | "WARN" | "ERROR") {
                    info += 1;
                }
                if let Some(rest) = line.split("reconciled object=").nth(1) {
                    let name = rest
                        .split('/')
                        .nth(1)
                        .and_then(|n| n.split('.').next())
                        .unwrap_or_default();
                    *reconciles.entry(name.to_string()).or_default() += 1;
                }
            }
            file.ticks.push((t, info, reconciles));
        }
    }

    /// Per file, the busiest window of STORM_WINDOW_TICKS ticks: (time, INFO+ lines) and
    /// (time, service, reconciles).
    pub(crate) fn busiest(file: &LogFile) -> ((f64, usize), (f64, String, usize)) {
        let mut lines = (0.0, 0);
        let mut loops = (0.0, String::new(), 0);
        for w in file
            .ticks
            .windows(STORM_WINDOW_TICKS.min(file.ticks.len()).max(1))
        {
            let t = w[0].0;
            let sum: usize = w.iter().map(|x| x.1).sum();
            if sum > lines.1 {
                lines = (t, sum);
            }
            let mut per: BTreeMap<&str, usize> = BTreeMap::new();
            for (_, _, r) in w {
                for (s, n) in r {
                    *per.entry(s).or_default() += n;
                }
            }
            if let Some((s, n)) = per.into_iter().max_by_key(|(_, n)| *n) {
                if n > loops.2 {
                    loops = (t, s.to_string(), n);
                }
            }
        }
        (lines, loops)
    }
}
