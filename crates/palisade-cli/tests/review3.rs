//! Regressions from a bug-hunting review, run as processes: a huge `Retry-After`, huge flag
//! values, the demo's exit code when items fail, a byte-order mark in `--ids-from`, an id that
//! cannot be in a URL.

use palisade_testkit::Upstream;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

mod common;
use common::*;

/// A one-line HTTP/1.1 server: every request is answered `429` with this `Retry-After`.
async fn always_429(retry_after: &'static str) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let (r, mut w) = sock.into_split();
                let mut r = BufReader::new(r);
                let mut line = String::new();
                loop {
                    // A request: its head up to the blank line (GET, no body).
                    loop {
                        line.clear();
                        if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                    }
                    let body = "{\"error\":\"slow down\"}";
                    let res = format!(
                        "HTTP/1.1 429 Too Many Requests\r\nRetry-After: {retry_after}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if w.write_all(res.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// A `Retry-After` beyond what a clock can add (u64::MAX seconds) panicked the whole process
/// (`Instant + Duration` overflow when rescheduling the item): exit 101, no report, no line.
/// The client itself caps a hold at `max_retry_after` (300 s); the CLI read the raw header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_retry_after_does_not_panic_the_process() {
    let addr = always_429("18446744073709551615").await;
    let dir = scratch("huge-retry-after");
    let out = dir.join("results.jsonl");
    let tpl = format!("http://{addr}/items/{{id}}");
    let r = run(&[
        "fetch",
        &tpl,
        "--ids",
        "1..1",
        "--retries",
        "1",
        "--no-progress",
        "--out",
        out.to_str().unwrap(),
    ])
    .await;
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(text.contains("\"status\":429"), "{text:?}");
}

/// `--concurrency` (or `--max-connections`, its default) above tokio's semaphore limit
/// (usize::MAX >> 3) panicked: exit 101 instead of a bad-flag exit 2 (or a clamped run).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_concurrency_is_not_a_panic() {
    let upstream = Upstream::builder().start().await.unwrap();
    let tpl = upstream.url("/api/item/{id}");
    for flag in ["--concurrency", "--max-connections"] {
        let r = run(&[
            "fetch",
            &tpl,
            "--ids",
            "1..2",
            "--no-progress",
            flag,
            "18446744073709551615",
        ])
        .await;
        assert!(!r.stderr.contains("panicked"), "{flag}: {}", r.stderr);
        assert!(matches!(r.code, Some(0 | 2)), "{flag}: {r:?}");
    }
    for flag in ["--concurrency", "--resets", "--requests"] {
        let r = run(&[
            "demo",
            "--no-progress",
            "--outage-length",
            "0s",
            "--requests",
            "5",
            flag,
            "18446744073709551615",
        ])
        .await;
        assert!(!r.stderr.contains("panicked"), "demo {flag}: {}", r.stderr);
        assert!(matches!(r.code, Some(0 | 2)), "demo {flag}: {r:?}");
    }
}

/// The demo exited 0 although every item failed: its exit code looked only at the
/// upstream check (lost / sent twice), not at the outcomes. Exit codes: "0 every item
/// finished with a 2xx response (demo: and the upstream's record matches); 1 ... some items
/// failed".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_exits_1_when_items_failed() {
    // 3 requests, the upstream resets the first 3: with no retries, all 3 fail.
    let r = run(&[
        "demo",
        "--no-progress",
        "--requests",
        "3",
        "--resets",
        "3",
        "--retries",
        "0",
        "--outage-length",
        "0s",
    ])
    .await;
    assert!(r.stdout.contains("outcomes:  request: 3"), "{}", r.stdout);
    assert_eq!(r.code, Some(1), "{}\n{}", r.stdout, r.stderr);
}

/// `palisade fetch` of a testkit upstream's `/api/item/{id}` with `--ids-from` a file holding
/// `ids`, writing to an output file: the upstream, the run, and the output's path.
async fn fetch_ids_from(test: &str, ids: &str) -> (Upstream, Run, std::path::PathBuf) {
    let upstream = Upstream::builder().start().await.unwrap();
    let dir = scratch(test);
    let file = dir.join("ids.txt");
    std::fs::write(&file, ids).unwrap();
    let out = dir.join("results.jsonl");
    let r = run(&[
        "fetch",
        &upstream.url("/api/item/{id}"),
        "--ids-from",
        file.to_str().unwrap(),
        "--no-progress",
        "--out",
        out.to_str().unwrap(),
    ])
    .await;
    (upstream, r, out)
}

/// The paths the upstream received, sorted.
fn paths(upstream: &Upstream) -> Vec<String> {
    let mut got: Vec<String> = upstream.records().iter().map(|r| r.path.clone()).collect();
    got.sort();
    got
}

/// An ids file saved with a UTF-8 byte-order mark (Windows editors): the BOM became part of
/// the first id, which was requested as `/api/item/\u{feff}1` and written as id "\u{feff}1".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ids_file_with_a_bom_reads_its_first_id_whole() {
    let (upstream, r, _) = fetch_ids_from("bom", "\u{feff}1\r\n2\r\n").await;
    assert_eq!(
        paths(&upstream),
        ["/api/item/1", "/api/item/2"],
        "{}",
        r.stderr
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
}

/// An id with characters a URL cannot hold as they are (`<x>`, `a&b`, `é`) is data: it is sent
/// percent-encoded, one path segment, and written to the output under its own spelling. (It
/// was refused as bad input before ids were encoded, and `a&b` in a query would have been two
/// parameters.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_with_characters_a_url_cannot_hold_is_sent_percent_encoded() {
    let (upstream, r, out) = fetch_ids_from("encoded-id", "1\n<x>\na&b\né\n").await;
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert_eq!(
        paths(&upstream),
        [
            "/api/item/%3Cx%3E",
            "/api/item/%C3%A9",
            "/api/item/1",
            "/api/item/a%26b"
        ],
        "{}",
        r.stderr
    );
    let written = std::fs::read_to_string(&out).unwrap();
    for id in ["\"<x>\"", "\"a&b\"", "\"é\""] {
        assert!(written.contains(id), "{id} in {written}");
    }
}

/// An id that cannot be in a URL even encoded — here one with a space — is bad input: exit 2
/// up front with one line, before anything is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_with_a_space_is_bad_input() {
    let (upstream, r, _) = fetch_ids_from("bad-id", "1\nx y\n").await;
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert_eq!(upstream.requests_received(), 0);
}
