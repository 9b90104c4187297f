//! Real signals, across the process boundary: the `shutdown_hyper` example runs as a child
//! process and gets SIGTERM under load, then SIGTERM + SIGINT during a drain that would take a
//! minute.
//!
//! The only wall-clock waits in the crate's tests are here: a process cannot be paused. They
//! are bounds (how long the child may take to exit) and short polls, never a guess that work
//! has happened by some time.
//!
//! The example binary is built by `cargo build --example shutdown_hyper` run from the test (cargo
//! holds its build lock only while building, not while tests run), in the target directory
//! this test was built in, and located by cargo's own JSON artifact message: it works under
//! `cargo test --workspace`, with `--release`, and with any `CARGO_TARGET_DIR`.
#![cfg(unix)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::TcpStream;
use tokio::process::{Child, ChildStderr, ChildStdout, Command};
use tokio::time::timeout;

/// How long the child may take to start, to stop accepting after a signal, or to exit.
const BOUND: Duration = Duration::from_secs(10);

/// Requests in flight when SIGTERM arrives.
const SLOW: usize = 20;
/// How long each of them takes: long enough that they are all still running at the signal.
const SLOW_MS: u64 = 5000;

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_under_load_answers_every_accepted_request_and_exits_0() {
    let mut server = Server::start(10).await;

    for _ in 0..5 {
        let res = get(&server.addr, "/").await.expect_answer();
        assert_eq!(res.status, 200, "{res:?}");
    }

    // Each task connects and sends its request, then waits for the answer.
    let slow: Vec<_> = (0..SLOW)
        .map(|_| {
            let addr = server.addr.clone();
            tokio::spawn(async move {
                let mut stream = TcpStream::connect(&addr).await.expect("connect");
                let path = format!("/slow?ms={SLOW_MS}");
                stream
                    .write_all(request(&addr, &path).as_bytes())
                    .await
                    .expect("write");
                read_answer(stream).await
            })
        })
        .collect();

    // `/` answers with the number of requests in flight, itself included: wait until the
    // server is really handling all the slow ones.
    timeout(BOUND, async {
        loop {
            let res = get(&server.addr, "/").await.expect_answer();
            let in_flight: usize = res.body.split_whitespace().next().unwrap().parse().unwrap();
            if in_flight > SLOW {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the slow requests never were all in flight");

    server.signal("TERM");
    server.wait_until_draining().await;

    // The listener is closed: new connections are refused. (A request reaching a connection
    // that is still open would get `503` + `Connection: close`.)
    let mut refused_503 = 0;
    for _ in 0..5 {
        match get(&server.addr, "/").await {
            Outcome::Refused => {}
            Outcome::Answered(res) if res.status == 503 => {
                assert_eq!(res.header("connection"), Some("close"), "{res:?}");
                refused_503 += 1;
            }
            other => panic!("a request after SIGTERM got {other:?}"),
        }
    }

    // Every request accepted before the signal got exactly one complete answer.
    for task in slow {
        let res = task.await.unwrap().expect_answer();
        assert_eq!(res.status, 200, "{res:?}");
        assert_eq!(res.body, format!("slept {SLOW_MS} ms\n"));
    }

    let (status, report) = server.exit().await;
    assert_eq!(status, Some(0), "exit status; report: {report}");
    let expected = format!("requests {SLOW} completed, 0 cut off, {refused_503} refused;");
    assert!(
        report.contains(&expected),
        "expected {expected:?} in {report:?}"
    );
    assert!(
        !report.contains("(forced)") && !report.contains("(deadline"),
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigint_during_a_long_drain_cuts_the_stream_and_exits_2() {
    // A minute to drain: only the second signal can end this one in time.
    let mut server = Server::start(60).await;

    let mut stream = TcpStream::connect(&server.addr).await.expect("connect");
    stream
        .write_all(request(&server.addr, "/stream").as_bytes())
        .await
        .expect("write");
    let mut received = Vec::new();
    read_until(&mut stream, &mut received, "chunk 1\n").await;
    assert!(received.starts_with(b"HTTP/1.1 200 OK\r\n"));

    server.signal("TERM");
    server.wait_until_draining().await;
    // Still streaming: the drain waits for it.
    let seen = received.len();
    read_until(&mut stream, &mut received, "chunk").await;
    assert!(received.len() > seen);

    server.signal("INT");
    let (status, report) = server.exit().await;
    assert_eq!(status, Some(2), "exit status; report: {report}");
    assert!(report.contains("(forced)"), "{report}");
    assert!(
        report.contains("connections 0 closed, 1 cut off"),
        "{report}"
    );

    // Cut mid-stream: the connection ends without the chunked body's last chunk.
    let _ = timeout(BOUND, stream.read_to_end(&mut received))
        .await
        .expect("the connection was not closed");
    assert!(!received.ends_with(b"0\r\n\r\n"));
}

/// The `shutdown_hyper` example, running.
struct Server {
    child: Child,
    addr: String,
    stdout: Lines<BufReader<ChildStdout>>,
    stderr: Lines<BufReader<ChildStderr>>,
}

impl Server {
    /// Starts the example on `127.0.0.1:0` and reads its `listening on ADDR` line.
    async fn start(drain_secs: u64) -> Server {
        let mut child = Command::new(example_binary())
            .arg("127.0.0.1:0")
            .env("PALISADE_DRAIN_SECS", drain_secs.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true) // a failing test leaves no server behind
            .spawn()
            .expect("start the shutdown_hyper example");
        let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let stderr = BufReader::new(child.stderr.take().unwrap()).lines();
        let line = timeout(BOUND, stdout.next_line())
            .await
            .expect("no `listening on` line in time")
            .unwrap()
            .expect("the server exited before listening");
        let addr = line
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        Server {
            child,
            addr,
            stdout,
            stderr,
        }
    }

    /// Sends `SIGTERM` or `SIGINT` with `kill(1)`.
    fn signal(&self, name: &str) {
        let pid = self.child.id().expect("the server already exited");
        let status = std::process::Command::new("kill")
            .args([format!("-{name}"), pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} {pid}: {status}");
    }

    /// Waits for the line the example writes once `serve` has returned: the listener is
    /// closed.
    async fn wait_until_draining(&mut self) {
        timeout(BOUND, async {
            while let Some(line) = self.stderr.next_line().await.unwrap() {
                if line.starts_with("shutting down") {
                    return;
                }
            }
            panic!("the server exited without draining");
        })
        .await
        .expect("the server did not start draining in time");
    }

    /// Waits (bounded) for the exit; returns its status code and the `report:` line.
    async fn exit(mut self) -> (Option<i32>, String) {
        let status = timeout(BOUND, self.child.wait())
            .await
            .expect("the server did not exit in time")
            .unwrap();
        let mut report = None;
        while let Some(line) = self.stdout.next_line().await.unwrap() {
            if let Some(r) = line.strip_prefix("report: ") {
                report = Some(r.to_owned());
            }
        }
        (status.code(), report.expect("no `report:` line"))
    }
}

#[derive(Debug)]
enum Outcome {
    /// The connection was refused: the server was not accepting.
    Refused,
    /// Exactly one complete response.
    Answered(Response),
}

impl Outcome {
    #[track_caller]
    fn expect_answer(self) -> Response {
        match self {
            Outcome::Answered(res) => res,
            Outcome::Refused => panic!("connection refused"),
        }
    }
}

#[derive(Debug)]
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn request(addr: &str, path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
}

/// `GET path` on a fresh connection.
async fn get(addr: &str, path: &str) -> Outcome {
    let mut stream = match TcpStream::connect(addr).await {
        Ok(stream) => stream,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Outcome::Refused,
        Err(e) => panic!("connect to {addr}: {e}"),
    };
    stream
        .write_all(request(addr, path).as_bytes())
        .await
        .expect("write");
    read_answer(stream).await
}

/// Reads until the server closes the connection; panics unless that is exactly one complete
/// response (with a `Content-Length` body).
async fn read_answer(mut stream: TcpStream) -> Outcome {
    let mut raw = Vec::new();
    timeout(BOUND, stream.read_to_end(&mut raw))
        .await
        .expect("no answer in time")
        .expect("read the answer");
    let text = String::from_utf8(raw).expect("a text answer");
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("incomplete answer {text:?}"));
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.strip_prefix("HTTP/1.1 "))
        .and_then(|l| l.get(..3))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line in {text:?}"));
    let headers: Vec<(String, String)> = lines
        .map(|l| {
            let (n, v) = l.split_once(':').expect("a header line");
            (n.trim().to_owned(), v.trim().to_owned())
        })
        .collect();
    let res = Response {
        status,
        headers,
        body: body.to_owned(),
    };
    let length: usize = res
        .header("content-length")
        .unwrap_or_else(|| panic!("no content-length in {res:?}"))
        .parse()
        .unwrap();
    // Nothing more: one answer, not two, not a truncated one.
    assert_eq!(res.body.len(), length, "body of {res:?}");
    Outcome::Answered(res)
}

/// Reads from `stream` into `buf` until what was read since the call contains `needle`.
async fn read_until(stream: &mut TcpStream, buf: &mut Vec<u8>, needle: &str) {
    let start = buf.len();
    timeout(BOUND, async {
        while !String::from_utf8_lossy(&buf[start..]).contains(needle) {
            let mut chunk = [0; 1024];
            let n = stream.read(&mut chunk).await.expect("read");
            assert!(
                n > 0,
                "the stream ended early: {:?}",
                String::from_utf8_lossy(buf)
            );
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {needle:?} in time"));
}

/// The `shutdown_hyper` example, built (once per test binary) by cargo in the target directory
/// and profile this test was built in, so that it reuses the build cache and is never stale.
fn example_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| build_example("shutdown_hyper"))
}

fn build_example(name: &str) -> PathBuf {
    // `CARGO_TARGET_TMPDIR` is `<target-dir>/tmp`, whatever `CARGO_TARGET_DIR` or
    // `build.target-dir` said.
    let target_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).parent().unwrap();
    // This test runs as `<target-dir>[/<triple>]/<profile-dir>/deps/signals-<hash>`.
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap();
    let mut cargo = std::process::Command::new(env!("CARGO"));
    cargo
        .args([
            "build",
            "--quiet",
            "--example",
            name,
            "--features",
            "server",
        ])
        .arg("--manifest-path")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
        .arg("--target-dir")
        .arg(target_dir)
        .arg("--message-format=json-render-diagnostics")
        .stderr(Stdio::inherit());
    match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => {}
        Some("release") => {
            cargo.arg("--release");
        }
        Some(profile) => {
            cargo.args(["--profile", profile]);
        }
    }
    if let Some(triple) = profile_dir.parent().filter(|dir| *dir != target_dir) {
        cargo.arg("--target").arg(triple.file_name().unwrap());
    }
    let out = cargo.output().expect("run cargo build");
    assert!(out.status.success(), "cargo build --example {name} failed");
    // The artifact message of the example names its executable.
    let stdout = String::from_utf8(out.stdout).unwrap();
    stdout
        .lines()
        .filter(|l| l.contains(r#""reason":"compiler-artifact""#))
        .filter(|l| l.contains(r#""kind":["example"]"#))
        .filter(|l| l.contains(&format!(r#""name":"{name}""#)))
        .find_map(|l| json_string_after(l, r#""executable":""#))
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("no executable for example {name} in cargo's output:\n{stdout}"))
}

/// The JSON string starting right after `key` in `line`, unescaped (paths: `\\` and `\"`).
fn json_string_after(line: &str, key: &str) -> Option<String> {
    let rest = &line[line.find(key)? + key.len()..];
    let mut out = String::new();
    let mut chars = rest.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(out),
            '\\' => out.push(chars.next()?),
            c => out.push(c),
        }
    }
    None
}
