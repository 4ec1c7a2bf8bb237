//! trade-aggregator's configuration: `[service]`, `[kafka]`, `[registry]`, `[cassandra]`.
//! Layering and error reporting come from `tickflow_shared::config`.

use serde::Deserialize;
use tickflow_shared::config::{
    CassandraConfig, KafkaConfig, Problems, RegistryConfig, ServiceConfig, Validate,
};
use tickflow_shared::service::ServiceRoot;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[service]`: HTTP endpoint, logs, shutdown deadline, metric label guard.
    pub service: ServiceConfig,
    /// `[kafka]`: brokers, security, producer settings, topic overrides.
    pub kafka: KafkaConfig,
    /// `[registry]`: the Confluent-compatible schema registry.
    pub registry: RegistryConfig,
    /// `[cassandra]`: cluster and keyspace.
    pub cassandra: CassandraConfig,
}

impl Validate for Config {
    fn validate(&self, problems: &mut Problems) {
        self.service.validate(problems);
        self.kafka.validate(problems);
        self.registry.validate(problems);
        self.cassandra.validate(problems);
    }
}

impl ServiceRoot for Config {
    fn service(&self) -> &ServiceConfig {
        &self.service
    }

    fn service_mut(&mut self) -> &mut ServiceConfig {
        &mut self.service
    }
}
