//! Versioned schema migrations: the CQL files under `shared/cql/` (`V<version>__<name>.cql`),
//! applied in order, each once. The keyspace is created first with the configured replication;
//! `<keyspace>.schema_migrations` records each version with its checksum, so a second run does
//! nothing and a file edited after it was applied is refused instead of silently diverging.

use scylla::client::session::Session;
use sha2::{Digest, Sha256};

use super::err;
use crate::config::{is_cql_identifier, CassandraConfig};
use crate::error::{Error, Result};

/// One versioned CQL file.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: u32,
    pub name: &'static str,
    pub cql: &'static str,
}

/// Every migration, in order. A unit test checks this list against the files in `shared/cql/`.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "trades",
        cql: include_str!("../../cql/V001__trades.cql"),
    },
    Migration {
        version: 2,
        name: "candles_checkpoints",
        cql: include_str!("../../cql/V002__candles_checkpoints.cql"),
    },
    Migration {
        version: 3,
        name: "fair_prices",
        cql: include_str!("../../cql/V003__fair_prices.cql"),
    },
    Migration {
        version: 4,
        name: "candles_rollup",
        cql: include_str!("../../cql/V004__candles_rollup.cql"),
    },
    Migration {
        version: 5,
        name: "checkpoint_chunks",
        cql: include_str!("../../cql/V005__checkpoint_chunks.cql"),
    },
    Migration {
        version: 6,
        name: "checkpoint_leases",
        cql: include_str!("../../cql/V006__checkpoint_leases.cql"),
    },
];

/// What a run did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MigrationReport {
    pub applied: Vec<u32>,
    pub already_applied: Vec<u32>,
}

impl Migration {
    fn checksum(&self) -> String {
        let digest = Sha256::digest(self.cql.as_bytes());
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The statements of the file: split on `;`, with `--` comment lines removed.
    pub fn statements(&self) -> Vec<String> {
        let without_comments: String = self
            .cql
            .lines()
            .filter(|line| !line.trim_start().starts_with("--"))
            .collect::<Vec<_>>()
            .join("\n");
        without_comments
            .split(';')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect()
    }

    fn error(&self, message: impl Into<String>) -> Error {
        Error::Migration {
            version: self.version,
            name: self.name.to_string(),
            message: message.into(),
        }
    }
}

/// Creates the keyspace if needed and applies every migration not yet recorded. Selects the
/// keyspace on `session`. Safe to run again at any time.
pub async fn migrate(session: &Session, config: &CassandraConfig) -> Result<MigrationReport> {
    migrate_with(session, config, MIGRATIONS).await
}

/// [`migrate`] with an explicit list of migrations (tests use it to simulate an edited file).
pub async fn migrate_with(
    session: &Session,
    config: &CassandraConfig,
    migrations: &[Migration],
) -> Result<MigrationReport> {
    let keyspace = &config.keyspace;
    if !is_cql_identifier(keyspace) {
        return Err(Error::Config(format!(
            "`cassandra.keyspace`: {keyspace:?} is not a CQL identifier"
        )));
    }
    let create_keyspace = format!(
        "CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = {} AND durable_writes = true",
        config.replication.to_cql()
    );
    run_ddl(session, &create_keyspace).await?;
    session
        .use_keyspace(keyspace, false)
        .await
        .map_err(|e| err(&format!("use keyspace {keyspace}"), e))?;
    run_ddl(
        session,
        &format!("CREATE TABLE IF NOT EXISTS {keyspace}.schema_migrations (version int PRIMARY KEY, name text, checksum text, applied_at timestamp)"),
    )
    .await?;

    let rows = session
        .query_unpaged(
            format!("SELECT version, checksum FROM {keyspace}.schema_migrations"),
            &[],
        )
        .await
        .map_err(|e| err("read schema_migrations", e))?
        .into_rows_result()
        .map_err(|e| err("read schema_migrations", e))?;
    let mut recorded = std::collections::HashMap::new();
    for row in rows
        .rows::<(i32, String)>()
        .map_err(|e| err("read schema_migrations", e))?
    {
        let (version, checksum) = row.map_err(|e| err("read schema_migrations", e))?;
        recorded.insert(version, checksum);
    }

    let mut report = MigrationReport::default();
    for migration in migrations {
        let version = i32::try_from(migration.version)
            .map_err(|_| migration.error("version out of range"))?;
        if let Some(checksum) = recorded.get(&version) {
            if *checksum != migration.checksum() {
                return Err(migration.error(
                    "the file changed after it was applied; add a new version instead of editing it",
                ));
            }
            report.already_applied.push(migration.version);
            continue;
        }
        for statement in migration.statements() {
            run_ddl(session, &statement)
                .await
                .map_err(|e| migration.error(e.to_string()))?;
        }
        session
            .query_unpaged(
                format!("INSERT INTO {keyspace}.schema_migrations (version, name, checksum, applied_at) VALUES (?, ?, ?, toTimestamp(now()))"),
                (version, migration.name, migration.checksum()),
            )
            .await
            .map_err(|e| migration.error(format!("record: {e}")))?;
        tracing::info!(keyspace = %keyspace, version = migration.version, name = migration.name, "migration applied");
        report.applied.push(migration.version);
    }
    Ok(report)
}

async fn run_ddl(session: &Session, statement: &str) -> Result<()> {
    session
        .query_unpaged(statement, &[])
        .await
        .map_err(|e| err(&format!("`{}`", first_line(statement)), e))?;
    session
        .await_schema_agreement()
        .await
        .map_err(|e| err("schema agreement", e))?;
    Ok(())
}

fn first_line(statement: &str) -> &str {
    statement.lines().next().unwrap_or(statement)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_match_the_cql_files() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("cql");
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".cql"))
            .collect();
        files.sort();
        let listed: Vec<String> = MIGRATIONS
            .iter()
            .map(|m| format!("V{:03}__{}.cql", m.version, m.name))
            .collect();
        assert_eq!(
            files, listed,
            "every file in shared/cql is listed in MIGRATIONS, in order"
        );
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version as usize, i + 1, "versions are 1, 2, 3, ...");
            assert!(!m.statements().is_empty());
        }
    }

    #[test]
    fn statements_split_and_drop_comments() {
        let m = Migration {
            version: 9,
            name: "x",
            cql: "-- a comment; with a semicolon\nCREATE TABLE a (k int PRIMARY KEY);\n\nCREATE TABLE b (k int PRIMARY KEY);\n",
        };
        assert_eq!(
            m.statements(),
            vec![
                "CREATE TABLE a (k int PRIMARY KEY)".to_string(),
                "CREATE TABLE b (k int PRIMARY KEY)".to_string()
            ]
        );
    }
}
