//! The stream runtime on real Kafka (`scripts/stack up`), with a job whose every flush takes
//! 250 ms: the time the loop did not read its input is told to the operator once, never more
//! than the time that passed. A wait told twice (once by the flush, once by the tick around it)
//! pushed every source's idle timeout twice as far as the waits, so under slow flushes a fresh
//! partition's stand-in for unseen sources never went idle and no window closed.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tickflow_shared::avro::{AvroCodec, Registry};
use tickflow_shared::domain::{Micros, Trade};
use tickflow_shared::kafka::{self, TopicSpec};
use tickflow_shared::runtime::{
    self, Checkpoints, Commit, Flushed, Fresh, Job, Plan, Record, Sourced, TradeOperator,
};
use tickflow_shared::shutdown::Shutdown;
use tickflow_testkit::{self as testkit, Stack};

const FLUSH: Duration = Duration::from_millis(250);

/// Counts the stall time it is told; does nothing else.
struct Stalls(Arc<AtomicI64>);

impl TradeOperator for Stalls {
    type Output = ();
    const STATE_FORMAT: i32 = 1;
    const READABLE_STATE_FORMATS: &'static [i32] = &[1];

    fn on_trade(&mut self, _: i32, _: &str, _: &Trade, _: Micros, _: &mut Vec<()>) {}
    fn advance(&mut self, _: Micros, _: &mut Vec<()>) {}
    fn exclude_stall(&mut self, stall: Micros) {
        self.0.fetch_add(stall, Ordering::Relaxed);
    }
    fn snapshot(&self, _: i32) -> Result<Vec<u8>, String> {
        Ok(Vec::new())
    }
    fn restore(&mut self, _: i32, _: &[u8], _: i32, _: Micros) -> Result<(), String> {
        Ok(())
    }
    fn start_fresh(&mut self, _: i32, _: Micros) {}
    fn drop_partition(&mut self, _: i32) {}
}

/// A sink that takes [`FLUSH`] to land anything.
struct SlowSink;

impl Job for SlowSink {
    type Operator = Stalls;

    fn collect(&mut self, _: &mut Vec<()>, _: Option<Record<Sourced>>) -> bool {
        false
    }
    async fn flush(&mut self, _: Commit<'_>, _: &Shutdown) -> tickflow_shared::Result<Flushed> {
        tokio::time::sleep(FLUSH).await;
        Ok(Flushed::Landed)
    }
    fn discard(&mut self) {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waits_on_a_slow_sink_are_told_once() {
    let stack = Stack::require().await;
    let topic = testkit::unique_topic("runtime-stalls");
    let admin = kafka::admin(&stack.kafka).unwrap();
    kafka::ensure_topics(&admin, &[TopicSpec::new(&topic, 1)], &BTreeMap::new())
        .await
        .unwrap();
    let registry = Registry::new(&stack.registry).unwrap();
    let codec = AvroCodec::new(&registry, &[]);
    let group = testkit::unique_name("it", "runtime-stalls", '-');
    let plan = Plan {
        kafka: &stack.kafka,
        role: "it-runtime",
        group_id: &group,
        instance_id: group.clone(),
        instance_id_key: "it.instance_id",
        topic: &topic,
        partitions: &[0],
        fresh: Fresh::Beginning,
        checkpoint_interval: Duration::from_secs(3600),
        max_batch: 1000,
        metrics: runtime::Metrics {
            input_errors: "it_input_errors_total",
            handovers: "it_handovers_total",
            owned_partitions: "it_owned_partitions",
            checkpoint_seconds: "it_checkpoint_seconds",
            checkpoint_bytes: "it_checkpoint_bytes",
            consumer_lag: "it_consumer_lag",
        },
    };
    let told = Arc::new(AtomicI64::new(0));
    let mut operator = Stalls(told.clone());
    let shutdown = Shutdown::new();
    let stopper = shutdown.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(3)).await;
        stopper.trigger();
    });
    let started = Instant::now();
    runtime::run(
        &plan,
        &codec,
        Checkpoints::None,
        &mut operator,
        &mut SlowSink,
        None,
        &shutdown,
    )
    .await
    .unwrap();
    let elapsed = started.elapsed().as_micros() as i64;
    let told = told.load(Ordering::Relaxed);
    // Nearly all of the run is spent in flushes (one per 100 ms tick, each 250 ms).
    assert!(
        told >= elapsed / 3,
        "only {told} µs of stalls told over {elapsed} µs of flushes of 250 ms"
    );
    assert!(
        told <= elapsed,
        "{told} µs of stalls told in {elapsed} µs: a wait was counted more than once"
    );
}
