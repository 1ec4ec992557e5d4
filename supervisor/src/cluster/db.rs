//! The cluster's database: the connection pool, the schema's migrations, and every query a
//! node makes. Each write for a running task is one transaction that first checks the task's
//! fence (and that its lease has not run out, in database time) and is refused otherwise.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::error::SqlState;
use tokio_postgres_rustls::MakeRustlsConnect;

/// The schema's migrations, in order; each is applied once (see [`Db::migrate`]).
pub const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("migrations/0001_init.sql")),
    (2, include_str!("migrations/0002_governor.sql")),
];

/// Connections one node keeps (the node loop, its task writers, and client requests share them).
const POOL_SIZE: usize = 8;
/// The longest a query may take before it counts as failed (the database is unreachable).
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(5);
/// The advisory lock migrations are applied under.
const MIGRATION_LOCK: i64 = 0x6b75_6765_7473_7501;

/// What went wrong talking to the database.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The write carried a fence that is no longer the task's, or its lease ran out.
    #[error("fenced out: the task's lease was lost")]
    Fenced,
    #[error("{0}")]
    Pool(String),
    #[error("{}", describe(.0))]
    Query(#[from] tokio_postgres::Error),
    #[error("the database did not answer within {} s", QUERY_TIMEOUT.as_secs())]
    Timeout,
    #[error("{0}")]
    Schema(String),
    #[error("{0}")]
    Data(String),
}

fn describe(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => {
            let mut text = error.to_string();
            let mut source = std::error::Error::source(error);
            while let Some(cause) = source {
                text.push_str(": ");
                text.push_str(&cause.to_string());
                source = cause.source();
            }
            text
        }
    }
}

impl DbError {
    /// Whether the statement lost a race it may simply retry (serialization, deadlock).
    pub fn is_conflict(&self) -> bool {
        matches!(self, DbError::Query(e) if matches!(
            e.code(),
            Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED
        ))
    }
}

impl DbError {
    /// Whether a row the write adds is already there: this node's copy of the task is out
    /// of step with the database, and retrying cannot help.
    pub fn is_duplicate(&self) -> bool {
        matches!(self, DbError::Query(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION))
    }
}

impl From<deadpool_postgres::PoolError> for DbError {
    fn from(e: deadpool_postgres::PoolError) -> DbError {
        match e {
            deadpool_postgres::PoolError::Backend(e) => DbError::Query(e),
            deadpool_postgres::PoolError::Timeout(_) => DbError::Timeout,
            other => DbError::Pool(other.to_string()),
        }
    }
}

/// Bounds a database future by [`QUERY_TIMEOUT`].
pub async fn timed<T>(
    work: impl std::future::Future<Output = Result<T, DbError>>,
) -> Result<T, DbError> {
    tokio::time::timeout(QUERY_TIMEOUT, work)
        .await
        .unwrap_or(Err(DbError::Timeout))
}

/// The TLS connector: rustls with the web's root certificates. A server without TLS is still
/// reached in the connection string's default `sslmode=prefer`; `sslmode=require` insists.
pub fn tls() -> Result<MakeRustlsConnect, DbError> {
    let roots = rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| DbError::Pool(format!("TLS: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

/// Parses a connection string (`postgres://...` or `key=value ...`).
pub fn parse_url(url: &str) -> Result<tokio_postgres::Config, DbError> {
    let mut config: tokio_postgres::Config = url.parse().map_err(|e| {
        DbError::Pool(format!(
            "cluster {:?} is not a PostgreSQL connection string: {e}",
            crate::config::redact_url(url)
        ))
    })?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(QUERY_TIMEOUT);
    }
    config.application_name("kugetsu");
    Ok(config)
}

/// The pool of one node.
#[derive(Clone)]
pub struct Db {
    pub pool: Pool,
    /// For the one connection outside the pool (LISTEN, the node's advisory lock).
    pub config: tokio_postgres::Config,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").finish_non_exhaustive()
    }
}

impl Db {
    /// A pool on `url`; connects lazily.
    pub fn new(url: &str) -> Result<Db, DbError> {
        let config = parse_url(url)?;
        let manager = Manager::from_config(
            config.clone(),
            tls()?,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(QUERY_TIMEOUT))
            .create_timeout(Some(QUERY_TIMEOUT))
            .recycle_timeout(Some(QUERY_TIMEOUT))
            .build()
            .map_err(|e| DbError::Pool(e.to_string()))?;
        Ok(Db { pool, config })
    }

    /// A connection from the pool.
    pub async fn client(&self) -> Result<deadpool_postgres::Object, DbError> {
        Ok(self.pool.get().await?)
    }

    /// Applies the migrations this build knows and the database lacks, in one transaction
    /// under an advisory lock (nodes starting together apply each once). Refuses a database
    /// whose schema is newer than this build.
    pub async fn migrate(&self) -> Result<i32, DbError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await?;
        tx.batch_execute(
            "CREATE SCHEMA IF NOT EXISTS kugetsu;
             CREATE TABLE IF NOT EXISTS kugetsu.migrations (
                 version    integer PRIMARY KEY,
                 applied_at timestamptz NOT NULL DEFAULT now()
             );",
        )
        .await?;
        let current: i32 = tx
            .query_one(
                "SELECT coalesce(max(version), 0) FROM kugetsu.migrations",
                &[],
            )
            .await?
            .get(0);
        let newest = MIGRATIONS.last().map_or(0, |(v, _)| *v);
        if current > newest {
            return Err(DbError::Schema(format!(
                "the database's kugetsu schema is version {current}, newer than this kugetsu \
                 knows ({newest}): upgrade this node"
            )));
        }
        for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
            tx.batch_execute(sql).await?;
            tx.execute(
                "INSERT INTO kugetsu.migrations (version) VALUES ($1)",
                &[version],
            )
            .await?;
            tracing::info!("cluster: applied schema migration {version}");
        }
        tx.commit().await?;
        Ok(newest)
    }
}

/// Checks, inside `tx`, that `fence` is still task `task`'s and its lease holds; locks the
/// row against a concurrent claim until the transaction ends.
pub async fn check_fence(
    tx: &deadpool_postgres::Transaction<'_>,
    task: &str,
    fence: i64,
) -> Result<(), DbError> {
    let row = tx
        .query_opt(
            "SELECT 1 FROM kugetsu.tasks
              WHERE id = $1 AND fence = $2 AND state = 'running' AND lease_until > now()
              FOR NO KEY UPDATE",
            &[&task, &fence],
        )
        .await?;
    match row {
        Some(_) => Ok(()),
        None => Err(DbError::Fenced),
    }
}

/// Milliseconds as a PostgreSQL interval parameter (`$n * interval '1 millisecond'`).
pub fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
