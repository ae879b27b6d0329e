//! API errors: one JSON body for every failure, `{"error": {"code", "message", "details"?}}`,
//! with the status that says what went wrong. Never a backtrace.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use dopc_client::api::{ErrorBody, ErrorDetail, Finding};

/// A failed request.
#[derive(Debug)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// A stable machine-readable code (`not_found`, `invalid_plan`, …).
    pub code: &'static str,
    /// What was wrong, and where useful what to do.
    pub message: String,
    /// An invalid plan's findings.
    pub details: Vec<Finding>,
}

impl ApiError {
    /// An error without details.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            details: Vec::new(),
        }
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 404 for an execution that is not there (or that the caller may not see: the same body,
    /// so that a token learns nothing of plans outside its scope).
    pub fn no_execution(id: u64) -> ApiError {
        ApiError::not_found(format!("no execution {id}"))
    }

    /// 404 for a plan that is not there (or that the caller may not see: the same body).
    pub fn no_plan(name: &str) -> ApiError {
        ApiError::from(dop_store::StoreError::NoSuchPlan(name.to_string()))
    }

    /// 400: the request is malformed.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 422: well-formed, but its content is wrong.
    pub fn invalid(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }

    /// 409: the state of the server forbids it now.
    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, "conflict", message)
    }

    /// 500: logged; the client gets the message only.
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    /// The same with an invalid plan's findings.
    pub fn with_findings(mut self, findings: Vec<Finding>) -> ApiError {
        self.details = findings;
        self
    }
}

impl From<dop_store::StoreError> for ApiError {
    fn from(e: dop_store::StoreError) -> ApiError {
        use dop_store::StoreError as E;
        match &e {
            E::NoSuchPlan(_) | E::NoSuchIteration { .. } => ApiError::not_found(e.to_string()),
            E::InvalidName(_) => ApiError::invalid("invalid_name", e.to_string()),
            E::Locked { .. } | E::Busy { .. } => {
                ApiError::new(StatusCode::CONFLICT, "locked", e.to_string())
            }
            E::PlanExists(_) | E::NodeConflict { .. } | E::StillDeployed { .. } => {
                ApiError::conflict(e.to_string())
            }
            E::StaleSerial { .. } => ApiError::conflict(e.to_string()),
            E::InvalidPlan { .. } => ApiError::invalid("invalid_plan", e.to_string()),
            _ => ApiError::internal(e.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(code = self.code, message = %self.message, "request failed");
        }
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message,
                details: self.details,
            },
        };
        (self.status, axum::Json(body)).into_response()
    }
}

/// A JSON body whose rejections (wrong content type, malformed JSON, wrong types, unknown
/// fields, too large) are API errors.
pub struct Body<T>(pub T);

impl<S, T> axum::extract::FromRequest<S> for Body<T>
where
    axum::Json<T>:
        axum::extract::FromRequest<S, Rejection = axum::extract::rejection::JsonRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        use axum::extract::rejection::JsonRejection as R;
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Body(v)),
            Err(R::MissingJsonContentType(_)) => Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "the body must be JSON with `Content-Type: application/json`",
            )),
            Err(R::JsonSyntaxError(e)) => Err(ApiError::bad_request(format!(
                "malformed JSON: {}",
                e.body_text()
            ))),
            Err(R::JsonDataError(e)) => Err(ApiError::invalid("invalid_body", e.body_text())),
            Err(R::BytesRejection(e)) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too_large",
                    "the body is larger than the server accepts (max_body_bytes)",
                ))
            }
            Err(e) => Err(ApiError::new(e.status(), "bad_request", e.body_text())),
        }
    }
}

/// A JSON body that may be left out (then `T::default()`); when present it is checked like
/// [`Body`].
pub struct OptionalBody<T>(pub T);

impl<S, T> axum::extract::FromRequest<S> for OptionalBody<T>
where
    T: Default,
    axum::Json<T>:
        axum::extract::FromRequest<S, Rejection = axum::extract::rejection::JsonRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        use axum::http::header;
        let headers = req.headers();
        let empty = headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() == b"0")
            || (!headers.contains_key(header::CONTENT_LENGTH)
                && !headers.contains_key(header::TRANSFER_ENCODING));
        if empty {
            return Ok(OptionalBody(T::default()));
        }
        Body::<T>::from_request(req, state)
            .await
            .map(|Body(v)| OptionalBody(v))
    }
}
