//! A plan's monitor settings: `[monitor.<plan>]` in the server's `dopc.toml`, or set through
//! `PUT /plans/{name}/monitor`.

use serde::{Deserialize, Serialize};

use super::{NeededFlag, SyncReason, SyncState};

/// A plan's monitor: `[monitor.<plan>]` in `dopc.toml`, or set through the API.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct MonitorSettings {
    /// False: not monitored (an API setting can switch a configured monitor off).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Seconds between the starts of two refreshes (at least 1).
    pub interval_secs: u64,
    /// What to do about drift and pending changes; off unless enabled.
    #[serde(default)]
    pub auto_sync: AutoSync,
}

/// The auto-sync policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields, default)]
pub struct AutoSync {
    /// Queue a sync when a refresh finds something to do (default false: report only).
    pub enabled: bool,
    /// The sync may destroy and redeploy (nodes removed from the plan, redeploy changes).
    pub destructive: bool,
    /// The sync may reboot nodes.
    pub interruptive: bool,
    /// Run the plan's `default` step set on the synced nodes afterwards (default true).
    pub run: bool,
}

impl Default for AutoSync {
    fn default() -> AutoSync {
        AutoSync {
            enabled: false,
            destructive: false,
            interruptive: false,
            run: true,
        }
    }
}

fn yes() -> bool {
    true
}

impl MonitorSettings {
    /// Refuses settings that cannot work.
    pub fn check(&self) -> Result<(), String> {
        if self.interval_secs == 0 {
            return Err("interval_secs must be at least 1".into());
        }
        Ok(())
    }
}

/// Where a plan's monitor settings come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum MonitorSource {
    /// Set through the API (stored; it wins over the file).
    Api,
    /// The server's `dopc.toml`.
    Config,
    /// Not monitored.
    None,
}

impl MonitorSource {
    /// The word (as in JSON).
    pub fn name(self) -> &'static str {
        match self {
            MonitorSource::Api => "api",
            MonitorSource::Config => "config",
            MonitorSource::None => "none",
        }
    }
}

/// A node the monitor's last refresh found not in sync.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MonitorFinding {
    /// The node.
    pub node: String,
    /// Where it stands.
    pub state: SyncState,
    /// What a sync would do about it, and why.
    pub reason: Option<SyncReason>,
    /// The flags that sync would need and the policy does not give.
    pub held_back: Vec<NeededFlag>,
    /// Why the provider could not be asked.
    pub read_error: Option<String>,
}

/// What the monitor last did and found for a plan (since the server started).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MonitorStatus {
    /// The last refresh it queued.
    pub last_refresh: Option<u64>,
    /// When the next refresh is due (RFC 3339).
    pub next_due_at: Option<String>,
    /// Refreshes skipped because one was still queued or running.
    pub skipped: u64,
    /// When a refresh it queued last finished (RFC 3339).
    pub last_checked_at: Option<String>,
    /// What that refresh came to, in a sentence.
    pub verdict: Option<String>,
    /// Nodes not in sync after that refresh.
    pub findings: Vec<MonitorFinding>,
    /// The last sync it queued.
    pub last_auto_sync: Option<u64>,
}

/// `GET`, `PUT` and `DELETE /plans/{name}/monitor`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MonitorDocument {
    /// The plan.
    pub plan: String,
    /// The settings in force; none: not monitored.
    pub settings: Option<MonitorSettings>,
    /// Where they come from.
    pub source: MonitorSource,
    /// The settings of `dopc.toml` for the plan (an API setting may be in force instead).
    pub configured: Option<MonitorSettings>,
    /// What the monitor last did and found.
    pub status: MonitorStatus,
}
