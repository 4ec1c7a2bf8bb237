//! What the WebSocket connections (`ws`) and the gRPC feed (`grpc`) share about one session:
//! its decisions ([`Machine`], without I/O), why it ended, its counters, and what happens after
//! a loss.

mod counters;
mod loss;
mod machine;
mod paced;

pub(crate) use loss::{after_loss, lost, sleep_until_some, Ended, Loss};
pub(crate) use machine::{Action, Heard, Machine, CLOSE_WAIT};

pub(crate) use counters::frame_type;
