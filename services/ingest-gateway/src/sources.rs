//! The simulator as a source: paces the pure [`Simulator`] to its configured rate (with bursts)
//! in 10 ms ticks and hands every message to the output as a frame of its own connection.

use std::sync::Arc;
use std::time::Duration;

use tickflow_shared::domain::now_micros;
use tickflow_shared::shutdown::Shutdown;
use tickflow_shared::simfeed::SimMessage;

use crate::metrics::*;
use crate::simulator::Simulator;
use crate::sink::{Frame, Output};

pub const SIMULATOR: &str = tickflow_providers::simulator::ID.as_str();

/// Runs the simulator until shutdown. Its sequence numbers start at 0 on each start.
pub async fn run_simulator(
    mut sim: Simulator,
    symbols: Vec<String>,
    output: Output,
    shutdown: Shutdown,
) {
    let connection: Arc<str> = format!("sim-{}", now_micros()).into();
    let channel: Arc<str> = "trades".into();
    metrics::gauge!(ACTIVE_SUBSCRIPTIONS, "provider" => SIMULATOR).set(symbols.len() as f64);
    tracing::info!(instruments = ?symbols, venues = ?sim.venues(), connection = %connection, "simulator started");
    let tick = Duration::from_millis(10);
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let started = tokio::time::Instant::now();
    let mut sequence = 0i64;
    let mut carry = 0.0f64;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = shutdown.triggered() => break,
        }
        let second = started.elapsed().as_secs();
        carry += sim.rate_at(second) as f64 / 100.0;
        let due = carry.floor() as u64;
        carry -= due as f64;
        let mut bytes = 0u64;
        let mut sent = 0u64;
        for _ in 0..due {
            let now = now_micros();
            let Some(message) = sim.next(now) else { break };
            let key = match &message {
                SimMessage::Trade(t) => Some(t.symbol.clone()),
                SimMessage::Heartbeat { .. } => None,
            };
            let payload = match serde_json::to_vec(&message) {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(error = %e, "cannot serialise a simulated message");
                    continue;
                }
            };
            bytes += payload.len() as u64;
            let frame = Frame {
                provider: SIMULATOR,
                connection_id: connection.clone(),
                sequence,
                received_at: now,
                channel: channel.clone(),
                key,
                payload: payload.into(),
                dead_letter: None,
            };
            sequence += 1;
            sent += 1;
            if !output.send(frame).await {
                return;
            }
        }
        if sent > 0 {
            metrics::counter!(MESSAGES, "provider" => SIMULATOR).increment(sent);
            metrics::counter!(BYTES, "provider" => SIMULATOR).increment(bytes);
            metrics::gauge!(LAST_MESSAGE_AGE, "provider" => SIMULATOR).set(0.0);
        }
    }
    tracing::info!(frames = sequence, "simulator stopped");
}
