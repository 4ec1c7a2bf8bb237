//! Partition ownership through the consumer group: librdkafka's rebalance callback hands each
//! change to the runtime's loop instead of applying it, so the loop can land outputs and write a
//! checkpoint before a partition goes, and restore state before one comes.

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, TopicPartitionList};
use tokio::sync::mpsc;

use crate::config::KafkaConfig;
use crate::kafka;
use crate::Result;

use super::Tp;

/// A change of this instance's partitions, from librdkafka's rebalance callback to the loop.
#[derive(Debug)]
pub(crate) enum Handover {
    Assign(Vec<Tp>),
    Revoke(Vec<Tp>),
    /// Revoked without a chance to checkpoint: another instance may own them already.
    Lost(Vec<Tp>),
}

/// Passes rebalances to the loop: librdkafka waits for the loop's `incremental_assign` /
/// `incremental_unassign`.
pub(crate) struct HandoverContext {
    tx: mpsc::UnboundedSender<Handover>,
}

impl ClientContext for HandoverContext {}

impl ConsumerContext for HandoverContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let partitions: Vec<Tp> = tpl
            .elements()
            .iter()
            .map(|e| Tp::new(e.topic(), e.partition()))
            .collect();
        let handover = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => Handover::Assign(partitions),
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS if consumer.assignment_lost() => {
                Handover::Lost(partitions)
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => Handover::Revoke(partitions),
            other => {
                // As librdkafka's own handler does: give everything up; the group assigns again.
                tracing::warn!(error = ?other, "rebalance error; dropping the assignment");
                Handover::Lost(partitions)
            }
        };
        if self.tx.send(handover).is_err() {
            // The loop has stopped (the consumer is closing): apply the change here, as
            // librdkafka's own handler would.
            let applied = match err {
                RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                    consumer.incremental_assign(tpl)
                }
                RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                    consumer.incremental_unassign(tpl)
                }
                _ => consumer.unassign(),
            };
            if let Err(e) = applied {
                tracing::warn!(error = %e, "applying a rebalance while closing failed");
            }
        }
    }
}

pub(crate) type GroupConsumer = StreamConsumer<HandoverContext>;

/// A consumer of `group_id` whose rebalances come out of the returned receiver. Unless
/// `[kafka.librdkafka]` says otherwise: cooperative hand-over (only the partitions that move are
/// revoked), and static membership under `instance_id` (a restarted instance takes its
/// partitions back at once, a dead one's move on after the session timeout; see
/// [`kafka::static_membership`]).
pub(crate) fn group_consumer(
    config: &KafkaConfig,
    role: &str,
    group_id: &str,
    instance_id: &str,
) -> Result<(GroupConsumer, mpsc::UnboundedReceiver<Handover>)> {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut client = kafka::consumer_config(config, role, group_id);
    if client.get("partition.assignment.strategy").is_none() {
        client.set("partition.assignment.strategy", "cooperative-sticky");
    }
    kafka::static_membership(&mut client, instance_id);
    Ok((client.create_with_context(HandoverContext { tx })?, rx))
}
