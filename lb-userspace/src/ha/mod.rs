//! High availability. A pair: keepalived owns the floating addresses and tells lb its role
//! (`role`: notify_fifo in, track_file out); lb owns the flows and streams them to the
//! peer (`sync`: the sessions, `wire`: authenticated frames, `table`: what changed since the
//! peer last heard, and the peer's ids as ours). Active/active: BIRD announces the VIPs.
//! `keepalived` and `bird` render the partners' configs.

pub mod bird;
pub mod keepalived;
pub mod role;
pub mod sync;
pub mod table;
pub mod wire;
