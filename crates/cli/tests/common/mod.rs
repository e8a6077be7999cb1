//! Helpers shared by the binary's integration tests.

/// A port free on 127.0.0.1 right now, for a server child to listen on.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
