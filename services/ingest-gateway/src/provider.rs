//! One WebSocket provider: spreads its subscriptions over as many connections as its
//! per-connection stream limit requires, and follows changes to the wanted set without touching
//! the subscriptions that stay. A connection left with nothing to carry is closed.

use std::collections::BTreeSet;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::plan::Desired;
use crate::ws::{self, Command, Context};

struct Slot {
    commands: mpsc::UnboundedSender<Command>,
    symbols: BTreeSet<String>,
}

/// What changes on which connection when the wanted set becomes `desired`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Moves {
    /// (connection slot, pairs to subscribe); a slot at or past the current count is new.
    pub subscribe: Vec<(usize, Vec<(String, String)>)>,
    pub unsubscribe: Vec<(usize, Vec<String>)>,
}

/// Plans the change from `current` (symbols per connection slot) to `desired`: removed symbols
/// leave their connection, new ones fill the connections that have room, in order, then new
/// connections. Symbols that stay are not touched.
pub fn plan(current: &[BTreeSet<String>], desired: &Desired, max_per_connection: usize) -> Moves {
    let max = max_per_connection.max(1);
    let mut moves = Moves::default();
    let mut sizes: Vec<usize> = Vec::with_capacity(current.len());
    let mut carried = BTreeSet::new();
    for (slot, symbols) in current.iter().enumerate() {
        let gone: Vec<String> = symbols
            .iter()
            .filter(|s| !desired.contains_key(*s))
            .cloned()
            .collect();
        sizes.push(symbols.len() - gone.len());
        if !gone.is_empty() {
            moves.unsubscribe.push((slot, gone));
        }
        carried.extend(symbols.iter().filter(|s| desired.contains_key(*s)).cloned());
    }
    let mut new = desired
        .iter()
        .filter(|(s, _)| !carried.contains(*s))
        .map(|(s, i)| (s.clone(), i.clone()))
        .peekable();
    let mut slot = 0;
    while new.peek().is_some() {
        if slot == sizes.len() {
            sizes.push(0);
        }
        let room = max.saturating_sub(sizes[slot]);
        let batch: Vec<(String, String)> = new.by_ref().take(room).collect();
        if !batch.is_empty() {
            sizes[slot] += batch.len();
            moves.subscribe.push((slot, batch));
        }
        slot += 1;
    }
    moves
}

/// Runs the provider until shutdown: follows `desired`.
pub async fn run(ctx: Context, mut desired: watch::Receiver<Desired>) {
    let provider = ctx.protocol.provider();
    let max = ctx.settings.max_streams_per_connection;
    let mut slots: Vec<Option<Slot>> = Vec::new();
    let mut tasks = JoinSet::new();
    loop {
        let wanted = desired.borrow_and_update().clone();
        let current: Vec<BTreeSet<String>> = slots
            .iter()
            .map(|s| s.as_ref().map(|s| s.symbols.clone()).unwrap_or_default())
            .collect();
        let moves = plan(&current, &wanted, max);
        for (slot, gone) in moves.unsubscribe {
            if let Some(s) = slots[slot].as_mut() {
                for g in &gone {
                    s.symbols.remove(g);
                }
                let _ = s.commands.send(Command::Unsubscribe(gone));
            }
        }
        for (slot, pairs) in moves.subscribe {
            while slots.len() <= slot {
                slots.push(None);
            }
            let s = slots[slot].get_or_insert_with(|| {
                let (tx, rx) = mpsc::unbounded_channel();
                tasks.spawn(ws::run(ctx.clone(), slot, rx));
                Slot {
                    commands: tx,
                    symbols: BTreeSet::new(),
                }
            });
            s.symbols.extend(pairs.iter().map(|(sym, _)| sym.clone()));
            let _ = s.commands.send(Command::Subscribe(pairs));
        }
        // A connection with nothing left is closed (dropping its sender retires it).
        for slot in slots.iter_mut() {
            if slot.as_ref().is_some_and(|s| s.symbols.is_empty()) {
                *slot = None;
            }
        }
        let connections = slots.iter().filter(|s| s.is_some()).count();
        tracing::info!(
            provider,
            symbols = wanted.len(),
            connections,
            "subscriptions planned"
        );
        tokio::select! {
            () = ctx.shutdown.triggered() => break,
            changed = desired.changed() => if changed.is_err() { break },
        }
    }
    drop(slots);
    while tasks.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desired(symbols: &[&str]) -> Desired {
        symbols
            .iter()
            .map(|s| (s.to_string(), format!("{s}-I")))
            .collect()
    }

    fn set(symbols: &[&str]) -> BTreeSet<String> {
        symbols.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn fills_connections_up_to_the_limit_and_leaves_the_rest_alone() {
        let moves = plan(&[], &desired(&["a", "b", "c", "d", "e"]), 2);
        let slots: Vec<(usize, usize)> = moves
            .subscribe
            .iter()
            .map(|(slot, pairs)| (*slot, pairs.len()))
            .collect();
        assert_eq!(slots, vec![(0, 2), (1, 2), (2, 1)]);
        assert!(moves.unsubscribe.is_empty());

        // b goes, f and g come: f fills b's place on connection 0, g joins connection 2.
        let current = [set(&["a", "b"]), set(&["c", "d"]), set(&["e"])];
        let moves = plan(&current, &desired(&["a", "c", "d", "e", "f", "g"]), 2);
        assert_eq!(moves.unsubscribe, vec![(0, vec!["b".to_string()])]);
        assert_eq!(
            moves.subscribe,
            vec![
                (0, vec![("f".to_string(), "f-I".to_string())]),
                (2, vec![("g".to_string(), "g-I".to_string())])
            ]
        );

        // Nothing changes: nothing moves.
        assert_eq!(
            plan(&current, &desired(&["a", "b", "c", "d", "e"]), 2),
            Moves::default()
        );
    }
}
