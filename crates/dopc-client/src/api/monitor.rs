//! A plan's monitor settings: `[monitor.<plan>]` in the server's `dopc.toml`, or set through
//! `PUT /plans/{name}/monitor`.

use serde::{Deserialize, Serialize};

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
