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
            Error::Registry(_) | Error::Cassandra(_) | Error::Io(_) | Error::TopicAdmin { .. } => {
                true
            }
            Error::Config(_)
            | Error::ConfigFile { .. }
            | Error::Decimal { .. }
            | Error::IncompatibleSchema { .. }
            | Error::Avro(_)
            | Error::Migration { .. } => false,
        }
    }
}
