//! A cluster on one machine for the end-to-end fault tests: one real PostgreSQL, N real
//! `kugetsu serve` nodes (each its own process, config, state directory and socket, all on one
//! [`TestRepo`]), a bare git repository as `checkpoint_remote`, and `lease_ttl` [`LEASE_TTL`].
//!
//! - [`TestCluster`]: starts it all; finds which node runs a task; reads `kugetsu.tasks`,
//!   `kugetsu.events` and `kugetsu.journal` back; runs the shared invariant checks
//!   ([`TestCluster::check_invariants`]) every fault test ends with.
//! - [`Monitor`]: polls the machine's processes in the background and records every moment one
//!   task had live, not frozen, processes under two nodes at once (by their `KUGETSU_NODE` and
//!   `KUGETSU_SHADOW` markers).
//! - [`Proxy`]: a TCP relay between one node and PostgreSQL that a test can cut (bytes are held,
//!   nothing is refused: what a network partition looks like to TCP) and heal. It stands in
//!   for `ip netns` + nftables, which this machine may not have.
//!
//! Cluster tests run one at a time (a process-wide lock): each keeps a PostgreSQL and three
//! nodes on 3 s leases busy, and their fault timing should not compete with each other.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

use super::daemon::{Daemon, WAIT};
use super::repo::TestRepo;
use crate::events::kind;
use crate::postgres::Postgres;

/// The `lease_ttl` of every node of a test cluster (the shortest the product allows).
pub const LEASE_TTL: Duration = Duration::from_secs(3);

/// The marker a node's shadows carry (see the supervisor's `cluster::NODE_ENV`).
pub const NODE_ENV: &str = "KUGETSU_NODE";
/// The marker every process of a shadow carries: its task.
pub const SHADOW_ENV: &str = "KUGETSU_SHADOW";

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One node: its name and its daemon.
#[derive(Debug)]
pub struct Node {
    pub id: String,
    pub daemon: Daemon,
    /// The relay its database traffic goes through, when it has one.
    pub proxy: Option<Proxy>,
}

/// How to start a [`TestCluster`].
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub nodes: usize,
    pub max_shadows: u32,
    /// Route each node's database traffic through its own [`Proxy`].
    pub proxied: bool,
    /// More config lines for every node.
    pub extra_config: String,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            nodes: 3,
            max_shadows: 4,
            proxied: false,
            extra_config: String::new(),
        }
    }
}

/// One row of `kugetsu.events`.
#[derive(Debug, Clone)]
pub struct EventRow {
    pub gid: i64,
    pub seq: i64,
    pub fence: Option<i64>,
    pub event: Value,
}

/// A PostgreSQL, the nodes, the shared repository and the checkpoint remote.
#[derive(Debug)]
pub struct TestCluster {
    pub nodes: Vec<Node>,
    pub repo: TestRepo,
    pub pg: Postgres,
    /// The bare repository every node pushes checkpoints to.
    pub remote: PathBuf,
    _serial: tokio::sync::MutexGuard<'static, ()>,
}

impl TestCluster {
    /// Starts PostgreSQL and `options.nodes` nodes (ready to serve); `None` when PostgreSQL is
    /// not installed (outside CI; [`Postgres::start`] says so).
    pub async fn start(options: ClusterOptions) -> Option<TestCluster> {
        let serial = SERIAL.lock().await;
        let pg = Postgres::start()?;
        let repo = TestRepo::new();
        let remote = repo.root().join("checkpoints.git");
        let out = std::process::Command::new("git")
            .args(["init", "-q", "--bare"])
            .arg(&remote)
            .output()
            .expect("git init --bare");
        assert!(out.status.success(), "git init --bare failed: {out:?}");
        std::fs::create_dir_all(repo.side_dir()).expect("create the side directory");
        // Node names unique on this machine: a node only ever signals its own processes, and
        // the monitor tells nodes apart by name.
        let tag: String = repo
            .root()
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("x")
            .rsplit('-')
            .next()
            .unwrap_or("x")
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .collect();
        let mut cluster = TestCluster {
            nodes: Vec::new(),
            repo,
            pg,
            remote,
            _serial: serial,
        };
        for i in 1..=options.nodes {
            let id = format!("n{i}-{tag}");
            let proxy = options.proxied.then(|| Proxy::start(cluster.pg.port()));
            let url = match &proxy {
                Some(p) => format!("postgres://postgres@127.0.0.1:{}/kugetsu", p.port()),
                None => cluster.pg.url(),
            };
            let config = format!(
                "{}max_shadows = {}\n{}",
                cluster.node_config(&url, &id),
                options.max_shadows,
                options.extra_config
            );
            let daemon = cluster.builder(&id).config(config).start().await;
            cluster.nodes.push(Node { id, daemon, proxy });
        }
        Some(cluster)
    }

    /// The cluster lines of a node's config (`cluster`, `node_id`, `lease_ttl`,
    /// `checkpoint_remote`, `sandbox_write` for the side directory).
    pub fn node_config(&self, url: &str, id: &str) -> String {
        format!(
            "cluster = {url:?}\nnode_id = {id:?}\nlease_ttl = \"{}s\"\ncheckpoint_remote = {:?}\n\
             sandbox_write = [{:?}]\n",
            LEASE_TTL.as_secs(),
            self.remote.display().to_string(),
            self.repo.side_dir().display().to_string()
        )
    }

    /// A daemon builder for one more node named `dir_name` (its own directory), on this
    /// cluster's repository; the caller sets its config.
    pub fn builder(&self, dir_name: &str) -> super::daemon::DaemonBuilder {
        Daemon::builder(&self.repo).node_dir(self.repo.root().join("nodes").join(dir_name))
    }

    /// The node named `id`.
    pub fn node(&self, id: &str) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .unwrap_or_else(|| panic!("no node {id}"))
    }

    /// The index in [`TestCluster::nodes`] of node `id`.
    pub fn index_of(&self, id: &str) -> usize {
        self.nodes
            .iter()
            .position(|n| n.id == id)
            .unwrap_or_else(|| panic!("no node {id}"))
    }

    /// The node names.
    pub fn node_ids(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.id.clone()).collect()
    }

    /// A file in the side directory (outside every worktree, writable by the shadows).
    pub fn side_file(&self, name: &str) -> PathBuf {
        self.repo.side_dir().join(name)
    }

    /// Writes a `scripted` model to `scripts/NAME.json`; returns the `-m` value.
    pub fn script(&self, name: &str, script: &super::daemon::Script) -> String {
        script.write(
            &self
                .repo
                .root()
                .join("scripts")
                .join(format!("{name}.json")),
        )
    }

    /// `(state, node, fence, claims)` of `task` in `kugetsu.tasks`.
    pub fn task_row(&self, task: &str) -> Option<(String, Option<String>, Option<i64>, i64)> {
        let rows = self.pg.rows(&format!(
            "SELECT state, coalesce(node, ''), coalesce(fence::text, ''), claims \
             FROM kugetsu.tasks WHERE id = '{}'",
            sql_text(task)
        ));
        let row = rows.into_iter().next()?;
        let opt = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        Some((
            row[0].clone(),
            opt(&row[1]),
            opt(&row[2]).map(|f| f.parse().expect("a fence")),
            row[3].parse().expect("claims"),
        ))
    }

    /// Waits until `task` is `running` in the database; returns its node and fence.
    pub async fn wait_running(&self, task: &str, timeout: Duration) -> (String, i64) {
        self.wait_row(task, timeout, "running", |_, _| true).await
    }

    /// Waits until `task` is running under a fence above `fence` (another claim); returns its
    /// node and fence.
    pub async fn wait_claimed_after(
        &self,
        task: &str,
        fence: i64,
        timeout: Duration,
    ) -> (String, i64) {
        self.wait_row(task, timeout, "reclaimed", |_, f| f > fence)
            .await
    }

    async fn wait_row(
        &self,
        task: &str,
        timeout: Duration,
        what: &str,
        ok: impl Fn(&str, i64) -> bool,
    ) -> (String, i64) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some((state, Some(node), Some(fence), _)) = self.task_row(task)
                && (state == "running" || state == "finished")
                && ok(&node, fence)
            {
                return (node, fence);
            }
            assert!(
                Instant::now() < deadline,
                "task {task} not {what} within {timeout:?}: {:?}\n{}",
                self.task_row(task),
                self.context()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until `task` is finished in the database; returns its status.
    pub async fn wait_finished(&self, task: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let rows = self.pg.rows(&format!(
                "SELECT state, coalesce(status, '') FROM kugetsu.tasks WHERE id = '{}'",
                sql_text(task)
            ));
            if let Some(row) = rows.first()
                && row[0] == "finished"
            {
                return row[1].clone();
            }
            assert!(
                Instant::now() < deadline,
                "task {task} did not finish within {timeout:?}: {rows:?}\n{}",
                self.context()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `kugetsu.tasks.finished` of `task` (the `finished` event's fields), `null` before.
    pub fn finished(&self, task: &str) -> Value {
        let text = self.pg.psql(
            "kugetsu",
            &format!(
                "SELECT coalesce(finished::text, 'null') FROM kugetsu.tasks WHERE id = '{}'",
                sql_text(task)
            ),
        );
        serde_json::from_str(text.trim()).unwrap_or(Value::Null)
    }

    /// Waits until `task` is finished with `status`; panics with its `finished` otherwise.
    pub async fn assert_finishes(&self, task: &str, status: &str) {
        let got = self.wait_finished(task, CLUSTER_WAIT).await;
        assert_eq!(
            got,
            status,
            "task {task} ended {got}: {}\n{}",
            self.finished(task),
            self.context()
        );
    }

    /// Every row of `kugetsu.events` for `task`, in `seq` order.
    pub fn event_rows(&self, task: &str) -> Vec<EventRow> {
        self.pg
            .psql(
                "kugetsu",
                &format!(
                    "SELECT json_build_object('gid', gid, 'seq', seq, 'fence', fence, 'body', body) \
                     FROM kugetsu.events WHERE task = '{}' ORDER BY seq",
                    sql_text(task)
                ),
            )
            .lines()
            .filter(|l| !l.is_empty())
            .map(|line| {
                let row: Value = serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("an events row is not JSON ({e}): {line}"));
                let body = row["body"].as_str().expect("body is text");
                EventRow {
                    gid: row["gid"].as_i64().expect("gid"),
                    seq: row["seq"].as_i64().expect("seq"),
                    fence: row["fence"].as_i64(),
                    event: serde_json::from_str(body)
                        .unwrap_or_else(|e| panic!("an event body is not JSON ({e}): {body}")),
                }
            })
            .collect()
    }

    /// `(line, fence)` of every `kugetsu.journal` row of `task`, in line order.
    pub fn journal_fences(&self, task: &str) -> Vec<(i64, i64)> {
        self.pg
            .rows(&format!(
                "SELECT line, fence FROM kugetsu.journal WHERE task = '{}' ORDER BY line",
                sql_text(task)
            ))
            .iter()
            .map(|r| (r[0].parse().expect("line"), r[1].parse().expect("fence")))
            .collect()
    }

    /// The `started` events of `task` in the database: `(node, ts)` each (`node` empty when
    /// the event does not carry it).
    pub fn starts(&self, task: &str) -> Vec<(String, SystemTime)> {
        self.event_rows(task)
            .iter()
            .filter(|r| kind(&r.event) == "started")
            .map(|r| {
                let ts = r.event["ts"].as_str().expect("an event has ts");
                (
                    r.event["node"].as_str().unwrap_or("").to_owned(),
                    humantime::parse_rfc3339_weak(ts)
                        .or_else(|_| humantime::parse_rfc3339(ts))
                        .unwrap_or_else(|e| panic!("ts {ts:?}: {e}")),
                )
            })
            .collect()
    }

    /// The processes of `task` under node `node` (by their markers), with their states.
    pub fn shadow_processes(&self, task: &str, node: &str) -> Vec<(u32, char)> {
        let shadow = format!("{SHADOW_ENV}={task}");
        let node = format!("{NODE_ENV}={node}");
        kugetsu_os::process::processes_with_envs(&[shadow.as_bytes(), node.as_bytes()])
            .into_iter()
            .filter_map(|pid| Some((pid, proc_state(pid)?)))
            .filter(|(_, s)| !matches!(s, 'Z' | 'X'))
            .collect()
    }

    /// Waits until node `node` has no process of `task` left.
    pub async fn wait_no_processes(&self, task: &str, node: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let left = self.shadow_processes(task, node);
            if left.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node {node} still has processes of {task} after {timeout:?}: {left:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts a [`Monitor`] of this cluster's nodes' shadows.
    pub fn monitor(&self) -> Monitor {
        Monitor::start(self.node_ids())
    }

    /// Every node's stderr, and the tasks table: for failure messages.
    pub fn context(&self) -> String {
        let mut out = String::new();
        for node in &self.nodes {
            out.push_str(&format!(
                "=== node {} ===\n{}\n",
                node.id,
                node.daemon.context(None)
            ));
        }
        out
    }

    /// The invariants every fault test ends with, for `tasks` (all accepted):
    /// - each is finished once: `state = 'finished'`, one `finished` row in `kugetsu.events`,
    ///   and one `finished` in `kugetsu logs --json` on every live node;
    /// - event seqs are 1.. without gaps, and the fences on a task's rows never go down, in seq
    ///   order nor in insertion (gid) order: once a claim's fence is on a row, no later row
    ///   carries an older one (no stale write after a takeover); every fence on a row was a
    ///   claim (at most `claims` distinct fences, none above the task's current fence);
    /// - journal lines carry non-decreasing fences too;
    /// - every line of each marker file in `markers` was written once (no tool call ran twice);
    /// - the monitor (if any) never saw one task live under two nodes at once.
    pub async fn check_invariants(
        &self,
        tasks: &[String],
        markers: &[PathBuf],
        monitor: Option<&MonitorReport>,
    ) {
        for task in tasks {
            let (state, _, fence, claims) = self
                .task_row(task)
                .unwrap_or_else(|| panic!("task {task} is not in kugetsu.tasks"));
            assert_eq!(state, "finished", "task {task}\n{}", self.context());
            let rows = self.event_rows(task);
            let finished = rows.iter().filter(|r| kind(&r.event) == "finished").count();
            assert_eq!(
                finished, 1,
                "task {task}: {finished} `finished` rows: {rows:#?}"
            );
            let seqs: Vec<i64> = rows.iter().map(|r| r.seq).collect();
            let expected: Vec<i64> = (1..=i64::try_from(rows.len()).unwrap()).collect();
            assert_eq!(seqs, expected, "task {task}: event seqs with gaps");
            assert_fences_monotonic(task, &rows);
            let fences: std::collections::BTreeSet<i64> =
                rows.iter().filter_map(|r| r.fence).collect();
            assert!(
                i64::try_from(fences.len()).unwrap() <= claims,
                "task {task}: {} fences on its events ({fences:?}) but {claims} claims",
                fences.len()
            );
            if let (Some(max), Some(current)) = (fences.last(), fence) {
                assert!(
                    *max <= current,
                    "task {task}: an event carries fence {max}, above the task's {current}"
                );
            }
            let journal = self.journal_fences(task);
            for pair in journal.windows(2) {
                assert!(
                    pair[0].1 <= pair[1].1,
                    "task {task}: journal line {} has fence {} after line {} with fence {}",
                    pair[1].0,
                    pair[1].1,
                    pair[0].0,
                    pair[0].1
                );
            }
            for node in &self.nodes {
                // A node killed by the test answers no more.
                let pid = node.daemon.pid();
                if !matches!(proc_state(pid), Some(s) if s != 'Z' && s != 'X') {
                    continue;
                }
                let out = node.daemon.cli_events(["logs", "--json", task]).await;
                if out.code != Some(0) {
                    panic!(
                        "kugetsu logs {task} on node {} exited {:?}: {}",
                        node.id, out.code, out.stderr
                    );
                }
                let n = out.events.of_type("finished").len();
                assert_eq!(n, 1, "logs of {task} on node {}: {n} `finished`", node.id);
            }
        }
        for marker in markers {
            assert_lines_once(marker);
        }
        if let Some(report) = monitor {
            report.assert_no_overlap();
        }
    }
}

/// Panics unless the fences on `rows` (seq order) never go down, in seq order and in gid
/// (insertion) order.
pub fn assert_fences_monotonic(task: &str, rows: &[EventRow]) {
    let check = |ordered: &[&EventRow], order: &str| {
        let mut newest: Option<&EventRow> = None;
        for row in ordered {
            let Some(fence) = row.fence else { continue };
            if let Some(prev) = newest {
                let prev_fence = prev.fence.unwrap_or_default();
                assert!(
                    fence >= prev_fence,
                    "task {task}: a stale write ({order} order): seq {} (gid {}, {}) carries \
                     fence {fence} after seq {} (gid {}) carried {prev_fence}",
                    row.seq,
                    row.gid,
                    kind(&row.event),
                    prev.seq,
                    prev.gid
                );
            }
            newest = Some(row);
        }
    };
    let by_seq: Vec<&EventRow> = rows.iter().collect();
    check(&by_seq, "seq");
    let mut by_gid = by_seq.clone();
    by_gid.sort_by_key(|r| r.gid);
    check(&by_gid, "gid");
}

/// Panics unless every line of `path` (if it exists) appears once.
pub fn assert_lines_once(path: &Path) {
    let Ok(text) = std::fs::read_to_string(path) else {
        return;
    };
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for line in text.lines() {
        *seen.entry(line).or_default() += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "{}: lines written more than once (a tool call ran twice): {twice:?}\n{text}",
        path.display()
    );
}

/// Quotes `text` for a SQL string literal.
fn sql_text(text: &str) -> String {
    text.replace('\'', "''")
}

fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().next()?.chars().next()
}

/// One moment a task had live, not frozen, processes under more than one node.
#[derive(Debug, Clone)]
pub struct Overlap {
    pub at: SystemTime,
    pub task: String,
    /// node -> (pid, state) of its processes of the task.
    pub nodes: BTreeMap<String, Vec<(u32, char)>>,
}

/// Polls every process on the machine (every 50 ms, on its own thread) for the nodes' shadow
/// markers; [`Monitor::stop`] returns what it saw.
#[derive(Debug)]
pub struct Monitor {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<MonitorReport>>,
}

/// What a [`Monitor`] saw.
#[derive(Debug, Clone, Default)]
pub struct MonitorReport {
    pub polls: usize,
    pub overlaps: Vec<Overlap>,
    /// For each task, the nodes it was ever seen live under.
    pub seen: BTreeMap<String, std::collections::BTreeSet<String>>,
}

impl MonitorReport {
    /// Panics if one task was ever live (not frozen) under two nodes at once.
    pub fn assert_no_overlap(&self) {
        assert!(
            self.overlaps.is_empty(),
            "one task ran under two nodes at once ({} of {} polls), first: {:#?}",
            self.overlaps.len(),
            self.polls,
            self.overlaps.first()
        );
    }

    /// The overlaps at or after `since`.
    pub fn overlaps_since(&self, since: SystemTime) -> Vec<&Overlap> {
        self.overlaps.iter().filter(|o| o.at >= since).collect()
    }
}

impl Monitor {
    fn start(nodes: Vec<String>) -> Monitor {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut report = MonitorReport::default();
            let node_prefix = format!("{NODE_ENV}=");
            let shadow_prefix = format!("{SHADOW_ENV}=");
            while !flag.load(Ordering::SeqCst) {
                report.polls += 1;
                // task -> node -> processes
                let mut live: BTreeMap<String, BTreeMap<String, Vec<(u32, char)>>> =
                    BTreeMap::new();
                for pid in kugetsu_os::process::pids() {
                    let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
                        continue;
                    };
                    let var = |prefix: &str| {
                        environ
                            .split(|b| *b == 0)
                            .find_map(|e| e.strip_prefix(prefix.as_bytes()))
                            .map(|v| String::from_utf8_lossy(v).into_owned())
                    };
                    let (Some(node), Some(task)) = (var(&node_prefix), var(&shadow_prefix)) else {
                        continue;
                    };
                    if !nodes.contains(&node) {
                        continue;
                    }
                    let Some(state) = proc_state(pid) else {
                        continue;
                    };
                    if matches!(state, 'Z' | 'X') {
                        continue;
                    }
                    live.entry(task)
                        .or_default()
                        .entry(node)
                        .or_default()
                        .push((pid, state));
                }
                for (task, by_node) in live {
                    let running = by_node
                        .values()
                        .filter(|procs| procs.iter().any(|(_, s)| *s != 'T' && *s != 't'))
                        .count();
                    report
                        .seen
                        .entry(task.clone())
                        .or_default()
                        .extend(by_node.keys().cloned());
                    if running > 1 {
                        report.overlaps.push(Overlap {
                            at: SystemTime::now(),
                            task,
                            nodes: by_node,
                        });
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            report
        });
        Monitor {
            stop,
            handle: Some(handle),
        }
    }

    /// Stops polling; what it saw.
    pub fn stop(mut self) -> MonitorReport {
        self.stop.store(true, Ordering::SeqCst);
        self.handle
            .take()
            .expect("stopped once")
            .join()
            .expect("the monitor thread panicked")
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// A TCP relay from a local port to PostgreSQL that can be cut and healed. Cut, it still
/// accepts connections and reads what clients send, but delivers nothing either way until
/// healed (then the held bytes go on): to both ends it looks like a network partition.
#[derive(Debug)]
pub struct Proxy {
    port: u16,
    cut: tokio::sync::watch::Sender<bool>,
    /// Ends the relay's thread (and its runtime) when dropped.
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

impl Proxy {
    /// A relay to `127.0.0.1:upstream` on a free port, on its own thread and runtime.
    pub fn start(upstream: u16) -> Proxy {
        let std_listener =
            std::net::TcpListener::bind("127.0.0.1:0").expect("bind the proxy's port");
        std_listener.set_nonblocking(true).expect("nonblocking");
        let port = std_listener.local_addr().expect("local addr").port();
        let (cut, cut_rx) = tokio::sync::watch::channel(false);
        let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
        let upstream: SocketAddr = ([127, 0, 0, 1], upstream).into();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for the proxy");
            runtime.block_on(async move {
                let listener =
                    tokio::net::TcpListener::from_std(std_listener).expect("a tokio listener");
                let accept = async {
                    loop {
                        let Ok((client, _)) = listener.accept().await else {
                            continue;
                        };
                        let mut cut = cut_rx.clone();
                        tokio::spawn(async move {
                            if cut.wait_for(|c| !*c).await.is_err() {
                                return;
                            }
                            let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                                return;
                            };
                            let (cr, cw) = client.into_split();
                            let (sr, sw) = server.into_split();
                            tokio::spawn(relay(cr, sw, cut.clone()));
                            relay(sr, cw, cut).await;
                        });
                    }
                };
                tokio::select! {
                    () = accept => {}
                    _ = stopped => {}
                }
            });
        });
        Proxy {
            port,
            cut,
            _shutdown: shutdown,
        }
    }

    /// The port nodes connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Cuts the link: nothing goes through until [`Proxy::heal`].
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// Lets traffic through again, the held bytes first.
    pub fn heal(&self) {
        self.cut.send_replace(false);
    }
}

async fn relay(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut cut: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if cut.wait_for(|c| !*c).await.is_err() {
            break;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// The bound of every wait in the cluster tests (a task's run, a takeover).
pub const CLUSTER_WAIT: Duration = Duration::from_secs(WAIT.as_secs() * 2);
