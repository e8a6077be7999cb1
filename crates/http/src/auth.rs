//! Authentication: one middleware resolves `Authorization: Bearer <key>` to a
//! [`Principal`] (or to [`Principal::Open`] when auth is off) and puts it in the request's
//! extensions; handlers take it with the [`Caller`] extractor and hand it to core, where the
//! ownership checks are. What each route needs is decided in one place, [`access`]: a route
//! added later needs an account unless it is listed there.
//!
//! Every refused key (missing, malformed, unknown, wrong secret, revoked, expired, disabled
//! account) gets the same 401 body; the reason goes to the log with the key's public id,
//! never its secret. Failed attempts are rate limited per client IP.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::Instant;

use axum::extract::{ConnectInfo, FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chunkvault_core::{Principal, parse_token};

use crate::{ApiError, AppState};

/// Whether requests must carry an API key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// Every endpoint but health, readiness and the API document needs a key (or, for a
    /// download, a presigned link).
    Required,
    /// No keys: every request acts with full access and new files have no owner. Only for a
    /// server that listens on loopback, or where the operator says so explicitly.
    Off,
}

impl AuthMode {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Required => "required",
            Self::Off => "off",
        }
    }
}

/// The authentication settings of a router.
#[derive(Debug, Clone)]
pub struct AuthOptions {
    pub mode: AuthMode,
    /// Failed authentications one client IP may make per minute (a burst of this many, then
    /// one every `60 / n` seconds); beyond, 429 `too_many_auth_failures`.
    pub failures_per_minute: u32,
}

impl AuthOptions {
    pub fn off() -> Self {
        Self {
            mode: AuthMode::Off,
            failures_per_minute: 30,
        }
    }

    pub fn required() -> Self {
        Self {
            mode: AuthMode::Required,
            ..Self::off()
        }
    }
}

/// What a route needs from its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// Anyone: health, readiness, the API document and page, tus's CORS preflight.
    Open,
    /// An account, or for `GET|HEAD /download/{id}` a valid presigned link instead.
    AccountOrLink,
    /// Any account; what it may touch is decided in core (its own files, or all for admins).
    Account,
    /// An admin account: metrics and scrub reports, which describe every account's data.
    Admin,
}

/// The one table of who may call what; see README's "Who may call what".
pub(crate) fn access(method: &Method, route: &str) -> Access {
    match route {
        "/healthz" | "/readyz" | "/openapi.json" => Access::Open,
        r if r == "/docs" || r.starts_with("/docs/") => Access::Open,
        "/tus" | "/tus/{id}" if method == Method::OPTIONS => Access::Open,
        "/download/{id}" => Access::AccountOrLink,
        "/metrics" | "/scrub" => Access::Admin,
        _ => Access::Account,
    }
}

/// The principal a request acts for, put there by [`authenticate`].
pub(crate) struct Caller(pub Principal);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<Principal>()
            .copied()
            .map(Caller)
            .ok_or_else(unauthorized)
    }
}

impl<S: Send + Sync> axum::extract::OptionalFromRequestParts<S> for Caller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        Ok(parts.extensions.get::<Principal>().copied().map(Caller))
    }
}

/// The one answer to every refused key.
pub(crate) fn unauthorized() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "a valid API key is required: Authorization: Bearer <key>",
    )
}

/// Whether the query string carries a link signature.
pub(crate) fn has_signature(query: Option<&str>) -> bool {
    query.is_some_and(|q| q.split('&').any(|p| p.starts_with("sig=")))
}

/// The middleware: resolves the caller, or refuses the request.
pub(crate) async fn authenticate(
    State(s): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string());
    let Some(route) = route else {
        return next.run(req).await;
    };
    let access = access(req.method(), &route);
    if access == Access::Open {
        return next.run(req).await;
    }
    if s.auth.mode == AuthMode::Off {
        req.extensions_mut().insert(Principal::Open);
        return next.run(req).await;
    }
    let mut given = req.headers().get_all(header::AUTHORIZATION).iter();
    let bearer = given
        .next()
        .map(|v| v.to_str().unwrap_or("").trim().to_string());
    // Two Authorization headers are no key at all (which one a proxy or a client library
    // keeps differs): refused like a wrong key.
    let bearer = if given.next().is_some() {
        Some(String::new())
    } else {
        bearer
    };
    let Some(bearer) = bearer else {
        if access == Access::AccountOrLink && has_signature(req.uri().query()) {
            // The download handler checks the link's signature.
            return next.run(req).await;
        }
        return with_challenge(unauthorized().into_response());
    };
    let ip = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    if let Some(ip) = ip
        && !s.failures.allowed(ip)
    {
        return too_many_failures();
    }
    let token = match bearer.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
        _ => "",
    };
    match s.vault.authenticate(token).await {
        Ok(principal) => {
            if access == Access::Admin && !principal.is_admin() {
                return ApiError::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "this endpoint is for admin accounts",
                )
                .into_response();
            }
            req.extensions_mut().insert(principal);
            next.run(req).await
        }
        Err(Ok(failure)) => {
            // The public id only: the secret never reaches a log.
            let key = parse_token(token).map(|(id, _)| id).unwrap_or("-");
            tracing::warn!(
                key,
                reason = failure.as_str(),
                client = %ip.map(|i| i.to_string()).unwrap_or_default(),
                %route,
                "authentication failed"
            );
            if let Some(ip) = ip {
                s.failures.record(ip);
            }
            with_challenge(unauthorized().into_response())
        }
        Err(Err(e)) => ApiError::from(e).into_response(),
    }
}

fn with_challenge(mut resp: Response) -> Response {
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"chunkvault\""),
    );
    resp
}

fn too_many_failures() -> Response {
    let mut resp = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_auth_failures",
        "too many failed authentications from this address; retry later",
    )
    .into_response();
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
    resp
}

/// Failed authentications per client IP: a token bucket of `per_minute` tokens refilled at
/// `per_minute` a minute; each failure takes one, and an empty bucket refuses the address.
#[derive(Debug)]
pub(crate) struct FailureLimiter {
    per_minute: f64,
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

impl FailureLimiter {
    pub(crate) fn new(per_minute: u32) -> Self {
        Self {
            per_minute: f64::from(per_minute.max(1)),
            buckets: Mutex::default(),
        }
    }

    fn level(&self, tokens: f64, since: Instant, now: Instant) -> f64 {
        (tokens + now.duration_since(since).as_secs_f64() * self.per_minute / 60.0)
            .min(self.per_minute)
    }

    /// Whether `ip` may try to authenticate now.
    pub(crate) fn allowed(&self, ip: IpAddr) -> bool {
        let map = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(&ip) {
            None => true,
            Some((tokens, since)) => self.level(*tokens, *since, Instant::now()) >= 1.0,
        }
    }

    pub(crate) fn record(&self, ip: IpAddr) {
        let now = Instant::now();
        let mut map = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() > 100_000 {
            // Forget addresses whose bucket has refilled: they are allowed anyway.
            let full = self.per_minute;
            map.retain(|_, (t, s)| {
                (*t + now.duration_since(*s).as_secs_f64() * full / 60.0) < full
            });
        }
        let (tokens, since) = map.get(&ip).copied().unwrap_or((self.per_minute, now));
        let level = self.level(tokens, since, now);
        map.insert(ip, ((level - 1.0).max(0.0), now));
    }
}

/// Refuses, before any handler (or authentication) sees them, requests whose headers total
/// more than `MAX_HEADER_BYTES` (431), whose body is in a transfer coding other than chunked
/// (501), or that carry no Host header in HTTP/1.1 or two of them (400).
pub(crate) async fn check_headers(req: Request, next: Next) -> Response {
    let total: usize = req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    if total > MAX_HEADER_BYTES {
        return ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!(
                "the request headers total {total} bytes; at most {MAX_HEADER_BYTES} are accepted"
            ),
        )
        .into_response();
    }
    // RFC 9112 6.1: a body in a transfer coding other than chunked (`gzip, chunked`, say) is
    // answered 501 instead of being stored still encoded (hyper undoes chunked only).
    let coding = req
        .headers()
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("?").split(','))
        .map(str::trim)
        .find(|c| !c.eq_ignore_ascii_case("chunked"));
    if let Some(coding) = coding {
        return ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "unsupported_transfer_encoding",
            format!("transfer coding {coding:?} is not supported; send the body plain or chunked"),
        )
        .into_response();
    }
    // RFC 9112 3.2: an HTTP/1.1 request without Host, or with two, is a 400.
    let hosts = req.headers().get_all(header::HOST).iter().count();
    if hosts > 1 || (hosts == 0 && req.version() == axum::http::Version::HTTP_11) {
        return ApiError::bad_request(
            "invalid_header",
            "an HTTP/1.1 request carries exactly one Host header",
        )
        .into_response();
    }
    next.run(req).await
}

/// Most bytes of request headers accepted (names, values and separators).
pub const MAX_HEADER_BYTES: usize = 32 << 10;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_limited_per_address() {
        let limiter = FailureLimiter::new(3);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        for _ in 0..3 {
            assert!(limiter.allowed(a));
            limiter.record(a);
        }
        assert!(
            !limiter.allowed(a),
            "the fourth attempt within a minute is refused"
        );
        assert!(limiter.allowed(b), "another address is not affected");
    }

    #[test]
    fn only_health_and_the_document_are_open() {
        assert_eq!(access(&Method::GET, "/healthz"), Access::Open);
        assert_eq!(access(&Method::GET, "/docs/index.html"), Access::Open);
        assert_eq!(access(&Method::OPTIONS, "/tus/{id}"), Access::Open);
        assert_eq!(access(&Method::PATCH, "/tus/{id}"), Access::Account);
        assert_eq!(access(&Method::GET, "/metrics"), Access::Admin);
        assert_eq!(access(&Method::GET, "/files/{id}/links"), Access::Account);
        assert_eq!(access(&Method::GET, "/some/new/route"), Access::Account);
    }
}
