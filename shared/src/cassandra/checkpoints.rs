//! The `checkpoints` table: an operator's state and the next input offset of one partition,
//! written together in one row so they always belong to each other.
//!
//! A state up to [`CHUNK_BYTES`] is stored in the row itself. A larger one (Cassandra refuses a
//! request over 16 MiB, and thousands of open windows get there) is written first to
//! `checkpoint_chunks` under a new snapshot number, and the row, written after every chunk has
//! landed, names that snapshot and its chunk count: a reader sees either the old row or the new
//! one, each complete. The previous snapshot's chunks are deleted once the new row has landed.
//!
//! **Ownership.** An instance taking up a partition claims its row with a lightweight transaction
//! ([`CheckpointStore::claim`]): a new epoch, and a lease on write timestamps. Every later write
//! of the row by that owner ([`CheckpointStore::save`], [`CheckpointStore::renew`]) is
//! conditional on its epoch, so an instance paused past its session timeout, whose partition
//! was claimed meanwhile, learns it is fenced instead of overwriting its successor's checkpoint.
//! The lease is how far the owner may stamp its results ([`Lease::until`]); a claim returns the
//! previous lease as the floor above which the new owner stamps, so whatever a fenced owner
//! still writes is older than everything its successor writes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;

use super::{err, prepare, select};
use crate::domain::{now_micros, Micros};
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

/// A partition's ownership: the epoch of the owner's claim, and the write timestamps it may use
/// (microseconds, up to `until`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub epoch: i64,
    pub until: Micros,
}

/// What one partition's row holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stored {
    /// `None`: claimed, never checkpointed.
    pub checkpoint: Option<Checkpoint>,
    /// `None`: never claimed (a row from before ownership epochs, or no row).
    pub lease: Option<Lease>,
}

/// A successful claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    pub lease: Lease,
    /// The previous owner's lease end: every result this owner writes is stamped above it.
    pub floor: Micros,
}

/// How many times a claim re-reads a row that changed under it before giving up (for now).
const CLAIM_ATTEMPTS: usize = 8;

/// (operator, topic, partition)
type RowKey = (String, String, i32);

#[derive(Clone)]
pub struct CheckpointStore {
    session: Arc<Session>,
    save: PreparedStatement,
    claim: PreparedStatement,
    renew: PreparedStatement,
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
                "UPDATE {keyspace}.checkpoints SET next_offset = ?, state = ?, state_format = ?, \
                 state_snapshot = ?, state_chunks = ?, lease_until = ?, updated_at = toTimestamp(now()) \
                 WHERE operator = ? AND topic = ? AND partition = ? IF epoch = ?"
            ),
            "checkpoint save",
        )
        .await?;
        let mut claim = prepare(
            &session,
            format!(
                "UPDATE {keyspace}.checkpoints SET epoch = ?, lease_until = ? \
                 WHERE operator = ? AND topic = ? AND partition = ? IF epoch = ? AND lease_until = ?"
            ),
            "checkpoint claim",
        )
        .await?;
        // A retried claim that had applied would fail its condition: the claim re-reads instead.
        claim.set_is_idempotent(false);
        let renew = prepare(
            &session,
            format!(
                "UPDATE {keyspace}.checkpoints SET lease_until = ? \
                 WHERE operator = ? AND topic = ? AND partition = ? IF epoch = ?"
            ),
            "checkpoint lease renewal",
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
                "SELECT partition, next_offset, state, state_format, state_snapshot, state_chunks, epoch, lease_until FROM {keyspace}.checkpoints WHERE operator = ? AND topic = ?"
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
            claim,
            renew,
            save_chunk,
            load,
            load_chunks,
            delete_chunks,
            snapshots: Arc::default(),
        })
    }

    /// Claims `partition` for a new owner: the epoch after the one in `seen` (as last read), a
    /// lease until `until` (or the previous lease's end, if later). A row changed since it was
    /// read is read again from the transaction's answer and claimed over.
    pub async fn claim(
        &self,
        operator: &str,
        topic: &str,
        partition: i32,
        seen: Option<Lease>,
        until: Micros,
    ) -> Result<Claim> {
        let mut seen = seen;
        for _ in 0..CLAIM_ATTEMPTS {
            let lease = Lease {
                epoch: seen.map_or(1, |l| l.epoch + 1),
                until: seen.map_or(until, |l| until.max(l.until)),
            };
            let answer = self
                .session
                .execute_unpaged(
                    &self.claim,
                    (
                        lease.epoch,
                        lease.until,
                        operator,
                        topic,
                        partition,
                        seen.map(|l| l.epoch),
                        seen.map(|l| l.until),
                    ),
                )
                .await
                .map_err(|e| err("claim checkpoint", e))?;
            match lwt_answer(answer, "claim checkpoint")? {
                None => {
                    return Ok(Claim {
                        lease,
                        floor: seen.map_or(0, |l| l.until),
                    })
                }
                Some(current) => {
                    seen = match (current.first(), current.get(1)) {
                        (Some(Some(epoch)), Some(Some(until))) => Some(Lease {
                            epoch: *epoch,
                            until: *until,
                        }),
                        _ => None,
                    };
                }
            }
        }
        Err(Error::Cassandra(format!(
            "claim checkpoint of {operator} on {topic} partition {partition}: the row changed under {CLAIM_ATTEMPTS} claims in a row"
        )))
    }

    /// Extends the lease of the owner of `lease.epoch` to `lease.until`. `Ok(false)`: fenced
    /// (another instance claimed the partition since).
    pub async fn renew(
        &self,
        operator: &str,
        topic: &str,
        partition: i32,
        lease: Lease,
    ) -> Result<bool> {
        let answer = self
            .session
            .execute_unpaged(
                &self.renew,
                (lease.until, operator, topic, partition, lease.epoch),
            )
            .await
            .map_err(|e| err("renew checkpoint lease", e))?;
        Ok(lwt_answer(answer, "renew checkpoint lease")?.is_none())
    }

    /// Saves the checkpoint as the owner of `lease.epoch`, extending its lease to `lease.until`.
    /// `Ok(false)`: fenced (another instance claimed the partition since); nothing was written
    /// but unreferenced chunks, which are removed.
    pub async fn save(
        &self,
        operator: &str,
        topic: &str,
        partition: i32,
        checkpoint: &Checkpoint,
        lease: Lease,
    ) -> Result<bool> {
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
        let answer = self
            .session
            .execute_unpaged(
                &self.save,
                (
                    checkpoint.next_offset,
                    inline,
                    checkpoint.state_format,
                    snapshot,
                    chunks,
                    lease.until,
                    operator,
                    topic,
                    partition,
                    lease.epoch,
                ),
            )
            .await
            .map_err(|e| err("save checkpoint", e))?;
        if lwt_answer(answer, "save checkpoint")?.is_some() {
            if let Some(unused) = snapshot {
                self.delete_chunks_logged(operator, topic, partition, unused)
                    .await;
            }
            return Ok(false);
        }
        {
            let mut snapshots = self.snapshots.lock().unwrap_or_else(|e| e.into_inner());
            match snapshot {
                Some(s) => snapshots.insert(key, s),
                None => snapshots.remove(&key),
            };
        }
        if let Some(old) = previous.filter(|old| Some(*old) != snapshot) {
            // The row no longer names it.
            self.delete_chunks_logged(operator, topic, partition, old)
                .await;
        }
        Ok(true)
    }

    /// Deletes chunks no row names. Left behind if this fails: unused, harmless.
    async fn delete_chunks_logged(
        &self,
        operator: &str,
        topic: &str,
        partition: i32,
        snapshot: i64,
    ) {
        if let Err(e) = self
            .session
            .execute_unpaged(&self.delete_chunks, (operator, topic, partition, snapshot))
            .await
        {
            tracing::warn!(operator, topic, partition, snapshot, error = %e, "could not delete a checkpoint's unused chunks; they stay");
        }
    }

    /// Every partition's row of `operator` on `topic`: its checkpoint and its owner's lease.
    pub async fn load(&self, operator: &str, topic: &str) -> Result<HashMap<i32, Stored>> {
        type Row = (
            i32,
            Option<i64>,
            Option<Vec<u8>>,
            Option<i32>,
            Option<i64>,
            Option<i32>,
            Option<i64>,
            Option<i64>,
        );
        let rows: Vec<Row> = select(
            &self.session,
            &self.load,
            (operator, topic),
            "load checkpoints",
        )
        .await?;
        let mut checkpoints = HashMap::new();
        for (partition, next_offset, inline, state_format, snapshot, chunks, epoch, until) in rows {
            let lease = match (epoch, until) {
                (Some(epoch), Some(until)) => Some(Lease { epoch, until }),
                _ => None,
            };
            let (Some(next_offset), Some(state_format)) = (next_offset, state_format) else {
                checkpoints.insert(
                    partition,
                    Stored {
                        checkpoint: None,
                        lease,
                    },
                );
                continue;
            };
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
                _ => inline.unwrap_or_default(),
            };
            let checkpoint = Checkpoint {
                next_offset,
                state,
                state_format,
            };
            checkpoints.insert(
                partition,
                Stored {
                    checkpoint: Some(checkpoint),
                    lease,
                },
            );
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

/// A lightweight transaction's answer: `None` if it applied, else the conditioned columns'
/// current values (as bigints; absent or null as `None`).
fn lwt_answer(
    answer: scylla::response::query_result::QueryResult,
    what: &str,
) -> Result<Option<Vec<Option<i64>>>> {
    let rows = answer.into_rows_result().map_err(|e| err(what, e))?;
    let row: scylla::value::Row = rows.single_row().map_err(|e| err(what, e))?;
    let mut columns = row.columns.into_iter();
    match columns.next().flatten() {
        Some(scylla::value::CqlValue::Boolean(true)) => Ok(None),
        Some(scylla::value::CqlValue::Boolean(false)) => Ok(Some(
            columns
                .map(|c| match c {
                    Some(scylla::value::CqlValue::BigInt(v)) => Some(v),
                    _ => None,
                })
                .collect(),
        )),
        other => Err(Error::Cassandra(format!(
            "{what}: the transaction answered {other:?} where [applied] was expected"
        ))),
    }
}
