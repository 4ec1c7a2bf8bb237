//! The shared crate's error type. Every variant says whether a retry may help and gives a short
//! fixed `kind()` string, used as a bounded `reason` / `error_type` metric label.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("configuration: {0}")]
    Config(String),

    #[error("config file {path}: {message}")]
    ConfigFile { path: PathBuf, message: String },

    #[error("invalid decimal {text:?}: {reason}")]
    Decimal { text: String, reason: String },

    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),

    #[error("kafka admin: topic {topic}: {message}")]
    TopicAdmin { topic: String, message: String },

    #[error("schema registry unreachable or failing: {0}")]
    Registry(String),

    #[error("schema registry refused the schema of subject {subject} as incompatible ({compatibility}): {message}")]
    IncompatibleSchema {
        subject: String,
        compatibility: String,
        message: String,
    },

    #[error("avro: {0}")]
    Avro(String),

    #[error("cassandra: {0}")]
    Cassandra(String),

    #[error("migration {version} ({name}): {message}")]
    Migration {
        version: u32,
        name: String,
        message: String,
    },

    #[error("io: {0}")]
    Io(#[from] std::io::Error),

    /// A task of the service panicked or was cancelled: a bug, or a shutdown gone wrong.
    #[error("task {task} ended abnormally: {message}")]
    Task { task: &'static str, message: String },

    /// A partition's checkpointed state cannot be read or written by this build.
    #[error("checkpoint of partition {partition}: {message}")]
    Checkpoint { partition: i32, message: String },

    /// Another live instance took this one's identity (its transactional id or its static
    /// group membership id): two instances must not share it.
    #[error("fenced: {0}")]
    Fenced(String),

    /// Kafka's client stopped on an error it cannot recover from.
    #[error("kafka, fatal: {0}")]
    KafkaFatal(String),

    /// A dependency did not answer in time.
    #[error("timed out: {0}")]
    Timeout(String),

    /// The keyspace lacks tables this service needs: the migrations were not applied.
    #[error("cassandra keyspace {keyspace} is not migrated: {message}\nhint: apply the Cassandra migrations first: `tickflow-admin migrate` (keyspace {keyspace})")]
    NotMigrated { keyspace: String, message: String },
}

impl Error {
    /// A short fixed string for metric labels and log fields.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Config(_) | Error::ConfigFile { .. } => "config",
            Error::Decimal { .. } => "decimal",
            Error::Kafka(_) => "kafka",
            Error::TopicAdmin { .. } => "topic_admin",
            Error::Registry(_) => "registry",
            Error::IncompatibleSchema { .. } => "incompatible_schema",
            Error::Avro(_) => "avro",
            Error::Cassandra(_) => "cassandra",
            Error::Migration { .. } => "migration",
            Error::Io(_) => "io",
            Error::Task { .. } => "task",
            Error::Checkpoint { .. } => "checkpoint",
            Error::Fenced(_) => "fenced",
            Error::KafkaFatal(_) => "kafka_fatal",
            Error::Timeout(_) => "timeout",
            Error::NotMigrated { .. } => "not_migrated",
        }
    }

    /// Whether trying the same thing again later may succeed (a dependency that is down), as
    /// opposed to an error that needs a human (bad config, incompatible schema, bad data).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Kafka(e) => !matches!(
                e.rdkafka_error_code(),
                Some(rdkafka::types::RDKafkaErrorCode::TopicAuthorizationFailed)
                    | Some(rdkafka::types::RDKafkaErrorCode::SaslAuthenticationFailed)
                    | Some(rdkafka::types::RDKafkaErrorCode::InvalidConfig)
            ),
            Error::Registry(_)
            | Error::Cassandra(_)
            | Error::Io(_)
            | Error::TopicAdmin { .. }
            | Error::Timeout(_) => true,
            Error::Config(_)
            | Error::ConfigFile { .. }
            | Error::Decimal { .. }
            | Error::IncompatibleSchema { .. }
            | Error::Avro(_)
            | Error::Migration { .. }
            | Error::Task { .. }
            | Error::Checkpoint { .. }
            | Error::Fenced(_)
            | Error::KafkaFatal(_)
            | Error::NotMigrated { .. } => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_needs_a_human_is_not_retried_and_what_is_down_is() {
        let transient = [
            Error::Timeout("dedup warm-up".into()),
            Error::Cassandra("no connection".into()),
            Error::Registry("503".into()),
        ];
        for e in transient {
            assert!(e.is_retryable(), "{e} ({})", e.kind());
        }
        let human = [
            Error::Task {
                task: "sink",
                message: "panicked".into(),
            },
            Error::Checkpoint {
                partition: 3,
                message: "state format 9".into(),
            },
            Error::Fenced("same transactional id".into()),
            Error::KafkaFatal("fatal".into()),
            Error::NotMigrated {
                keyspace: "tickflow".into(),
                message: "unconfigured table checkpoints".into(),
            },
            Error::Config("key `x`".into()),
        ];
        for e in human {
            assert!(!e.is_retryable(), "{e} ({})", e.kind());
        }
    }

    #[test]
    fn a_keyspace_not_migrated_says_how_to_migrate_it() {
        let e = Error::NotMigrated {
            keyspace: "tickflow".into(),
            message: "unconfigured table candles_1m".into(),
        };
        let text = e.to_string();
        assert!(text.contains("unconfigured table candles_1m"), "{text}");
        assert!(text.contains("tickflow-admin migrate"), "{text}");
        assert_eq!(e.kind(), "not_migrated");
    }
}
