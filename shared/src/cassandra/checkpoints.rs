//! The `checkpoints` table: an operator's state and the next input offset of one partition,
//! written together in one row so they always belong to each other.

use std::collections::HashMap;
use std::sync::Arc;

use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;

use super::err;
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
        let mut save = session
            .prepare(format!(
                "INSERT INTO {keyspace}.checkpoints (operator, topic, partition, next_offset, state, state_format, updated_at) \
                 VALUES (?, ?, ?, ?, ?, ?, toTimestamp(now()))"
            ))
            .await
            .map_err(|e| err("prepare checkpoint save", e))?;
        save.set_is_idempotent(true);
        let mut load = session
            .prepare(format!(
                "SELECT partition, next_offset, state, state_format FROM {keyspace}.checkpoints WHERE operator = ? AND topic = ?"
            ))
            .await
            .map_err(|e| err("prepare checkpoint load", e))?;
        load.set_is_idempotent(true);
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
        let rows = self
            .session
            .execute_unpaged(&self.load, (operator, topic))
            .await
            .map_err(|e| err("load checkpoints", e))?
            .into_rows_result()
            .map_err(|e| err("load checkpoints", e))?;
        let mut out = HashMap::new();
        for row in rows
            .rows::<(i32, i64, Vec<u8>, i32)>()
            .map_err(|e| err("load checkpoints", e))?
        {
            let (partition, next_offset, state, state_format) =
                row.map_err(|e| err("load checkpoints", e))?;
            out.insert(
                partition,
                Checkpoint {
                    next_offset,
                    state,
                    state_format,
                },
            );
        }
        Ok(out)
    }
}
