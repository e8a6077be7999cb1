//! The connection loop over a real socket: a client that never finishes its headers is
//! disconnected after the header read timeout, others are served meanwhile, and shutdown
//! finishes the request in flight.

use std::time::{Duration, Instant};

use axum::Router;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn start(
    router: Router,
    header_read_timeout: Duration,
) -> (
    std::net::SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(chunkvault_http::serve_with(
        listener,
        router,
        async move {
            let _ = stopped.await;
        },
        header_read_timeout,
    ));
    (addr, stop, server)
}

/// Reads until the server closes the connection; returns what it sent and when it closed.
async fn read_to_close(stream: &mut TcpStream, limit: Duration) -> (Vec<u8>, Duration) {
    let began = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(limit, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (got, began.elapsed()),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!("the server kept the connection open for {limit:?}"),
        }
    }
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_disconnected() {
    // A bare router: the connection loop is under test, not the API (whose routes are only
    // registered through chunkvault_http::api()).
    let router = Router::new().fallback(|| async { "ok" });
    let (addr, stop, server) = start(router, Duration::from_millis(700)).await;

    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();

    // Others are served while the slow client holds its connection.
    let body = reqwest::get(format!("http://{addr}/"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(body, "ok");

    let (sent, after) = read_to_close(&mut slow, Duration::from_secs(10)).await;
    assert!(
        after < Duration::from_secs(5),
        "closed only after {after:?}"
    );
    // hyper answers 408 or just closes; it never serves the half-sent request.
    let text = String::from_utf8_lossy(&sent);
    assert!(
        !text.contains("200 OK"),
        "answered a request never finished: {text}"
    );

    // A kept-alive connection that goes quiet is closed the same way.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 512];
    let n = idle.read(&mut first).await.unwrap();
    assert!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"));
    idle.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    let (_, after) = read_to_close(&mut idle, Duration::from_secs(10)).await;
    assert!(
        after < Duration::from_secs(5),
        "closed only after {after:?}"
    );

    // So is a connection that never sends a byte.
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let (sent, after) = read_to_close(&mut silent, Duration::from_secs(10)).await;
    assert!(
        after < Duration::from_secs(5),
        "closed only after {after:?}"
    );
    assert!(!String::from_utf8_lossy(&sent).contains("200 OK"));

    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn shutdown_finishes_the_request_in_flight() {
    let router = Router::new().fallback(|| async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        "done"
    });
    let (addr, stop, server) = start(router, Duration::from_secs(30)).await;
    let request = tokio::spawn(async move {
        reqwest::get(format!("http://{addr}/slow"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    stop.send(()).unwrap();
    assert_eq!(request.await.unwrap(), "done");
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("the server stops once the request is answered")
        .unwrap()
        .unwrap();
    // No new connections after shutdown.
    assert!(TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn a_client_that_half_closes_after_its_request_gets_the_answer() {
    // Slower than the client's shutdown, so the EOF arrives while the request is in flight.
    let router = Router::new().fallback(|| async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        "answered"
    });
    let (addr, stop, server) = start(router, Duration::from_secs(30)).await;

    let mut client = TcpStream::connect(addr).await.unwrap();
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    client.shutdown().await.unwrap();
    let (sent, _) = read_to_close(&mut client, Duration::from_secs(10)).await;
    let text = String::from_utf8_lossy(&sent);
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    assert!(text.ends_with("answered"), "{text}");

    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}
