//! The `palisade` binary as a user runs it: a real process, real signals, a real output file,
//! against the testkit's upstream running inside this test process.
//!
//! Nothing here waits on the wall clock: a test waits for the upstream to have received so many
//! requests (`wait_for_requests`), for a line on the child's stderr, or for the child to exit.
//! No assertion is about how long something took. The one duration is a hang guard
//! ([`HANG_GUARD`]): a child that never exits fails its test instead of hanging the suite.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::time::Duration;

use palisade_testkit::{Latency, Outage, Upstream};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Child;
use tokio::sync::mpsc;

mod common;
use common::*;

// ===== Helpers =====

/// Sends `signal` (`INT`, `TERM`) to the child with `kill`.
fn signal(child: &Child, signal: &str) {
    let pid = child.id().expect("the child is still running");
    let status = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {pid}: {status}");
}

/// The `fetch` arguments common to every test: template, output, no progress bar.
fn fetch<'a>(template: &'a str, out: &'a Path, more: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "fetch",
        template,
        "--out",
        out.to_str().expect("UTF-8 path"),
        "--no-progress",
    ];
    args.extend_from_slice(more);
    args
}

fn template(upstream: &Upstream) -> String {
    upstream.url("/api/item/{id}")
}

/// Every line of the output file, each checked to be a whole JSON object ending in a newline.
fn lines(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).expect("read the output");
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "the last line lacks its newline: {text:?}"
    );
    text.lines()
        .map(|l| {
            let v: Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}"));
            assert!(v.is_object(), "not an object: {l}");
            v
        })
        .collect()
}

fn id_of(line: &Value) -> String {
    line["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no string id: {line}"))
        .to_owned()
}

/// The ids of `lines`, checked to appear once each.
fn unique_ids(lines: &[Value]) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    for line in lines {
        assert!(ids.insert(id_of(line)), "id written twice: {line}");
    }
    ids
}

fn id_range(first: u64, last: u64) -> BTreeSet<String> {
    (first..=last).map(|i| i.to_string()).collect()
}

/// Checks a successful result line for item `id` of `template`.
fn check_ok_line(line: &Value, template: &str) {
    let id = id_of(line);
    assert_eq!(line["url"], template.replace("{id}", &id), "{line}");
    assert_eq!(line["status"], 200, "{line}");
    let latency = line["latency_ms"]
        .as_f64()
        .unwrap_or_else(|| panic!("no latency_ms: {line}"));
    assert!(latency >= 0.0, "{line}");
    // The upstream answers {"id":"<x-request-id>","n":<n>}: the body is kept as JSON, and is
    // the answer to this very request.
    assert_eq!(line["body"]["id"], id.as_str(), "{line}");
    assert!(line["body"]["n"].is_u64(), "{line}");
    assert!(line.get("error").is_none(), "{line}");
}

// ===== A full run =====

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_writes_one_line_per_id_and_sends_each_id_once() {
    let upstream = Upstream::builder().start().await.unwrap();
    let dir = scratch("full");
    let out = dir.join("results.jsonl");
    let tpl = template(&upstream);

    let run = run(&fetch(
        &tpl,
        &out,
        &["--ids", "1..200", "--rate", "1000/s", "--burst", "50"],
    ))
    .await;
    run.expect_code(0);

    let lines = lines(&out);
    assert_eq!(lines.len(), 200);
    assert_eq!(unique_ids(&lines), id_range(1, 200));
    for line in &lines {
        check_ok_line(line, &tpl);
    }
    // The upstream's own record: each id once (the CLI sends `x-request-id: <id>`), each to
    // its own URL.
    let seen = upstream.count_by_id();
    assert_eq!(seen.len(), 200, "{seen:?}");
    assert!(seen.values().all(|&n| n == 1), "{seen:?}");
    for record in upstream.records() {
        assert_eq!(record.path, format!("/api/item/{}", record.id));
    }
    assert!(
        run.stderr
            .contains("palisade fetch: 200 of 200 item(s) finished"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("outcomes:  200: 200"), "{}", run.stderr);
    assert!(run.stdout.is_empty(), "{}", run.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_reads_ids_from_a_file_and_fetches_a_repeated_id_once() {
    let upstream = Upstream::builder().start().await.unwrap();
    let dir = scratch("ids-from");
    let out = dir.join("results.jsonl");
    let ids = dir.join("ids.txt");
    std::fs::write(&ids, "# the ids\nalpha\n\n  beta \ngamma\nalpha\n").unwrap();
    let tpl = template(&upstream);

    let run = run(&fetch(
        &tpl,
        &out,
        &["--ids-from", ids.to_str().unwrap(), "--rate", "1000/s"],
    ))
    .await;
    run.expect_code(0);
    assert!(run.stderr.contains("1 repeated id(s)"), "{}", run.stderr);
    let lines = lines(&out);
    let want: BTreeSet<String> = ["alpha", "beta", "gamma"].map(String::from).into();
    assert_eq!(unique_ids(&lines), want);
    lines.iter().for_each(|l| check_ok_line(l, &tpl));
    let seen = upstream.count_by_id();
    assert_eq!(
        seen,
        HashMap::from([
            ("alpha".to_owned(), 1),
            ("beta".to_owned(), 1),
            ("gamma".to_owned(), 1)
        ])
    );
}

// ===== --resume =====

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_fetches_only_the_ids_not_yet_in_the_output() {
    let upstream = Upstream::builder().start().await.unwrap();
    let dir = scratch("resume");
    let out = dir.join("results.jsonl");
    let tpl = template(&upstream);
    let fast = ["--rate", "1000/s", "--burst", "50"];

    let first = run(&fetch(
        &tpl,
        &out,
        &[&["--ids", "1..50"][..], &fast].concat(),
    ))
    .await;
    first.expect_code(0);
    assert_eq!(unique_ids(&lines(&out)), id_range(1, 50));
    assert_eq!(upstream.requests_received(), 50);

    let second = run(&fetch(
        &tpl,
        &out,
        &[&["--ids", "1..100", "--resume"][..], &fast].concat(),
    ))
    .await;
    second.expect_code(0);
    assert!(
        second.stderr.contains("resuming: 50 of 100 id(s)"),
        "{}",
        second.stderr
    );
    assert!(
        second.stderr.contains("palisade fetch: 50 of 50 item(s)"),
        "{}",
        second.stderr
    );
    // The second run asked for 51..100 only.
    let asked: BTreeSet<String> = upstream
        .records()
        .into_iter()
        .filter(|r| r.n > 50)
        .map(|r| r.id)
        .collect();
    assert_eq!(asked, id_range(51, 100));
    assert!(upstream.count_by_id().values().all(|&n| n == 1));
    let lines = lines(&out);
    assert_eq!(lines.len(), 100);
    assert_eq!(unique_ids(&lines), id_range(1, 100));
    lines.iter().for_each(|l| check_ok_line(l, &tpl));
}

/// A crash in the middle of writing a line leaves it cut short (here inside a multi-byte
/// character, so the file is not even valid UTF-8): resume must not count it, must fetch its id
/// again, and must not glue the next result onto it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_fetches_again_the_id_of_a_line_cut_short() {
    let upstream = Upstream::builder().start().await.unwrap();
    let dir = scratch("resume-cut");
    let out = dir.join("results.jsonl");
    let tpl = template(&upstream);

    run(&fetch(
        &tpl,
        &out,
        &["--ids", "1..10", "--rate", "1000/s", "--burst", "10"],
    ))
    .await
    .expect_code(0);
    let text = std::fs::read_to_string(&out).unwrap();
    let mut kept: Vec<&str> = text.lines().collect();
    let cut = kept.pop().unwrap();
    let cut_id = id_of(&serde_json::from_str(cut).unwrap());
    let mut bytes = Vec::new();
    for line in &kept {
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
    }
    bytes.extend_from_slice(&cut.as_bytes()[..cut.len() / 2]);
    bytes.push(0xC3); // the first byte of a two-byte character, and nothing after it
    std::fs::write(&out, &bytes).unwrap();

    let resumed = run(&fetch(
        &tpl,
        &out,
        &["--ids", "1..10", "--resume", "--rate", "1000/s"],
    ))
    .await;
    resumed.expect_code(0);
    assert!(
        resumed.stderr.contains("dropped an incomplete last line"),
        "{}",
        resumed.stderr
    );
    assert!(
        resumed.stderr.contains("resuming: 9 of 10 id(s)"),
        "{}",
        resumed.stderr
    );
    // Only the cut id was asked again.
    let again: Vec<String> = upstream
        .records()
        .into_iter()
        .filter(|r| r.n > 10)
        .map(|r| r.id)
        .collect();
    assert_eq!(again, vec![cut_id.clone()]);
    let lines = lines(&out);
    assert_eq!(lines.len(), 10);
    assert_eq!(unique_ids(&lines), id_range(1, 10));
    lines.iter().for_each(|l| check_ok_line(l, &tpl));
    assert_eq!(id_of(&lines[9]), cut_id);
}

/// Items that failed are written (exit 1), and `--resume` fetches them again: only a 2xx
/// result counts as done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_items_exit_1_and_resume_fetches_them_again() {
    // Requests 3 and 4 (ids 3 and 4: one at a time, in order) get a 500.
    let upstream = Upstream::builder()
        .outage(Outage::requests(3..5).status(500))
        .start()
        .await
        .unwrap();
    let dir = scratch("resume-failed");
    let out = dir.join("results.jsonl");
    let tpl = template(&upstream);
    // No retries: a 500 is the item's result.
    let one_at_a_time = [
        "--rate",
        "1000/s",
        "--max-connections",
        "1",
        "--retries",
        "0",
    ];

    let first = run(&fetch(
        &tpl,
        &out,
        &[&["--ids", "1..6"][..], &one_at_a_time].concat(),
    ))
    .await;
    first.expect_code(1);
    let written = lines(&out);
    assert_eq!(unique_ids(&written), id_range(1, 6));
    for line in &written {
        let want = if ["3", "4"].contains(&id_of(line).as_str()) {
            500
        } else {
            200
        };
        assert_eq!(line["status"], want, "{line}");
    }
    assert!(first.stderr.contains("500: 2"), "{}", first.stderr);

    let second = run(&fetch(
        &tpl,
        &out,
        &[&["--ids", "1..6", "--resume"][..], &one_at_a_time].concat(),
    ))
    .await;
    second.expect_code(0);
    let again: Vec<String> = upstream
        .records()
        .into_iter()
        .filter(|r| r.n > 6)
        .map(|r| r.id)
        .collect();
    assert_eq!(again, ["3", "4"]);
    let all = lines(&out);
    assert_eq!(all.len(), 8);
    for line in &all[6..] {
        check_ok_line(line, &tpl);
    }
}

// ===== Ctrl-C and SIGTERM =====

/// A run stopped by `signal` part-way: exit `code`, a report, and an output file that agrees
/// with the upstream's record; then `--resume` completes the rest.
async fn stop_then_resume(name: &str, sig: &str, code: i32) {
    // 200 ms per answer and 20 requests a second: the 300 items would take 15 s; the signal
    // comes once 10 requests have arrived.
    let upstream = Upstream::builder()
        .latency(Latency::fixed(Duration::from_millis(200)))
        .start()
        .await
        .unwrap();
    let dir = scratch(name);
    let out = dir.join("results.jsonl");
    let tpl = template(&upstream);
    let total = 300;

    let child = command(&fetch(&tpl, &out, &["--ids", "1..300", "--rate", "20/s"]))
        .spawn()
        .unwrap();
    upstream.wait_for_requests(10).await;
    signal(&child, sig);
    let stopped = finish(child).await;
    stopped.expect_code(code);
    assert!(
        stopped.stderr.contains("palisade fetch:"),
        "{}",
        stopped.stderr
    );
    assert!(stopped.stderr.contains("stopping:"), "{}", stopped.stderr);
    let (finished, not_started, cut_off, waiting) = stopped.stopped();
    assert_eq!(
        finished + not_started + cut_off + waiting,
        total,
        "{}",
        stopped.stderr
    );

    // The file: whole JSON lines, one per finished item, none twice.
    let written = lines(&out);
    assert_eq!(written.len(), finished, "{}", stopped.stderr);
    let written_ids = unique_ids(&written);
    // Every result written is the answer to a request the upstream received exactly once.
    let seen = upstream.count_by_id();
    for line in &written {
        check_ok_line(line, &tpl);
        assert_eq!(seen.get(&id_of(line)), Some(&1), "{line}");
    }
    // And every request the upstream received has its result on disk, except those cut off
    // at the drain deadline (whose answers never came back).
    let unwritten: Vec<&String> = seen
        .keys()
        .filter(|id| !written_ids.contains(*id))
        .collect();
    assert!(
        unwritten.len() <= cut_off,
        "received but not written: {unwritten:?}; cut off: {cut_off}"
    );
    assert!(seen.values().all(|&n| n == 1), "{seen:?}");

    // Resume: the rest, and nothing that is on disk already.
    let resumed = run(&fetch(
        &tpl,
        &out,
        &[
            "--ids", "1..300", "--resume", "--rate", "1000/s", "--burst", "50",
        ],
    ))
    .await;
    resumed.expect_code(0);
    let all = lines(&out);
    assert_eq!(unique_ids(&all), id_range(1, total as u64));
    all.iter().for_each(|l| check_ok_line(l, &tpl));
    let seen = upstream.count_by_id();
    assert_eq!(seen.len(), total);
    // Only a request cut off mid-way can have been sent twice.
    let twice = seen.values().filter(|&&n| n > 1).count();
    assert!(twice <= cut_off, "sent twice: {twice}; cut off: {cut_off}");
    assert!(seen.values().all(|&n| n <= 2), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_drains_exits_130_and_resume_completes() {
    stop_then_resume("sigint", "INT", 130).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_exits_143_and_resume_completes() {
    stop_then_resume("sigterm", "TERM", 143).await;
}

/// After Ctrl-C nothing new is sent: the items waiting for their rate-limit turn are dropped,
/// not sent one by one while the drain lasts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_stop_no_new_request_is_sent() {
    let upstream = Upstream::builder()
        .latency(Latency::fixed(Duration::from_millis(200)))
        .start()
        .await
        .unwrap();
    let dir = scratch("no-new");
    let out = dir.join("results.jsonl");
    let tpl = template(&upstream);

    // A burst of 3, then one a minute: the 4th turn is a minute away when the signal comes
    // (the old scheduler had it queued inside the client, and sent it during the drain).
    let child = command(&fetch(
        &tpl,
        &out,
        &[
            "--ids",
            "1..100",
            "--rate",
            "1/min",
            "--burst",
            "3",
            "--drain-timeout",
            "2m",
        ],
    ))
    .spawn()
    .unwrap();
    upstream.wait_for_requests(3).await;
    signal(&child, "INT");
    let stopped = finish(child).await;
    stopped.expect_code(130);
    assert_eq!(stopped.stopped(), (3, 97, 0, 0), "{}", stopped.stderr);
    assert_eq!(upstream.requests_received(), 3);
    let written = lines(&out);
    assert_eq!(unique_ids(&written), id_range(1, 3));
    written.iter().for_each(|l| check_ok_line(l, &tpl));
}

/// A stop after the last item was launched still bounds the wait by --drain-timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_after_the_last_launch_is_bounded_by_the_drain_timeout() {
    let upstream = Upstream::builder()
        .hang_requests([1, 2, 3])
        .start()
        .await
        .unwrap();
    let dir = scratch("drain-last");
    let out = dir.join("results.jsonl");
    let tpl = template(&upstream);

    let child = command(&fetch(
        &tpl,
        &out,
        &[
            "--ids",
            "1..3",
            "--rate",
            "1000/s",
            "--burst",
            "3",
            "--timeout",
            "1m",
            "--drain-timeout",
            "0s",
        ],
    ))
    .spawn()
    .unwrap();
    upstream.wait_for_requests(3).await;
    signal(&child, "INT");
    let stopped = finish(child).await;
    stopped.expect_code(130);
    assert_eq!(stopped.stopped(), (0, 0, 3, 0), "{}", stopped.stderr);
    assert!(lines(&out).is_empty());
}

/// The first signal drains; a second one quits at once, with the first one's code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_quits_at_once() {
    let upstream = Upstream::builder()
        .hang_requests([1, 2])
        .start()
        .await
        .unwrap();
    let dir = scratch("second-signal");
    let out = dir.join("results.jsonl");
    let tpl = template(&upstream);

    let mut child = command(&fetch(
        &tpl,
        &out,
        &[
            "--ids",
            "1..2",
            "--rate",
            "1000/s",
            "--burst",
            "2",
            "--timeout",
            "1h",
            "--drain-timeout",
            "1h",
        ],
    ))
    .spawn()
    .unwrap();
    // Read stderr as it comes, to know when the first signal has been taken.
    let stderr = child.stderr.take().unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        let mut all = String::new();
        while let Ok(Some(line)) = lines.next_line().await {
            all.push_str(&line);
            all.push('\n');
            let _ = tx.send(line);
        }
        all
    });
    upstream.wait_for_requests(2).await;
    signal(&child, "TERM");
    loop {
        let line = tokio::time::timeout(HANG_GUARD, rx.recv())
            .await
            .expect("no `stopping:` line (hang guard)")
            .expect("stderr closed before `stopping:`");
        if line.starts_with("stopping:") {
            break;
        }
    }
    signal(&child, "INT");
    let status = tokio::time::timeout(HANG_GUARD, child.wait())
        .await
        .expect("palisade did not quit (hang guard)")
        .unwrap();
    let stderr = reader.await.unwrap();
    assert_eq!(status.code(), Some(143), "{stderr}");
    assert!(stderr.contains("quitting now"), "{stderr}");
    assert!(lines(&out).is_empty());
}

// ===== Bad input =====

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_exits_2_with_a_line_naming_the_problem() {
    let upstream = Upstream::builder().start().await.unwrap();
    let dir = scratch("bad-input");
    let out = dir.join("results.jsonl");
    let out = out.to_str().unwrap();
    let tpl = template(&upstream);
    let missing = dir.join("no-such-ids.txt");
    let missing = missing.to_str().unwrap();
    let in_host = upstream.url("/").replace("127.0.0.1", "{id}.example");

    // (what, arguments after `fetch`, words the first line of stderr must hold)
    let cases: Vec<(&str, Vec<&str>, Vec<&str>)> = vec![
        (
            "bad rate",
            vec![&tpl, "--ids", "1..3", "--rate", "10/parsec"],
            vec!["--rate", "10/parsec"],
        ),
        (
            "no {id}",
            vec!["http://127.0.0.1:9/api/item", "--ids", "1..3"],
            vec!["http://127.0.0.1:9/api/item", "{id}"],
        ),
        (
            "relative template",
            vec!["/api/item/{id}", "--ids", "1..3"],
            vec!["/api/item/{id}", "http://"],
        ),
        (
            "{id} in the host",
            vec![&in_host, "--ids", "1..3"],
            vec!["not in the host"],
        ),
        (
            "empty id range",
            vec![&tpl, "--ids", "10..1"],
            vec!["--ids", "10..1"],
        ),
        (
            "duration without a unit",
            vec![&tpl, "--ids", "1..3", "--timeout", "10"],
            vec!["--timeout", "\"10\"", "unit"],
        ),
        (
            "missing ids file",
            vec![&tpl, "--ids-from", missing],
            vec!["cannot read ids", missing],
        ),
        (
            "header without a colon",
            vec![&tpl, "--ids", "1..3", "-H", "Authorization Bearer x"],
            vec!["--header", "Authorization Bearer x", "Name: value"],
        ),
        (
            "--resume without --out",
            vec![&tpl, "--ids", "1..3", "--resume"],
            vec!["--out"],
        ),
        (
            "no connections",
            vec![&tpl, "--ids", "1..3", "--max-connections", "0"],
            vec!["--max-connections"],
        ),
    ];
    for (what, args, words) in cases {
        let mut full = vec!["fetch"];
        full.extend(args);
        if !full.contains(&"--resume") {
            full.extend(["--out", out]);
        }
        let run = run(&full).await;
        assert_eq!(run.code, Some(2), "{what}: {run:?}");
        let first = run.stderr.lines().next().unwrap_or_default();
        for word in words {
            if what == "--resume without --out" {
                // clap lists the missing flag on the line after its heading.
                assert!(run.stderr.contains(word), "{what}: {:?}", run.stderr);
            } else {
                assert!(first.contains(word), "{what}: {word:?} not in {first:?}");
            }
        }
        assert!(run.stdout.is_empty(), "{what}: {}", run.stdout);
    }
    assert_eq!(upstream.requests_received(), 0);
    assert!(
        !Path::new(out).exists(),
        "bad input created the output file"
    );
}

// ===== Help =====

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn help_shows_examples_and_exit_codes() {
    for args in [&["--help"][..], &["fetch", "--help"], &["demo", "--help"]] {
        let run = run(args).await;
        run.expect_code(0);
        for word in ["Exit codes:", "130", "143", "Usage:"] {
            assert!(
                run.stdout.contains(word),
                "{args:?}: {word:?}\n{}",
                run.stdout
            );
        }
    }
    let top = run(&["--help"]).await;
    for word in ["Examples:", "palisade fetch", "palisade demo"] {
        assert!(top.stdout.contains(word), "{word:?}\n{}", top.stdout);
    }
    let fetch = run(&["fetch", "--help"]).await;
    for word in [
        "Examples:",
        "--ids-from",
        "--resume",
        "Output:",
        "latency_ms",
    ] {
        assert!(fetch.stdout.contains(word), "{word:?}\n{}", fetch.stdout);
    }
}

// ===== The demo =====

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_without_an_outage_loses_nothing() {
    let run = run(&[
        "demo",
        "--requests",
        "200",
        "--outage-start",
        "0s",
        "--outage-length",
        "0s",
        "--resets",
        "0",
        "--no-progress",
    ])
    .await;
    run.expect_code(0);
    for word in [
        "palisade demo: 200 requests",
        "lost: 0",
        "sent twice: 0",
        "upstream:  received 200 request(s)",
        "outcomes:  200: 200",
    ] {
        assert!(run.stdout.contains(word), "{word:?}\n{}", run.stdout);
    }
}

/// With an outage, resets and no subcommand (the demo is the default): nothing lost, nothing
/// sent twice, and the report says what the breaker did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_command_is_the_demo_and_an_outage_loses_nothing() {
    let run = run(&[
        "--requests",
        "150",
        "--outage-start",
        "0s",
        "--outage-length",
        "1s",
        "--resets",
        "2",
        "--no-progress",
    ])
    .await;
    run.expect_code(0);
    for word in [
        "palisade demo: 150 requests",
        "lost: 0",
        "sent twice: 0",
        "\nbreaker:   ",
    ] {
        assert!(run.stdout.contains(word), "{word:?}\n{}", run.stdout);
    }
}

/// `--retries`: an item answered 500 is tried again after a backoff, its line records how many
/// attempts it took, and the upstream saw exactly that many.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_items_are_retried_and_their_lines_record_the_attempts() {
    let upstream = Upstream::builder()
        .outage(Outage::requests(3..5).status(500))
        .start()
        .await
        .unwrap();
    let dir = scratch("retries");
    let out = dir.join("results.jsonl");
    let tpl = template(&upstream);
    let args = [
        "--ids",
        "1..6",
        "--rate",
        "1000/s",
        "--max-connections",
        "1",
        "--retries",
        "2",
    ];
    let run = run(&fetch(&tpl, &out, &args)).await;
    run.expect_code(0);
    let written = lines(&out);
    assert_eq!(written.len(), 6, "one line per id");
    assert_eq!(unique_ids(&written), id_range(1, 6));
    let seen = upstream.count_by_id();
    let mut retried = 0;
    for line in &written {
        assert_eq!(line["status"], 200, "{line}");
        let attempts = line["attempts"].as_u64().expect("attempts recorded");
        assert_eq!(seen[&id_of(line)] as u64, attempts, "{line}");
        if attempts > 1 {
            retried += 1;
        }
    }
    assert_eq!(retried, 2, "the two items answered 500 went again");
    assert!(
        run.stderr.contains("retries:   2 attempt(s) rescheduled"),
        "{}",
        run.stderr
    );
}

/// At twice the upstream's quota, items answered 429 wait out the `Retry-After` and go again:
/// every item ends as 200 within the attempts allowed, and no item appears twice in the output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_twice_the_quota_every_item_ends_as_200() {
    let upstream = Upstream::builder()
        .rate_limit(20, Duration::from_secs(1))
        .start()
        .await
        .unwrap();
    let dir = scratch("twice-quota");
    let out = dir.join("results.jsonl");
    let tpl = template(&upstream);
    let args = [
        "--ids",
        "1..60",
        "--rate",
        "40/s",
        "--burst",
        "5",
        "--retries",
        "4",
    ];
    let run = run(&fetch(&tpl, &out, &args)).await;
    run.expect_code(0);
    let written = lines(&out);
    assert_eq!(written.len(), 60, "one line per id:\n{}", run.stderr);
    assert_eq!(unique_ids(&written), id_range(1, 60));
    for line in &written {
        assert_eq!(line["status"], 200, "{line}");
        assert!(line["attempts"].as_u64().unwrap() <= 5, "{line}");
    }
    let seen = upstream.count_by_id();
    let answered_429 = upstream
        .records()
        .iter()
        .filter(|r| r.outcome.status() == Some(http::StatusCode::TOO_MANY_REQUESTS))
        .count();
    let attempts: u64 = written
        .iter()
        .map(|l| l["attempts"].as_u64().unwrap())
        .sum();
    assert_eq!(
        seen.values().sum::<usize>() as u64,
        attempts,
        "every attempt arrived once"
    );
    assert_eq!(
        attempts as usize,
        60 + answered_429,
        "each 429 cost exactly one more attempt"
    );
}

/// After a stop, an attempt that fails in a retryable way is final: its line is written, and
/// the report's counts add up (nothing vanishes into the retry queue).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retryable_failure_during_the_drain_is_written_not_rescheduled() {
    let upstream = Upstream::builder()
        .outage(Outage::time(Duration::ZERO..Duration::from_secs(3600)).status(503))
        .latency(Latency::fixed(Duration::from_millis(500)))
        .start()
        .await
        .unwrap();
    let dir = scratch("drain-retryable");
    let out = dir.join("results.jsonl");
    let tpl = template(&upstream);
    let child = command(&fetch(
        &tpl,
        &out,
        &[
            "--ids",
            "1..3",
            "--rate",
            "1000/s",
            "--burst",
            "3",
            "--concurrency",
            "3",
            "--retries",
            "3",
            "--drain-timeout",
            "1m",
            "--breaker-window",
            "100",
        ],
    ))
    .spawn()
    .unwrap();
    upstream.wait_for_requests(3).await;
    signal(&child, "INT");
    let stopped = finish(child).await;
    stopped.expect_code(130);
    assert_eq!(stopped.stopped(), (3, 0, 0, 0), "{}", stopped.stderr);
    let written = lines(&out);
    assert_eq!(unique_ids(&written), id_range(1, 3));
    for line in &written {
        assert_eq!(line["status"], 503, "{line}");
        assert_eq!(line["attempts"], 1, "{line}");
    }
    assert_eq!(upstream.requests_received(), 3);
}

/// Once the breaker opens, the launcher waits for its open time (it asks the breaker) instead
/// of sending the next item straight into the open circuit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_launcher_waits_for_the_open_breaker_instead_of_spending_an_item() {
    let upstream = Upstream::builder()
        .outage(Outage::requests(1..3).status(503))
        .start()
        .await
        .unwrap();
    let dir = scratch("breaker-wait");
    let out = dir.join("results.jsonl");
    let tpl = template(&upstream);
    let run = run(&fetch(
        &tpl,
        &out,
        &[
            "--ids",
            "1..5",
            "--rate",
            "1000/s",
            "--concurrency",
            "1",
            "--retries",
            "0",
            "--breaker-window",
            "2",
            "--breaker-failure-rate",
            "100",
            "--breaker-open",
            "1s",
        ],
    ))
    .await;
    let written = lines(&out);
    assert_eq!(unique_ids(&written), id_range(1, 5));
    let refused: Vec<&Value> = written
        .iter()
        .filter(|l| l["error"] == "circuit_open")
        .collect();
    assert!(
        refused.is_empty(),
        "items spent on the open circuit: {refused:?}\n{}",
        run.stderr
    );
    let ok = written.iter().filter(|l| l["status"] == 200).count();
    assert_eq!(
        ok, 3,
        "after the open time, the rest succeed:\n{}",
        run.stderr
    );
    run.expect_code(1);
}

/// `--max-connections` above the client's default total of 100 is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_than_100_connections_may_be_asked_for() {
    let upstream = Upstream::builder().start().await.unwrap();
    let dir = scratch("many-connections");
    let out = dir.join("results.jsonl");
    let tpl = template(&upstream);
    let run = run(&fetch(
        &tpl,
        &out,
        &["--ids", "1..2", "--max-connections", "150"],
    ))
    .await;
    run.expect_code(0);
    assert_eq!(lines(&out).len(), 2);
}
