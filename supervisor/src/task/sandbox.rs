//! One task's sandbox: the policy its tool processes run under, built once from the config,
//! the state dir, the daemon's socket and the task's record, and the report of what holds.
//!
//! The policy (`kugetsu_protocol::SandboxPolicy`) travels to the worker in the task spec and is
//! applied by its tool guard (see the worker's `sandbox` module). What it says:
//! - write: the worktree, the task's temp dir (`<task_dir>/tmp`, made here, removed with the
//!   task), and the parts of the shared git dir a `git commit` in the worktree needs:
//!   `objects/`, `worktrees/<id>/`, `refs/heads/kugetsu/`, `logs/refs/heads/kugetsu/`
//!   (not `config`, `hooks/`, `HEAD` or other refs; where mount namespaces are, the two
//!   `kugetsu/` directories are the task's own `git-refs/` and `git-reflogs/` bound there, so
//!   no other task's branch is even visible); plus config `sandbox_write`;
//! - read: everything except the state dir, the socket's dir, kugetsu's config dir, the
//!   user's secrets ([`HOME_SECRETS`]) and config `sandbox_deny`, as the sibling allow-list of
//!   [`kugetsu_os::allowlist`]; plus config `sandbox_read`;
//! - the worktree's `.git` link read-only (mount namespace), `/tmp` = the temp dir (unless the
//!   worktree or the repository lives under `/tmp`, see `SandboxPolicy::private_tmp`); with
//!   `--no-worktree` the checkout's `.git` directory read-only instead.
//!
//! [`ShadowSandbox::prepare`] also makes the task's cgroup (`pids_limit`) and decides, from
//! the host probe ([`kugetsu_os::probe::host`]), what the `started` event reports.

use std::path::{Path, PathBuf};

use kugetsu_os::cgroup::{CgroupSupport, ShadowCgroup};
use kugetsu_os::probe::Host;
use kugetsu_protocol::{
    Missing, NetworkMode, Protection, SandboxMode, SandboxPolicy, SandboxReport,
};

use crate::task::prepare::Prepared;

/// Secrets under `$HOME` that no tool may read.
pub const HOME_SECRETS: [&str; 8] = [
    ".ssh",
    ".aws",
    ".gnupg",
    ".config/gh",
    ".netrc",
    ".git-credentials",
    ".docker/config.json",
    ".config/kugetsu",
];

/// Device files a tool may open for writing.
const DEVICES: [&str; 8] = [
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
    "/dev/tty",
    "/dev/ptmx",
    "/dev/pts",
];

/// What the policy is built from.
#[derive(Debug, Clone)]
pub struct Inputs<'a> {
    pub mode: SandboxMode,
    pub network: NetworkMode,
    pub state_dir: &'a Path,
    /// The daemon's socket (for `kugetsu run`, where a daemon would listen).
    pub socket: &'a Path,
    /// The user's home, whose secrets are denied.
    pub home: Option<&'a Path>,
    /// kugetsu's config file, whose directory is denied.
    pub config_file: Option<&'a Path>,
    pub worktree: &'a Path,
    /// The task's private temp dir (made here).
    pub tmp_dir: &'a Path,
    /// The task's full tool outputs, readable (the model is told their paths).
    pub tool_output: &'a Path,
    /// The repository's shared git dir, for a worktree task.
    pub git_common: Option<&'a Path>,
    /// The worktree's admin dir `<common>/worktrees/<id>`, for a worktree task.
    pub git_admin: Option<&'a Path>,
    /// The task's private refs and reflogs directories, bound over the shared
    /// `refs/heads/kugetsu/` and `logs/refs/heads/kugetsu/` (only where mount namespaces are).
    pub private_refs: Option<(&'a Path, &'a Path)>,
    pub extra_read: &'a [PathBuf],
    pub extra_write: &'a [PathBuf],
    pub extra_deny: &'a [PathBuf],
}

/// Builds the policy (and makes the temp dir and the kugetsu ref directories it names).
pub fn policy(inputs: &Inputs<'_>) -> SandboxPolicy {
    if inputs.mode == SandboxMode::Off {
        return SandboxPolicy::off();
    }
    let canonical = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
    let tmp = inputs.tmp_dir.to_path_buf();
    let _ = std::fs::create_dir_all(&tmp);
    let mut deny: Vec<PathBuf> = vec![canonical(inputs.state_dir)];
    // The socket's directory when it is kugetsu's own; the socket alone in a shared one
    // (`/tmp`, `$XDG_RUNTIME_DIR`).
    match inputs.socket.parent() {
        Some(dir) if dir.file_name().is_some_and(|n| n == "kugetsu") => deny.push(canonical(dir)),
        _ => deny.push(canonical(inputs.socket)),
    }
    if let Some(home) = inputs.home {
        deny.extend(HOME_SECRETS.iter().map(|s| home.join(s)));
    }
    if let Some(dir) = inputs.config_file.and_then(Path::parent) {
        deny.push(canonical(dir));
    }
    deny.extend(inputs.extra_deny.iter().map(|p| canonical(p)));
    deny.retain(|d| d != Path::new("/"));
    let worktree = canonical(inputs.worktree);
    let allow = kugetsu_os::allowlist::everything_but(Path::new("/"), &deny);

    let mut write = vec![worktree.clone(), canonical(&tmp)];
    if let Some(common) = inputs.git_common {
        for sub in ["refs/heads/kugetsu", "logs/refs/heads/kugetsu"] {
            let _ = std::fs::create_dir_all(common.join(sub));
        }
        write.extend(
            ["objects", "refs/heads/kugetsu", "logs/refs/heads/kugetsu"]
                .iter()
                .map(|sub| common.join(sub)),
        );
    }
    if let Some(admin) = inputs.git_admin {
        write.push(admin.to_path_buf());
    }
    write.extend(inputs.extra_write.iter().map(|p| canonical(p)));
    let mut read: Vec<PathBuf> = allow.read;
    read.push(inputs.tool_output.to_path_buf());
    read.extend(inputs.extra_read.iter().map(|p| canonical(p)));

    // Anything the shadow needs that lives under /tmp would vanish behind a private /tmp.
    let under_tmp = |p: &Path| canonical(p).starts_with("/tmp");
    let private_tmp = !under_tmp(&worktree)
        && !inputs.git_common.is_some_and(under_tmp)
        && !inputs
            .extra_read
            .iter()
            .chain(inputs.extra_write)
            .any(|p| under_tmp(p));

    let text = |paths: Vec<PathBuf>| -> Vec<String> {
        paths.into_iter().map(|p| p.display().to_string()).collect()
    };
    SandboxPolicy {
        mode: SandboxMode::Workspace,
        network: inputs.network,
        read: text(read),
        list: text(allow.list),
        write: text(write),
        devices: DEVICES.iter().map(|d| (*d).to_owned()).collect(),
        // A worktree's `.git` link; with `--no-worktree`, the checkout's whole `.git` (its
        // hooks and config are inside the writable tree): git in there can read, not commit.
        read_only: vec![worktree.join(".git").display().to_string()],
        binds: match (inputs.private_refs, inputs.git_common) {
            (Some((refs, reflogs)), Some(common)) => vec![
                (
                    refs.display().to_string(),
                    common.join("refs/heads/kugetsu").display().to_string(),
                ),
                (
                    reflogs.display().to_string(),
                    common.join("logs/refs/heads/kugetsu").display().to_string(),
                ),
            ],
            _ => Vec::new(),
        },
        tmp_dir: Some(canonical(&tmp).display().to_string()),
        private_tmp,
    }
}

/// What holds for a task with `policy` on `host`, `cgroup` being how its cgroup went.
pub fn report(policy: &SandboxPolicy, host: &Host, cgroup: &Result<(), String>) -> SandboxReport {
    let mut report = SandboxReport {
        mode: policy.mode,
        network: policy.network,
        in_force: vec![
            Protection::SecretScrubbing,
            Protection::InertGit,
            Protection::SocketPeerCheck,
        ],
        missing: Vec::new(),
    };
    let mut check = |protection: Protection, holds: Result<(), String>| match holds {
        Ok(()) => report.in_force.push(protection),
        Err(reason) => report.missing.push(Missing { protection, reason }),
    };
    check(Protection::PidsLimit, cgroup.clone());
    let off = policy.mode == SandboxMode::Off;
    let need = |ok: bool, reason: &str| -> Result<(), String> {
        if off {
            Err("--sandbox off".to_owned())
        } else if ok {
            Ok(())
        } else {
            Err(reason.to_owned())
        }
    };
    let landlock = host.landlock.as_ref().err().cloned().unwrap_or_default();
    check(
        Protection::Filesystem,
        need(host.landlock.is_ok(), &landlock),
    );
    let ptrace = if host.landlock.is_ok() {
        "this kernel's Landlock lets a domain read /proc/PID/environ of processes outside it \
         (tried at startup)"
            .to_owned()
    } else {
        landlock
    };
    check(
        Protection::Ptrace,
        need(host.landlock.is_ok() && host.landlock_ptrace, &ptrace),
    );
    let scopes = format!("Landlock ABI 6 needed for scoping ({})", abi_text(host));
    check(Protection::Signals, need(host.landlock_scopes(), &scopes));
    check(
        Protection::AbstractSockets,
        need(host.landlock_scopes(), &scopes),
    );
    let ns = host.namespaces.as_ref().err().cloned().unwrap_or_default();
    check(
        Protection::MountNamespace,
        need(host.namespaces.is_ok(), &ns),
    );
    check(Protection::PidNamespace, need(host.namespaces.is_ok(), &ns));
    let refs = if host.namespaces.is_err() {
        format!("{ns}: a shadow's tools could move other tasks' kugetsu/* branches")
    } else {
        "the task has no worktree of its own".to_owned()
    };
    check(
        Protection::OtherRefs,
        need(host.namespaces.is_ok() && !policy.binds.is_empty(), &refs),
    );
    let tmp = if host.namespaces.is_err() {
        ns.clone()
    } else {
        "the worktree or the repository lives under /tmp".to_owned()
    };
    check(
        Protection::PrivateTmp,
        need(host.namespaces.is_ok() && policy.private_tmp, &tmp),
    );
    if policy.network == NetworkMode::Off {
        let reason = format!(
            "no network namespace ({ns}) and no Landlock TCP rules ({})",
            abi_text(host)
        );
        check(
            Protection::NetworkOff,
            need(host.namespaces.is_ok() || host.landlock_tcp(), &reason),
        );
    }
    report
}

fn abi_text(host: &Host) -> String {
    match &host.landlock {
        Ok(abi) => format!("this kernel has ABI {abi}"),
        Err(e) => e.clone(),
    }
}

/// Everything one attempt of a task needs from the sandbox.
#[derive(Debug)]
pub struct ShadowSandbox {
    pub policy: SandboxPolicy,
    pub report: SandboxReport,
    /// The shadow's cgroup, when the host has one for it; removed on drop (which fails,
    /// harmlessly, while a process is still in it).
    pub cgroup: Option<ShadowCgroup>,
}

impl Drop for ShadowSandbox {
    fn drop(&mut self) {
        if let Some(cgroup) = &self.cgroup {
            let _ = cgroup.remove();
        }
    }
}

impl ShadowSandbox {
    /// Builds the policy and report of `prepared`'s next attempt and makes its cgroup.
    pub async fn prepare(
        prepared: &Prepared,
        env: &(dyn Fn(&str) -> Option<String> + Sync),
    ) -> ShadowSandbox {
        let record = &prepared.record;
        let config = &prepared.config;
        let host = kugetsu_os::probe::host();
        let task_dir = prepared.dir.path();
        let state_dir = task_dir
            .parent()
            .and_then(Path::parent)
            .unwrap_or(task_dir)
            .to_path_buf();
        let socket = crate::config::socket_path(None, &state_dir, &|k| env(k));
        let worktree = if record.worktree {
            crate::task::git::Worktree::open(&record.repo, &record.workdir)
                .await
                .ok()
        } else {
            None
        };
        let home = env("HOME").map(PathBuf::from);
        let tmp = prepared.dir.tmp();
        let (refs, reflogs) = (prepared.dir.private_refs(), prepared.dir.private_reflogs());
        let branch = record.branch.clone().unwrap_or_default();
        let private_refs = match &worktree {
            // Where tools get a mount namespace, their commits go to the task's own refs dir.
            Some(worktree) if host.namespaces.is_ok() && record.sandbox != SandboxMode::Off => {
                let seeded = std::fs::create_dir_all(&reflogs)
                    .map_err(|e| e.to_string())
                    .and(Ok(()));
                match (seeded, worktree.seed_private_ref(&branch, &refs).await) {
                    (Ok(()), Ok(())) => Some((refs.as_path(), reflogs.as_path())),
                    (Err(e), _) | (_, Err(e)) => {
                        tracing::warn!(
                            task = %record.id,
                            "cannot give the task's tools a private refs directory ({e})"
                        );
                        None
                    }
                }
            }
            _ => None,
        };
        let inputs = Inputs {
            mode: record.sandbox,
            network: record.network,
            state_dir: &state_dir,
            socket: &socket,
            home: home.as_deref(),
            config_file: config.path.as_deref(),
            worktree: &record.workdir,
            tmp_dir: &tmp,
            tool_output: &prepared.dir.tool_output(),
            git_common: worktree.as_ref().map(|w| w.common()),
            git_admin: worktree.as_ref().map(|w| w.admin()),
            private_refs,
            extra_read: &config.sandbox_paths.read,
            extra_write: &config.sandbox_paths.write,
            extra_deny: &config.sandbox_paths.deny,
        };
        let policy = policy(&inputs);
        let cgroup =
            ShadowCgroup::create(&host.cgroups, &cgroup_name(&record.id), config.pids_limit);
        let cgroup_state = match (&cgroup, &host.cgroups) {
            (Ok(_), _) => Ok(()),
            (Err(_), CgroupSupport::Unavailable(reason)) => Err(reason.clone()),
            (Err(e), _) => Err(format!("cannot make the shadow's cgroup: {e}")),
        };
        let report = report(&policy, host, &cgroup_state);
        ShadowSandbox {
            policy,
            report,
            cgroup: cgroup.ok(),
        }
    }
}

/// The name of task `id`'s cgroup: the id, prefixed on a cluster node with the node's name
/// (nodes sharing a machine may run one task one after the other, and must not share or
/// remove each other's cgroup).
fn cgroup_name(id: &str) -> String {
    match crate::cluster::active() {
        Some(cluster) => format!("{}.{id}", cluster.node_id),
        None => id.to_owned(),
    }
}

/// Removes task `id`'s cgroup once its last process is gone (reaping can trail the end of an
/// attempt by a few milliseconds); gives up quietly after a second.
pub async fn remove_cgroup(id: &str) {
    let Some(cgroup) = ShadowCgroup::of(&kugetsu_os::probe::host().cgroups, &cgroup_name(id))
    else {
        return;
    };
    for _ in 0..50 {
        match cgroup.remove() {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
        }
    }
}

/// Prefixes of the variables a worker's providers read (keys, base URLs, organisation ids).
const PROVIDER_PREFIXES: [&str; 4] = ["OPENAI_", "ANTHROPIC_", "OPENROUTER_", "OLLAMA_"];

/// The provider variables of `vars`, for the task spec's `secrets`: they reach the worker
/// over its channel, never through its environment.
pub fn provider_secrets<I>(vars: I) -> kugetsu_protocol::Secrets
where
    I: IntoIterator<Item = (String, String)>,
{
    kugetsu_protocol::Secrets(
        vars.into_iter()
            .filter(|(name, _)| PROVIDER_PREFIXES.iter().any(|p| name.starts_with(p)))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixture {
        _dir: tempfile::TempDir,
        root: PathBuf,
    }

    impl Fixture {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path().canonicalize().unwrap();
            for d in [
                "state/worktrees/t1",
                "state/worktrees/t2",
                "state/tasks/t1",
                "state/tasks/t2",
                "home/.ssh",
                "home/src",
                "repo/.git/objects",
                "repo/.git/worktrees/t1",
                "repo/.git/hooks",
            ] {
                std::fs::create_dir_all(root.join(d)).unwrap();
            }
            Fixture { _dir: dir, root }
        }

        fn policy(&self, mode: SandboxMode) -> SandboxPolicy {
            let r = &self.root;
            policy(&Inputs {
                mode,
                network: NetworkMode::Off,
                state_dir: &r.join("state"),
                socket: &r.join("state/kugetsu.sock"),
                home: Some(&r.join("home")),
                config_file: None,
                worktree: &r.join("state/worktrees/t1"),
                tmp_dir: &r.join("state/tasks/t1/tmp"),
                tool_output: &r.join("state/tasks/t1/tool-output"),
                git_common: Some(&r.join("repo/.git")),
                git_admin: Some(&r.join("repo/.git/worktrees/t1")),
                private_refs: Some((
                    &r.join("state/tasks/t1/git-refs"),
                    &r.join("state/tasks/t1/git-reflogs"),
                )),
                extra_read: &[],
                extra_write: &[],
                extra_deny: &[r.join("home/src/private")],
            })
        }
    }

    fn has(paths: &[String], path: &Path) -> bool {
        paths.iter().any(|p| Path::new(p) == path)
    }

    #[test]
    fn the_policy_writes_only_the_worktree_tmp_and_the_commit_parts_of_the_git_dir() {
        let fx = Fixture::new();
        let r = &fx.root;
        let policy = fx.policy(SandboxMode::Workspace);
        assert_eq!(policy.network, NetworkMode::Off);
        for path in [
            "state/worktrees/t1",
            "state/tasks/t1/tmp",
            "repo/.git/objects",
            "repo/.git/worktrees/t1",
            "repo/.git/refs/heads/kugetsu",
            "repo/.git/logs/refs/heads/kugetsu",
        ] {
            assert!(
                has(&policy.write, &r.join(path)),
                "{path}: {:?}",
                policy.write
            );
        }
        assert_eq!(policy.write.len(), 6, "{:?}", policy.write);
        assert!(
            r.join("state/tasks/t1/tmp").is_dir(),
            "the temp dir is made"
        );
        assert_eq!(
            policy.read_only,
            [r.join("state/worktrees/t1/.git").display().to_string()]
        );
        // The test's temp dir is under /tmp: a private /tmp would hide the worktree.
        assert!(!policy.private_tmp);
        // The task's own refs directory is bound over the shared one: no other branch shows.
        assert!(policy.binds.contains(&(
            r.join("state/tasks/t1/git-refs").display().to_string(),
            r.join("repo/.git/refs/heads/kugetsu").display().to_string(),
        )));
    }

    #[test]
    fn the_policy_reads_everything_but_state_secrets_and_denied_paths() {
        let fx = Fixture::new();
        let r = &fx.root;
        let policy = fx.policy(SandboxMode::Workspace);
        let denied = [
            r.join("state"),
            r.join("home/.ssh"),
            r.join("home/.aws"),
            r.join("home/src/private"),
        ];
        let tool_output = r.join("state/tasks/t1/tool-output");
        assert!(has(&policy.read, &tool_output));
        for read in policy
            .read
            .iter()
            .map(Path::new)
            .filter(|p| *p != tool_output)
        {
            for deny in &denied {
                assert!(
                    !read.starts_with(deny) && !deny.starts_with(read),
                    "{} grants {}",
                    read.display(),
                    deny.display()
                );
            }
        }
        assert!(has(&policy.read, &r.join("repo")));
        assert!(has(&policy.read, Path::new("/usr")) || has(&policy.read, Path::new("/")));
        assert!(has(&policy.list, &r.join("home")));
        assert!(has(&policy.list, Path::new("/")));
    }

    #[test]
    fn sandbox_off_is_an_empty_policy_and_reports_everything_confining_missing() {
        let fx = Fixture::new();
        let policy = fx.policy(SandboxMode::Off);
        assert_eq!(policy, SandboxPolicy::off());
        let host = Host {
            landlock: Ok(7),
            namespaces: Ok(kugetsu_os::probe::NamespaceRoute::Privileged),
            cgroups: CgroupSupport::Unavailable("none here".to_owned()),
            landlock_ptrace: true,
        };
        let report = report(&policy, &host, &Err("none here".to_owned()));
        assert_eq!(report.mode, SandboxMode::Off);
        assert!(report.in_force.contains(&Protection::InertGit));
        assert!(!report.in_force.contains(&Protection::Filesystem));
        let filesystem = report
            .missing
            .iter()
            .find(|m| m.protection == Protection::Filesystem)
            .unwrap();
        assert_eq!(filesystem.reason, "--sandbox off");
        assert!(
            report
                .missing
                .iter()
                .any(|m| m.protection == Protection::PidsLimit)
        );
    }

    #[test]
    fn a_kernel_without_landlock_or_namespaces_is_reported_with_its_reasons() {
        let policy = SandboxPolicy {
            mode: SandboxMode::Workspace,
            network: NetworkMode::Off,
            private_tmp: true,
            ..SandboxPolicy::default()
        };
        let host = Host {
            landlock: Err("the kernel is built without Landlock".to_owned()),
            namespaces: Err("unshare: EPERM".to_owned()),
            cgroups: CgroupSupport::Unavailable("no cgroups".to_owned()),
            landlock_ptrace: false,
        };
        let report = report(&policy, &host, &Ok(()));
        assert!(report.in_force.contains(&Protection::PidsLimit));
        let missing: Vec<Protection> = report.missing.iter().map(|m| m.protection).collect();
        for protection in [
            Protection::Filesystem,
            Protection::Ptrace,
            Protection::Signals,
            Protection::MountNamespace,
            Protection::PidNamespace,
            Protection::PrivateTmp,
            Protection::NetworkOff,
        ] {
            assert!(missing.contains(&protection), "{protection:?}: {report:?}");
        }
        assert!(report.missing[0].reason.contains("Landlock"), "{report:?}");
    }

    #[test]
    fn only_provider_variables_become_secrets_of_the_task_spec() {
        let secrets = provider_secrets([
            ("OPENAI_API_KEY".to_owned(), "sk-value-1".to_owned()),
            ("OPENAI_BASE_URL".to_owned(), "http://x".to_owned()),
            ("ANTHROPIC_API_KEY".to_owned(), "sk-ant".to_owned()),
            ("GITHUB_TOKEN".to_owned(), "ghp".to_owned()),
            ("PATH".to_owned(), "/bin".to_owned()),
        ]);
        let names: Vec<&String> = secrets.0.keys().collect();
        assert_eq!(
            names,
            ["ANTHROPIC_API_KEY", "OPENAI_API_KEY", "OPENAI_BASE_URL"]
        );
        assert!(!format!("{secrets:?}").contains("sk-value"), "{secrets:?}");
    }
}
