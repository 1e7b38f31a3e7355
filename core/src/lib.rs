//! warren's scheduling core: every decision the dispatcher makes, as plain data in and
//! decisions out, with `now` and the rng passed in. No broker types: this crate cannot import
//! lapin or tokio, so the compiler keeps it pure. The dispatcher's router and intake turn
//! deliveries into facts for it and carry its decisions out; the simulator (`sim`) drives the
//! very same [`Core`] in virtual time.
//!
//! The stages, each in its own file with its tests:
//! - [`fleet`]: which workers are alive, what each can run, their credit and lookahead, and
//!   the queues of dead workers still to reclaim (liveness);
//! - [`levels`]: which priority level goes next; [`policy`]: the order within a level and the
//!   learned run times; [`balancer`]: which able worker gets a task;
//! - [`scheduler`]: the bounded window of held tasks and the choice of the next assignment;
//! - [`idempotency`]: ids dispatched lately and the answers duplicates get;
//! - [`retry`]: what a finished attempt leads to (success, retry after a backoff, dead,
//!   failed) and the backoffs, for tasks and for reconnecting;
//! - [`waiting`]: why each held task waits;
//! - [`decisions`]: [`Core`], the one front door that ties them together.
#![warn(missing_docs)]

pub mod balancer;
pub mod decisions;
pub mod facts;
pub mod fleet;
pub mod idempotency;
pub mod levels;
pub mod policy;
pub mod retry;
pub mod scheduler;
pub mod settings;
pub mod sim;
pub mod waiting;

pub use decisions::{Admission, Core, Decision, Released};
pub use facts::{Heartbeat, Status, WorkerState};
pub use fleet::{Change, Fleet, LostWorker, WorkerEntry};
pub use idempotency::{Ending, Idempotency, Prior, Waiter};
pub use scheduler::{Assignment, Held, Origin, Scheduler, TaskInfo};
pub use settings::Settings;
pub use waiting::{WaitReason, Waiting, WaitingTask};
