//! The control-plane model: what switchyard persists and how it changes,
//! with no I/O. The layers import downwards only:
//!
//! ```text
//! weight, phase  ←  events  ←  state  ←  rollout
//! ```
//!
//! - [`weight`]: the one weight type (basis points inside, percent outside);
//! - [`phase`]: where a rollout is;
//! - [`events`]: what happened, as recorded in the history and streamed;
//! - [`state`]: everything that survives a restart;
//! - [`rollout`]: the state machine, as pure functions over the state.
//!
//! Nothing in here imports from outside it: the API contract
//! ([`crate::wire`]) uses these types, never the other way round. The store
//! ([`crate::store`]) writes the state to disk, the hub
//! ([`crate::hub`]) streams events, and the controller and the API call the
//! state machine under the store's lock.

pub mod events;
pub mod phase;
pub mod rollout;
pub mod state;
pub mod weight;
