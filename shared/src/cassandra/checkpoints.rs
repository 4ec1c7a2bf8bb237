//! The `checkpoints` table: an operator's state and the next input offset of one partition,
//! written together in one row so they always belong to each other.

use std::collections::HashMap;
use std::sync::Arc;

use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;

use super::{err, prepare, select};
use crate::error::Result;

/// A partition's checkpoint: where to read on, and the state to restore before that.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub next_offset: i64,
    pub state: Vec<u8>,
    pub state_format: i32,
}

#[derive(Clone)]
pub struct CheckpointStore {
    session: Arc<Session>,
    save: PreparedStatement,
    load: PreparedStatement,
}

impl CheckpointStore {
    pub async fn new(session: Arc<Session>, keyspace: &str) -> Result<Self> {
        let save = prepare(
            &session,
            format!(
                "INSERT INTO {keyspace}.checkpoints (operator, topic, partition, next_offset, state, state_format, updated_at) \
                 VALUES (?, ?, ?, ?, ?, ?, toTimestamp(now()))"
            ),
            "checkpoint save",
        )
        .await?;
        let load = prepare(
            &session,
            format!(
                "SELECT partition, next_offset, state, state_format FROM {keyspace}.checkpoints WHERE operator = ? AND topic = ?"
            ),
            "checkpoint load",
        )
        .await?;
        Ok(Self {
            session,
            save,
            load,
        })
    }

    pub async fn save(
        &self,
        operator: &str,
        topic: &str,
        partition: i32,
        checkpoint: &Checkpoint,
    ) -> Result<()> {
        self.session
            .execute_unpaged(
                &self.save,
                (
                    operator,
                    topic,
                    partition,
                    checkpoint.next_offset,
                    &checkpoint.state,
                    checkpoint.state_format,
                ),
            )
            .await
            .map_err(|e| err("save checkpoint", e))?;
        Ok(())
    }

    /// Every partition's checkpoint of `operator` on `topic`.
    pub async fn load(&self, operator: &str, topic: &str) -> Result<HashMap<i32, Checkpoint>> {
        let rows: Vec<(i32, i64, Vec<u8>, i32)> = select(
            &self.session,
            &self.load,
            (operator, topic),
            "load checkpoints",
        )
        .await?;
        Ok(rows
            .into_iter()
            .map(|(partition, next_offset, state, state_format)| {
                let checkpoint = Checkpoint {
                    next_offset,
                    state,
                    state_format,
                };
                (partition, checkpoint)
            })
            .collect())
    }
}
