//! `kugetsu doctor`: checks what kugetsu needs, one line per check, and says how to fix what
//! is wrong. Exits 0 when nothing essential is missing, 1 otherwise.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use kugetsu_protocol::{ModelRef, ProviderKind};

use crate::cli::args::DoctorArgs;
use crate::config::Config;
use crate::exit::CliError;

/// How a check went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Ok,
    /// Works, but something deserves attention.
    Warn,
    /// Something kugetsu needs is missing.
    Fail,
}

struct Report {
    failed: bool,
}

impl Report {
    fn line(&mut self, verdict: Verdict, what: &str, detail: &str) {
        let mark = match verdict {
            Verdict::Ok => "ok  ",
            Verdict::Warn => "warn",
            Verdict::Fail => {
                self.failed = true;
                "FAIL"
            }
        };
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{mark}  {what:<12} {detail}");
    }
}

/// Entry point of `kugetsu doctor`.
pub async fn doctor(args: DoctorArgs) -> Result<ExitCode, CliError> {
    let env = |key: &str| std::env::var(key).ok();
    let mut report = Report { failed: false };

    let config = match Config::load(args.config.as_deref(), &env) {
        Ok(config) => {
            let source = config.path.as_ref().map_or_else(
                || "defaults (no config file)".to_owned(),
                |p| p.display().to_string(),
            );
            report.line(Verdict::Ok, "config", &source);
            config
        }
        Err(e) => {
            report.line(Verdict::Fail, "config", &e.to_string());
            Config::load(None, &|_| None)?
        }
    };

    match crate::config::state_dir(args.state_dir.as_deref(), &env) {
        Ok(dir) => {
            let writable = std::fs::create_dir_all(&dir).is_ok() && probe_write(&dir);
            let verdict = if writable { Verdict::Ok } else { Verdict::Fail };
            report.line(
                verdict,
                "state dir",
                &format!(
                    "{}{}",
                    dir.display(),
                    if writable {
                        ""
                    } else {
                        " is not writable (--state-dir or KUGETSU_STATE_DIR)"
                    }
                ),
            );
        }
        Err(e) => report.line(Verdict::Fail, "state dir", &e.to_string()),
    }

    match crate::task::shadow::find_worker() {
        Ok(path) => report.line(Verdict::Ok, "worker", &path.display().to_string()),
        Err(e) => report.line(Verdict::Fail, "worker", &e.to_string()),
    }

    match tokio::process::Command::new("git")
        .arg("--version")
        .output()
        .await
    {
        Ok(out) if out.status.success() => report.line(
            Verdict::Ok,
            "git",
            String::from_utf8_lossy(&out.stdout).trim(),
        ),
        _ => report.line(
            Verdict::Fail,
            "git",
            "git is not installed (apt-get install git)",
        ),
    }

    match config.model.as_deref() {
        None => report.line(
            Verdict::Warn,
            "model",
            "no default model: pass -m PROVIDER/MODEL, set KUGETSU_MODEL or `model` in the config",
        ),
        Some(text) => match text.parse::<ModelRef>() {
            Ok(model) => {
                let missing = model
                    .provider
                    .api_key_env()
                    .filter(|key| env(key).is_none_or(|v| v.is_empty()));
                match missing {
                    Some(key) => report.line(
                        Verdict::Fail,
                        "model",
                        &format!("{model}: {key} is not set"),
                    ),
                    None => report.line(Verdict::Ok, "model", &model.to_string()),
                }
            }
            Err(e) => report.line(Verdict::Fail, "model", &e.to_string()),
        },
    }
    let keys: Vec<String> = ProviderKind::ALL
        .iter()
        .filter_map(|p| p.api_key_env().map(|key| (p, key)))
        .map(|(p, key)| {
            let set = env(key).is_some_and(|v| !v.is_empty());
            format!("{p} {}", if set { "key set" } else { "no key" })
        })
        .collect();
    report.line(
        Verdict::Ok,
        "providers",
        &format!("{}; ollama and scripted need none", keys.join(", ")),
    );

    let snapshot = {
        let sampler = crate::task::memory::Sampler::spawn();
        let mut rx = sampler.subscribe();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), rx.changed()).await;
        sampler.latest()
    };
    if snapshot.valid {
        let need = config.mem_limit + crate::daemon::actor::MEMORY_RESERVE;
        let verdict = if snapshot.available >= need {
            Verdict::Ok
        } else {
            Verdict::Warn
        };
        report.line(verdict, "memory", &format!(
            "{} MiB available; a shadow needs {} MiB (mem_limit) + {} MiB reserve; max_shadows {}",
            snapshot.available >> 20,
            config.mem_limit >> 20,
            crate::daemon::actor::MEMORY_RESERVE >> 20,
            config.max_shadows
        ));
    } else {
        report.line(
            Verdict::Warn,
            "memory",
            "cannot read memory usage; limits are not enforced",
        );
    }

    match kugetsu_os::process::become_subreaper() {
        Ok(()) => report.line(
            Verdict::Ok,
            "sandbox",
            "process groups, PDEATHSIG and subreaping available",
        ),
        Err(e) => report.line(
            Verdict::Warn,
            "sandbox",
            &format!("cannot become a subreaper ({e}): orphaned tool processes may escape"),
        ),
    }
    match crate::daemon::limits::current() {
        Ok(limit) => {
            // The daemon raises its soft limit to the hard one at start.
            let raised = crate::daemon::limits::FdLimit {
                soft: limit.hard,
                hard: limit.hard,
            };
            let enough = raised.shadows() >= u64::from(config.max_shadows);
            report.line(
                if enough { Verdict::Ok } else { Verdict::Warn },
                "open files",
                &format!(
                    "soft {} / hard {}: the daemon raises it to {} at start, enough for about {} shadows (max_shadows {}){}",
                    limit.soft,
                    limit.hard,
                    raised.soft,
                    raised.shadows(),
                    config.max_shadows,
                    if enough { "" } else { "; raise the hard limit (LimitNOFILE=, /etc/security/limits.conf)" }
                ),
            );
        }
        Err(e) => report.line(
            Verdict::Warn,
            "open files",
            &format!("cannot read the limit: {e}"),
        ),
    }
    sandbox_lines(&mut report, &config);
    if let Some(cluster) = config.cluster.as_deref() {
        cluster_lines(&mut report, cluster).await;
    }

    let socket = crate::config::state_dir(args.state_dir.as_deref(), &env)
        .map(|dir| crate::config::socket_path(None, &dir, &env));
    match socket {
        Ok(path) => {
            let up = crate::daemon::socket::connect(&path).await.is_ok();
            report.line(
                Verdict::Ok,
                "daemon",
                &format!(
                    "{} on {}",
                    if up { "running" } else { "not running" },
                    path.display()
                ),
            );
        }
        Err(e) => report.line(Verdict::Warn, "daemon", &e.to_string()),
    }

    Ok(if report.failed {
        ExitCode::from(crate::exit::FAILED)
    } else {
        ExitCode::SUCCESS
    })
}

/// Whether the cluster's database answers, its schema, and its nodes.
async fn cluster_lines(report: &mut Report, cluster: &crate::config::ClusterConfig) {
    let url = crate::config::redact_url(&cluster.url);
    let checked = async {
        let db = crate::cluster::db::Db::new(&cluster.url)?;
        crate::cluster::db::timed(async {
            let client = db.client().await?;
            let version: String = client.query_one("SHOW server_version", &[]).await?.get(0);
            let schema: Option<i32> = client
                .query_one(
                    "SELECT CASE WHEN to_regclass('kugetsu.migrations') IS NULL THEN NULL
                            ELSE (SELECT max(version) FROM kugetsu.migrations) END",
                    &[],
                )
                .await?
                .get(0);
            let nodes: Vec<(String, bool)> = if schema.is_some() {
                client
                    .query(
                        "SELECT id, NOT stopped AND seen_at > now() - interval '2 minutes'
                           FROM kugetsu.nodes ORDER BY id",
                        &[],
                    )
                    .await?
                    .iter()
                    .map(|r| (r.get(0), r.get(1)))
                    .collect()
            } else {
                Vec::new()
            };
            Ok((version, schema, nodes))
        })
        .await
    }
    .await;
    match checked {
        Ok((version, schema, nodes)) => {
            let major: u32 = version
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let verdict = if major >= 15 {
                Verdict::Ok
            } else {
                Verdict::Fail
            };
            let schema = schema.map_or_else(
                || "no kugetsu schema yet (the first node creates it)".to_owned(),
                |v| format!("schema version {v}"),
            );
            let up: Vec<&str> = nodes
                .iter()
                .filter(|(_, up)| *up)
                .map(|(id, _)| id.as_str())
                .collect();
            report.line(
                verdict,
                "cluster",
                &format!(
                    "{url}: PostgreSQL {version}{}, {schema}; node {} here; nodes up: {}",
                    if major >= 15 {
                        ""
                    } else {
                        " (kugetsu needs 15 or newer)"
                    },
                    cluster.node_id,
                    if up.is_empty() {
                        "none".to_owned()
                    } else {
                        up.join(", ")
                    }
                ),
            );
        }
        Err(e) => report.line(Verdict::Fail, "cluster", &format!("{url}: {e}")),
    }
    match &cluster.checkpoint_remote {
        Some(remote) => report.line(Verdict::Ok, "checkpoints", remote),
        None => report.line(
            Verdict::Warn,
            "checkpoints",
            "no checkpoint_remote: a task taken over by another node starts from its base commit",
        ),
    }
}

/// What this host offers the sandbox, and which protections a task gets here by default.
fn sandbox_lines(report: &mut Report, config: &Config) {
    use kugetsu_os::cgroup::CgroupSupport;
    use kugetsu_protocol::{NetworkMode, SandboxMode, SandboxPolicy};
    let host = kugetsu_os::probe::host();
    match &host.landlock {
        Ok(abi) => report.line(Verdict::Ok, "landlock", &format!("ABI {abi}")),
        Err(e) => report.line(Verdict::Warn, "landlock", e),
    }
    match &host.namespaces {
        Ok(route) => report.line(
            Verdict::Ok,
            "namespaces",
            &format!("mount, pid and network ({route:?})"),
        ),
        Err(e) => report.line(Verdict::Warn, "namespaces", e),
    }
    let cgroup = match &host.cgroups {
        CgroupSupport::V2 { dir } => {
            report.line(
                Verdict::Ok,
                "cgroups",
                &format!("v2, delegated: {}", dir.display()),
            );
            Ok(())
        }
        CgroupSupport::V1Pids { dir } => {
            report.line(
                Verdict::Ok,
                "cgroups",
                &format!("v1 pids: {}", dir.display()),
            );
            Ok(())
        }
        CgroupSupport::Unavailable(reason) => {
            report.line(
                Verdict::Warn,
                "cgroups",
                &format!("{reason}: no pids_limit"),
            );
            Err(reason.clone())
        }
    };
    // What a task on a repository outside /tmp gets, with network off to show that line too.
    let policy = SandboxPolicy {
        mode: config.sandbox,
        network: NetworkMode::Off,
        private_tmp: true,
        ..SandboxPolicy::default()
    };
    let task = crate::task::sandbox::report(&policy, host, &cgroup);
    if config.sandbox == SandboxMode::Off {
        report.line(
            Verdict::Warn,
            "sandbox",
            "sandbox = \"off\": shadows' tools are not confined",
        );
    }
    for protection in &task.in_force {
        report.line(Verdict::Ok, "  in force", protection.as_str());
    }
    for missing in &task.missing {
        report.line(
            Verdict::Warn,
            "  missing",
            &format!("{}: {}", missing.protection.as_str(), missing.reason),
        );
    }
    report.line(
        Verdict::Ok,
        "  settings",
        &format!(
            "sandbox {}, network {}, pids_limit {}",
            config.sandbox.as_str(),
            config.network.as_str(),
            config.pids_limit
        ),
    );
}

fn probe_write(dir: &Path) -> bool {
    let probe = dir.join(format!(".doctor-{}", std::process::id()));
    let ok = std::fs::write(&probe, b"ok").is_ok();
    let _ = std::fs::remove_file(&probe);
    ok
}
