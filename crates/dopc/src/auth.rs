//! API tokens: made by `dopc token create`, shown once, stored as their SHA-256 only, revocable.
//! Every endpoint but `/api/v1/ping` needs one: `Authorization: Bearer <token>` (the original's
//! `Token token="<token>"` is accepted too).

use std::io::Read;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use dop_store::{now_ms, Store};

use crate::records::{Tokens, TOKENS};
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

fn records(tokens: &Tokens) -> Vec<(String, TokenRecord)> {
    tokens
        .iter()
        .filter_map(|(k, v)| Some((k.clone(), serde_json::from_value(v.clone()).ok()?)))
        .collect()
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
    let hashed = hash(&token);
    store.update_document(TOKENS, |tokens: &mut Tokens| {
        if records(tokens)
            .iter()
            .any(|(_, t)| t.name == name && t.revoked_ms.is_none())
        {
            return Err(TokenError::Name(format!(
                "a token named '{name}' exists; revoke it first or choose another name"
            )));
        }
        tokens.insert(hashed, serde_json::to_value(&record).unwrap_or_default());
        Ok(())
    })??;
    Ok(token)
}

/// Every token record.
pub fn list(store: &Store) -> Result<Vec<TokenRecord>, TokenError> {
    Ok(records(&store.read_document::<Tokens>(TOKENS)?)
        .into_iter()
        .map(|(_, t)| t)
        .collect())
}

/// Revokes the tokens named `name`; returns how many.
pub fn revoke(store: &Store, name: &str) -> Result<usize, TokenError> {
    let n = store.update_document(TOKENS, |tokens: &mut Tokens| {
        let mut n = 0;
        for (k, mut t) in records(tokens) {
            if t.name == name && t.revoked_ms.is_none() {
                t.revoked_ms = Some(now_ms());
                tokens.insert(k, serde_json::to_value(&t).unwrap_or_default());
                n += 1;
            }
        }
        n
    })?;
    if n == 0 {
        return Err(TokenError::Name(format!("no active token named '{name}'")));
    }
    Ok(n)
}

/// The server's view of the tokens file, read again only when the file changed.
#[derive(Default)]
pub struct TokenCache {
    seen: std::sync::Mutex<
        Option<(
            std::fs::Metadata,
            std::collections::HashMap<String, TokenRecord>,
        )>,
    >,
}

fn same_file(a: &std::fs::Metadata, b: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    (a.ino(), a.mtime(), a.mtime_nsec(), a.len()) == (b.ino(), b.mtime(), b.mtime_nsec(), b.len())
}

impl TokenCache {
    /// The name of the active token presented, if any (one `stat` when nothing changed).
    pub fn check(&self, store: &Store, token: &str) -> Option<String> {
        let meta = std::fs::metadata(store.document_path(TOKENS).ok()?).ok()?;
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let fresh = seen.as_ref().is_some_and(|(m, _)| same_file(m, &meta));
        if !fresh {
            let tokens = store.read_document::<Tokens>(TOKENS).ok()?;
            *seen = Some((meta, records(&tokens).into_iter().collect()));
        }
        let (_, map) = seen.as_ref()?;
        map.get(&hash(token))
            .filter(|t| t.revoked_ms.is_none())
            .map(|t| t.name.clone())
    }
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
    let name = state.tokens.check(&state.store, &token);
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
