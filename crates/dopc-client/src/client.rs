//! The client of the dopc API: typed calls over HTTP(S), bearer token, a custom CA, timeouts
//! and retries of idempotent calls, and websocket streams that resume from the last sequence
//! number after a disconnect (a server restart included).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

use crate::api::{
    CancelRequest, ClearRequest, ErrorBody, ErrorDetail, Event, ExecOptions, Execution,
    ExecutionPage, ExecutionRequest, Finding, LogText, MonitorDocument, MonitorSettings,
    PlanDiffAnswer, PlanList, PlanRemoved, PlanReset, PlanState, PlanStored, PlanText, PlanUpload,
    Pong, ResetRequest, StateStreamEnd, Status, StreamEnd, Task, Versions,
};

/// A call without a body.
const NO_BODY: Option<&()> = None;

/// Where the server is and how to talk to it.
#[derive(Clone)]
pub struct ClientConfig {
    /// `http://127.0.0.1:8780` or `https://…`.
    pub url: String,
    /// The bearer token (never printed).
    pub token: Option<String>,
    /// A CA certificate (PEM) to trust for HTTPS, instead of the system's roots.
    pub ca: Option<PathBuf>,
    /// How long one request may take.
    pub timeout: Duration,
    /// How often an idempotent call is tried again after a connection failure.
    pub retries: u32,
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("url", &self.url)
            .field("token", &self.token.as_ref().map(|_| "****"))
            .field("ca", &self.ca)
            .field("timeout", &self.timeout)
            .field("retries", &self.retries)
            .finish()
    }
}

impl Default for ClientConfig {
    fn default() -> ClientConfig {
        ClientConfig {
            url: "http://127.0.0.1:8780".into(),
            token: None,
            ca: None,
            timeout: Duration::from_secs(30),
            retries: 3,
        }
    }
}

/// Why a call failed. Each says in one line what happened and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing answered.
    #[error("cannot reach dopc at {url}: {reason} (is `dopc serve` running there? set --url or DOPC_URL)")]
    Unreachable {
        /// The server URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The TLS handshake failed.
    #[error("TLS with {url} failed: {reason} (give the server's CA with --ca or DOPC_CA)")]
    Tls {
        /// The server URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The token was refused.
    #[error("the server refused the token: {0} (set --token or DOPC_TOKEN; make one with `dopc token create NAME` on the server)")]
    Unauthorized(String),
    /// The server answered with an error.
    #[error("{message} ({status} {code})")]
    Api {
        /// HTTP status.
        status: u16,
        /// The error code.
        code: String,
        /// The message.
        message: String,
        /// An invalid plan's findings (empty for other errors).
        findings: Vec<Finding>,
    },
    /// The call took longer than the timeout.
    #[error("dopc at {url} did not answer within {seconds} s")]
    Timeout {
        /// The server URL.
        url: String,
        /// The timeout.
        seconds: u64,
    },
    /// The client is set up wrong (bad URL, unreadable CA).
    #[error("{0}")]
    Config(String),
    /// The answer was not what the API promises.
    #[error("unexpected answer from dopc: {0}")]
    Protocol(String),
}

/// `?a=1&b=2` of the pairs that have a value, each value form-encoded (a node named `a&b`, a
/// `+` or a `#` in a filter would otherwise end the value, add a parameter or cut the query);
/// empty when none has a value.
fn query(pairs: &[(&str, Option<&str>)]) -> String {
    // reqwest's URL type carries the form serializer, so no crate of its own is needed for it.
    let mut url = reqwest::Url::parse("http://query.invalid/").expect("a valid URL");
    let set: Vec<(&str, &str)> = pairs
        .iter()
        .filter_map(|(k, v)| v.map(|v| (*k, v)))
        .collect();
    if set.is_empty() {
        return String::new();
    }
    url.query_pairs_mut().extend_pairs(set);
    format!("?{}", url.query().unwrap_or_default())
}

/// `/plans/NAME` of a name that is a plan name: any other text (`../executions/5`, `a?b`) would
/// be read as another path or a query, and reach another endpoint than the one asked for.
fn plan_root(name: &str) -> Result<String, ClientError> {
    dop_core::check_plan_name(name).map_err(ClientError::Config)?;
    Ok(format!("/plans/{name}"))
}

/// A client.
#[derive(Clone)]
pub struct Client {
    config: ClientConfig,
    http: reqwest::Client,
    tls: Option<Arc<rustls::ClientConfig>>,
}

fn tls_config(
    ca: &std::path::Path,
) -> Result<(reqwest::Certificate, Arc<rustls::ClientConfig>), ClientError> {
    use rustls::pki_types::pem::PemObject;
    let pem = std::fs::read(ca)
        .map_err(|e| ClientError::Config(format!("cannot read the CA {}: {e}", ca.display())))?;
    let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| {
        ClientError::Config(format!("{} is not a PEM certificate: {e}", ca.display()))
    })?;
    let mut roots = rustls::RootCertStore::empty();
    for der in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
        let der = der.map_err(|e| {
            ClientError::Config(format!("{} is not a PEM certificate: {e}", ca.display()))
        })?;
        roots
            .add(der)
            .map_err(|e| ClientError::Config(format!("{}: {e}", ca.display())))?;
    }
    if roots.is_empty() {
        return Err(ClientError::Config(format!(
            "{} holds no PEM certificate",
            ca.display()
        )));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok((cert, Arc::new(config)))
}

/// The chain of causes of an error, for a one-line message.
fn causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

impl Client {
    /// A client for the configured server.
    pub fn new(config: ClientConfig) -> Result<Client, ClientError> {
        if !(config.url.starts_with("http://") || config.url.starts_with("https://")) {
            return Err(ClientError::Config(format!(
                "the server URL '{}' must start with http:// or https://",
                config.url
            )));
        }
        let mut builder = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(Duration::from_secs(10));
        let mut tls = None;
        if let Some(ca) = &config.ca {
            let (cert, rustls) = tls_config(ca)?;
            builder = builder
                .tls_built_in_root_certs(false)
                .add_root_certificate(cert);
            tls = Some(rustls);
        }
        let http = builder
            .build()
            .map_err(|e| ClientError::Config(causes(&e)))?;
        Ok(Client { config, http, tls })
    }

    /// The server URL.
    pub fn url(&self) -> &str {
        &self.config.url
    }

    fn endpoint(&self, path: &str) -> String {
        format!("{}/api/v1{path}", self.config.url.trim_end_matches('/'))
    }

    fn transport_error(&self, e: &reqwest::Error) -> ClientError {
        let reason = causes(e);
        if e.is_timeout() {
            ClientError::Timeout {
                url: self.config.url.clone(),
                seconds: self.config.timeout.as_secs(),
            }
        } else if reason.contains("certificate")
            || reason.contains("tls")
            || reason.contains("TLS")
            || reason.contains("InvalidContentType")
        {
            ClientError::Tls {
                url: self.config.url.clone(),
                reason,
            }
        } else {
            ClientError::Unreachable {
                url: self.config.url.clone(),
                reason,
            }
        }
    }

    /// One call; idempotent ones are tried again after connection failures.
    async fn call<T: DeserializeOwned, B: Serialize + ?Sized>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let idempotent = method != reqwest::Method::POST;
        let mut attempt = 0;
        loop {
            let mut req = self.http.request(method.clone(), self.endpoint(path));
            if let Some(t) = &self.config.token {
                req = req.bearer_auth(t);
            }
            if let Some(b) = body {
                req = req.json(b);
            }
            match req.send().await {
                Ok(res) => return self.answer(res).await,
                Err(e)
                    if idempotent
                        && attempt < self.config.retries
                        && (e.is_connect() || e.is_request())
                        && !e.is_timeout() =>
                {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
                }
                Err(e) => return Err(self.transport_error(&e)),
            }
        }
    }

    async fn answer<T: DeserializeOwned>(&self, res: reqwest::Response) -> Result<T, ClientError> {
        let status = res.status().as_u16();
        let text = res.text().await.map_err(|e| self.transport_error(&e))?;
        let not_json = || {
            ClientError::Protocol(format!(
                "status {status}, not JSON: {}",
                text.chars().take(200).collect::<String>()
            ))
        };
        if status >= 400 {
            // A proxy in between may answer errors with a body of its own: the status still
            // says what happened.
            let error = match serde_json::from_str::<ErrorBody>(&text) {
                Ok(body) => body.error,
                Err(_) if serde_json::from_str::<Value>(&text).is_ok() => ErrorDetail {
                    code: "unknown".into(),
                    message: "the server gave no reason".into(),
                    details: Vec::new(),
                },
                Err(_) => return Err(not_json()),
            };
            if status == 401 {
                return Err(ClientError::Unauthorized(error.message));
            }
            return Err(ClientError::Api {
                status,
                code: error.code,
                message: error.message,
                findings: error.details,
            });
        }
        serde_json::from_str(&text).map_err(|e| {
            if serde_json::from_str::<Value>(&text).is_err() {
                not_json()
            } else {
                ClientError::Protocol(e.to_string())
            }
        })
    }

    /// `GET /ping`.
    pub async fn ping(&self) -> Result<Pong, ClientError> {
        self.call(reqwest::Method::GET, "/ping", NO_BODY).await
    }

    /// `GET /plans`.
    pub async fn plans(&self) -> Result<PlanList, ClientError> {
        self.call(reqwest::Method::GET, "/plans", NO_BODY).await
    }

    /// `POST /plans` with the plan's text (includes already expanded).
    pub async fn add_plan(&self, text: &str, force: bool) -> Result<PlanStored, ClientError> {
        self.call(
            reqwest::Method::POST,
            "/plans",
            Some(&PlanUpload::text(text, force)),
        )
        .await
    }

    /// `PUT /plans/{name}`.
    pub async fn update_plan(
        &self,
        name: &str,
        upload: &PlanUpload,
    ) -> Result<PlanStored, ClientError> {
        self.call(reqwest::Method::PUT, &plan_root(name)?, Some(upload))
            .await
    }

    /// `GET /plans/{name}`.
    pub async fn plan(&self, name: &str, version: Option<u64>) -> Result<PlanText, ClientError> {
        let version = version.map(|v| v.to_string());
        let query = query(&[("version", version.as_deref())]);
        self.call(
            reqwest::Method::GET,
            &format!("{}{query}", plan_root(name)?),
            NO_BODY,
        )
        .await
    }

    /// `GET /plans/{name}/versions`.
    pub async fn versions(&self, name: &str) -> Result<Versions, ClientError> {
        self.call(
            reqwest::Method::GET,
            &format!("{}/versions", plan_root(name)?),
            NO_BODY,
        )
        .await
    }

    /// `GET /plans/{name}/diff`.
    pub async fn diff(
        &self,
        name: &str,
        from: Option<u64>,
        to: Option<u64>,
    ) -> Result<PlanDiffAnswer, ClientError> {
        let from = from.map(|v| v.to_string());
        let to = to.map(|v| v.to_string());
        let query = query(&[("from", from.as_deref()), ("to", to.as_deref())]);
        self.call(
            reqwest::Method::GET,
            &format!("{}/diff{query}", plan_root(name)?),
            NO_BODY,
        )
        .await
    }

    /// `DELETE /plans/{name}`.
    pub async fn delete_plan(&self, name: &str) -> Result<PlanRemoved, ClientError> {
        self.call(reqwest::Method::DELETE, &plan_root(name)?, NO_BODY)
            .await
    }

    /// `PUT /plans/{name}/reset`: what `request` names (every step set, one, or one step).
    pub async fn reset(
        &self,
        name: &str,
        request: &ResetRequest,
    ) -> Result<PlanReset, ClientError> {
        self.call(
            reqwest::Method::PUT,
            &format!("{}/reset", plan_root(name)?),
            Some(request),
        )
        .await
    }

    /// `GET /plans/{name}/state`.
    pub async fn state(&self, name: &str) -> Result<PlanState, ClientError> {
        self.call(
            reqwest::Method::GET,
            &format!("{}/state", plan_root(name)?),
            NO_BODY,
        )
        .await
    }

    /// `GET /plans/{name}/monitor`.
    pub async fn monitor(&self, name: &str) -> Result<MonitorDocument, ClientError> {
        self.call(
            reqwest::Method::GET,
            &format!("{}/monitor", plan_root(name)?),
            NO_BODY,
        )
        .await
    }

    /// `PUT /plans/{name}/monitor` (`Some`), or `DELETE` (`None`: back to `dopc.toml`'s).
    pub async fn set_monitor(
        &self,
        name: &str,
        settings: Option<&MonitorSettings>,
    ) -> Result<MonitorDocument, ClientError> {
        let path = format!("{}/monitor", plan_root(name)?);
        match settings {
            Some(s) => self.call(reqwest::Method::PUT, &path, Some(s)).await,
            None => self.call(reqwest::Method::DELETE, &path, NO_BODY).await,
        }
    }

    /// `GET /metrics`: the Prometheus text.
    pub async fn metrics(&self) -> Result<String, ClientError> {
        let mut req = self.http.get(self.endpoint("/metrics"));
        if let Some(t) = &self.config.token {
            req = req.bearer_auth(t);
        }
        let res = req.send().await.map_err(|e| self.transport_error(&e))?;
        if !res.status().is_success() {
            return self.answer(res).await;
        }
        res.text().await.map_err(|e| self.transport_error(&e))
    }

    /// `GET /executions`.
    pub async fn executions(
        &self,
        plan: Option<&str>,
        status: Option<Status>,
        page: &ExecutionPage,
    ) -> Result<Vec<Execution>, ClientError> {
        let status = status.map(Status::name);
        let (limit, before, since) = (
            page.limit.map(|n| n.to_string()),
            page.before.map(|n| n.to_string()),
            page.since.map(|n| n.to_string()),
        );
        let query = query(&[
            ("plan", plan),
            ("status", status),
            ("limit", limit.as_deref()),
            ("before", before.as_deref()),
            ("since", since.as_deref()),
        ]);
        self.call(
            reqwest::Method::GET,
            &format!("/executions{query}"),
            NO_BODY,
        )
        .await
    }

    /// `GET /executions/{id}`.
    pub async fn execution(&self, id: u64) -> Result<Execution, ClientError> {
        self.call(reqwest::Method::GET, &format!("/executions/{id}"), NO_BODY)
            .await
    }

    /// `POST /executions`.
    pub async fn execute(
        &self,
        plan: &str,
        task: Task,
        options: &ExecOptions,
    ) -> Result<Execution, ClientError> {
        self.call(
            reqwest::Method::POST,
            "/executions",
            Some(&ExecutionRequest {
                plan: plan.to_string(),
                task,
                options: options.clone(),
            }),
        )
        .await
    }

    /// `POST /executions/{id}/cancel`.
    pub async fn cancel(&self, id: u64, force: bool) -> Result<Execution, ClientError> {
        self.call(
            reqwest::Method::POST,
            &format!("/executions/{id}/cancel"),
            Some(&CancelRequest { force }),
        )
        .await
    }

    /// `DELETE /executions/{id}`.
    pub async fn remove_execution(&self, id: u64) -> Result<Execution, ClientError> {
        self.call(
            reqwest::Method::DELETE,
            &format!("/executions/{id}"),
            NO_BODY,
        )
        .await
    }

    /// `DELETE /executions`.
    pub async fn clear(
        &self,
        statuses: &[Status],
        plan: Option<&str>,
        age: Option<u64>,
    ) -> Result<Vec<Execution>, ClientError> {
        self.call(
            reqwest::Method::DELETE,
            "/executions",
            Some(&ClearRequest {
                statuses: statuses.to_vec(),
                plan: plan.map(str::to_string),
                age,
            }),
        )
        .await
    }

    /// `GET /executions/{id}/log`.
    pub async fn log(
        &self,
        id: u64,
        node: Option<&str>,
        level: Option<&str>,
    ) -> Result<LogText, ClientError> {
        let query = query(&[("node", node), ("level", level)]);
        self.call(
            reqwest::Method::GET,
            &format!("/executions/{id}/log{query}"),
            NO_BODY,
        )
        .await
    }

    async fn websocket(
        &self,
        path: &str,
    ) -> Result<
        tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
        ClientError,
    > {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let url = self.endpoint(path).replacen("http", "ws", 1);
        let mut req = url
            .as_str()
            .into_client_request()
            .map_err(|e| ClientError::Config(e.to_string()))?;
        if let Some(t) = &self.config.token {
            let value = format!("Bearer {t}")
                .parse()
                .map_err(|_| ClientError::Config("the token is not a valid header value".into()))?;
            req.headers_mut().insert("Authorization", value);
        }
        let connector = self.tls.clone().map(tokio_tungstenite::Connector::Rustls);
        match tokio_tungstenite::connect_async_tls_with_config(req, None, false, connector).await {
            Ok((ws, _)) => Ok(ws),
            Err(tokio_tungstenite::tungstenite::Error::Http(res)) if res.status() == 401 => Err(
                ClientError::Unauthorized("the token is unknown or revoked".into()),
            ),
            Err(tokio_tungstenite::tungstenite::Error::Http(res)) => Err(ClientError::Api {
                status: res.status().as_u16(),
                code: "websocket".into(),
                message: String::from_utf8_lossy(res.body().as_deref().unwrap_or_default())
                    .into_owned(),
                findings: Vec::new(),
            }),
            Err(e) => {
                let reason = causes(&e);
                if reason.to_lowercase().contains("tls") || reason.contains("certificate") {
                    Err(ClientError::Tls {
                        url: self.config.url.clone(),
                        reason,
                    })
                } else {
                    Err(ClientError::Unreachable {
                        url: self.config.url.clone(),
                        reason,
                    })
                }
            }
        }
    }

    /// Follows an execution's events from `since` until it ends, calling `on_event` with each
    /// event exactly once, in order. A dropped connection (a server restart, a lag) is resumed
    /// from the last sequence number seen, for up to `patience` of failed reconnects. Returns
    /// the final status.
    pub async fn follow(
        &self,
        id: u64,
        since: u64,
        patience: Duration,
        mut on_event: impl FnMut(&Event),
    ) -> Result<Status, ClientError> {
        let mut last = since;
        let mut failing_since: Option<std::time::Instant> = None;
        loop {
            let mut ws = match self
                .websocket(&format!("/executions/{id}/log/stream?since={last}"))
                .await
            {
                Ok(ws) => {
                    failing_since = None;
                    ws
                }
                Err(e @ (ClientError::Unreachable { .. } | ClientError::Timeout { .. })) => {
                    let started = *failing_since.get_or_insert_with(std::time::Instant::now);
                    if started.elapsed() > patience {
                        return Err(e);
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            while let Some(msg) = ws.next().await {
                let Ok(msg) = msg else { break };
                if msg.is_close() {
                    revoked(&msg)?;
                    break;
                }
                // Only text frames carry documents; pings and pongs are the transport's.
                let Message::Text(text) = msg else { continue };
                let text = text.as_str();
                if let Ok(end) = serde_json::from_str::<StreamEnd>(text) {
                    if end.kind == "end" {
                        return end.status.ok_or_else(|| ClientError::Api {
                            status: 404,
                            code: "not_found".into(),
                            message: format!("execution {id} was removed while it was followed"),
                            findings: Vec::new(),
                        });
                    }
                }
                let event = serde_json::from_str::<Event>(text).map_err(|e| {
                    ClientError::Protocol(format!("a log event that is not one ({e}): {text}"))
                })?;
                if event.seq > last {
                    last = event.seq;
                    on_event(&event);
                }
            }
            // Dropped before the end: resume from `last`.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Calls `on_state` with the plan's state now and after every change, until it returns
    /// false or the stream ends (the plan was removed, or the server stops).
    pub async fn watch_state(
        &self,
        name: &str,
        mut on_state: impl FnMut(&PlanState) -> bool,
    ) -> Result<(), ClientError> {
        let mut ws = self
            .websocket(&format!("{}/state/stream", plan_root(name)?))
            .await?;
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_close() {
                revoked(&msg)?;
                break;
            }
            let Message::Text(text) = msg else { continue };
            let text = text.as_str();
            if let Ok(end) = serde_json::from_str::<StateStreamEnd>(text) {
                if end.kind == "end" {
                    break;
                }
            }
            let state = serde_json::from_str::<PlanState>(text).map_err(|e| {
                ClientError::Protocol(format!("a state document that is not one ({e}): {text}"))
            })?;
            if !on_state(&state) {
                break;
            }
        }
        Ok(())
    }
}

/// A stream closed because its token was revoked is refused, not resumed: reconnecting would
/// only be refused again.
fn revoked(close: &Message) -> Result<(), ClientError> {
    match close {
        Message::Close(Some(frame)) if u16::from(frame.code) == crate::api::CLOSE_TOKEN_REVOKED => {
            Err(ClientError::Unauthorized(format!(
                "the stream was closed: {}",
                frame.reason
            )))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::query;

    #[test]
    fn query_values_are_form_encoded() {
        assert_eq!(
            query(&[
                ("node", Some("a b&c=d#e+f/%")),
                ("level", None),
                ("x", Some("1"))
            ]),
            "?node=a+b%26c%3Dd%23e%2Bf%2F%25&x=1"
        );
        assert_eq!(query(&[("node", None)]), "");
    }

    #[test]
    fn only_a_plan_name_becomes_a_plan_path() {
        assert_eq!(super::plan_root("web-1").unwrap(), "/plans/web-1");
        // The URL parser would make these `/executions/5` and a query: refused before sending.
        for name in ["../executions/5", "a?b", "a/b", "", "a%2Fb"] {
            let refused = super::plan_root(name).unwrap_err();
            assert!(
                matches!(&refused, super::ClientError::Config(m) if m.contains("plan name")),
                "{name}: {refused}"
            );
        }
    }
}
