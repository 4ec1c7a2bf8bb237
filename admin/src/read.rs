//! `tickflow-admin read`: a range or the tail of one topic, decoded through the registry.
//!
//! Read-only by construction: partitions are assigned, never subscribed, so the consumer never
//! joins a group, and it never commits (no auto-commit, no commit call) under a group id of its
//! own that no one else uses. It reads `read_committed`, as the services do, so aborted
//! transactions never show.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use apache_avro::schema::ResolvedSchema;
use clap::Args;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use schema_registry_converter::async_impl::avro::AvroDecoder;
use tickflow_shared::avro::Registry;
use tickflow_shared::config::{KafkaConfig, RegistryConfig};
use tickflow_shared::{Error, Result};

use crate::render::{self, bytes_node, Filter, Payload, Shown};

const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("start").multiple(false)))]
pub struct ReadArgs {
    /// The topic, e.g. md.trades, md.raw.kraken, md.dlq.normalizer.
    pub topic: String,
    /// Start at the oldest record still kept.
    #[arg(long, group = "start")]
    pub from_beginning: bool,
    /// Start at this offset in each partition read (clamped to what the partition holds).
    #[arg(long, group = "start", value_name = "OFFSET")]
    pub from_offset: Option<i64>,
    /// Start at the first record with a timestamp at or after this time (RFC 3339, e.g.
    /// 2025-11-22T09:30:00Z).
    #[arg(long, group = "start", value_name = "TIME")]
    pub from_time: Option<String>,
    /// Start this many records before the end of each partition read. The default is 10, or the
    /// end (new records only) with --follow.
    #[arg(long, group = "start", value_name = "N")]
    pub last: Option<i64>,
    /// Read only this partition.
    #[arg(long, value_name = "P")]
    pub partition: Option<i32>,
    /// Stop after showing this many records (after the filters).
    #[arg(long, value_name = "N")]
    pub count: Option<usize>,
    /// Keep waiting for new records until Ctrl-C (or --count records). Without it, reading stops
    /// at the end the partitions had when the command started.
    #[arg(long)]
    pub follow: bool,
    /// Only records whose value has this `instrument` (trades, candles, fair prices, anomalies,
    /// instruments).
    #[arg(long, value_name = "INSTRUMENT")]
    pub instrument: Option<String>,
    /// Only records whose value has this `exchange` or `venue`, or a fair price with it among its
    /// sources.
    #[arg(long, value_name = "VENUE")]
    pub venue: Option<String>,
    /// Only records whose value has this `provider` (raw frames, trades, anomalies), or a gateway
    /// dead letter with it in its `tickflow.provider` header.
    #[arg(long, value_name = "PROVIDER")]
    pub provider: Option<String>,
    /// Only records with this key (tickflow keys trades, candles and fair prices by instrument).
    #[arg(long, value_name = "KEY")]
    pub key: Option<String>,
    /// One JSON object per line instead of the table: decimals as strings, times in integer
    /// microseconds, headers as an object.
    #[arg(long)]
    pub json: bool,
}

/// Where reading starts in each partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    Beginning,
    Offset(i64),
    /// A record timestamp, in milliseconds since the epoch.
    Time(i64),
    Last(i64),
    End,
}

impl ReadArgs {
    pub fn start(&self) -> Result<Start> {
        if self.from_beginning {
            return Ok(Start::Beginning);
        }
        if let Some(offset) = self.from_offset {
            return Ok(Start::Offset(offset));
        }
        if let Some(text) = &self.from_time {
            let time = chrono::DateTime::parse_from_rfc3339(text).map_err(|e| {
                Error::Config(format!(
                    "--from-time {text:?}: {e} (give RFC 3339, e.g. 2025-11-22T09:30:00Z)"
                ))
            })?;
            return Ok(Start::Time(time.timestamp_millis()));
        }
        match self.last {
            Some(n) if n < 0 => Err(Error::Config(format!("--last {n}: must be 0 or more"))),
            Some(n) => Ok(Start::Last(n)),
            None if self.follow => Ok(Start::End),
            None => Ok(Start::Last(10)),
        }
    }

    fn filter(&self) -> Filter {
        Filter {
            instrument: self.instrument.clone(),
            venue: self.venue.clone(),
            provider: self.provider.clone(),
            key: self.key.clone(),
        }
    }
}

/// The first offset to read in a partition holding `low..high` (a time start is resolved by the
/// broker before this).
pub fn start_offset(start: Start, low: i64, high: i64) -> i64 {
    match start {
        Start::Beginning | Start::Time(_) => low,
        Start::Offset(n) => n.clamp(low, high),
        Start::Last(n) => high.saturating_sub(n).max(low),
        Start::End => high,
    }
}

/// Decodes values in the Confluent wire format with the writer schema registered under the id
/// they carry; anything else is shown as it is.
pub struct Decoder {
    avro: AvroDecoder,
    url: String,
}

impl Decoder {
    pub fn new(config: &RegistryConfig) -> Result<Self> {
        let registry = Registry::new(config)?;
        Ok(Self {
            avro: AvroDecoder::new(registry.settings().clone()),
            url: config.url.clone(),
        })
    }

    /// Fails only when the registry cannot be asked: a value it does not know is shown raw.
    pub async fn decode(&self, payload: Option<&[u8]>) -> Result<Payload> {
        let Some(bytes) = payload else {
            return Ok(Payload::Tombstone);
        };
        let id = match bytes {
            [0, a, b, c, d, ..] => u32::from_be_bytes([*a, *b, *c, *d]),
            _ => {
                return Ok(Payload::Plain {
                    value: bytes_node(bytes),
                    note: None,
                })
            }
        };
        let decoded = match self.avro.decode(Some(bytes)).await {
            Ok(d) => d,
            Err(e) if e.retriable => return Err(self.unreachable(&e)),
            Err(e) => {
                return Ok(Payload::Plain {
                    value: bytes_node(bytes),
                    note: Some(format!("schema id {id}: {}", e.error)),
                })
            }
        };
        let schema = self
            .avro
            .get_schema(id)
            .await
            .map_err(|e| self.unreachable(&e))?;
        let resolved = ResolvedSchema::try_from(&schema.parsed)
            .map_err(|e| Error::Avro(format!("schema id {id}: {e}")))?;
        let value = render::node(&decoded.value, Some(&schema.parsed), resolved.get_names());
        let name = decoded
            .name
            .map(|n| n.fullname(None))
            .unwrap_or_else(|| format!("schema {id}"));
        Ok(Payload::Avro {
            schema: name,
            schema_id: id,
            value,
        })
    }

    fn unreachable(&self, e: &schema_registry_converter::error::SRCError) -> Error {
        let cause = e
            .cause
            .as_deref()
            .map(|c| format!(": {c}"))
            .unwrap_or_default();
        Error::Registry(format!(
            "cannot fetch a schema from {} to decode the records ({}{cause}); check [registry].url or TICKFLOW_REGISTRY__URL",
            self.url, e.error
        ))
    }
}

/// The error for a cluster that does not answer, with where it was looked for.
pub fn unreachable_kafka(kafka: &KafkaConfig, e: &KafkaError) -> Error {
    Error::Config(format!(
        "cannot read the cluster's metadata from Kafka at {} ({e}); check [kafka].bootstrap_servers or TICKFLOW_KAFKA__BOOTSTRAP_SERVERS",
        kafka.bootstrap_servers
    ))
}

/// Reports a client's problems on stderr, so stdout carries the data alone (no log subscriber
/// runs for `topics` and `read`); the end of a partition is expected and not one.
pub struct StderrContext;

impl ClientContext for StderrContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        if (level as i32) <= (RDKafkaLogLevel::Warning as i32) {
            eprintln!("tickflow-admin: librdkafka {fac}: {message}");
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() != Some(RDKafkaErrorCode::PartitionEOF) {
            eprintln!("tickflow-admin: kafka: {error}: {reason}");
        }
    }
}

impl ConsumerContext for StderrContext {}

/// A consumer that only reads: committed data, no commits, an event at the end of each
/// partition. librdkafka assigns partitions only to a consumer with a group id; this one is
/// unique and unused, and stays unknown to the brokers since it never joins or commits.
pub fn reader(config: &KafkaConfig) -> Result<StreamConsumer<StderrContext>> {
    let mut client = tickflow_shared::kafka::base_client_config(config, "inspect");
    let group = format!(
        "tickflow-admin-read-{}-{}",
        tickflow_shared::kafka::host_name(),
        std::process::id()
    );
    client
        .set("group.id", group)
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest");
    Ok(client.create_with_context(StderrContext)?)
}

/// The partitions of `topic`, or an error that names it and lists the topics there are.
pub fn partitions_of(
    kafka: &KafkaConfig,
    consumer: &StreamConsumer<StderrContext>,
    topic: &str,
) -> Result<Vec<i32>> {
    let metadata = tokio::task::block_in_place(|| consumer.fetch_metadata(None, TIMEOUT))
        .map_err(|e| unreachable_kafka(kafka, &e))?;
    if let Some(t) = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
    {
        return Ok(t.partitions().iter().map(|p| p.id()).collect());
    }
    Err(crate::topics::no_such_topic(&metadata, topic))
}

pub async fn run(kafka: &KafkaConfig, registry: &RegistryConfig, args: &ReadArgs) -> Result<()> {
    let start = args.start()?;
    let filter = args.filter();
    let decoder = Decoder::new(registry)?;
    let consumer = reader(kafka)?;
    let topic = args.topic.as_str();
    let mut partitions = partitions_of(kafka, &consumer, topic)?;
    if let Some(p) = args.partition {
        if !partitions.contains(&p) {
            return Err(Error::TopicAdmin {
                topic: topic.to_string(),
                message: format!("no partition {p} (it has {})", partitions.len()),
            });
        }
        partitions = vec![p];
    }
    // Where each partition starts, and (without --follow) where it ends: the end it had now.
    let mut watermarks = BTreeMap::new();
    for &p in &partitions {
        let marks = tokio::task::block_in_place(|| consumer.fetch_watermarks(topic, p, TIMEOUT))?;
        watermarks.insert(p, marks);
    }
    let by_time = match start {
        Start::Time(ms) => {
            let mut query = TopicPartitionList::new();
            for &p in &partitions {
                query.add_partition_offset(topic, p, Offset::Offset(ms))?;
            }
            let found = tokio::task::block_in_place(|| consumer.offsets_for_times(query, TIMEOUT))?;
            found
                .elements()
                .iter()
                .map(|e| (e.partition(), e.offset()))
                .collect()
        }
        _ => BTreeMap::new(),
    };
    let mut assignment = TopicPartitionList::new();
    let mut pending = BTreeMap::new();
    for (&p, &(low, high)) in &watermarks {
        let first = match by_time.get(&p) {
            Some(Offset::Offset(o)) => *o,
            // No record at or after that time yet.
            Some(_) => high,
            None => start_offset(start, low, high),
        };
        if first < high {
            pending.insert(p, high);
        }
        // Without --follow, a partition with nothing to read is not even fetched.
        if args.follow || first < high {
            assignment.add_partition_offset(topic, p, Offset::Offset(first))?;
        }
    }
    if !args.follow && pending.is_empty() {
        return Ok(());
    }
    consumer.assign(&assignment)?;

    let stdout = std::io::stdout();
    let mut shown = 0usize;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        if args.count.is_some_and(|n| shown >= n) || (!args.follow && pending.is_empty()) {
            break;
        }
        let message = tokio::select! {
            _ = &mut ctrl_c => break,
            m = consumer.recv() => m,
        };
        let message = match message {
            Ok(m) => m,
            Err(KafkaError::PartitionEOF(p)) => {
                pending.remove(&p);
                continue;
            }
            Err(e) => {
                eprintln!("tickflow-admin: kafka: {e}");
                continue;
            }
        };
        let p = message.partition();
        let offset = message.offset();
        if !args.follow {
            match pending.get(&p) {
                Some(&end) if offset < end => {
                    if offset + 1 >= end {
                        pending.remove(&p);
                    }
                }
                // Past the end this command set itself.
                _ => {
                    pending.remove(&p);
                    continue;
                }
            }
        }
        let record = shown_record(&message, &decoder).await?;
        if !filter.matches(&record) {
            continue;
        }
        let line = if args.json {
            record.to_json().to_string()
        } else {
            record.to_line()
        };
        let mut out = stdout.lock();
        if let Err(e) = writeln!(out, "{line}").and_then(|()| out.flush()) {
            // A reader that went away (`| head`) ends the command, quietly.
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                break;
            }
            return Err(e.into());
        }
        shown += 1;
    }
    Ok(())
}

async fn shown_record(message: &BorrowedMessage<'_>, decoder: &Decoder) -> Result<Shown> {
    let headers = message
        .headers()
        .map(|h| {
            h.iter()
                .map(|h| (h.key.to_string(), h.value.map(bytes_node)))
                .collect()
        })
        .unwrap_or_default();
    Ok(Shown {
        topic: message.topic().to_string(),
        partition: message.partition(),
        offset: message.offset(),
        timestamp_ms: message.timestamp().to_millis(),
        key: message.key().map(bytes_node),
        headers,
        payload: decoder.decode(message.payload()).await?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_offsets_stay_inside_the_partition() {
        // (start, low, high, first offset read)
        let cases = [
            (Start::Beginning, 5, 20, 5),
            (Start::End, 5, 20, 20),
            (Start::Offset(12), 5, 20, 12),
            (Start::Offset(2), 5, 20, 5),
            (Start::Offset(99), 5, 20, 20),
            (Start::Last(3), 5, 20, 17),
            (Start::Last(100), 5, 20, 5),
            (Start::Last(0), 5, 20, 20),
            (Start::Last(i64::MAX), 0, 0, 0),
        ];
        for (start, low, high, want) in cases {
            assert_eq!(
                start_offset(start, low, high),
                want,
                "{start:?} in {low}..{high}"
            );
        }
    }

    fn args(extra: &[&str]) -> ReadArgs {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            read: ReadArgs,
        }
        let mut argv = vec!["read", "md.trades"];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv).unwrap().read
    }

    #[test]
    fn the_default_start_depends_on_follow() {
        assert_eq!(args(&[]).start().unwrap(), Start::Last(10));
        assert_eq!(args(&["--follow"]).start().unwrap(), Start::End);
        assert_eq!(
            args(&["--from-time", "1970-01-01T00:00:01.5+00:00"])
                .start()
                .unwrap(),
            Start::Time(1500)
        );
        assert!(args(&["--from-time", "yesterday"]).start().is_err());
        assert!(args(&["--last=-1"]).start().is_err());
    }
}
