//! Topic creation at start: every topic a service uses is created when missing, with
//! partitions, replication, retention and cleanup policy from the service's built-in spec and
//! the `[kafka.topics."<name>"]` overrides. Existing topics are left as they are.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;

use crate::config::{CleanupPolicy, TopicOverride};
use crate::error::{Error, Result};

/// What a topic should look like when created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    pub replication_factor: i32,
    pub retention_ms: Option<i64>,
    pub cleanup_policy: CleanupPolicy,
}

impl TopicSpec {
    /// A delete-policy topic with the given partitions, replication 1, broker default retention.
    pub fn new(name: impl Into<String>, partitions: i32) -> Self {
        Self {
            name: name.into(),
            partitions,
            replication_factor: 1,
            retention_ms: None,
            cleanup_policy: CleanupPolicy::Delete,
        }
    }

    pub fn compacted(mut self) -> Self {
        self.cleanup_policy = CleanupPolicy::Compact;
        self
    }

    pub fn retention(mut self, retention: Duration) -> Self {
        self.retention_ms = Some(i64::try_from(retention.as_millis()).unwrap_or(i64::MAX));
        self
    }

    /// This spec with the operator's overrides applied.
    pub fn with_override(mut self, o: Option<&TopicOverride>) -> Self {
        if let Some(o) = o {
            self.partitions = o.partitions.unwrap_or(self.partitions);
            self.replication_factor = o.replication_factor.unwrap_or(self.replication_factor);
            self.retention_ms = o.retention_ms.or(self.retention_ms);
            self.cleanup_policy = o.cleanup_policy.unwrap_or(self.cleanup_policy);
        }
        self
    }
}

/// Creates the topics that do not exist yet. Returns the names it created.
pub async fn ensure_topics(
    admin: &AdminClient<DefaultClientContext>,
    specs: &[TopicSpec],
    overrides: &BTreeMap<String, TopicOverride>,
) -> Result<Vec<String>> {
    let specs: Vec<TopicSpec> = specs
        .iter()
        .cloned()
        .map(|s| {
            let o = overrides.get(&s.name);
            s.with_override(o)
        })
        .collect();
    let retention: Vec<Option<String>> = specs
        .iter()
        .map(|s| s.retention_ms.map(|r| r.to_string()))
        .collect();
    let new_topics: Vec<NewTopic<'_>> = specs
        .iter()
        .zip(&retention)
        .map(|(s, r)| {
            let mut t = NewTopic::new(
                &s.name,
                s.partitions,
                TopicReplication::Fixed(s.replication_factor),
            )
            .set("cleanup.policy", s.cleanup_policy.as_kafka());
            if let Some(r) = r {
                t = t.set("retention.ms", r);
            }
            t
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin.create_topics(new_topics.iter(), &options).await?;
    let mut created = Vec::new();
    for result in results {
        match result {
            Ok(name) => created.push(name),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(Error::TopicAdmin {
                    topic,
                    message: code.to_string(),
                })
            }
        }
    }
    Ok(created)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_change_only_what_they_set() {
        let base = TopicSpec::new("md.trades", 6).retention(Duration::from_secs(3600));
        let o = TopicOverride {
            partitions: Some(12),
            ..Default::default()
        };
        let merged = base.clone().with_override(Some(&o));
        assert_eq!(merged.partitions, 12);
        assert_eq!(merged.retention_ms, Some(3_600_000));
        assert_eq!(merged.cleanup_policy, CleanupPolicy::Delete);
        assert_eq!(base.clone().with_override(None), base);
    }
}
