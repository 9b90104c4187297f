//! A real `redis-server` for tests and benchmarks: found on `PATH`, started on a free port,
//! killed on drop.
//!
//! Without `redis-server` a test is skipped with a note — unless `CI=true`, where a missing
//! server fails the run (`.ci/run` installs Debian's `redis-server`).
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running `redis-server`, killed when dropped.
pub struct RedisServer {
    exe: PathBuf,
    port: u16,
    child: Option<Child>,
}

/// `redis-server` on `PATH`, or `None` (after a note) when it is missing and this is not CI.
///
/// # Panics
///
/// When it is missing and `CI=true`.
pub fn redis_server_exe() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("redis-server"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!(
                "redis-server is not on PATH and CI=true: the Redis tests must run in CI \
                 (.ci/run installs it with `apt-get install -y redis-server`)"
            );
        }
        eprintln!("note: redis-server is not on PATH: skipping this Redis test");
    }
    found
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local addr").port()
}

/// One `PING` over a plain socket: whether the server answers `+PONG`.
fn pings(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

impl RedisServer {
    /// Starts a server on a free port and waits until it answers; `None` when skipped.
    pub fn start() -> Option<RedisServer> {
        let exe = redis_server_exe()?;
        let mut server = RedisServer {
            exe,
            port: free_port(),
            child: None,
        };
        server.spawn();
        Some(server)
    }

    fn spawn(&mut self) {
        // A few tries: the port was free when picked, but another process may take it first.
        for attempt in 0..5 {
            if attempt > 0 {
                self.port = free_port();
            }
            self.child = Some(self.launch());
            if self.wait_ready() {
                return;
            }
            self.kill();
        }
        panic!("redis-server did not start on a free port after 5 tries");
    }

    fn launch(&self) -> Child {
        Command::new(&self.exe)
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--dir", &std::env::temp_dir().to_string_lossy()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server")
    }

    /// Polls `PING` with a short bounded retry loop: up to 5 s.
    fn wait_ready(&mut self) -> bool {
        for _ in 0..500 {
            if pings(self.port) {
                return true;
            }
            if let Some(child) = &mut self.child {
                if let Ok(Some(_)) = child.try_wait() {
                    return false; // exited: the port was taken
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Kills the server (SIGKILL: no goodbye to the clients) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, empty.
    pub fn restart(&mut self) {
        self.kill();
        let port = self.port;
        for _ in 0..50 {
            self.child = Some(self.launch());
            if self.wait_ready() {
                return;
            }
            self.kill();
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server did not restart on port {port}");
    }

    /// Freezes the server (SIGSTOP): connections stay open, nothing is answered.
    pub fn freeze(&self) {
        signal(self.pid(), "-STOP");
    }

    /// Thaws a frozen server (SIGCONT).
    pub fn thaw(&self) {
        signal(self.pid(), "-CONT");
    }
}

fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .arg(sig)
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill {sig} {pid} failed");
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            // A frozen server must be thawed to die promptly on some systems; SIGKILL works on
            // stopped processes on Linux, but be explicit.
            let _ = Command::new("kill")
                .arg("-CONT")
                .arg(child.id().to_string())
                .stderr(Stdio::null())
                .status();
        }
        self.kill();
    }
}

/// A plain connection for looking at keys (`PTTL`, `GET`, `DEL`, `TIME`).
pub async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect")
}

/// Redis' clock, in microseconds since the epoch.
pub async fn redis_time_us(conn: &mut redis::aio::MultiplexedConnection) -> u64 {
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(conn).await.expect("TIME");
    secs * 1_000_000 + micros
}
