//! The live part of the benchmark: the four services (release binaries) as one pipeline on the
//! real stack, fed by the gateway's built-in simulated provider at a steady rate. After a
//! warm-up it measures, over a fixed interval:
//! - each service's events per CPU-second and peak RSS, and the pipeline's as a whole (trades
//!   on the Trade topic per CPU-second of all four processes);
//! - latencies from the gateway's receive time (`ingest_time`, stamped when the frame arrives):
//!   to the trade being readable on the Trade topic (read_committed), to a fair price on Kafka
//!   (from the receive time of its newest contributing trade), and to a final 1-minute candle
//!   on Kafka from the receive time of the trade that moved the watermark past the window's end
//!   (the aggregator writes a flush to Cassandra before it sends its candles to Kafka, so the
//!   candle is in Cassandra by then).
//!
//! Each latency is read by this process's own read_committed consumer, on the same clock as the
//! gateway's: what a downstream reader sees.

use tickflow_testkit::aggregator as agg;
use tickflow_testkit::fair_price as fair;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

use fair_price::records::{FairPriceCodec, Trigger};
use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use tickflow_shared::avro::{AvroCodec, Registry};
use tickflow_shared::domain::{now_micros, Micros};
use tickflow_shared::kafka::{self, TopicSpec};
use tickflow_testkit::{self as testkit, ServiceProcess, Stack};
use trade_aggregator::config::AggregatorConfig;

use crate::{log, Measured};

/// Latencies of the first seconds (start-up, connections, the first windows) are left out.
pub const WARM_UP: Duration = Duration::from_secs(15);
/// After the interval, records still in flight are read for this long.
const DRAIN: Duration = Duration::from_secs(10);
/// The load goes on this long past the measured interval, so that a window the watermark
/// passed near its end closes as it would under load, not after the sources' idle timeout
/// (what is received after the interval is not measured).
const LOAD_TAIL: Duration = Duration::from_secs(3);
/// The aggregator's `idle_timeout_ms` in the live run: shorter than [`WARM_UP`].
const AGG_IDLE_TIMEOUT_MS: &str = "10000";
/// Partitions of the Trade topic (each has its own watermark in the aggregator).
const PARTITIONS: i32 = 2;

/// One latency series: what it measures and its samples in ms.
pub struct Latency {
    pub stage: &'static str,
    pub samples: Vec<f64>,
}

/// What the live run measured.
pub struct Live {
    pub services: Vec<Measured>,
    pub pipeline: Measured,
    pub latencies: Vec<Latency>,
    pub rate: f64,
    /// The normalizer's own account of its transactions.
    pub transactions: String,
    /// The gateway's own account of its produce: receive to Kafka's acknowledgement.
    pub gateway_acks: String,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Role {
    Gateway,
    Normalizer,
    Aggregator,
    FairPrice,
}

impl Role {
    const ALL: [Role; 4] = [
        Role::Gateway,
        Role::Normalizer,
        Role::Aggregator,
        Role::FairPrice,
    ];

    fn binary(self) -> &'static str {
        match self {
            Role::Gateway => "ingest-gateway",
            Role::Normalizer => "normalizer",
            Role::Aggregator => "trade-aggregator",
            Role::FairPrice => "fair-price",
        }
    }

    /// Its own config section, as its environment variables spell it.
    fn section(self) -> &'static str {
        match self {
            Role::Gateway => "GATEWAY",
            Role::Normalizer => "NORMALIZER",
            Role::Aggregator => "AGGREGATOR",
            Role::FairPrice => "FAIR_PRICE",
        }
    }

    /// The counter of events this service handled, and what they are.
    fn events(self) -> (&'static str, &'static str) {
        match self {
            Role::Gateway => ("tickflow_gateway_messages_total", "frames received"),
            Role::Normalizer => ("tickflow_normalizer_trades_total", "trades out"),
            Role::Aggregator => ("tickflow_aggregator_trades_total", "trades in"),
            Role::FairPrice => ("tickflow_fairprice_trades_total", "trades in"),
        }
    }
}

const TRANSACTIONS_WHOLE: &str = "tickflow_normalizer_transaction_duration_seconds";
const TRANSACTION_STEPS: &str = "tickflow_normalizer_transaction_step_seconds";
const GATEWAY_ACKS: &str = "tickflow_gateway_receive_to_ack_seconds";

/// The cumulative bucket counts of histogram `name` (Prometheus text), over the series whose
/// labels contain `filter`, summed by upper bound.
fn buckets(text: &str, name: &str, filter: &str) -> Vec<(f64, f64)> {
    let prefix = format!("{name}_bucket{{");
    let mut by_le: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| l.starts_with(&prefix) && l.contains(filter))
    {
        let Some(le) = line
            .split("le=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .and_then(|v| {
                if v == "+Inf" {
                    Some(f64::INFINITY)
                } else {
                    v.parse().ok()
                }
            })
        else {
            continue;
        };
        let Some(count) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) else {
            continue;
        };
        by_le.entry(le.to_bits()).or_insert((le, 0.0)).1 += count;
    }
    let mut out: Vec<(f64, f64)> = by_le.into_values().collect();
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

/// The `q` quantile's bucket upper bound (as PromQL's `histogram_quantile` would bound it): the
/// smallest bound with at least `q` of the observations at or below it. NaN without data.
fn histogram_quantile(text: &str, name: &str, filter: &str, q: f64) -> f64 {
    let buckets = buckets(text, name, filter);
    let Some(&(_, total)) = buckets.last() else {
        return f64::NAN;
    };
    buckets
        .iter()
        .find(|(_, count)| *count >= q * total && total > 0.0)
        .map_or(f64::NAN, |(le, _)| *le)
}

/// The mean of histogram `name` (`_sum / _count`) over the series whose labels contain `filter`.
fn histogram_mean(text: &str, name: &str, filter: &str) -> f64 {
    let total = |suffix: &str| {
        text.lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .and_then(|rest| rest.strip_prefix(suffix))
                    .is_some_and(|rest| rest.starts_with(['{', ' ']))
                    && l.contains(filter)
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    total("_sum") / total("_count")
}

/// Every service's CPU seconds, event count and peak RSS so far at one instant.
async fn snapshot(running: &BTreeMap<Role, ServiceProcess>) -> BTreeMap<Role, (f64, f64, u64)> {
    let mut out = BTreeMap::new();
    for (role, process) in running {
        let (_, metrics) = process.get("/metrics").await.unwrap_or_default();
        let events = testkit::metric_total(&metrics, role.events().0);
        let (cpu, peak_rss) = testkit::process_usage(process.pid());
        out.insert(*role, (cpu, events, peak_rss));
    }
    out
}

/// A trade as the bench's consumer saw it on the Trade topic.
struct Seen {
    instrument: String,
    exchange: String,
    partition: i32,
    event_time: Micros,
    ingest_time: Micros,
    read_at: Micros,
}

/// Runs the pipeline at `rate` frames per second for `seconds` after the warm-up.
pub async fn run(
    stack: &Stack,
    bin_dir: &Path,
    rate: u32,
    seconds: u64,
    instruments: u64,
    extra: &[(String, String)],
) -> Result<Live, String> {
    let raw_prefix = format!("{}.", testkit::unique_topic("bench-live-raw"));
    let topics = fair::Topics::create(stack, "bench-live", PARTITIONS).await;
    // The raw topic exists before the normalizer subscribes to its pattern.
    let raw_topic = format!("{raw_prefix}simulator");
    let admin = kafka::admin(&stack.kafka).map_err(|e| e.to_string())?;
    kafka::ensure_topics(&admin, &[TopicSpec::new(&raw_topic, 1)], &BTreeMap::new())
        .await
        .map_err(|e| e.to_string())?;
    let (session, cassandra_config) = fair::migrated_keyspace(stack, "bench_live").await;
    let agg_config = AggregatorConfig {
        input_topic: topics.input.clone(),
        candles_topic: testkit::unique_topic("bench-live-candles"),
        late_topic: testkit::unique_topic("bench-live-late"),
        operator_id: testkit::unique_name("bench", "live-agg", '-'),
        ..AggregatorConfig::default()
    };
    let out_of_orderness = agg_config.out_of_orderness_ms as Micros * 1_000;
    let file = tempfile::NamedTempFile::new().map_err(|e| e.to_string())?;
    std::fs::write(
        file.path(),
        crate::normalizer::instruments_toml(instruments),
    )
    .map_err(|e| e.to_string())?;
    let instruments_file = file.path().display().to_string();

    let mut env: BTreeMap<Role, Vec<(&'static str, String)>> = BTreeMap::new();
    env.insert(
        Role::Gateway,
        vec![
            ("TICKFLOW_GATEWAY__RAW_TOPIC_PREFIX", raw_prefix.clone()),
            (
                "TICKFLOW_GATEWAY__DLQ_TOPIC",
                testkit::unique_topic("bench-live-dlq-gateway"),
            ),
            (
                "TICKFLOW_GATEWAY__INSTRUMENTS_FILE",
                instruments_file.clone(),
            ),
            ("TICKFLOW_GATEWAY__SIMULATOR__ENABLED", "true".into()),
            ("TICKFLOW_GATEWAY__SIMULATOR__RATE", rate.to_string()),
            ("TICKFLOW_GATEWAY__ADMIN__LISTEN", String::new()),
        ],
    );
    env.insert(
        Role::Normalizer,
        vec![
            (
                "TICKFLOW_NORMALIZER__INPUT_TOPICS",
                format!("^{}.*", raw_prefix.replace('.', "\\.")),
            ),
            ("TICKFLOW_NORMALIZER__OUTPUT_TOPIC", topics.input.clone()),
            (
                "TICKFLOW_NORMALIZER__DLQ_TOPIC",
                testkit::unique_topic("bench-live-dlq-normalizer"),
            ),
            (
                "TICKFLOW_NORMALIZER__GAPS_TOPIC",
                testkit::unique_topic("bench-live-gaps"),
            ),
            (
                "TICKFLOW_NORMALIZER__INSTRUMENTS_TOPIC",
                testkit::unique_topic("bench-live-instruments"),
            ),
            ("TICKFLOW_NORMALIZER__INSTRUMENTS_FILE", instruments_file),
            (
                "TICKFLOW_NORMALIZER__GROUP_ID",
                testkit::unique_name("bench", "live-normalizer", '-'),
            ),
            (
                "TICKFLOW_NORMALIZER__TRANSACTIONAL_ID",
                testkit::unique_name("bench", "live-normalizer-tx", '-'),
            ),
        ],
    );
    env.insert(
        Role::Aggregator,
        // A fresh aggregator's watermark waits one idle timeout for sources it has not seen yet
        // (a stand-in holds it): below the warm-up, so no measured window waits for that.
        agg::aggregator_env(
            stack,
            &cassandra_config.keyspace,
            &agg_config,
            &[("TICKFLOW_AGGREGATOR__IDLE_TIMEOUT_MS", AGG_IDLE_TIMEOUT_MS)],
        ),
    );
    env.insert(
        Role::FairPrice,
        fair::service_env(
            &cassandra_config,
            &topics,
            &testkit::unique_name("bench", "live-fp", '-'),
            testkit::free_port(),
        ),
    );

    // The readers first, the gateway (and with it the load) last.
    let mut running: BTreeMap<Role, ServiceProcess> = BTreeMap::new();
    for role in [
        Role::Aggregator,
        Role::FairPrice,
        Role::Normalizer,
        Role::Gateway,
    ] {
        let mut env = env[&role].clone();
        env.push(("TICKFLOW_SERVICE__LOG_LEVEL", "warn".into()));
        let env = crate::with_extra(&env, extra, role.section());
        let binary = bin_dir.join(role.binary());
        let mut process = ServiceProcess::spawn(&binary.display().to_string(), stack, &env);
        process
            .wait_for("/readyz", 200, Duration::from_secs(90))
            .await;
        running.insert(role, process);
    }
    log(format!(
        "live: the four services run on the simulated feed at {rate} frames/s over {instruments} instruments × 3 venues; {} s warm-up, then {seconds} s measured",
        WARM_UP.as_secs()
    ));

    let registry = Registry::new(&stack.registry).map_err(|e| e.to_string())?;
    let codec = AvroCodec::new(&registry, &[]);
    let consumer = kafka::stream_consumer(
        &stack.kafka,
        "bench-live",
        &testkit::unique_name("bench", "live-reader", '-'),
    )
    .map_err(|e| e.to_string())?;
    consumer
        .subscribe(&[
            raw_topic.as_str(),
            &topics.input,
            &topics.output,
            &agg_config.candles_topic,
        ])
        .map_err(|e| e.to_string())?;

    let started = Instant::now();
    let mut trades: Vec<Seen> = Vec::new();
    // Raw frames: (received by the gateway, read here).
    let mut raw_frames: Vec<(Micros, Micros)> = Vec::new();
    // Change-triggered fair prices: (read at, instrument, exchange, newest event time).
    let mut fair_prices: Vec<(Micros, String, String, Micros)> = Vec::new();
    // First final emission of each 1-minute candle: (instrument, venue, window start) ->
    // (window end, read at).
    let mut candles: HashMap<(String, String, Micros), (Micros, Micros)> = HashMap::new();
    let (mut before, mut after) = (None, None);
    let mut normalizer_metrics = String::new();
    let mut gateway_metrics = String::new();
    let (mut from, mut until) = (Micros::MAX, Micros::MAX);
    loop {
        let elapsed = started.elapsed();
        if before.is_none() && elapsed >= WARM_UP {
            before = Some(snapshot(&running).await);
            from = now_micros();
        }
        if after.is_none() && elapsed >= WARM_UP + Duration::from_secs(seconds) {
            after = Some(snapshot(&running).await);
            if let Some(process) = running.get(&Role::Normalizer) {
                normalizer_metrics = process.get("/metrics").await.unwrap_or_default().1;
            }
            if let Some(process) = running.get(&Role::Gateway) {
                gateway_metrics = process.get("/metrics").await.unwrap_or_default().1;
            }
            until = now_micros();
        }
        if elapsed >= WARM_UP + Duration::from_secs(seconds) + LOAD_TAIL {
            // The load stops; what is in flight drains.
            if let Some(mut gateway) = running.remove(&Role::Gateway) {
                gateway.terminate(Duration::from_secs(30));
            }
        }
        if elapsed >= WARM_UP + Duration::from_secs(seconds) + DRAIN {
            break;
        }
        for (role, process) in running.iter_mut() {
            if !process.is_running() {
                return Err(format!(
                    "{} exited during the live run:\n{}",
                    role.binary(),
                    process.log()
                ));
            }
        }
        let Ok(Ok(message)) =
            tokio::time::timeout(Duration::from_millis(200), consumer.recv()).await
        else {
            continue;
        };
        let read_at = now_micros();
        let payload = message.payload().unwrap_or_default();
        if message.topic() == raw_topic {
            let raw = codec.decode_raw(payload).await.map_err(|e| e.to_string())?;
            raw_frames.push((raw.received_at, read_at));
        } else if message.topic() == topics.input {
            let trade = codec
                .decode_trade(payload)
                .await
                .map_err(|e| e.to_string())?;
            trades.push(Seen {
                instrument: trade.instrument,
                exchange: trade.exchange,
                partition: message.partition(),
                event_time: trade.event_time,
                ingest_time: trade.ingest_time,
                read_at,
            });
        } else if message.topic() == topics.output {
            let fp = codec
                .decode_fair_price(payload)
                .await
                .map_err(|e| e.to_string())?;
            let newest = fp
                .newest_event_time
                .and_then(|t| fp.sources_used.iter().find(|s| s.last_event_time == t));
            if let (Trigger::Change, Some(source)) = (fp.trigger, newest) {
                fair_prices.push((
                    read_at,
                    fp.instrument.clone(),
                    source.exchange.clone(),
                    source.last_event_time,
                ));
            }
        } else {
            let candle = codec
                .decode_candle(payload)
                .await
                .map_err(|e| e.to_string())?;
            if candle.interval == "1m" && candle.is_final {
                candles
                    .entry((candle.instrument, candle.venue, candle.window_start))
                    .or_insert((candle.window_end, read_at));
            }
        }
    }
    let before = before.ok_or("the live run ended before its warm-up")?;
    let after = after.ok_or("the live run ended before its interval")?;

    for process in running.values_mut() {
        process.terminate(Duration::from_secs(30));
    }
    let mut services = Vec::new();
    let mut total_cpu = 0.0;
    for role in Role::ALL {
        let peak_rss = after[&role].2;
        let (cpu, events) = (
            after[&role].0 - before[&role].0,
            after[&role].1 - before[&role].1,
        );
        total_cpu += cpu;
        services.push(Measured {
            system: role.binary().into(),
            events: events as usize,
            cpu_seconds: cpu,
            peak_rss,
            wall_seconds: (until - from) as f64 / 1e6,
            note: format!("{} during the interval", role.events().1),
        });
    }
    let _ = session
        .query_unpaged(format!("DROP KEYSPACE {}", cassandra_config.keyspace), &[])
        .await;

    let trades_out = after[&Role::Normalizer].1 - before[&Role::Normalizer].1;
    let pipeline = Measured {
        system: "the pipeline, all four".into(),
        events: trades_out as usize,
        cpu_seconds: total_cpu,
        peak_rss: services.iter().map(|s| s.peak_rss).sum(),
        wall_seconds: (until - from) as f64 / 1e6,
        note: "trades on the Trade topic per CPU-second of the four processes (RSS: their sum)"
            .into(),
    };
    let step = |label: &str| {
        let filter = format!("step=\"{label}\"");
        format!(
            "{label} {:.1} ms mean, p99 ≤ {:.1} ms",
            histogram_mean(&normalizer_metrics, TRANSACTION_STEPS, &filter) * 1000.0,
            histogram_quantile(&normalizer_metrics, TRANSACTION_STEPS, &filter, 0.99) * 1000.0
        )
    };
    let transactions = format!(
        "the normalizer's transactions (its own histograms, whole run): {:.1} ms mean, p50 ≤ {:.1} ms, p99 ≤ {:.1} ms; by step: {}",
        histogram_mean(&normalizer_metrics, TRANSACTIONS_WHOLE, "") * 1000.0,
        histogram_quantile(&normalizer_metrics, TRANSACTIONS_WHOLE, "", 0.5) * 1000.0,
        histogram_quantile(&normalizer_metrics, TRANSACTIONS_WHOLE, "", 0.99) * 1000.0,
        ["begin", "process", "offsets", "deliver", "commit"]
            .map(step)
            .join("; ")
    );
    let gateway_acks = format!(
        "the gateway's receive -> Kafka ack (its own histogram, whole run): {:.1} ms mean, p50 <= {:.1} ms, p99 <= {:.1} ms, p99.9 <= {:.1} ms",
        histogram_mean(&gateway_metrics, GATEWAY_ACKS, "") * 1000.0,
        histogram_quantile(&gateway_metrics, GATEWAY_ACKS, "", 0.5) * 1000.0,
        histogram_quantile(&gateway_metrics, GATEWAY_ACKS, "", 0.99) * 1000.0,
        histogram_quantile(&gateway_metrics, GATEWAY_ACKS, "", 0.999) * 1000.0,
    );
    Ok(Live {
        transactions,
        gateway_acks,
        rate: trades_out / ((until - from) as f64 / 1e6),
        latencies: latencies(
            &raw_frames,
            &trades,
            &fair_prices,
            &candles,
            from,
            until,
            out_of_orderness,
        ),
        services,
        pipeline,
    })
}

/// The three latency series, each over what was received by the gateway in `[from, until)`.
fn latencies(
    raw_frames: &[(Micros, Micros)],
    trades: &[Seen],
    fair_prices: &[(Micros, String, String, Micros)],
    candles: &HashMap<(String, String, Micros), (Micros, Micros)>,
    from: Micros,
    until: Micros,
    out_of_orderness: Micros,
) -> Vec<Latency> {
    let ms = |d: Micros| d as f64 / 1_000.0;
    let inside = |t: Micros| (from..until).contains(&t);

    let to_raw = raw_frames
        .iter()
        .filter(|(received, _)| inside(*received))
        .map(|(received, read_at)| ms(read_at - received))
        .collect();
    let to_topic = trades
        .iter()
        .filter(|t| inside(t.ingest_time))
        .map(|t| ms(t.read_at - t.ingest_time))
        .collect();

    // Fair price: from the receive time of the newest contributing trade. Several trades of one
    // source with the same event time: the earliest received (the longer latency).
    let mut received: HashMap<(&str, &str, Micros), Micros> = HashMap::new();
    for t in trades {
        let at = received
            .entry((&t.instrument, &t.exchange, t.event_time))
            .or_insert(t.ingest_time);
        *at = (*at).min(t.ingest_time);
    }
    let to_fair_price = fair_prices
        .iter()
        .filter_map(|(read_at, instrument, exchange, event_time)| {
            let ingest = *received.get(&(instrument.as_str(), exchange.as_str(), *event_time))?;
            inside(ingest).then(|| ms(read_at - ingest))
        })
        .collect();

    // Candle: each Trade-topic partition has its own watermark (with one source, the raw topic's
    // one partition): it passes a window's end when a trade of that partition with event time at
    // or after end + out-of-orderness arrives. A candle's reference is that receive time on its
    // instrument's partition.
    let mut by_partition: BTreeMap<i32, Vec<(Micros, Micros)>> = BTreeMap::new();
    let mut partition_of: HashMap<&str, i32> = HashMap::new();
    for t in trades {
        partition_of.insert(&t.instrument, t.partition);
        by_partition
            .entry(t.partition)
            .or_default()
            .push((t.ingest_time, t.event_time));
    }
    // Per partition, in receive order, the running maximum of event time.
    for seen in by_partition.values_mut() {
        seen.sort_unstable();
        let mut max = Micros::MIN;
        for entry in seen.iter_mut() {
            max = max.max(entry.1);
            entry.1 = max;
        }
    }
    let could_close = |instrument: &str, end: Micros| -> Option<Micros> {
        let target = end + out_of_orderness;
        let seen = by_partition.get(partition_of.get(instrument)?)?;
        let i = seen.partition_point(|&(_, max)| max < target);
        seen.get(i).map(|&(ingest, _)| ingest)
    };
    let to_candle = candles
        .iter()
        .filter_map(|((instrument, _, _), &(end, read_at))| {
            let closable = could_close(instrument, end)?;
            inside(closable).then(|| ms(read_at - closable))
        })
        .collect();

    vec![
        Latency {
            stage: "gateway receive -> raw frame on Kafka",
            samples: to_raw,
        },
        Latency {
            stage: "gateway receive -> trade on the Trade topic",
            samples: to_topic,
        },
        Latency {
            stage: "newest trade's receive -> fair price on Kafka",
            samples: to_fair_price,
        },
        Latency {
            stage: "watermark passes (receive) -> final candle on Kafka",
            samples: to_candle,
        },
    ]
}
