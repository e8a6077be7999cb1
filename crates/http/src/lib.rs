//! The HTTP API: an axum router that parses requests, calls core, and maps results to
//! statuses and stable error codes. No business logic lives here.

mod auth;
mod download;
mod error;
mod extract;
mod files;
mod observe;
mod openapi;
mod session;
mod tus;
mod unread;
mod upload;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use chunkvault_core::Vault;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::{Service, ServiceExt};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use auth::{AuthMode, AuthOptions, MAX_HEADER_BYTES};
pub use error::ApiError;
pub use observe::ACCESS_LOG_TARGET;

/// Everything a handler needs, behind one `Arc`: axum clones the state for every extractor and
/// middleware of every request, and one reference count is cheaper than a dozen.
#[derive(Clone)]
pub struct AppState(std::sync::Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

pub struct Shared {
    pub vault: Vault,
    /// What `/metrics` last published of this vault's pipeline counters (see observe.rs).
    published: observe::Published,
    auth: std::sync::Arc<AuthOptions>,
    failures: std::sync::Arc<auth::FailureLimiter>,
}

/// The route table: the one place an endpoint is registered. `routes!` adds a handler and the
/// `#[utoipa::path]` description on it together, so what the server answers and what
/// `/openapi.json` says cannot drift apart (`tests/openapi.rs` checks both over a socket).
///
/// To add an endpoint: put `#[utoipa::path(...)]` on the handler (method, path, parameters,
/// body, every response with its error codes) and add one `.routes(routes!(handler))` line
/// here; handlers sharing a path go in one `routes!`. Plain `.route(...)` is refused by clippy
/// (`clippy.toml`) because it would serve an undocumented route.
fn api() -> OpenApiRouter<AppState> {
    // Uploads stream; the default 2 MB body limit would cut every real file off.
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(streaming(routes!(upload::upload)))
        .routes(routes!(download::download))
        .routes(routes!(session::create))
        .routes(routes!(session::status, session::abort))
        .routes(routes!(session::offer))
        .routes(streaming(routes!(session::put_chunk)))
        .routes(routes!(session::commit))
        .routes(tus(routes!(tus::create, tus::options)))
        .routes(tus(routes!(
            tus::head,
            tus::patch,
            tus::delete,
            tus::upload_options
        )))
        .routes(routes!(files::list))
        .routes(routes!(files::detail, files::delete))
        .routes(routes!(files::create_link))
        .routes(routes!(files::healthz))
        .routes(routes!(files::readyz))
        .routes(routes!(files::last_scrub))
        .routes(routes!(observe::metrics))
        .routes(routes!(openapi::document))
}

type Routes = (
    Vec<(
        String,
        utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
    )>,
    utoipa::openapi::path::Paths,
    axum::routing::MethodRouter<AppState>,
);

/// Routes whose bodies stream into the chunk store: no body limit.
fn streaming((schemas, paths, method): Routes) -> Routes {
    (schemas, paths, method.layer(DefaultBodyLimit::disable()))
}

/// tus routes: bodies stream, and every answer (errors and 405s included) carries
/// `Tus-Resumable` and the CORS headers browsers need.
fn tus(routes: Routes) -> Routes {
    let (schemas, paths, method) = streaming(routes);
    let method = method.layer(axum::middleware::map_response(tus::common_headers));
    (schemas, paths, method)
}

/// The OpenAPI document of every endpoint [`router`] serves.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = api().into_openapi();
    openapi::finish(&mut doc);
    doc
}

/// The router for `vault` with authentication off (every request has full access): what a
/// server listening on loopback only runs by default.
pub fn router(vault: Vault) -> Router {
    router_with(vault, AuthOptions::off())
}

/// The router for `vault`: the route table, the API page at `/docs`, JSON errors for unknown
/// paths and methods, authentication, a bound on request header sizes, and request tracking
/// on all of it.
pub fn router_with(vault: Vault, auth: AuthOptions) -> Router {
    let state = AppState(std::sync::Arc::new(Shared {
        vault,
        published: Default::default(),
        failures: std::sync::Arc::new(auth::FailureLimiter::new(auth.failures_per_minute)),
        auth: std::sync::Arc::new(auth),
    }));
    observe::init();
    let (api, _doc) = api().split_for_parts();
    api.merge(openapi::docs_ui())
        // Route layers do not reach the fallback: it is tracked (logged, counted, given a
        // request id) on its own.
        .fallback(axum::handler::Handler::layer(
            error::not_found,
            axum::middleware::from_fn(observe::track),
        ))
        .method_not_allowed_fallback(error::method_not_allowed)
        // Route layers run innermost-last: tracking sees every answer, authentication's too.
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ))
        .route_layer(axum::middleware::from_fn(observe::track))
        .layer(axum::middleware::from_fn(auth::check_headers))
        .layer(axum::middleware::from_fn(unread::close_if_unread))
        .with_state(state)
}

/// How long a client may take to send a request's headers (the first request on a connection,
/// or the next one on a kept-alive connection) before the server closes the connection: slow
/// or idle clients cannot hold connections open for ever. nginx's `client_header_timeout` is
/// 60 s.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves `router` on an already-bound listener until `shutdown` completes, then finishes the
/// requests in flight. Tests bind port 0 and run this in-process.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(listener, router, shutdown, HEADER_READ_TIMEOUT).await
}

/// [`serve`] with another header read timeout. HTTP/1.1 over hyper, as `axum::serve` does,
/// but with a timer, which `axum::serve` does not set and without which hyper applies no
/// header read timeout at all, and answering half-closed connections.
pub async fn serve_with(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    header_read_timeout: Duration,
) -> std::io::Result<()> {
    // The peer address feeds the per-address limit on failed authentications.
    let mut make = router.into_make_service_with_connect_info::<SocketAddr>();
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, or a connection reset before it was accepted:
                    // keep serving the others, without spinning.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Nagle's algorithm would hold small keep-alive responses back ~40 ms.
        let _ = tcp.set_nodelay(true);
        // Both steps are infallible (`Infallible` errors).
        let Ok(make) = ServiceExt::<SocketAddr>::ready(&mut make).await;
        let Ok(service) = make.call(peer).await;
        let service = TowerToHyperService::new(service.map_request(
            |req: hyper::Request<hyper::body::Incoming>| req.map(axum::body::Body::new),
        ));
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(header_read_timeout)
            // A client that shuts down its sending side after its request (`shutdown(SHUT_WR)`,
            // `nc -N`, some proxies) still gets its answer, as from nginx. Without this hyper
            // closes the connection at that EOF and drops the answer, even to an upload that
            // was stored.
            .half_close(true)
            .serve_connection(TokioIo::new(tcp), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(peer = %peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}
