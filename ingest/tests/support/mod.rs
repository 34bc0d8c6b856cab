//! Helpers shared by the ingest crate's test binaries.

#![allow(dead_code)]

use std::process::Child;

/// Kills a child process on drop, so a failed assertion leaves nothing running (a leaked
/// server would also hold the test harness's pipes open).
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A free loopback port other than `taken` (which may have been freed a moment ago).
pub fn free_port_but(taken: u16) -> u16 {
    loop {
        let port = free_port();
        if port != taken {
            return port;
        }
    }
}

/// `127.0.0.1:PORT` on a free port.
pub fn free_address() -> String {
    format!("127.0.0.1:{}", free_port())
}
