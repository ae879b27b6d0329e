//! The endpoints, by resource.

pub mod executions;
pub mod log_files;
pub mod logs;
pub mod mirror;
pub mod monitor;
pub mod plans;
pub mod state;

use crate::error::ApiError;

/// Runs store work off the async workers (the store opens databases and waits for locks).
pub async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ApiError::internal(format!("a worker failed: {e}")))?
}
