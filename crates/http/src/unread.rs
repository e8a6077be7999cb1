//! `Connection: close` on answers given before the request body was read to its end.
//!
//! A handler may refuse an upload part-way (quota exceeded, size mismatch, a bad chunk) while
//! the client is still sending. hyper then closes the connection after the answer, because
//! the rest of the body is still on the wire, but it does not say so in the answer: a client
//! that puts the connection back in its keep-alive pool and sends its next request on it
//! finds it closed (a broken pipe on a request that never reached the server). Saying
//! `Connection: close` makes clients open a new connection instead.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::Request;
use axum::http::HeaderValue;
use axum::http::header::CONNECTION;
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};

/// A request body that records whether it was read to its end.
struct Tracked {
    inner: Body,
    finished: Arc<AtomicBool>,
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            self.finished.store(true, Ordering::Release);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        let end = self.inner.is_end_stream();
        if end {
            self.finished.store(true, Ordering::Release);
        }
        end
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Middleware: adds `Connection: close` to an answer when the request had a body that the
/// handler did not read to its end.
pub(crate) async fn close_if_unread(req: Request, next: Next) -> Response {
    if req.body().is_end_stream() {
        return next.run(req).await;
    }
    let finished = Arc::new(AtomicBool::new(false));
    let tracked = finished.clone();
    let req = req.map(move |inner| {
        Body::new(Tracked {
            inner,
            finished: tracked,
        })
    });
    let mut resp = next.run(req).await;
    if !finished.load(Ordering::Acquire) {
        resp.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}
