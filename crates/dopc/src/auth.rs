//! API tokens: made by `dopc token create`, shown once, stored as their SHA-256 only, revocable.
//! Every endpoint but `/api/v1/ping` needs one: `Authorization: Bearer <token>` (the original's
//! `Token token="<token>"` is accepted too).

use std::io::Read;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use dop_store::server::Kind;
use dop_store::{now_ms, Store};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::server::AppState;

/// A stored token (never the token itself).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Its name (who or what uses it).
    pub name: String,
    /// When it was made, ms since the epoch.
    pub created_ms: u64,
    /// When it was revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_ms: Option<u64>,
}

fn hash(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Why a token operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The store refused.
    #[error(transparent)]
    Store(#[from] dop_store::StoreError),
    /// No randomness.
    #[error("cannot read random bytes from /dev/urandom: {0}")]
    Random(std::io::Error),
    /// A name is taken or unknown.
    #[error("{0}")]
    Name(String),
}

/// Makes a token named `name` and returns it (the only time it is shown).
pub fn create(store: &Store, name: &str) -> Result<String, TokenError> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c))
    {
        return Err(TokenError::Name(format!(
            "'{name}' is not a token name: use 1 to 64 letters, digits, '-', '_', '.', '@'"
        )));
    }
    if list(store)?
        .iter()
        .any(|t| t.name == name && t.revoked_ms.is_none())
    {
        return Err(TokenError::Name(format!(
            "a token named '{name}' exists; revoke it first or choose another name"
        )));
    }
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(TokenError::Random)?;
    let token: String = std::iter::once("dop_".to_string())
        .chain(bytes.iter().map(|b| format!("{b:02x}")))
        .collect();
    let record = TokenRecord {
        name: name.to_string(),
        created_ms: now_ms(),
        revoked_ms: None,
    };
    store.server_write(Kind::Token, &[(hash(&token), Some(record))])?;
    Ok(token)
}

/// Every token record.
pub fn list(store: &Store) -> Result<Vec<TokenRecord>, TokenError> {
    Ok(store.server_list(Kind::Token)?)
}

/// Revokes the tokens named `name`; returns how many.
pub fn revoke(store: &Store, name: &str) -> Result<usize, TokenError> {
    let path_records: Vec<(String, TokenRecord)> = store
        .server_list_keyed::<TokenRecord>(Kind::Token)?
        .into_iter()
        .filter(|(_, t)| t.name == name && t.revoked_ms.is_none())
        .collect();
    if path_records.is_empty() {
        return Err(TokenError::Name(format!("no active token named '{name}'")));
    }
    let changes: Vec<(String, Option<TokenRecord>)> = path_records
        .iter()
        .map(|(k, t)| {
            (
                k.clone(),
                Some(TokenRecord {
                    revoked_ms: Some(now_ms()),
                    ..t.clone()
                }),
            )
        })
        .collect();
    store.server_write(Kind::Token, &changes)?;
    Ok(changes.len())
}

/// The name of the active token presented, if any.
pub fn check(store: &Store, token: &str) -> Option<String> {
    let record: TokenRecord = store.server_get(Kind::Token, &hash(token)).ok()??;
    record.revoked_ms.is_none().then_some(record.name)
}

fn presented(req: &Request) -> Option<String> {
    let value = req
        .headers()
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .trim();
    if let Some(t) = value.strip_prefix("Bearer ") {
        return Some(t.trim().trim_matches('"').to_string());
    }
    let t = value.strip_prefix("Token ")?.trim();
    let t = t.strip_prefix("token=").unwrap_or(t);
    Some(t.trim_matches('"').to_string())
}

/// Who made a request (the token's name).
#[derive(Clone, Debug)]
pub struct Caller(pub String);

/// The middleware: 401 without an active token.
pub async fn require_token(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    let Some(token) = presented(&req) else {
        return unauthorized("this endpoint needs `Authorization: Bearer <token>` (make one with `dopc token create NAME`)");
    };
    let store = state.store.clone();
    let name = tokio::task::spawn_blocking(move || check(&store, &token))
        .await
        .ok()
        .flatten();
    match name {
        Some(name) => {
            req.extensions_mut().insert(Caller(name));
            next.run(req).await
        }
        None => unauthorized("the token is unknown or revoked"),
    }
}

fn unauthorized(message: &str) -> Response {
    let mut response =
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message).into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer realm=\"dopc\""),
    );
    response
}
