//! API tokens: made by `dopc token create`, shown once, stored as their SHA-256 only, revocable;
//! each with a role and the plans it may see ([`crate::access`]). Every endpoint but
//! `/api/v1/ping` needs one: `Authorization: Bearer <token>` (the original's
//! `Token token="<token>"` is accepted too).

use std::io::Read;

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::{MatchedPath, Path, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::RequestPartsExt;
use dop_store::{now_ms, Store};

use crate::access::{Role, Scope};

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
    /// What it may do (stored tokens of earlier versions have none: admin, as they could do
    /// everything).
    #[serde(default)]
    pub role: Role,
    /// The plans it may see, as patterns (exact names or `/regex/`); empty: every plan.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plans: Vec<String>,
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
    /// A plan pattern of `--plans` is not a valid regular expression.
    #[error("--plans: {0}")]
    Plans(#[from] dop_core::PatternError),
}

fn records(tokens: &Tokens) -> Vec<(String, TokenRecord)> {
    tokens
        .iter()
        .filter_map(|(k, v)| Some((k.clone(), serde_json::from_value(v.clone()).ok()?)))
        .collect()
}

/// Makes a token named `name` with `role`, limited to the plans `plans` matches (empty: all),
/// and returns it (the only time it is shown). Nothing is stored when a pattern is invalid.
pub fn create(
    store: &Store,
    name: &str,
    role: Role,
    plans: &[String],
) -> Result<String, TokenError> {
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
    Scope::of(plans)?;
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
        role,
        plans: plans.to_vec(),
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

/// The server's view of the tokens file, read again only when the file changed: the callers
/// of the active tokens, by hash.
#[derive(Default)]
pub struct TokenCache {
    seen: std::sync::Mutex<Option<(std::fs::Metadata, HashMap<String, Caller>)>>,
}

fn same_file(a: &std::fs::Metadata, b: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    (a.ino(), a.mtime(), a.mtime_nsec(), a.len()) == (b.ino(), b.mtime(), b.mtime_nsec(), b.len())
}

/// The caller an active token record stands for.
fn caller_of(hash: String, record: TokenRecord) -> Caller {
    let scope = Scope::of(&record.plans).unwrap_or_else(|e| {
        // `dopc token create` checks the patterns; only a hand-edited file gets here.
        tracing::warn!(token = record.name, error = %e, "the token's plans do not parse: it sees no plan");
        Scope::nothing()
    });
    Caller {
        name: record.name,
        role: record.role,
        scope,
        hash,
    }
}

impl TokenCache {
    /// Who the token presented is, if it is active (one `stat` when nothing changed).
    pub fn check(&self, store: &Store, token: &str) -> Option<Caller> {
        self.by_hash(store, &hash(token))
    }

    /// Whether the token a caller presented is still active (not revoked since).
    pub fn is_active(&self, store: &Store, caller: &Caller) -> bool {
        self.by_hash(store, &caller.hash).is_some()
    }

    fn by_hash(&self, store: &Store, hashed: &str) -> Option<Caller> {
        let meta = std::fs::metadata(store.document_path(TOKENS).ok()?).ok()?;
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let fresh = seen.as_ref().is_some_and(|(m, _)| same_file(m, &meta));
        if !fresh {
            let tokens = store.read_document::<Tokens>(TOKENS).ok()?;
            let active = records(&tokens)
                .into_iter()
                .filter(|(_, t)| t.revoked_ms.is_none())
                .map(|(k, t)| (k.clone(), caller_of(k, t)))
                .collect();
            *seen = Some((meta, active));
        }
        let (_, map) = seen.as_ref()?;
        map.get(hashed).cloned()
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

/// Who made a request: the token's name, role and plans.
#[derive(Clone, Debug)]
pub struct Caller {
    /// The token's name.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// The plans it may see.
    pub scope: Scope,
    /// The token's hash, to see whether it was revoked since (streams).
    hash: String,
}

/// How often an open websocket stream checks that its token was not revoked.
pub const STREAM_RECHECK: Duration = Duration::from_secs(2);

/// The close code a stream ends with when its token was revoked (the wire's, docs/api.md).
pub const CLOSE_REVOKED: u16 = dopc_client::api::CLOSE_TOKEN_REVOKED;

/// Resolves once the caller's token is revoked (looked at every [`STREAM_RECHECK`]); a stream
/// selects on it and closes with [`CLOSE_REVOKED`].
pub async fn revoked(state: AppState, caller: Caller) {
    loop {
        tokio::time::sleep(STREAM_RECHECK).await;
        if !state.tokens.is_active(&state.store, &caller) {
            return;
        }
    }
}

/// The middleware: 401 without an active token; then the token's plans (a plan or execution
/// outside them is answered as a missing one, 404) and its role (403 when it is too low).
pub async fn require_token(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    let Some(token) = presented(&req) else {
        return unauthorized("this endpoint needs `Authorization: Bearer <token>` (make one with `dopc token create NAME`)");
    };
    let Some(caller) = state.tokens.check(&state.store, &token) else {
        return unauthorized("the token is unknown or revoked");
    };
    if let Err(refused) = authorize(&state, &caller, &mut req).await {
        return refused.into_response();
    }
    req.extensions_mut().insert(caller);
    next.run(req).await
}

/// Scope first, so that a token learns nothing of plans outside it, not even that its role
/// would not do; then the role the endpoint needs ([`crate::access::ENDPOINTS`]).
async fn authorize(state: &AppState, caller: &Caller, req: &mut Request) -> Result<(), ApiError> {
    let (mut parts, body) =
        std::mem::replace(req, Request::new(axum::body::Body::empty())).into_parts();
    let params = parts.extract::<Path<HashMap<String, String>>>().await.ok();
    let route = parts
        .extensions
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string());
    *req = Request::from_parts(parts, body);
    if let Some(Path(params)) = params {
        if let Some(plan) = params.get("name") {
            if !caller.scope.allows(plan) {
                return Err(ApiError::no_plan(plan));
            }
        }
        if let Some(id) = params.get("id").and_then(|id| id.parse::<u64>().ok()) {
            let outside = state
                .runner
                .book()
                .get(id)
                .is_some_and(|e| !caller.scope.allows(&e.plan));
            if outside {
                return Err(ApiError::no_execution(id));
            }
        }
    }
    let method = req.method().as_str().to_string();
    let needed = match route
        .as_deref()
        .and_then(|r| crate::access::required_role(&method, r))
    {
        Some(role) => role,
        None => {
            tracing::warn!(%method, route, "an endpoint without a role in access::ENDPOINTS: admin only");
            Role::Admin
        }
    };
    if caller.role < needed {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "{method} {} needs a token with the role '{needed}' (or above); token '{}' has '{}': \
                 make one with `dopc token create NAME --role {needed}`",
                route.as_deref().unwrap_or("this endpoint").trim_start_matches("/api/v1"),
                caller.name,
                caller.role
            ),
        ));
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_stored_by_earlier_versions_keep_working_as_admin_of_every_plan() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        // The tokens document as versions without roles wrote it.
        let old = format!(
            r#"{{"{}": {{"name": "ops", "created_ms": 1700000000000}}}}"#,
            hash("dop_old")
        );
        std::fs::write(store.document_path(TOKENS).unwrap(), old).unwrap();
        let caller = TokenCache::default().check(&store, "dop_old").unwrap();
        assert_eq!((caller.name.as_str(), caller.role), ("ops", Role::Admin));
        assert!(caller.scope.is_all());
        let listed = list(&store).unwrap();
        assert_eq!((listed[0].role, listed[0].plans.len()), (Role::Admin, 0));
    }

    #[test]
    fn a_token_has_the_role_and_plans_it_was_made_with_and_bad_patterns_store_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let plans = vec!["db".to_string(), "/^web/".to_string()];
        let token = create(&store, "ci", Role::Operate, &plans).unwrap();
        let cache = TokenCache::default();
        let caller = cache.check(&store, &token).unwrap();
        assert_eq!(caller.role, Role::Operate);
        assert!(caller.scope.allows("web1") && !caller.scope.allows("mail"));
        let refused = create(&store, "bad", Role::Read, &["/[/".to_string()]).unwrap_err();
        assert!(
            refused
                .to_string()
                .starts_with("--plans: the pattern '/[/' is not a valid"),
            "{refused}"
        );
        assert_eq!(list(&store).unwrap().len(), 1, "nothing stored for 'bad'");
        revoke(&store, "ci").unwrap();
        assert!(!cache.is_active(&store, &caller), "seen revoked at once");
    }
}
