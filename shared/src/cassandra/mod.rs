//! The Cassandra session from `[cassandra]` (contact points, preferred data center, auth, TLS),
//! a liveness check, versioned migrations, the helpers and column values every table's code
//! uses, and the checkpoint table of the stream runtime. Each service's own tables are in its
//! crate (trade-aggregator's `store`, fair-price's `store`).

mod checkpoints;
mod migrate;
mod values;

use std::sync::Arc;
use std::time::Duration;

use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::policies::load_balancing::DefaultPolicy;
use secrecy::ExposeSecret;

pub use checkpoints::{Checkpoint, CheckpointStore, Claim, Lease, Stored, CHUNK_BYTES};
pub use migrate::{migrate, migrate_with, Migration, MigrationReport, MIGRATIONS};
pub use values::{day_of, from_cql_decimal, to_cql_decimal};

use crate::config::{CassandraConfig, ReplicationClass};
use crate::error::{Error, Result};

/// A driver error `e` while doing `context`, as a retryable Cassandra error.
pub fn err(context: &str, e: impl std::fmt::Display) -> Error {
    Error::Cassandra(format!("{context}: {e}"))
}

/// Connects to the cluster (no keyspace selected; statements name it).
pub async fn connect(config: &CassandraConfig) -> Result<Arc<Session>> {
    let timeout = Duration::from_millis(config.request_timeout_ms);
    let mut policy = DefaultPolicy::builder().token_aware(true);
    // A local datacenter means something only to NetworkTopologyStrategy: with SimpleStrategy
    // (one datacenter, development) the driver warns on every query that the combination may
    // leave a query plan empty, so the preference is not set there.
    let topology = config.replication.class == ReplicationClass::NetworkTopologyStrategy;
    if let (Some(dc), true) = (&config.local_dc, topology) {
        policy = policy
            .prefer_datacenter(dc.clone())
            .permit_dc_failover(false);
    }
    let profile = ExecutionProfile::builder()
        .load_balancing_policy(policy.build())
        .request_timeout(Some(timeout))
        .build();
    let mut builder = SessionBuilder::new()
        .known_nodes(&config.contact_points)
        .connection_timeout(timeout.min(Duration::from_secs(5)))
        .default_execution_profile_handle(profile.into_handle());
    if let (Some(user), Some(password)) = (&config.username, &config.password) {
        builder = builder.user(user, password.expose_secret());
    }
    if config.tls.enabled {
        builder = builder.tls_context(Some(tls_context(config)?));
    }
    let session = builder.build().await.map_err(|e| {
        err(
            &format!("connect to {}", config.contact_points.join(",")),
            e,
        )
    })?;
    Ok(Arc::new(session))
}

fn tls_context(config: &CassandraConfig) -> Result<openssl::ssl::SslContext> {
    use openssl::ssl::{SslContextBuilder, SslMethod, SslVerifyMode};
    let mut builder = SslContextBuilder::new(SslMethod::tls()).map_err(|e| err("tls", e))?;
    builder.set_verify(SslVerifyMode::PEER);
    match &config.tls.ca_file {
        Some(ca) => builder
            .set_ca_file(ca)
            .map_err(|e| err(&format!("tls ca_file {}", ca.display()), e))?,
        None => builder
            .set_default_verify_paths()
            .map_err(|e| err("tls system roots", e))?,
    }
    Ok(builder.build())
}

/// Prepares a statement and marks it idempotent: every tickflow statement is an upsert of the
/// same values or a read, so the driver may retry it on another node.
pub async fn prepare(
    session: &Session,
    cql: String,
    what: &str,
) -> Result<scylla::statement::prepared::PreparedStatement> {
    let mut statement = session
        .prepare(cql)
        .await
        .map_err(|e| err(&format!("prepare {what}"), e))?;
    statement.set_is_idempotent(true);
    Ok(statement)
}

/// Runs a prepared read and returns its rows.
pub async fn select<T>(
    session: &Session,
    statement: &scylla::statement::prepared::PreparedStatement,
    values: impl scylla::serialize::row::SerializeRow,
    what: &str,
) -> Result<Vec<T>>
where
    T: for<'f, 'm> scylla::deserialize::row::DeserializeRow<'f, 'm>,
{
    let rows = session
        .execute_unpaged(statement, values)
        .await
        .map_err(|e| err(what, e))?
        .into_rows_result()
        .map_err(|e| err(what, e))?;
    let typed = rows.rows::<T>().map_err(|e| err(what, e))?;
    typed.map(|row| row.map_err(|e| err(what, e))).collect()
}

/// A real request: the node's release version. Returns a description for `/readyz`.
pub async fn check(session: &Session) -> Result<String> {
    let rows = session
        .query_unpaged("SELECT release_version FROM system.local", &[])
        .await
        .map_err(|e| err("health query", e))?
        .into_rows_result()
        .map_err(|e| err("health query", e))?;
    let (version,): (String,) = rows.single_row().map_err(|e| err("health query", e))?;
    Ok(format!("Cassandra {version}"))
}
