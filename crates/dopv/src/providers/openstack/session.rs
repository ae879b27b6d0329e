//! One authenticated connection to an OpenStack cloud for one project: Keystone v3 password
//! authentication, the token and its service catalog reused by every request, renewed when it
//! ages or is refused, and typed errors that name the service, the request and the cloud's own
//! message.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// Tokens are renewed after this long even if the cloud still accepts them: Keystone's default
/// lifetime is one hour, and a renewal mid-deploy is cheaper than a refused request.
const TOKEN_RENEWAL: Duration = Duration::from_secs(45 * 60);
/// How many times a read that found no answer is tried in all.
const READ_ATTEMPTS: u32 = 3;

/// The OpenStack services dopv uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    /// Nova.
    Compute,
    /// Neutron.
    Network,
    /// Cinder.
    Volume,
    /// Glance.
    Image,
}

impl Service {
    /// The catalog types the service is registered under, preferred first.
    fn catalog_types(self) -> &'static [&'static str] {
        match self {
            Service::Compute => &["compute"],
            Service::Network => &["network"],
            Service::Volume => &["volumev3", "block-storage", "volume"],
            Service::Image => &["image"],
        }
    }

    /// The path the API's resources live under when the catalog URL does not carry it.
    fn version_path(self) -> Option<&'static str> {
        match self {
            Service::Network => Some("/v2.0"),
            Service::Image => Some("/v2"),
            Service::Compute | Service::Volume => None,
        }
    }

    /// The microversion header this provider is written against.
    fn microversion(self) -> Option<(&'static str, &'static str)> {
        match self {
            // 2.64: server groups with one `policy`; 2.47: a server's flavor by name; 2.52:
            // tags given at create.
            Service::Compute => Some(("OpenStack-API-Version", "compute 2.64")),
            _ => None,
        }
    }
}

impl std::fmt::Display for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Service::Compute => "Nova (compute)",
            Service::Network => "Neutron (network)",
            Service::Volume => "Cinder (volume)",
            Service::Image => "Glance (image)",
        })
    }
}

/// Why a request to the cloud failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Keystone refused the credentials or the project.
    #[error(
        "Keystone at {url} refused user '{user}' for project '{project}' (domain '{domain}'): HTTP {status}: {message}; check the infrastructure's credentials and the node's tenant/domain_id"
    )]
    Auth {
        /// The tokens URL.
        url: String,
        /// The user.
        user: String,
        /// The project.
        project: String,
        /// Its domain.
        domain: String,
        /// The HTTP status.
        status: u16,
        /// Keystone's message.
        message: String,
    },
    /// The request got no answer in time.
    #[error("{service} did not answer {method} {url} within {secs} s")]
    Timeout {
        /// The service.
        service: String,
        /// The method.
        method: Method,
        /// The URL.
        url: String,
        /// The timeout.
        secs: u64,
    },
    /// The service could not be reached at all.
    #[error("cannot reach {service} at {url}: {reason}")]
    Unreachable {
        /// The service.
        service: String,
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The service answered with an error.
    #[error("{service} refused {method} {path}: HTTP {status}: {message}")]
    Refused {
        /// The service.
        service: Service,
        /// The method.
        method: Method,
        /// The path.
        path: String,
        /// The HTTP status.
        status: StatusCode,
        /// The cloud's message.
        message: String,
    },
    /// The catalog has no endpoint for a service.
    #[error(
        "the service catalog of project '{project}' has no {service} endpoint with interface '{interface}'"
    )]
    NoEndpoint {
        /// The service.
        service: Service,
        /// The project.
        project: String,
        /// The interface asked for.
        interface: String,
    },
    /// An answer was not what the API documents.
    #[error("{service} answered {path} with something unexpected: {detail}")]
    Unexpected {
        /// The service.
        service: Service,
        /// The path.
        path: String,
        /// What was wrong.
        detail: String,
    },
}

impl ApiError {
    /// The HTTP status of a refusal.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ApiError::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// True when the resource asked for does not exist.
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(StatusCode::NOT_FOUND)
    }
}

/// Who logs in, and to which project.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Login {
    /// Keystone's tokens URL (`…/v3/auth/tokens`).
    pub tokens_url: String,
    /// The user.
    pub user: String,
    /// The password.
    pub password: String,
    /// The project (the plan's `tenant`).
    pub project: String,
    /// The domain of the user and the project (the plan's `domain_id`).
    pub domain: String,
    /// The catalog interface (`public`, `internal`, `admin`).
    pub interface: String,
}

/// Keystone's tokens URL for an infrastructure endpoint: the endpoint as given when it ends in
/// `/auth/tokens`, with `/auth/tokens` added when it ends in `/v3`, else with `/v3/auth/tokens`.
pub fn tokens_url(endpoint: &str) -> String {
    let base = endpoint.trim_end_matches('/');
    if base.ends_with("/auth/tokens") {
        base.to_string()
    } else if base.ends_with("/v3") {
        format!("{base}/auth/tokens")
    } else {
        format!("{base}/v3/auth/tokens")
    }
}

/// The catalog interface for the plan's `endpoint_type`.
pub fn interface(endpoint_type: Option<&str>) -> String {
    match endpoint_type.unwrap_or("publicURL") {
        "internalURL" | "internal" => "internal",
        "adminURL" | "admin" => "admin",
        _ => "public",
    }
    .to_string()
}

#[derive(Clone)]
struct Token {
    value: String,
    issued: Instant,
    /// The id of the project the token is scoped to.
    project_id: String,
    /// (catalog type, interface, URL).
    endpoints: Vec<(String, String, String)>,
}

/// Redirects are followed only within the origin (scheme, host and port) of the request
/// that was redirected. reqwest drops `Authorization` on a redirect to another host, but not
/// `X-Auth-Token`, and it sends a login's body (the password) again on a 307: a cloud, or
/// whoever answers for it, could send both to any server.
fn same_origin_redirects() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let from = attempt.previous().last().map(reqwest::Url::origin);
        if attempt.previous().len() > MAX_REDIRECTS {
            attempt.error(format!("more than {MAX_REDIRECTS} redirects"))
        } else if from.as_ref() == Some(&attempt.url().origin()) {
            attempt.follow()
        } else {
            let to = attempt.url().to_string();
            attempt.error(format!(
                "it redirects to {to}, another origin; dopv does not follow, so that the token \
                 and password go only where the plan says (put that URL in the plan's endpoint \
                 if it is the cloud's)"
            ))
        }
    })
}

/// Most redirects followed for one request.
const MAX_REDIRECTS: usize = 5;

/// An authenticated connection for one login.
pub struct Session {
    http: reqwest::Client,
    login: Login,
    timeout: Duration,
    token: tokio::sync::Mutex<Option<Token>>,
}

impl Session {
    /// A session; nothing is sent until the first request.
    pub fn new(login: Login, timeout: Duration) -> Result<Session, ApiError> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .redirect(same_origin_redirects())
            .build()
            .map_err(|e| ApiError::Unreachable {
                service: "the HTTP client".into(),
                url: login.tokens_url.clone(),
                reason: e.to_string(),
            })?;
        Ok(Session {
            http,
            login,
            timeout,
            token: tokio::sync::Mutex::new(None),
        })
    }

    /// The project this session works in.
    pub fn project(&self) -> &str {
        &self.login.project
    }

    /// Authenticates now (or reuses a fresh token): the check that the cloud takes the
    /// credentials.
    pub async fn authenticate(&self) -> Result<(), ApiError> {
        self.token(false).await.map(|_| ())
    }

    async fn token(&self, renew: bool) -> Result<Token, ApiError> {
        // One login at a time: concurrent nodes wait for the same token.
        let mut slot = self.token.lock().await;
        if let Some(t) = slot.as_ref() {
            if !renew && t.issued.elapsed() < TOKEN_RENEWAL {
                return Ok(t.clone());
            }
        }
        let fresh = self.login().await?;
        *slot = Some(fresh.clone());
        Ok(fresh)
    }

    async fn login(&self) -> Result<Token, ApiError> {
        let l = &self.login;
        let body = json!({"auth": {
            "identity": {"methods": ["password"], "password": {"user": {
                "name": l.user, "domain": {"id": l.domain}, "password": l.password}}},
            "scope": {"project": {"name": l.project, "domain": {"id": l.domain}}}
        }});
        let response = self
            .http
            .post(&l.tokens_url)
            .json(&body)
            .send()
            .await
            .map_err(|e| self.transport("Keystone", &Method::POST, &l.tokens_url, &e))?;
        let status = response.status();
        let token = response
            .headers()
            .get("x-subject-token")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let text = response.text().await.unwrap_or_default();
        let token = match token {
            Some(t) if status.is_success() => t,
            _ => {
                return Err(ApiError::Auth {
                    url: l.tokens_url.clone(),
                    user: l.user.clone(),
                    project: l.project.clone(),
                    domain: l.domain.clone(),
                    status: status.as_u16(),
                    message: message_of(&text),
                })
            }
        };
        let document: Value = serde_json::from_str(&text).unwrap_or_default();
        let mut endpoints = Vec::new();
        for service in document["token"]["catalog"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let kind = service["type"].as_str().unwrap_or_default();
            for e in service["endpoints"].as_array().into_iter().flatten() {
                if let (Some(interface), Some(url)) = (e["interface"].as_str(), e["url"].as_str()) {
                    endpoints.push((kind.to_string(), interface.to_string(), url.to_string()));
                }
            }
        }
        Ok(Token {
            value: token,
            issued: Instant::now(),
            project_id: document["token"]["project"]["id"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            endpoints,
        })
    }

    fn base_url(&self, token: &Token, service: Service) -> Result<String, ApiError> {
        let url = service
            .catalog_types()
            .iter()
            .find_map(|kind| {
                token
                    .endpoints
                    .iter()
                    .find(|(k, i, _)| k == kind && *i == self.login.interface)
            })
            .map(|(_, _, url)| url.trim_end_matches('/').to_string())
            .ok_or_else(|| ApiError::NoEndpoint {
                service,
                project: self.login.project.clone(),
                interface: self.login.interface.clone(),
            })?;
        Ok(match service.version_path() {
            Some(v) if !url.ends_with(v) => format!("{url}{v}"),
            _ => url,
        })
    }

    /// The id of the project this session works in.
    pub async fn project_id(&self) -> Result<String, ApiError> {
        Ok(self.token(false).await?.project_id)
    }

    /// True when the project's catalog lists the service.
    pub async fn has(&self, service: Service) -> Result<bool, ApiError> {
        let token = self.token(false).await?;
        Ok(self.base_url(&token, service).is_ok())
    }

    fn transport(&self, service: &str, method: &Method, url: &str, e: &reqwest::Error) -> ApiError {
        if e.is_timeout() {
            ApiError::Timeout {
                service: service.to_string(),
                method: method.clone(),
                url: url.to_string(),
                secs: self.timeout.as_secs(),
            }
        } else {
            // The innermost cause says what happened ("Connection refused"); the outer
            // layers only repeat the URL.
            let mut reason = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                reason = s.to_string();
                source = s.source();
            }
            ApiError::Unreachable {
                service: service.to_string(),
                url: url.to_string(),
                reason,
            }
        }
    }

    /// Sends a request; returns the answer's JSON (`Null` for an empty answer). A refused token
    /// is renewed once; reads that got no answer are tried again.
    pub async fn call(
        &self,
        service: Service,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<Value, ApiError> {
        let attempts = if method == Method::GET {
            READ_ATTEMPTS
        } else {
            1
        };
        let mut renewed = false;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let token = self.token(false).await?;
            let url = format!("{}{path}", self.base_url(&token, service)?);
            let mut request = self
                .http
                .request(method.clone(), &url)
                .header("X-Auth-Token", &token.value)
                .header("Accept", "application/json");
            if let Some((name, value)) = service.microversion() {
                request = request.header(name, value);
            }
            if !query.is_empty() {
                request = request.query(query);
            }
            if let Some(b) = body {
                request = request.json(b);
            }
            tracing::debug!(%service, %method, %url, attempt, "openstack: request");
            let response = match request.send().await {
                Ok(r) => r,
                Err(e) => {
                    let error = self.transport(&service.to_string(), &method, &url, &e);
                    tracing::debug!(%service, %method, %url, attempt, %error, "openstack: no answer");
                    // A redirect refused is the same answer next time.
                    if attempt < attempts && !e.is_redirect() {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                    return Err(error);
                }
            };
            let status = response.status();
            tracing::debug!(%service, %method, %url, %status, "openstack: answer");
            let text = match response.text().await {
                Ok(t) => t,
                Err(e) => return Err(self.transport(&service.to_string(), &method, &url, &e)),
            };
            if status == StatusCode::UNAUTHORIZED && !renewed {
                renewed = true;
                self.token(true).await?;
                continue;
            }
            if status == StatusCode::SERVICE_UNAVAILABLE && attempt < attempts {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            if !status.is_success() {
                return Err(ApiError::Refused {
                    service,
                    method,
                    path: path.to_string(),
                    status,
                    message: message_of(&text),
                });
            }
            if text.trim().is_empty() {
                return Ok(Value::Null);
            }
            return serde_json::from_str(&text).map_err(|e| ApiError::Unexpected {
                service,
                path: path.to_string(),
                detail: format!("not JSON ({e})"),
            });
        }
    }
}

/// The cloud's own message from an error answer: services wrap it differently (Nova and Cinder
/// `{"badRequest": {"message": …}}`, Neutron `{"NeutronError": {"message": …}}`, Keystone
/// `{"error": {"message": …}}`); anything else is shown shortened.
pub fn message_of(text: &str) -> String {
    if let Ok(Value::Object(map)) = serde_json::from_str::<Value>(text) {
        for value in map.values() {
            if let Some(m) = value.get("message").and_then(Value::as_str) {
                return m.to_string();
            }
        }
        if let Some(m) = map.get("message").and_then(Value::as_str) {
            return m.to_string();
        }
    }
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut short: String = flat.chars().take(300).collect();
    if flat.chars().count() > 300 {
        short.push('…');
    }
    if short.is_empty() {
        "(no message)".into()
    } else {
        short
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_refused_token_is_renewed_once_and_the_request_goes_through() {
        let os = match dop_testbed::openstack::OpenStack::find() {
            Ok(os) => os,
            Err(reason) => {
                eprintln!("skipped: {reason}");
                return;
            }
        };
        let login = Login {
            tokens_url: tokens_url(&os.auth_url),
            user: os.demo.username.clone(),
            password: os.demo.password.clone(),
            project: os.demo.project.clone(),
            domain: os.demo.domain.clone(),
            interface: "public".into(),
        };
        let session = Session::new(login, Duration::from_secs(30)).unwrap();
        session.authenticate().await.unwrap();
        // The cloud stops taking the token (expired, revoked): Nova answers 401.
        session.token.lock().await.as_mut().unwrap().value = "not-a-token".into();
        let flavors = session
            .call(Service::Compute, Method::GET, "/flavors", &[], None)
            .await
            .unwrap();
        assert!(flavors["flavors"].as_array().is_some_and(|f| !f.is_empty()));
        let renewed = session.token.lock().await.clone().unwrap();
        assert_ne!(renewed.value, "not-a-token");

        // Wrong credentials are an error that says so, with Keystone's status.
        let mut wrong = session.login.clone();
        wrong.password = "wrong".into();
        let e = Session::new(wrong, Duration::from_secs(30))
            .unwrap()
            .authenticate()
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("refused user 'demo' for project 'demo'") && e.contains("HTTP 401"),
            "{e}"
        );
    }

    /// A loopback HTTP server that answers every request with `answer` and keeps what it was
    /// sent (request line and headers, lower case). Runs until the test's runtime ends.
    async fn http_server(
        answer: impl Fn(u16) -> String + Send + Sync + 'static,
    ) -> (u16, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 65536 {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                kept.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&head).to_lowercase());
                let _ = conn.write_all(answer(port).as_bytes()).await;
                let _ = conn.shutdown().await;
            }
        });
        (port, seen)
    }

    #[tokio::test]
    async fn no_token_or_password_follows_a_redirect_to_another_origin() {
        // The elsewhere server would take anything; the cloud sends everything there.
        let (elsewhere, reached) = http_server(|_| {
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\
             connection: close\r\n\r\n{}"
                .to_string()
        })
        .await;
        let (cloud, asked) = http_server(move |_| {
            format!(
                "HTTP/1.1 307 Temporary Redirect\r\nlocation: http://127.0.0.1:{elsewhere}/x\r\n\
                 content-length: 0\r\nconnection: close\r\n\r\n"
            )
        })
        .await;
        let login = Login {
            tokens_url: format!("http://127.0.0.1:{cloud}/v3/auth/tokens"),
            user: "demo".into(),
            password: "the-password".into(),
            project: "demo".into(),
            domain: "default".into(),
            interface: "public".into(),
        };
        let session = Session::new(login, Duration::from_secs(10)).unwrap();
        // The login (its body holds the password) is redirected: refused, not resent.
        let e = session.authenticate().await.unwrap_err().to_string();
        assert!(
            e.contains(&format!(
                "redirects to http://127.0.0.1:{elsewhere}/x, another origin"
            )),
            "{e}"
        );
        // A call with a token (as if the login had worked) is redirected: refused as well.
        *session.token.lock().await = Some(Token {
            value: "the-token".into(),
            issued: Instant::now(),
            project_id: "p".into(),
            endpoints: vec![(
                "compute".into(),
                "public".into(),
                format!("http://127.0.0.1:{cloud}/compute/v2.1"),
            )],
        });
        let e = session
            .call(Service::Compute, Method::GET, "/flavors", &[], None)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("another origin"), "{e}");
        let asked = asked.lock().unwrap().clone();
        assert_eq!(asked.len(), 2, "{asked:?}");
        assert!(asked[1].contains("x-auth-token: the-token"), "{asked:?}");
        assert!(
            reached.lock().unwrap().is_empty(),
            "the other origin was sent: {:?}",
            reached.lock().unwrap()
        );
    }

    #[test]
    fn endpoints_become_the_tokens_url() {
        assert_eq!(
            tokens_url("https://keystone.example.com:5000"),
            "https://keystone.example.com:5000/v3/auth/tokens"
        );
        assert_eq!(
            tokens_url("http://127.0.0.1:5000/v3/"),
            "http://127.0.0.1:5000/v3/auth/tokens"
        );
        assert_eq!(
            tokens_url("https://cloud.example.com/identity/v3/auth/tokens"),
            "https://cloud.example.com/identity/v3/auth/tokens"
        );
    }

    #[test]
    fn endpoint_types_map_to_catalog_interfaces() {
        assert_eq!(interface(None), "public");
        assert_eq!(interface(Some("internalURL")), "internal");
        assert_eq!(interface(Some("adminURL")), "admin");
    }

    #[test]
    fn each_services_error_message_is_found() {
        assert_eq!(
            message_of(
                r#"{"forbidden": {"message": "Quota exceeded for instances", "code": 403}}"#
            ),
            "Quota exceeded for instances"
        );
        assert_eq!(
            message_of(
                r#"{"NeutronError": {"type": "IpAddressInUse", "message": "IP in use", "detail": ""}}"#
            ),
            "IP in use"
        );
        assert_eq!(
            message_of(
                r#"{"error": {"code": 401, "message": "The request you have made requires authentication.", "title": "Unauthorized"}}"#
            ),
            "The request you have made requires authentication."
        );
        assert_eq!(
            message_of("<html>\n 502  Bad   Gateway</html>"),
            "<html> 502 Bad Gateway</html>"
        );
        assert_eq!(message_of(""), "(no message)");
    }
}
