//! Backfill: the trades of a gap, fetched from the provider's REST API and put on the raw topic
//! like live frames.
//!
//! The normalizer publishes each hole it finds in a provider's trade numbering on the gaps topic
//! (`md.gaps`, status `OPEN`). The gateway reads that topic in a consumer group of its own (so one
//! replica works on a gap) and, for a provider whose REST API serves past trades
//! ([`tickflow_providers::Backfill`]: Binance, Coinbase by id; Kraken by time, from the gap's
//! `after_time` on, following its cursor), fetches the missing range page by page, paced to the
//! provider's documented limit. Each trade becomes a frame of the provider's live
//! format on `md.raw.<provider>`, channel `backfill`, keyed by the symbol like a live frame; the
//! normalizer parses it as any other, drops what it already has by trade id, and its gap tracker
//! sees the missing trades arrive and publishes the gap `FILLED`.
//!
//! A `429` or `418` waits the `Retry-After` the provider sent, or `rate_limit_backoff_ms`; other
//! failures (network, `5xx`) are retried with the provider's reconnect backoff up to
//! `max_attempts` times. A page that starts past the first id asked for means the provider no
//! longer serves the older trades: those are counted and logged as unrecoverable, and a frame on
//! the raw topic (channel `backfill-unrecoverable`) tells the normalizer, which closes the gap as
//! DROPPED once nothing else of it is awaited. A gap given up after errors stays open. A gap is
//! done (its offset committed) once its range was walked;
//! a gateway that stops mid-gap starts it over, the duplicates being dropped downstream.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::message::Message;
use tickflow_providers::backfill::{Page, PageError, Want};
use tickflow_providers::Provider;
use tickflow_shared::avro::AvroCodec;
use tickflow_shared::config::KafkaConfig;
use tickflow_shared::domain::now_micros;
use tickflow_shared::gap::{GapRecord, Unrecoverable, UNRECOVERABLE_CHANNEL};
use tickflow_shared::kafka;
use tickflow_shared::retry::RetryPolicy;
use tickflow_shared::shutdown::Shutdown;
use tokio::time::Instant;

use crate::config::BackfillConfig;
use crate::metrics::{BACKFILL_GAPS, BACKFILL_REQUESTS, BACKFILL_TRADES, BACKFILL_UNRECOVERABLE};
use crate::sink::{Frame, Output};

/// The channel of a backfilled frame's RawEnvelope.
pub const CHANNEL: &str = "backfill";

/// A provider the gateway backfills, with where it asks and its settings.
#[derive(Clone)]
pub struct Source {
    pub provider: &'static dyn Provider,
    pub via: Via,
    pub rate_limit_backoff: Duration,
    pub retry: RetryPolicy,
}

/// Where a provider's past trades come from.
#[derive(Clone)]
pub enum Via {
    /// Its REST API ([`Backfill`]), at this base URL.
    Rest(String),
    /// The gRPC feed's Replay call.
    Replay(crate::grpc::Replayer),
}

pub struct Context {
    pub config: BackfillConfig,
    pub kafka: KafkaConfig,
    pub codec: Arc<AvroCodec>,
    pub sources: Vec<Source>,
    pub output: Output,
    pub shutdown: Shutdown,
}

/// How one gap's walk ended.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Walk {
    /// Trades fetched and handed to the raw topic.
    pub sent: u64,
    /// Trades the provider no longer serves, and their ranges.
    pub unrecoverable: u64,
    pub gone: Vec<(u64, u64)>,
    /// The walk stopped before the end of the range (errors, shutdown): why.
    pub stopped: Option<String>,
}

/// Reads the gaps topic until shutdown, filling each open gap of a backfilled provider.
pub async fn run(ctx: Context) {
    let consumer = match kafka::stream_consumer(
        &ctx.kafka,
        "gateway-backfill",
        &ctx.config.group_id,
    )
    .and_then(|c| {
        c.subscribe(&[ctx.config.gaps_topic.as_str()])?;
        Ok(c)
    }) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, topic = %ctx.config.gaps_topic, "backfill cannot read the gaps topic; gaps will not be filled (retried at the next start)");
            return;
        }
    };
    let http = match reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .user_agent("tickflow-ingest-gateway")
        .build()
    {
        Ok(h) => h,
        Err(e) => {
            tracing::error!(error = %e, "backfill cannot build its HTTP client; gaps will not be filled");
            return;
        }
    };
    let mut pacers: Vec<Instant> = vec![Instant::now(); ctx.sources.len()];
    // Read errors (the gaps topic not created yet by a normalizer, a broker away) are said once
    // a minute, not once a second.
    let mut warned: Option<Instant> = None;
    tracing::info!(topic = %ctx.config.gaps_topic, providers = ?ctx.sources.iter().map(|s| s.provider.id().as_str()).collect::<Vec<_>>(), "backfill reads the gaps topic");
    loop {
        let message = tokio::select! {
            () = ctx.shutdown.triggered() => return,
            m = consumer.recv() => m,
        };
        let message = match message {
            Ok(m) => m,
            Err(e) => {
                if warned.is_none_or(|w| w.elapsed() >= Duration::from_secs(60)) {
                    warned = Some(Instant::now());
                    tracing::warn!(error = %e, topic = %ctx.config.gaps_topic, "backfill: reading the gaps topic failed; reading goes on (said once a minute)");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let gap = match message.payload() {
            None => None,
            Some(bytes) => match ctx.codec.decode(bytes).await {
                Ok(value) => match GapRecord::from_value(value) {
                    Ok(g) => Some(g),
                    Err(e) => {
                        tracing::warn!(error = %e, offset = message.offset(), "backfill: a gaps record that is not a Gap; skipped");
                        None
                    }
                },
                Err(e) => {
                    tracing::warn!(error = %e, offset = message.offset(), "backfill: a gaps record that cannot be decoded; skipped");
                    None
                }
            },
        };
        if let Some(gap) = gap.filter(|g| g.status == GapRecord::OPEN) {
            if let Some(i) = ctx
                .sources
                .iter()
                .position(|s| s.provider.id().as_str() == gap.provider)
            {
                let walk = walk(&ctx, &http, &ctx.sources[i], &mut pacers[i], &gap).await;
                report(&ctx.sources[i], &gap, &walk);
                announce(&ctx, &ctx.sources[i], &gap, &walk).await;
                if walk.stopped.is_some() && ctx.shutdown.is_triggered() {
                    // Not committed: the next start walks this gap again.
                    return;
                }
            }
        }
        if let Err(e) = consumer.commit_message(&message, CommitMode::Async) {
            tracing::warn!(error = %e, "backfill: committing the gaps topic's offset failed; a gap may be walked again after a restart");
        }
    }
}

/// The frames one walk hands to the raw topic: one gateway "connection" per walk, numbered from
/// 0, keyed by the gap's symbol like live frames (so they share its partition).
struct Outgoing<'a> {
    provider: &'static str,
    connection: Arc<str>,
    channel: Arc<str>,
    symbol: &'a str,
}

impl<'a> Outgoing<'a> {
    fn new(provider: &'static str, channel: &str, symbol: &'a str) -> Self {
        Self {
            provider,
            connection: format!("{CHANNEL}-{provider}-{}", now_micros()).into(),
            channel: channel.into(),
            symbol,
        }
    }

    fn frame(&self, sequence: i64, payload: Bytes) -> Frame {
        Frame {
            provider: self.provider,
            connection_id: self.connection.clone(),
            sequence,
            received_at: now_micros(),
            channel: self.channel.clone(),
            key: Some(self.symbol.to_string()),
            payload,
            dead_letter: None,
        }
    }
}

/// Tells the normalizer which trades of the gap will never come: a frame on the raw topic,
/// channel [`UNRECOVERABLE_CHANNEL`], keyed by the symbol so that it follows the backfilled
/// trades in their partition. The normalizer closes the gap as DROPPED once nothing else of it
/// is awaited.
async fn announce(ctx: &Context, source: &Source, gap: &GapRecord, walk: &Walk) {
    if walk.gone.is_empty() {
        return;
    }
    let out = Outgoing::new(
        source.provider.id().as_str(),
        UNRECOVERABLE_CHANNEL,
        &gap.symbol,
    );
    for (sequence, &(first, last)) in walk.gone.iter().enumerate() {
        let word = Unrecoverable {
            symbol: gap.symbol.clone(),
            first,
            last,
        };
        let payload = serde_json::to_vec(&word).expect("a plain struct serializes");
        if !ctx
            .output
            .send(out.frame(sequence as i64, Bytes::from(payload)))
            .await
        {
            return;
        }
    }
}

fn report(source: &Source, gap: &GapRecord, walk: &Walk) {
    let provider = source.provider.id().as_str();
    let outcome = match (&walk.stopped, walk.unrecoverable) {
        (Some(_), _) => "failed",
        (None, 0) => "fetched",
        (None, _) => "partly_unrecoverable",
    };
    metrics::counter!(BACKFILL_GAPS, "provider" => provider, "outcome" => outcome).increment(1);
    let missing = gap.last_missing - gap.first_missing + 1;
    match &walk.stopped {
        None => tracing::info!(
            provider,
            symbol = %gap.symbol,
            first = gap.first_missing,
            last = gap.last_missing,
            missing,
            fetched = walk.sent,
            unrecoverable = walk.unrecoverable,
            "backfill: gap walked; its trades are on the raw topic"
        ),
        Some(why) => tracing::error!(
            provider,
            symbol = %gap.symbol,
            first = gap.first_missing,
            last = gap.last_missing,
            fetched = walk.sent,
            reason = %why,
            "backfill: gap not filled; it stays open"
        ),
    }
}

/// The gap's range, or why it is not walked.
fn range(config: &BackfillConfig, gap: &GapRecord) -> Result<(u64, u64), String> {
    let (Ok(lo), Ok(hi)) = (
        u64::try_from(gap.first_missing),
        u64::try_from(gap.last_missing),
    ) else {
        return Err("a negative trade id".into());
    };
    if hi < lo || hi - lo + 1 > config.max_trades_per_gap {
        return Err(format!(
            "{} trades, more than backfill.max_trades_per_gap ({})",
            hi.saturating_sub(lo) + 1,
            config.max_trades_per_gap
        ));
    }
    Ok((lo, hi))
}

/// Fetches `gap`'s range page by page (or in one Replay call) and hands the trades to the raw
/// topic.
pub async fn walk(
    ctx: &Context,
    http: &reqwest::Client,
    source: &Source,
    next_at: &mut Instant,
    gap: &GapRecord,
) -> Walk {
    let rest_url = match &source.via {
        Via::Rest(url) => url,
        Via::Replay(replayer) => {
            return replay(
                &ctx.config,
                &ctx.output,
                &ctx.shutdown,
                source,
                replayer,
                next_at,
                gap,
            )
            .await
        }
    };
    let provider = source.provider.id().as_str();
    let backfill = source
        .provider
        .backfill()
        .expect("a REST source's provider has a backfill");
    let interval = Duration::from_secs_f64(1.0 / backfill.requests_per_s().max(0.01));
    let mut result = Walk::default();
    let (mut lo, mut hi) = match range(&ctx.config, gap) {
        Ok(r) => r,
        Err(why) => {
            result.stopped = Some(why);
            return result;
        }
    };
    if backfill.pages_by_time() && gap.after_time <= 0 {
        result.stopped = Some(
            "the provider finds past trades by time only, and the gap record has no time (a record from before `after_time`)"
                .into(),
        );
        return result;
    }
    let out = Outgoing::new(provider, CHANNEL, &gap.symbol);
    let mut sequence = 0_i64;
    let mut failures = 0_u32;
    let mut cursor: Option<String> = None;
    // What is still to fetch is `lo..=hi`; a page comes from its start (forward paging by id),
    // its end (backward paging by id), or from a time before it on (paging by a time cursor).
    while lo <= hi {
        tokio::select! {
            () = ctx.shutdown.triggered() => {
                result.stopped = Some("shutdown".into());
                return result;
            }
            () = tokio::time::sleep_until(*next_at) => {}
        }
        *next_at = Instant::now() + interval;
        let want = Want {
            symbol: &gap.symbol,
            first: lo,
            last: hi,
            after_time: gap.after_time,
            cursor: cursor.as_deref(),
            limit: ctx.config.page_limit,
        };
        let url = backfill.page_url(rest_url, &want);
        let page = tokio::select! {
            () = ctx.shutdown.triggered() => {
                result.stopped = Some("shutdown".into());
                return result;
            }
            page = fetch(http, &url) => page,
        };
        let body = match page {
            Ok(body) => {
                metrics::counter!(BACKFILL_REQUESTS, "provider" => provider, "outcome" => "ok")
                    .increment(1);
                failures = 0;
                body
            }
            Err(Failure::RateLimited(wait)) => {
                metrics::counter!(BACKFILL_REQUESTS, "provider" => provider, "outcome" => "rate_limited").increment(1);
                let wait = wait.unwrap_or(source.rate_limit_backoff);
                tracing::warn!(provider, url = %url, wait_ms = wait.as_millis() as u64, "backfill: the provider says too many requests; waiting");
                *next_at = Instant::now() + wait;
                continue;
            }
            Err(Failure::Other(why)) => {
                metrics::counter!(BACKFILL_REQUESTS, "provider" => provider, "outcome" => "error")
                    .increment(1);
                failures += 1;
                if failures >= ctx.config.max_attempts {
                    result.stopped = Some(format!("{failures} failed requests, the last: {why}"));
                    return result;
                }
                let wait = source.retry.delay(failures - 1);
                tracing::warn!(provider, url = %url, error = %why, attempt = failures, retry_in_ms = wait.as_millis() as u64, "backfill: request failed; retrying");
                *next_at = Instant::now() + wait;
                continue;
            }
        };
        let Page {
            trades: mut frames,
            next,
        } = match backfill.page(&gap.symbol, &body) {
            Ok(page) => page,
            Err(PageError::RateLimited(why)) => {
                metrics::counter!(BACKFILL_REQUESTS, "provider" => provider, "outcome" => "rate_limited").increment(1);
                let wait = source.rate_limit_backoff;
                tracing::warn!(provider, url = %url, said = %why, wait_ms = wait.as_millis() as u64, "backfill: the provider says too many requests; waiting");
                *next_at = Instant::now() + wait;
                continue;
            }
            Err(PageError::Unreadable(why)) => {
                result.stopped = Some(format!("the page of {url} cannot be read: {why}"));
                return result;
            }
        };
        let page_empty = frames.is_empty();
        let went_past = frames.iter().any(|(id, _)| *id >= hi);
        frames.retain(|(id, _)| (lo..=hi).contains(id));
        frames.sort_unstable_by_key(|(id, _)| *id);
        frames.dedup_by_key(|(id, _)| *id);
        let range = frames.first().map(|f| f.0).zip(frames.last().map(|f| f.0));
        let before = result.sent;
        for (_, text) in frames {
            let frame = out.frame(sequence, Bytes::from(text));
            sequence += 1;
            if !ctx.output.send(frame).await {
                result.stopped = Some("shutdown".into());
                return result;
            }
            result.sent += 1;
        }
        metrics::counter!(BACKFILL_TRADES, "provider" => provider).increment(result.sent - before);
        if let Some(next) = next {
            // Paging forward in time: trades before the range come first, then the range.
            if let Some((lowest, highest)) = range {
                if lowest > lo {
                    unrecoverable(&mut result, provider, &gap.symbol, lo, lowest - 1);
                }
                lo = highest + 1;
            }
            if lo > hi {
                break;
            }
            if page_empty || went_past || cursor.as_deref() == Some(next.as_str()) {
                // The provider's trades ran out or went past the range without the rest of it.
                unrecoverable(&mut result, provider, &gap.symbol, lo, hi);
                break;
            }
            cursor = Some(next);
            continue;
        }
        let Some((lowest, highest)) = range else {
            // Nothing of the range: the provider no longer has it.
            unrecoverable(&mut result, provider, &gap.symbol, lo, hi);
            return result;
        };
        if highest == hi && lowest > lo {
            // Backward paging: the next page ends below this one.
            hi = lowest - 1;
        } else {
            if lowest > lo {
                // Forward paging that starts past `lo`: the older trades are gone.
                unrecoverable(&mut result, provider, &gap.symbol, lo, lowest - 1);
            }
            lo = highest + 1;
        }
    }
    result
}

/// A gap of the gRPC feed: one Replay call for the range (paced, retried, waiting out
/// RESOURCE_EXHAUSTED), its trades handed to the raw topic as the bytes of their
/// ServerMessages, and what the feed no longer holds reported as unrecoverable.
pub(crate) async fn replay(
    config: &BackfillConfig,
    output: &Output,
    shutdown: &Shutdown,
    source: &Source,
    replayer: &crate::grpc::Replayer,
    next_at: &mut Instant,
    gap: &GapRecord,
) -> Walk {
    let provider = source.provider.id().as_str();
    let mut result = Walk::default();
    let (lo, hi) = match range(config, gap) {
        Ok(r) => r,
        Err(why) => {
            result.stopped = Some(why);
            return result;
        }
    };
    let interval = Duration::from_secs_f64(1.0 / crate::grpc::REPLAY_CALLS_PER_S);
    let mut failures = 0_u32;
    let mut trades = loop {
        tokio::select! {
            () = shutdown.triggered() => {
                result.stopped = Some("shutdown".into());
                return result;
            }
            () = tokio::time::sleep_until(*next_at) => {}
        }
        *next_at = Instant::now() + interval;
        let called = tokio::select! {
            () = shutdown.triggered() => {
                result.stopped = Some("shutdown".into());
                return result;
            }
            called = replayer.call(&gap.symbol, lo, hi) => called,
        };
        match called {
            Ok(trades) => {
                metrics::counter!(BACKFILL_REQUESTS, "provider" => provider, "outcome" => "ok")
                    .increment(1);
                break trades;
            }
            Err(status) if status.code() == tonic::Code::ResourceExhausted => {
                metrics::counter!(BACKFILL_REQUESTS, "provider" => provider, "outcome" => "rate_limited").increment(1);
                let wait = source.rate_limit_backoff;
                tracing::warn!(provider, symbol = %gap.symbol, said = %status.message(), wait_ms = wait.as_millis() as u64, "backfill: the feed says too many requests; waiting");
                *next_at = Instant::now() + wait;
            }
            Err(status) => {
                metrics::counter!(BACKFILL_REQUESTS, "provider" => provider, "outcome" => "error")
                    .increment(1);
                failures += 1;
                let why = format!("{:?}: {}", status.code(), status.message());
                if failures >= config.max_attempts {
                    result.stopped =
                        Some(format!("{failures} failed Replay calls, the last: {why}"));
                    return result;
                }
                let wait = source.retry.delay(failures - 1);
                tracing::warn!(provider, symbol = %gap.symbol, error = %why, attempt = failures, retry_in_ms = wait.as_millis() as u64, "backfill: Replay failed; retrying");
                *next_at = Instant::now() + wait;
            }
        }
    };
    trades.sort_unstable_by_key(|(n, _)| *n);
    trades.dedup_by_key(|(n, _)| *n);
    let out = Outgoing::new(provider, CHANNEL, &gap.symbol);
    // What the feed left out of the range: no longer held.
    let mut next = lo;
    for &(n, _) in &trades {
        if n > next {
            unrecoverable(&mut result, provider, &gap.symbol, next, n - 1);
        }
        next = n + 1;
    }
    if next <= hi {
        unrecoverable(&mut result, provider, &gap.symbol, next, hi);
    }
    for (sequence, (_, payload)) in trades.into_iter().enumerate() {
        if !output.send(out.frame(sequence as i64, payload)).await {
            result.stopped = Some("shutdown".into());
            return result;
        }
        result.sent += 1;
    }
    metrics::counter!(BACKFILL_TRADES, "provider" => provider).increment(result.sent);
    result
}

fn unrecoverable(result: &mut Walk, provider: &'static str, symbol: &str, first: u64, last: u64) {
    let gone = last - first + 1;
    result.unrecoverable += gone;
    result.gone.push((first, last));
    metrics::counter!(BACKFILL_UNRECOVERABLE, "provider" => provider).increment(gone);
    tracing::warn!(
        provider,
        symbol,
        first,
        last,
        "backfill: the provider no longer serves these trades"
    );
}

enum Failure {
    /// `429` or `418`, with the `Retry-After` the provider sent.
    RateLimited(Option<Duration>),
    Other(String),
}

async fn fetch(http: &reqwest::Client, url: &str) -> Result<Vec<u8>, Failure> {
    let response = http
        .get(url)
        .send()
        .await
        .map_err(|e| Failure::Other(e.to_string()))?;
    let status = response.status();
    if status.as_u16() == 429 || status.as_u16() == 418 {
        let wait = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        return Err(Failure::RateLimited(wait));
    }
    if !status.is_success() {
        let text = response.text().await.unwrap_or_default();
        let text: String = text.chars().take(200).collect();
        return Err(Failure::Other(format!("HTTP {status}: {text}")));
    }
    response
        .bytes()
        .await
        .map(|b| b.to_vec())
        .map_err(|e| Failure::Other(e.to_string()))
}
