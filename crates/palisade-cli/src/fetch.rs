//! `palisade fetch`: one request per id, politely, with every result on disk as it finishes.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use palisade_client::{Client, Quota};
use tokio_util::sync::CancellationToken;

use crate::args;
use crate::report::{self, Timeline};
use crate::runner::{self, Job, Options, Output};

/// Flags of `palisade fetch`.
#[derive(Debug, Clone, Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["ids", "ids_from"])))]
pub(crate) struct FetchArgs {
    /// The URL of one item, with `{id}` where the id goes.
    #[arg(value_parser = args::template)]
    pub(crate) template: String,
    /// The ids: an inclusive range, `1..1000`.
    #[arg(long, value_parser = args::id_range)]
    pub(crate) ids: Option<(u64, u64)>,
    /// The ids: a file with one id per line.
    #[arg(long, value_name = "FILE")]
    pub(crate) ids_from: Option<PathBuf>,
    /// The rate, e.g. `100/min`, `10/s`, `3/250ms`.
    #[arg(long, default_value = "10/s", value_parser = args::rate)]
    pub(crate) rate: Quota,
    /// How many requests may go at once after a quiet spell.
    #[arg(long, default_value_t = 1)]
    pub(crate) burst: u32,
    /// Maximum connections to the API (at most 100,000).
    #[arg(long, default_value_t = 10, value_parser = args::count)]
    pub(crate) max_connections: usize,
    /// Requests in flight at once (default: --max-connections, so that each has a connection;
    /// at most 100,000).
    #[arg(long, value_parser = args::count)]
    pub(crate) concurrency: Option<usize>,
    /// Per-request timeout.
    #[arg(long, default_value = "10s", value_parser = args::positive_duration)]
    pub(crate) timeout: Duration,
    /// Open the circuit when this percentage of recent calls failed (5xx, timeouts, resets).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u8).range(1..=100))]
    pub(crate) breaker_failure_rate: u8,
    /// How many recent calls the breaker looks at.
    #[arg(long, default_value_t = 20)]
    pub(crate) breaker_window: u32,
    /// How long the circuit stays open before a probe (doubles while the upstream still fails).
    #[arg(long, default_value = "5s", value_parser = args::positive_duration)]
    pub(crate) breaker_open: Duration,
    /// Where to write results, one JSON object per line (appended to).
    #[arg(long, short = 'o', value_name = "FILE")]
    pub(crate) out: Option<PathBuf>,
    /// Skip ids that already have a 2xx result in --out (the others are fetched again).
    #[arg(long, requires = "out")]
    pub(crate) resume: bool,
    /// On Ctrl-C or SIGTERM, how long in-flight requests may take to finish.
    #[arg(long, default_value = "10s", value_parser = args::duration)]
    pub(crate) drain_timeout: Duration,
    /// A request header, `Name: value` (repeatable), e.g. for a token.
    #[arg(short = 'H', long = "header", value_parser = args::header)]
    pub(crate) headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// More attempts per item after a retryable failure (429/503 after their Retry-After,
    /// 5xx, timeouts, resets, refusals by the open breaker), before its line is written as a
    /// failure. Each line records its `attempts`.
    #[arg(long, default_value_t = 3)]
    pub(crate) retries: u32,
    /// No progress bar.
    #[arg(long)]
    pub(crate) no_progress: bool,
}

/// Opens `path` for appending, first dropping an incomplete last line (a run cut off in the
/// middle of writing one): appended to, it would swallow the next result. A last line that is
/// whole but lacks its newline (an edited file) gets one instead. Returns the file and, if a
/// line was dropped, a note saying so.
fn open_output(path: &Path) -> Result<(File, Option<String>), String> {
    let cannot = |e: std::io::Error| format!("cannot open {} for writing: {e}", path.display());
    let mut file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(path)
        .map_err(cannot)?;
    let len = file.metadata().map_err(cannot)?.len();
    // Where the last line starts: just after the last newline, found from the end.
    let mut start = len;
    let mut chunk = vec![0u8; 64 * 1024];
    while start > 0 {
        let from = start.saturating_sub(chunk.len() as u64);
        let buf = &mut chunk[..(start - from) as usize];
        file.seek(SeekFrom::Start(from)).map_err(cannot)?;
        file.read_exact(buf).map_err(cannot)?;
        if start == len && buf.last() == Some(&b'\n') {
            return Ok((file, None));
        }
        if let Some(i) = buf.iter().rposition(|&b| b == b'\n') {
            start = from + i as u64 + 1;
            break;
        }
        start = from;
    }
    if start == len {
        return Ok((file, None));
    }
    let mut tail = Vec::new();
    file.seek(SeekFrom::Start(start)).map_err(cannot)?;
    file.read_to_end(&mut tail).map_err(cannot)?;
    if serde_json::from_slice::<serde_json::Value>(&tail).is_ok() {
        file.write_all(b"\n").map_err(cannot)?;
        return Ok((file, None));
    }
    file.set_len(start).map_err(cannot)?;
    let note = format!(
        "{}: dropped an incomplete last line ({} bytes), left by a run cut off mid-write",
        path.display(),
        len - start
    );
    Ok((file, Some(note)))
}

/// Ids that already have a 2xx result in an output file. Lines that are not JSON results
/// (cut short by a crash, written by hand) and results that failed (errors, 429s, 5xx, ...)
/// do not count: those ids are fetched again.
fn done_ids(path: &Path) -> Result<HashSet<String>, String> {
    let cannot = |e: std::io::Error| format!("cannot read {}: {e}", path.display());
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashSet::new()),
        Err(e) => return Err(cannot(e)),
    };
    let mut reader = BufReader::new(file);
    let mut ids = HashSet::new();
    // Bytes, not `lines()`: a line cut inside a multi-byte character is not valid UTF-8, and
    // must be skipped rather than stop the resume.
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line).map_err(cannot)? == 0 {
            break;
        }
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&line) else {
            continue;
        };
        let ok = v
            .get("status")
            .and_then(serde_json::Value::as_u64)
            .is_some_and(|s| (200..300).contains(&s));
        if let (true, Some(id)) = (ok, v.get("id").and_then(|i| i.as_str())) {
            ids.insert(id.to_owned());
        }
    }
    Ok(ids)
}

/// Runs the fetch; returns the process exit code.
pub(crate) async fn run(a: FetchArgs, stop: CancellationToken) -> Result<i32, String> {
    if a.max_connections == 0 || a.concurrency == Some(0) || a.breaker_window == 0 {
        return Err(
            "--max-connections, --concurrency and --breaker-window must be at least 1".to_owned(),
        );
    }
    let ids: Vec<String> = match (&a.ids, &a.ids_from) {
        (Some((first, last)), _) => (*first..=*last).map(|i| i.to_string()).collect(),
        (None, Some(path)) => {
            let (ids, repeats) = args::ids_from_file(path)?;
            if repeats > 0 {
                eprintln!(
                    "{}: {repeats} repeated id(s) are fetched once",
                    path.display()
                );
            }
            ids
        }
        (None, None) => unreachable!("clap requires one"),
    };
    // Every URL is checked before anything is sent: an id that cannot be in a URL is bad
    // input (exit 2), not a failed item.
    if let Some(bad) = ids
        .iter()
        .find(|id| args::url_for(&a.template, id).parse::<http::Uri>().is_err())
    {
        return Err(format!(
            "id {bad:?} does not make a valid URL with {:?}",
            a.template
        ));
    }
    let breaker = palisade_breaker::Config::builder()
        .count_window(a.breaker_window)
        .minimum_calls(a.breaker_window.div_ceil(2))
        .failure_rate(a.breaker_failure_rate)
        .open_duration(a.breaker_open, 2, a.breaker_open.saturating_mul(8))
        .build()
        .map_err(|e| format!("breaker flags: {e}"))?;
    let base = a.template.replace("{id}", "0");
    let timeline = Timeline::new();
    let client = Client::builder(&base)
        .rate(a.rate)
        .burst(a.burst)
        .max_connections_per_host(a.max_connections)
        .max_connections(a.max_connections)
        .timeout(a.timeout)
        .breaker(breaker)
        .on_breaker_transition(timeline.listener())
        .build()
        .map_err(|e| e.to_string())?;
    // Every flag is checked: now the output file may be created (or repaired).
    let out = match &a.out {
        Some(path) => {
            let (file, note) = open_output(path)?;
            if let Some(note) = note {
                eprintln!("{note}");
            }
            Some(Output::new(file))
        }
        None => None,
    };
    let skip = match (&a.out, a.resume) {
        (Some(path), true) => done_ids(path)?,
        _ => HashSet::new(),
    };
    let listed = ids.len();
    let jobs: Vec<Job> = ids
        .into_iter()
        .filter(|id| !skip.contains(id))
        .map(|id| Job {
            url: args::url_for(&a.template, &id),
            id,
        })
        .collect();
    if a.resume {
        eprintln!(
            "resuming: {} of {listed} id(s) already have a 2xx result in the output and are skipped",
            listed - jobs.len()
        );
    }
    let total = jobs.len();
    let opts = Options {
        concurrency: a.concurrency.unwrap_or(a.max_connections),
        drain_timeout: a.drain_timeout,
        headers: a.headers.clone(),
        out,
        progress: !a.no_progress,
        retries: a.retries,
    };
    let result = runner::run(&client, jobs, opts, stop).await;
    let sent: u64 = result
        .attempts
        .values()
        .map(|(_, sent)| u64::from(*sent))
        .sum();
    let shutdown = client.shutdown(Duration::from_secs(1)).await;
    eprintln!();
    eprintln!(
        "palisade fetch: {} of {total} item(s) finished in {:.1} s",
        result.outcomes.len(),
        result.elapsed.as_secs_f64()
    );
    eprint!(
        "{}",
        report::render(&result, &client, &timeline, Some((a.rate, a.burst)), sent)
    );
    if let Some(path) = &a.out {
        eprintln!("results:   {} (one JSON object per line)", path.display());
    }
    tracing::debug!(%shutdown, "client closed");
    let all_ok = result
        .outcomes
        .values()
        .all(|o| matches!(o, runner::Outcome::Status(200..=299)));
    Ok(
        if result.outcomes.len() == total && all_ok && result.write_errors == 0 {
            0
        } else {
            1
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_with(name: &str, bytes: &[u8]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("palisade-fetch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn an_incomplete_last_line_is_dropped_and_a_whole_one_ended() {
        let ok = b"{\"id\":\"1\",\"status\":200}\n";
        let path = file_with("cut.jsonl", &[&ok[..], b"{\"id\":\"2\",\"sta\xC3"].concat());
        let (mut file, note) = open_output(&path).unwrap();
        let note = note.unwrap();
        assert!(note.contains("(15 bytes)"), "{note}");
        file.write_all(b"next\n").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), [&ok[..], b"next\n"].concat());

        let path = file_with("unended.jsonl", b"{\"id\":\"1\",\"status\":200}");
        let (mut file, note) = open_output(&path).unwrap();
        assert!(note.is_none());
        file.write_all(b"next\n").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), [&ok[..], b"next\n"].concat());

        for (name, text) in [("empty.jsonl", &b""[..]), ("whole.jsonl", ok)] {
            let path = file_with(name, text);
            let (_, note) = open_output(&path).unwrap();
            assert!(note.is_none());
            assert_eq!(std::fs::read(&path).unwrap(), text);
        }
        // A last line longer than the chunk read from the end.
        let long = format!("{{\"id\":\"3\",\"body\":\"{}", "x".repeat(200_000));
        let path = file_with("long.jsonl", &[&ok[..], long.as_bytes()].concat());
        let (_, note) = open_output(&path).unwrap();
        assert!(note.is_some());
        assert_eq!(std::fs::read(&path).unwrap(), ok);
    }

    #[test]
    fn only_2xx_results_are_done() {
        let path = file_with(
            "done.jsonl",
            b"{\"id\":\"1\",\"status\":200}\n\
              {\"id\":\"2\",\"status\":503}\n\
              {\"id\":\"3\",\"error\":\"timeout\"}\n\
              not json\n\
              {\"id\":\"4\",\"status\":204}\n\
              {\"id\":\"2\",\"status\":200}\n\
              {\"id\":\"5\",\"sta\xC3",
        );
        let done = done_ids(&path).unwrap();
        let want: HashSet<String> = ["1", "2", "4"].map(String::from).into();
        assert_eq!(done, want);
        assert!(done_ids(&path.with_extension("missing"))
            .unwrap()
            .is_empty());
    }
}
