//! What every tickflow service needs, in one place: domain types with exact decimals, layered
//! configuration, telemetry (logs, Prometheus metrics with a cardinality guard), health and
//! readiness, graceful shutdown, Kafka clients and topics, Avro in the Confluent wire format
//! with the schema registry, and the Cassandra session with versioned migrations.
#![forbid(unsafe_code)]

pub mod avro;
pub mod cassandra;
pub mod config;
pub mod domain;
pub mod error;
pub mod gap;
pub mod health;
pub mod instruments;
pub mod kafka;
pub mod proto;
pub mod retry;
pub mod runtime;
pub mod service;
pub mod shutdown;
pub mod simfeed;
pub mod telemetry;
pub mod watermark;

pub use error::{Error, Result};
