//! The HTTP API: an axum router that parses requests, calls core, and maps results to
//! statuses and stable error codes. No business logic lives here.

mod download;
mod error;
mod extract;
mod files;
mod observe;
mod session;
mod tus;
mod upload;

use std::future::Future;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, head, post, put};
use axum::serve::ListenerExt;
use chunkvault_core::Vault;
use tokio::net::TcpListener;

pub use error::ApiError;

/// Everything a handler needs.
#[derive(Clone)]
pub struct AppState {
    pub vault: Vault,
}

/// The router for `vault`.
pub fn router(vault: Vault) -> Router {
    let state = AppState { vault };
    observe::init();
    Router::new()
        .route(
            "/upload",
            // PUT too: `curl -T FILE` without -X POST sends PUT.
            post(upload::upload)
                .put(upload::upload)
                .layer(DefaultBodyLimit::disable()),
        )
        .route("/download/{id}", get(download::download))
        .route("/uploads", post(session::create))
        .route("/uploads/{id}", get(session::status).delete(session::abort))
        .route("/uploads/{id}/chunks", post(session::offer))
        .route(
            "/uploads/{id}/chunks/{index}",
            put(session::put_chunk).layer(DefaultBodyLimit::disable()),
        )
        .route("/uploads/{id}/commit", post(session::commit))
        .merge(tus_routes())
        .route("/files", get(files::list))
        .route("/files/{id}", get(files::detail).delete(files::delete))
        .route("/healthz", get(files::healthz))
        .route("/readyz", get(files::readyz))
        .route("/scrub", get(files::last_scrub))
        .route("/metrics", get(observe::metrics))
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .route_layer(axum::middleware::from_fn(observe::track))
        .with_state(state)
}

/// tus 1.0.0 at `/tus`, with the headers every tus response carries.
fn tus_routes() -> Router<AppState> {
    Router::new()
        .route("/tus", post(tus::create).options(tus::options))
        .route(
            "/tus/{id}",
            head(tus::head)
                .patch(tus::patch)
                .delete(tus::delete)
                .options(tus::options),
        )
        .layer(DefaultBodyLimit::disable())
        .layer(axum::middleware::map_response(tus::common_headers))
}

/// Serves `router` on an already-bound listener until `shutdown` completes, then finishes the
/// requests in flight. Tests bind port 0 and run this in-process.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // Nagle's algorithm would hold small keep-alive responses back ~40 ms.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}
