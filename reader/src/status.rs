//! One route's state, as `cdc_status()` reports it (the extension fills it
//! from the ring headers; `client::status` reads it back).

/// One route's state.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteStatus {
    pub slot: String,
    pub route: String,
    pub ring_path: String,
    pub worker_pid: Option<i32>,
    /// WAL the slot retains: from its confirmed position to the current end.
    pub slot_lag_bytes: Option<i64>,
    /// How long the oldest unacknowledged change has waited in the ring.
    pub lag_seconds: f64,
    pub ring_fill_bytes: i64,
    pub ring_capacity_bytes: i64,
    /// `name (pid N)` of each registered consumer (`name (gone)` when its
    /// process is not running), with `, B bytes behind, idle S s` while it
    /// has frames to acknowledge.
    pub consumers: Vec<String>,
    pub changes_per_second: i64,
}
