//! A `redis-server` of a test's own (Debian's, which `.ci/run` installs), on a free loopback
//! port, so that the test can kill it and start it again.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A `redis-server` of a test's own, killed when dropped.
pub struct Redis {
    child: Child,
    /// Its port.
    pub port: u16,
}

impl Redis {
    /// A fresh server on a free loopback port, or `None` (the test then says it skipped) where
    /// `redis-server` is not installed. A port taken between its pick and the server's bind is
    /// picked again.
    pub fn start() -> Option<Redis> {
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            match Redis::on(port) {
                Ok(r) => return Some(r),
                Err(Missing) => return None,
                Err(NotReady) => continue,
            }
        }
        panic!("redis-server never started on a free port");
    }

    /// A server on `port`.
    pub fn on(port: u16) -> Result<Redis, Failed> {
        let mut child = match Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(c) => c,
            Err(_) => {
                assert!(
                    std::env::var_os("CI").is_none(),
                    "redis-server is not installed, which CI installs"
                );
                println!("SKIPPED: redis-server is not installed (.ci/run installs it)");
                return Err(Missing);
            }
        };
        // Ready once it says so (a line on its log), within a bound.
        let out = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if line.contains("Ready to accept connections") {
                    let _ = tx.send(());
                }
            }
        });
        // It said it is ready, or it ended (its port taken): then the caller picks another.
        if rx.recv_timeout(Duration::from_secs(10)).is_err() {
            let _ = child.kill();
            let _ = child.wait();
            return Err(NotReady);
        }
        Ok(Redis { child, port })
    }

    /// The server's URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

/// Why a server did not start.
pub enum Failed {
    /// `redis-server` is not installed.
    Missing,
    /// It did not say it was ready (it ended: its port was taken).
    NotReady,
}
use Failed::{Missing, NotReady};

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
