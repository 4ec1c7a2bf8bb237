//! The `checkpoints` table: an operator's state and the next input offset of one partition,
//! written together in one row so they always belong to each other.
//!
//! A state up to [`CHUNK_BYTES`] is stored in the row itself. A larger one (Cassandra refuses a
//! request over 16 MiB, and thousands of open windows get there) is written first to
//! `checkpoint_chunks` under a new snapshot number, and the row, written after every chunk has
//! landed, names that snapshot and its chunk count: a reader sees either the old row or the new
//! one, each complete. The previous snapshot's chunks are deleted once the new row has landed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;

use super::{err, prepare, select};
use crate::domain::now_micros;
use crate::error::{Error, Result};

/// The largest state stored inline, and the size of each chunk of a larger one.
pub const CHUNK_BYTES: usize = 1 << 20;

/// A partition's checkpoint: where to read on, and the state to restore before that.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub next_offset: i64,
    pub state: Vec<u8>,
    pub state_format: i32,
}

/// (operator, topic, partition)
type RowKey = (String, String, i32);

#[derive(Clone)]
pub struct CheckpointStore {
    session: Arc<Session>,
    save: PreparedStatement,
    save_chunk: PreparedStatement,
    load: PreparedStatement,
    load_chunks: PreparedStatement,
    delete_chunks: PreparedStatement,
    /// The chunked snapshot each row names, as this store last wrote or read it.
    snapshots: Arc<Mutex<HashMap<RowKey, i64>>>,
}

impl CheckpointStore {
    pub async fn new(session: Arc<Session>, keyspace: &str) -> Result<Self> {
        let save = prepare(
            &session,
            format!(
                "INSERT INTO {keyspace}.checkpoints (operator, topic, partition, next_offset, state, state_format, state_snapshot, state_chunks, updated_at) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, toTimestamp(now()))"
            ),
            "checkpoint save",
        )
        .await?;
        let save_chunk = prepare(
            &session,
            format!(
                "INSERT INTO {keyspace}.checkpoint_chunks (operator, topic, partition, snapshot, chunk, data) VALUES (?, ?, ?, ?, ?, ?)"
            ),
            "checkpoint chunk save",
        )
        .await?;
        let load = prepare(
            &session,
            format!(
                "SELECT partition, next_offset, state, state_format, state_snapshot, state_chunks FROM {keyspace}.checkpoints WHERE operator = ? AND topic = ?"
            ),
            "checkpoint load",
        )
        .await?;
        let load_chunks = prepare(
            &session,
            format!(
                "SELECT chunk, data FROM {keyspace}.checkpoint_chunks WHERE operator = ? AND topic = ? AND partition = ? AND snapshot = ?"
            ),
            "checkpoint chunks load",
        )
        .await?;
        let delete_chunks = prepare(
            &session,
            format!(
                "DELETE FROM {keyspace}.checkpoint_chunks WHERE operator = ? AND topic = ? AND partition = ? AND snapshot = ?"
            ),
            "checkpoint chunks delete",
        )
        .await?;
        Ok(Self {
            session,
            save,
            save_chunk,
            load,
            load_chunks,
            delete_chunks,
            snapshots: Arc::default(),
        })
    }

    pub async fn save(
        &self,
        operator: &str,
        topic: &str,
        partition: i32,
        checkpoint: &Checkpoint,
    ) -> Result<()> {
        let key: RowKey = (operator.to_string(), topic.to_string(), partition);
        let previous = self.previous_snapshot(&key);
        let (inline, snapshot, chunks): (&[u8], Option<i64>, Option<i32>) = if checkpoint
            .state
            .len()
            <= CHUNK_BYTES
        {
            (&checkpoint.state, None, None)
        } else {
            // Unique per row: later than the previous one even if the clock is not.
            let snapshot = now_micros().max(previous.map_or(i64::MIN, |p| p + 1));
            let mut count = 0i32;
            for (i, data) in checkpoint.state.chunks(CHUNK_BYTES).enumerate() {
                let chunk = i32::try_from(i).map_err(|_| {
                        Error::Cassandra(format!(
                            "checkpoint of partition {partition}: state of {} bytes has too many chunks",
                            checkpoint.state.len()
                        ))
                    })?;
                self.session
                    .execute_unpaged(
                        &self.save_chunk,
                        (operator, topic, partition, snapshot, chunk, data),
                    )
                    .await
                    .map_err(|e| err("save checkpoint chunk", e))?;
                count = chunk + 1;
            }
            (&[], Some(snapshot), Some(count))
        };
        self.session
            .execute_unpaged(
                &self.save,
                (
                    operator,
                    topic,
                    partition,
                    checkpoint.next_offset,
                    inline,
                    checkpoint.state_format,
                    snapshot,
                    chunks,
                ),
            )
            .await
            .map_err(|e| err("save checkpoint", e))?;
        {
            let mut snapshots = self.snapshots.lock().unwrap_or_else(|e| e.into_inner());
            match snapshot {
                Some(s) => snapshots.insert(key, s),
                None => snapshots.remove(&key),
            };
        }
        if let Some(old) = previous.filter(|old| Some(*old) != snapshot) {
            // The row no longer names it. Left behind if this fails: unused, harmless.
            if let Err(e) = self
                .session
                .execute_unpaged(&self.delete_chunks, (operator, topic, partition, old))
                .await
            {
                tracing::warn!(operator, topic, partition, snapshot = old, error = %e, "could not delete a replaced checkpoint's chunks; they stay unused");
            }
        }
        Ok(())
    }

    /// Every partition's checkpoint of `operator` on `topic`.
    pub async fn load(&self, operator: &str, topic: &str) -> Result<HashMap<i32, Checkpoint>> {
        type Row = (i32, i64, Vec<u8>, i32, Option<i64>, Option<i32>);
        let rows: Vec<Row> = select(
            &self.session,
            &self.load,
            (operator, topic),
            "load checkpoints",
        )
        .await?;
        let mut checkpoints = HashMap::new();
        for (partition, next_offset, inline, state_format, snapshot, chunks) in rows {
            let key: RowKey = (operator.to_string(), topic.to_string(), partition);
            let state = match (snapshot, chunks) {
                (Some(snapshot), Some(chunks)) => {
                    let state = self
                        .load_chunks(operator, topic, partition, snapshot, chunks)
                        .await?;
                    self.snapshots
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(key, snapshot);
                    state
                }
                _ => inline,
            };
            let checkpoint = Checkpoint {
                next_offset,
                state,
                state_format,
            };
            checkpoints.insert(partition, checkpoint);
        }
        Ok(checkpoints)
    }

    async fn load_chunks(
        &self,
        operator: &str,
        topic: &str,
        partition: i32,
        snapshot: i64,
        chunks: i32,
    ) -> Result<Vec<u8>> {
        let rows: Vec<(i32, Vec<u8>)> = select(
            &self.session,
            &self.load_chunks,
            (operator, topic, partition, snapshot),
            "load checkpoint chunks",
        )
        .await?;
        // Clustered by chunk, so in order; all of 0..chunks must be there.
        let complete = rows.len() == usize::try_from(chunks).unwrap_or(0)
            && rows.iter().enumerate().all(|(i, (c, _))| *c as usize == i);
        if !complete {
            // Also what a reader sees if a newer checkpoint replaced this row and deleted these
            // chunks between its two reads: a retry reads the newer row.
            return Err(Error::Cassandra(format!(
                "checkpoint of {operator} on {topic} partition {partition} names snapshot {snapshot} of {chunks} chunks, but {} are stored",
                rows.len()
            )));
        }
        Ok(rows.into_iter().flat_map(|(_, data)| data).collect())
    }

    fn previous_snapshot(&self, key: &RowKey) -> Option<i64> {
        self.snapshots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .copied()
    }
}
