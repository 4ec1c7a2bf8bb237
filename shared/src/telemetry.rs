//! Logs and metrics. Logs go through `tracing` (human or JSON); metrics through the `metrics`
//! facade into a Prometheus recorder rendered by the service's `/metrics` endpoint.
//!
//! Metric names follow `tickflow_<subsystem>_<name>_<unit>[_total]`. The names shared by every
//! service are constants here, described once at start.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, MetricsConfig};
use crate::error::{Error, Result};

/// 1 when a dependency (label `dependency`) answers, 0 when not.
pub const DEPENDENCY_UP: &str = "tickflow_dependency_up";
/// Failed dependency checks, by `dependency` and `error_type`.
pub const DEPENDENCY_CHECK_FAILURES: &str = "tickflow_dependency_check_failures_total";
/// Constant 1 with the `service` and `version` labels.
pub const BUILD_INFO: &str = "tickflow_build_info";
/// Process start time, seconds since the epoch.
pub const START_TIME: &str = "tickflow_process_start_time_seconds";

/// Initializes logging. `RUST_LOG`, when set, overrides `level`. Unless `level` names the
/// Cassandra driver's connections itself, they log from `warn` up: at `info` every connection
/// says that Cassandra (unlike ScyllaDB) sends no sharding information.
///
/// `human` writes readable lines to stderr. `json` writes one object per line to stdout in
/// Cloud Logging's structured format (`severity`, `time`, `message`, `target`, the event's
/// fields camelCased, span fields under `span`): GKE's agent reads `severity` from it, where a
/// `level` field on stderr would be shown as ERROR.
pub fn init_logging(format: LogFormat, level: &str) -> Result<()> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    let filter = match std::env::var("RUST_LOG") {
        Ok(directive) if !directive.is_empty() => EnvFilter::try_new(directive),
        _ if level.contains("scylla") => EnvFilter::try_new(level),
        _ => EnvFilter::try_new(format!("{level},scylla::network::connection=warn")),
    }
    .map_err(|e| Error::Config(format!("log level: {e}")))?;
    let result = match format {
        LogFormat::Human => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_writer(std::io::stderr)
            .try_init()
            .is_ok(),
        LogFormat::Json => tracing_subscriber::registry()
            .with(filter)
            .with(cloud_logging_layer(std::io::stdout))
            .try_init()
            .is_ok(),
    };
    // A second init (tests) keeps the first subscriber.
    let _ = result;
    Ok(())
}

/// The `json` format's layer, writing to `make_writer`.
fn cloud_logging_layer<S, W>(make_writer: W) -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    W: for<'a> tracing_subscriber::fmt::MakeWriter<'a> + 'static,
{
    tracing_stackdriver::layer().with_writer(make_writer)
}

/// Upper bounds (seconds) of every latency histogram's buckets: fine from 1 ms to 250 ms, where
/// the latency targets are, then coarse up to the 5 minutes a backlog can take.
pub const LATENCY_BUCKETS: [f64; 20] = [
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0, 300.0,
];

/// Installs the Prometheus recorder and describes the shared metrics. Histograms are exported
/// as Prometheus histograms (`_bucket` series with [`LATENCY_BUCKETS`]), so a quantile can be
/// aggregated across pods with `histogram_quantile`.
pub fn init_metrics(service: &str) -> Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets(&LATENCY_BUCKETS)
        .map_err(|e| Error::Config(format!("metrics buckets: {e}")))?
        .install_recorder()
        .map_err(|e| Error::Config(format!("metrics recorder: {e}")))?;
    describe_shared_metrics();
    metrics::gauge!(BUILD_INFO, "service" => service.to_string(), "version" => env!("CARGO_PKG_VERSION"))
        .set(1.0);
    metrics::gauge!(START_TIME).set(crate::domain::now_micros() as f64 / 1e6);
    Ok(handle)
}

fn describe_shared_metrics() {
    metrics::describe_gauge!(
        DEPENDENCY_UP,
        "1 when the dependency answers a real request, else 0."
    );
    metrics::describe_counter!(
        DEPENDENCY_CHECK_FAILURES,
        "Failed dependency checks, by dependency and error_type."
    );
    metrics::describe_gauge!(
        BUILD_INFO,
        "Constant 1, labelled with the service and its version."
    );
    metrics::describe_gauge!(
        START_TIME,
        "Process start time, seconds since the Unix epoch."
    );
}

/// Creates a counter's series at 0 for label values known in advance, so it exists before its
/// first event: `rate()` and `increase()` then count that first event (a series that appears
/// at 1 shows no increase), alerts built on them fire for it, and dashboards show 0 rather than
/// "no data". Prometheus' own advice for error counters ("avoid missing metrics").
pub fn zero_counter(name: &'static str, labels: &[(&'static str, &str)]) {
    let labels: Vec<metrics::Label> = labels
        .iter()
        .map(|&(k, v)| metrics::Label::new(k, v.to_string()))
        .collect();
    metrics::counter!(name, labels).increment(0);
}

/// The label value used for every instrument beyond the guard's budget.
pub const OTHER_INSTRUMENT: &str = "other";

/// Keeps the `instrument` label bounded: an allow-list, or else the first N distinct instruments
/// seen; everything else is reported as `other`.
#[derive(Clone)]
pub struct InstrumentLabels {
    allow: Arc<HashSet<String>>,
    budget: usize,
    admitted: Arc<Mutex<HashSet<String>>>,
}

impl InstrumentLabels {
    pub fn new(config: &MetricsConfig) -> Self {
        Self {
            allow: Arc::new(config.instrument_allow_list.iter().cloned().collect()),
            budget: config.instrument_top_n,
            admitted: Arc::new(Mutex::new(HashSet::new())),
        }
    }

    /// The label value for `instrument`.
    pub fn label(&self, instrument: &str) -> String {
        if !self.allow.is_empty() {
            return if self.allow.contains(instrument) {
                instrument.to_string()
            } else {
                OTHER_INSTRUMENT.to_string()
            };
        }
        // A poisoned lock only means another thread panicked mid-insert; the set is still valid.
        let mut admitted = self.admitted.lock().unwrap_or_else(|p| p.into_inner());
        if admitted.contains(instrument) {
            return instrument.to_string();
        }
        if admitted.len() < self.budget {
            admitted.insert(instrument.to_string());
            return instrument.to_string();
        }
        OTHER_INSTRUMENT.to_string()
    }
}

/// Handles of one counter, one per combination of its label values, kept so that counting an
/// event on the hot path neither builds label `String`s nor hashes them into the recorder's
/// registry: after an entry's first use, a count is a map lookup by the values, each after its
/// length (in a buffer reused across calls), and an atomic add. The map hashes with foldhash:
/// SipHash and the length's formatting were most of a lookup's cost (bench/README.md). The
/// instrument label goes through [`InstrumentLabels`] once per entry. The map is cleared when it
/// reaches [`Self::MAX_ENTRIES`] (a flood of distinct values costs lookups, not memory).
pub struct Counters<const N: usize> {
    name: &'static str,
    keys: [&'static str; N],
    /// Which of `keys` is the instrument, bounded through `labels`.
    instrument: Option<(usize, InstrumentLabels)>,
    handles: std::collections::HashMap<Box<[u8]>, metrics::Counter, foldhash::fast::RandomState>,
    key: Vec<u8>,
}

impl<const N: usize> Counters<N> {
    /// Entries kept before the map starts over.
    pub const MAX_ENTRIES: usize = 100_000;

    pub fn new(name: &'static str, keys: [&'static str; N]) -> Self {
        Self {
            name,
            keys,
            instrument: None,
            handles: std::collections::HashMap::default(),
            key: Vec::new(),
        }
    }

    /// The label `key` holds an instrument, reported through `labels`' budget.
    pub fn with_instrument(mut self, key: &'static str, labels: InstrumentLabels) -> Self {
        let index = self
            .keys
            .iter()
            .position(|k| *k == key)
            .expect("the instrument key is one of the counter's keys");
        self.instrument = Some((index, labels));
        self
    }

    /// The counter for these label values, in the order of the keys.
    pub fn get(&mut self, values: [&str; N]) -> &metrics::Counter {
        self.key.clear();
        for value in values {
            // Each value after its length, so no two combinations share a key whatever bytes
            // the values hold.
            self.key.extend_from_slice(&value.len().to_le_bytes());
            self.key.extend_from_slice(value.as_bytes());
        }
        if !self.handles.contains_key(self.key.as_slice()) {
            if self.handles.len() >= Self::MAX_ENTRIES {
                self.handles.clear();
            }
            let labels: Vec<metrics::Label> = self
                .keys
                .iter()
                .zip(values)
                .enumerate()
                .map(|(i, (&k, v))| match &self.instrument {
                    Some((at, bounded)) if *at == i => metrics::Label::new(k, bounded.label(v)),
                    _ => metrics::Label::new(k, v.to_string()),
                })
                .collect();
            let counter = metrics::counter!(self.name, labels);
            self.handles.insert(self.key.as_slice().into(), counter);
        }
        &self.handles[self.key.as_slice()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Collects what a layer writes.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
        type Writer = Captured;
        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    #[test]
    fn json_logs_carry_the_severity_cloud_logging_reads() {
        use tracing_subscriber::layer::SubscriberExt;

        let captured = Captured::default();
        let subscriber = tracing_subscriber::registry().with(cloud_logging_layer(captured.clone()));
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(
                dependency = "kafka",
                error_type = "timeout",
                "Kafka did not answer"
            );
            tracing::error!("fenced");
            tracing::info!("started");
        });
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|line| serde_json::from_str(line).expect("one JSON object per line"))
            .collect();
        let severities: Vec<&str> = lines
            .iter()
            .map(|l| l["severity"].as_str().unwrap())
            .collect();
        assert_eq!(severities, ["WARNING", "ERROR", "INFO"]);
        assert_eq!(lines[0]["message"], "Kafka did not answer");
        assert_eq!(lines[0]["dependency"], "kafka");
        assert_eq!(lines[0]["errorType"], "timeout");
        assert!(lines[0]["time"].as_str().is_some_and(|t| t.contains('T')));
        assert!(lines.iter().all(|l| l.get("level").is_none()));
    }

    #[test]
    fn cached_counters_count_each_combination_under_its_labels() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let labels = InstrumentLabels::new(&MetricsConfig {
            instrument_allow_list: vec![],
            instrument_top_n: 1,
        });
        metrics::with_local_recorder(&recorder, || {
            let mut counters = Counters::new("t_total", ["exchange", "instrument"])
                .with_instrument("instrument", labels);
            for (exchange, instrument) in
                [("x", "A"), ("x", "A"), ("y", "A"), ("x", "B"), ("x", "C")]
            {
                counters.get([exchange, instrument]).increment(1);
            }
            // Values whose concatenations are equal, with or without a separator between them,
            // stay apart.
            let mut plain = Counters::new("u_total", ["a", "b"]);
            plain.get(["ab", "c"]).increment(1);
            plain.get(["a", "bc"]).increment(5);
            plain.get(["p\u{1f}q", "r"]).increment(7);
            plain.get(["p", "q\u{1f}r"]).increment(11);
        });
        let text = handle.render();
        for line in [
            "t_total{exchange=\"x\",instrument=\"A\"} 2",
            "t_total{exchange=\"y\",instrument=\"A\"} 1",
            "t_total{exchange=\"x\",instrument=\"other\"} 2",
            "u_total{a=\"ab\",b=\"c\"} 1",
            "u_total{a=\"a\",b=\"bc\"} 5",
            "u_total{a=\"p\u{1f}q\",b=\"r\"} 7",
            "u_total{a=\"p\",b=\"q\u{1f}r\"} 11",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
        }
    }

    #[test]
    fn allow_list_folds_the_rest_into_other() {
        let labels = InstrumentLabels::new(&MetricsConfig {
            instrument_allow_list: vec!["BTC-USD".into()],
            instrument_top_n: 1,
        });
        assert_eq!(labels.label("BTC-USD"), "BTC-USD");
        assert_eq!(labels.label("ETH-USD"), "other");
    }

    #[test]
    fn budget_admits_the_first_n_and_keeps_them() {
        let labels = InstrumentLabels::new(&MetricsConfig {
            instrument_allow_list: vec![],
            instrument_top_n: 2,
        });
        assert_eq!(labels.label("A"), "A");
        assert_eq!(labels.label("B"), "B");
        assert_eq!(labels.label("C"), "other");
        assert_eq!(labels.label("A"), "A");
        let distinct: HashSet<String> = (0..1000).map(|i| labels.label(&format!("X{i}"))).collect();
        assert_eq!(distinct, HashSet::from(["other".to_string()]));
    }
}
