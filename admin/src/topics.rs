//! `tickflow-admin topics`: what Kafdrop's front page shows. Each topic's partitions with their
//! low and high offsets, and each consumer group's committed offset and lag on them. Read-only:
//! committed offsets are fetched (OffsetFetch) by a client that never joins the group.

use std::collections::BTreeMap;
use std::time::Duration;

use clap::Args;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::metadata::Metadata;
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;
use tickflow_shared::config::KafkaConfig;
use tickflow_shared::kafka::base_client_config;
use tickflow_shared::{Error, Result};

use crate::read::StderrContext;

const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Args, Debug)]
pub struct TopicsArgs {
    /// Topics to show; every topic except Kafka's internal ones (`__…`) when none is given.
    #[arg(value_name = "TOPIC")]
    pub topics: Vec<String>,
    /// Only topics whose name starts with this (e.g. `md.`).
    #[arg(long, value_name = "PREFIX")]
    pub prefix: Option<String>,
    /// Only this consumer group (repeatable). By default every group with a committed offset on
    /// a topic shown, such as the services' `normalizer` and `fair-price`.
    #[arg(long = "group", value_name = "GROUP")]
    pub groups: Vec<String>,
    /// Leave consumer groups out (faster on a cluster with many groups).
    #[arg(long)]
    pub no_groups: bool,
    /// One JSON object per topic and line instead of the table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TopicView {
    pub topic: String,
    /// The sum over partitions of `high - low`: the records kept, counting transaction markers
    /// and the gaps compaction leaves as records.
    pub messages: i64,
    pub partitions: Vec<PartitionView>,
    pub groups: Vec<GroupView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionView {
    pub partition: i32,
    /// The oldest offset still kept.
    pub low: i64,
    /// The offset the next record will get (the high watermark).
    pub high: i64,
    pub messages: i64,
    pub leader: i32,
    pub replicas: usize,
    pub in_sync: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupView {
    pub group: String,
    /// As the group coordinator reports it (Stable, Empty, …); empty when the group was named
    /// with --group but is not listed.
    pub state: String,
    /// The sum of the partitions' lag.
    pub lag: i64,
    pub partitions: Vec<GroupPartition>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupPartition {
    pub partition: i32,
    /// The offset of the next record the group will read.
    pub committed: i64,
    /// `high - committed`: records written that the group has not committed yet.
    pub lag: i64,
}

/// Records in the partition after the group's committed offset.
pub fn lag(high: i64, committed: i64) -> i64 {
    high.saturating_sub(committed).max(0)
}

/// Committed offsets of one group: topic → partition → offset.
pub type Committed = BTreeMap<String, BTreeMap<i32, i64>>;

/// The views of `partitions` (topic → partitions), with each group that committed on them.
pub fn views(
    partitions: &BTreeMap<String, Vec<PartitionView>>,
    groups: &[(String, String, Committed)],
) -> Vec<TopicView> {
    partitions
        .iter()
        .map(|(topic, parts)| {
            let groups = groups
                .iter()
                .filter_map(|(group, state, committed)| {
                    let on_topic = committed.get(topic)?;
                    let partitions: Vec<GroupPartition> = parts
                        .iter()
                        .filter_map(|p| {
                            let committed = *on_topic.get(&p.partition)?;
                            Some(GroupPartition {
                                partition: p.partition,
                                committed,
                                lag: lag(p.high, committed),
                            })
                        })
                        .collect();
                    (!partitions.is_empty()).then(|| GroupView {
                        group: group.clone(),
                        state: state.clone(),
                        lag: partitions.iter().map(|p| p.lag).sum(),
                        partitions,
                    })
                })
                .collect();
            TopicView {
                topic: topic.clone(),
                messages: parts.iter().map(|p| p.messages).sum(),
                partitions: parts.clone(),
                groups,
            }
        })
        .collect()
}

/// The error for a topic that does not exist: it names the topic and lists those that do (the
/// test suite's `it.*` topics only counted).
pub fn no_such_topic(metadata: &Metadata, topic: &str) -> Error {
    let names: Vec<&str> = metadata.topics().iter().map(|t| t.name()).collect();
    Error::TopicAdmin {
        topic: topic.to_string(),
        message: format!("no such topic; {}", existing(&names)),
    }
}

fn existing(names: &[&str]) -> String {
    let mut listed: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| !n.starts_with("__") && !n.starts_with("it."))
        .collect();
    listed.sort_unstable();
    let tests = names.iter().filter(|n| n.starts_with("it.")).count();
    let mut text = if listed.is_empty() {
        "the cluster has no topics".to_string()
    } else {
        format!("the topics there are: {}", listed.join(", "))
    };
    if tests > 0 {
        text.push_str(&format!(
            " (and {tests} test topic(s) named it.*: `tickflow-admin topics --prefix it.`)"
        ));
    }
    text
}

pub async fn run(kafka: &KafkaConfig, args: &TopicsArgs) -> Result<()> {
    let config = kafka.clone();
    let views = tokio::task::spawn_blocking({
        let topics = args.topics.clone();
        let prefix = args.prefix.clone();
        let groups = args.groups.clone();
        let no_groups = args.no_groups;
        move || collect(&config, &topics, prefix.as_deref(), &groups, no_groups)
    })
    .await
    .map_err(|e| Error::Task {
        task: "topics",
        message: e.to_string(),
    })??;
    for view in &views {
        if args.json {
            println!("{}", serde_json::to_string(view).unwrap_or_default());
        } else {
            print!("{}", table(view));
        }
    }
    Ok(())
}

fn collect(
    kafka: &KafkaConfig,
    topics: &[String],
    prefix: Option<&str>,
    groups: &[String],
    no_groups: bool,
) -> Result<Vec<TopicView>> {
    let client: BaseConsumer<StderrContext> =
        base_client_config(kafka, "inspect").create_with_context(StderrContext)?;
    let metadata = client
        .fetch_metadata(None, TIMEOUT)
        .map_err(|e| crate::read::unreachable_kafka(kafka, &e))?;
    for topic in topics {
        if !metadata.topics().iter().any(|t| t.name() == topic) {
            return Err(no_such_topic(&metadata, topic));
        }
    }
    let mut partitions: BTreeMap<String, Vec<PartitionView>> = BTreeMap::new();
    for topic in metadata.topics() {
        let name = topic.name();
        let wanted = if topics.is_empty() {
            !name.starts_with("__")
        } else {
            topics.iter().any(|t| t == name)
        };
        if !wanted || prefix.is_some_and(|p| !name.starts_with(p)) {
            continue;
        }
        let mut parts = Vec::new();
        for p in topic.partitions() {
            let (low, high) = client.fetch_watermarks(name, p.id(), TIMEOUT)?;
            parts.push(PartitionView {
                partition: p.id(),
                low,
                high,
                messages: high - low,
                leader: p.leader(),
                replicas: p.replicas().len(),
                in_sync: p.isr().len(),
            });
        }
        parts.sort_by_key(|p| p.partition);
        partitions.insert(name.to_string(), parts);
    }
    let committed = if no_groups || partitions.is_empty() {
        Vec::new()
    } else {
        group_offsets(kafka, &client, &partitions, groups)?
    };
    Ok(views(&partitions, &committed))
}

/// (group, state, committed offsets on `partitions`) of the consumer groups asked for, or of
/// every listed group.
fn group_offsets(
    kafka: &KafkaConfig,
    client: &BaseConsumer<StderrContext>,
    partitions: &BTreeMap<String, Vec<PartitionView>>,
    wanted: &[String],
) -> Result<Vec<(String, String, Committed)>> {
    let listed = client.fetch_group_list(None, TIMEOUT)?;
    let mut states: BTreeMap<String, String> = listed
        .groups()
        .iter()
        .filter(|g| g.protocol_type().is_empty() || g.protocol_type() == "consumer")
        .map(|g| (g.name().to_string(), g.state().to_string()))
        .collect();
    if !wanted.is_empty() {
        states = wanted
            .iter()
            .map(|g| (g.clone(), states.get(g).cloned().unwrap_or_default()))
            .collect();
    }
    let mut query = TopicPartitionList::new();
    for (topic, parts) in partitions {
        for p in parts {
            query.add_partition(topic, p.partition);
        }
    }
    // Each group's offsets come from its own coordinator; ask a few groups at a time.
    let states: Vec<(String, String)> = states.into_iter().collect();
    let mut out = Vec::new();
    for chunk in states.chunks(8) {
        let found: Vec<Result<Committed>> = std::thread::scope(|scope| {
            let asks: Vec<_> = chunk
                .iter()
                .map(|(group, _)| scope.spawn(|| committed_offsets(kafka, group, &query)))
                .collect();
            asks.into_iter()
                .map(|ask| {
                    ask.join().unwrap_or_else(|_| {
                        Err(Error::Task {
                            task: "offset fetch",
                            message: "panicked".into(),
                        })
                    })
                })
                .collect()
        });
        for ((group, state), committed) in chunk.iter().zip(found) {
            let committed = committed?;
            if !committed.is_empty() {
                out.push((group.clone(), state.clone(), committed));
            }
        }
    }
    Ok(out)
}

/// The offsets `group` committed on the partitions of `query`. The client has the group's id
/// only to ask for them: it never subscribes, so it never joins the group or moves its offsets.
fn committed_offsets(
    kafka: &KafkaConfig,
    group: &str,
    query: &TopicPartitionList,
) -> Result<Committed> {
    let mut config = base_client_config(kafka, "inspect");
    config
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false");
    let reader: BaseConsumer<StderrContext> = config.create_with_context(StderrContext)?;
    let found = reader.committed_offsets(query.clone(), TIMEOUT)?;
    let mut committed = Committed::new();
    for e in found.elements() {
        if let Offset::Offset(o) = e.offset() {
            committed
                .entry(e.topic().to_string())
                .or_default()
                .insert(e.partition(), o);
        }
    }
    Ok(committed)
}

/// The table for one topic.
pub fn table(view: &TopicView) -> String {
    let mut out = format!(
        "{}: {} partition(s), {} message(s)\n  {:>9} {:>12} {:>12} {:>12} {:>7} {:>8}\n",
        view.topic,
        view.partitions.len(),
        view.messages,
        "partition",
        "low",
        "high",
        "messages",
        "leader",
        "in-sync"
    );
    for p in &view.partitions {
        out.push_str(&format!(
            "  {:>9} {:>12} {:>12} {:>12} {:>7} {:>8}\n",
            p.partition,
            p.low,
            p.high,
            p.messages,
            p.leader,
            format!("{}/{}", p.in_sync, p.replicas)
        ));
    }
    for g in &view.groups {
        let state = if g.state.is_empty() {
            String::new()
        } else {
            format!(" ({})", g.state)
        };
        out.push_str(&format!(
            "  group {}{state}: lag {}\n    {:>9} {:>12} {:>12}\n",
            g.group, g.lag, "partition", "committed", "lag"
        ));
        for p in &g.partitions {
            out.push_str(&format!(
                "    {:>9} {:>12} {:>12}\n",
                p.partition, p.committed, p.lag
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(partition: i32, low: i64, high: i64) -> PartitionView {
        PartitionView {
            partition,
            low,
            high,
            messages: high - low,
            leader: 1,
            replicas: 1,
            in_sync: 1,
        }
    }

    #[test]
    fn a_missing_topic_lists_the_others() {
        assert_eq!(
            existing(&["md.trades", "__consumer_offsets", "it.x.1", "md.anomalies", "it.y.2"]),
            "the topics there are: md.anomalies, md.trades (and 2 test topic(s) named it.*: `tickflow-admin topics --prefix it.`)"
        );
        assert_eq!(
            existing(&["__consumer_offsets"]),
            "the cluster has no topics"
        );
    }

    #[test]
    fn lag_is_what_the_group_has_not_committed() {
        let partitions: BTreeMap<String, Vec<PartitionView>> = [
            ("md.trades".to_string(), vec![part(0, 0, 10), part(1, 4, 7)]),
            ("md.raw.kraken".to_string(), vec![part(0, 0, 3)]),
        ]
        .into();
        let committed: Committed = [(
            "md.trades".to_string(),
            [(0, 6), (1, 9)].into_iter().collect(),
        )]
        .into();
        let shown = views(
            &partitions,
            &[("fair-price".into(), "Stable".into(), committed)],
        );
        assert_eq!(shown.len(), 2);
        let raw = &shown[0];
        assert_eq!((raw.topic.as_str(), raw.messages), ("md.raw.kraken", 3));
        assert!(raw.groups.is_empty(), "no offsets there");
        let trades = &shown[1];
        assert_eq!(trades.messages, 13);
        let group = &trades.groups[0];
        // 10 - 6 on partition 0; a committed offset past the high watermark is no lag.
        assert_eq!(group.lag, 4);
        assert_eq!(
            group.partitions,
            vec![
                GroupPartition {
                    partition: 0,
                    committed: 6,
                    lag: 4
                },
                GroupPartition {
                    partition: 1,
                    committed: 9,
                    lag: 0
                },
            ]
        );
        let text = table(trades);
        assert!(
            text.starts_with("md.trades: 2 partition(s), 13 message(s)\n"),
            "{text}"
        );
        assert!(
            text.contains("  group fair-price (Stable): lag 4\n"),
            "{text}"
        );
    }
}
