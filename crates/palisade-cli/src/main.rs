//! `palisade`: call a rate-limited API politely from the command line.
//!
//! - `palisade` or `palisade demo`: the whole stack against a local upstream that misbehaves
//!   on purpose (429s, an outage, latency, resets), with a live progress bar and a report
//!   checked against the upstream's own record. `cargo run --release` runs this.
//! - `palisade fetch URL_TEMPLATE --ids 1..1000 --rate 100/min --out results.jsonl`: one
//!   request per id, every result on disk as it finishes, `--resume` to skip what is done.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod args;
mod demo;
mod fetch;
mod report;
mod runner;

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

const EXIT_CODES: &str = "\
Exit codes:
  0    every item finished with a 2xx response (demo: and the upstream's record matches)
  1    the run finished, but some items failed (or the demo's check found a loss)
  2    bad flags or input (one line on stderr says which)
  130  stopped by Ctrl-C (SIGINT) after draining in-flight requests
  143  stopped by SIGTERM after draining in-flight requests
A second Ctrl-C or SIGTERM exits at once with the same code; every finished result is already
on disk.";

const EXAMPLES: &str = "\
Examples:
  palisade                      # the demo (same as `palisade demo`)
  palisade demo --requests 300 --outage-length 0s
  palisade fetch 'https://api.example.com/items/{id}' --ids 1..1000 \\
      --rate 100/min --burst 10 --max-connections 10 --timeout 10s \\
      -H 'Authorization: Bearer TOKEN' --out results.jsonl
  palisade fetch 'https://api.example.com/items/{id}' --ids-from ids.txt \\
      --out results.jsonl --resume";

const FETCH_EXAMPLES: &str = "\
Examples:
  palisade fetch 'https://api.example.com/items/{id}' --ids 1..1000 \\
      --rate 100/min --burst 10 --max-connections 10 --timeout 10s \\
      -H 'Authorization: Bearer TOKEN' --out results.jsonl
  palisade fetch 'https://api.example.com/items/{id}' --ids-from ids.txt \\
      --out results.jsonl --resume

Output: one JSON object per finished item, appended to --out and flushed line by line:
  {\"id\":\"7\",\"url\":\"...\",\"status\":200,\"latency_ms\":12.3,\"body\":...}
  {\"id\":\"8\",\"url\":\"...\",\"latency_ms\":10000.1,\"error\":\"timeout\",\"message\":\"...\"}
--resume skips the ids that already have a 2xx line in --out; the others (errors, 429s, 5xx,
ids never reached, a last line cut short by a crash) are fetched again.";

/// Call a rate-limited API without getting banned, without hammering it while it is down,
/// and without losing a result when you press Ctrl-C.
#[derive(Debug, Parser)]
#[command(
    name = "palisade",
    version,
    args_conflicts_with_subcommands = true,
    after_help = format!("{EXAMPLES}\n\n{EXIT_CODES}")
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Without a command: the demo, with these flags.
    #[command(flatten)]
    demo: demo::DemoArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the whole stack against a local upstream that misbehaves on purpose (the default).
    #[command(after_help = EXIT_CODES)]
    Demo(demo::DemoArgs),
    /// Fetch one URL per id, politely; write each result as a JSON line.
    #[command(after_help = format!("{FETCH_EXAMPLES}\n\n{EXIT_CODES}"))]
    Fetch(fetch::FetchArgs),
}

/// The signals that stop a run, registered before any work starts: a signal that arrives
/// once the first request can be out is never left to the default action (which would kill
/// the process without its report), and one that arrives between two `next` calls is kept.
struct Signals {
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs the handlers (inside the runtime). `None` when the system refused.
    fn install() -> Option<Signals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let int = signal(SignalKind::interrupt()).ok()?;
            let term = signal(SignalKind::terminate()).ok()?;
            Some(Signals { int, term })
        }
        #[cfg(not(unix))]
        {
            Some(Signals {})
        }
    }

    /// The next signal's exit code: 130 for SIGINT (Ctrl-C), 143 for SIGTERM.
    async fn next(&mut self) -> Option<i32> {
        #[cfg(unix)]
        {
            tokio::select! {
                got = self.int.recv() => got.map(|()| 130),
                got = self.term.recv() => got.map(|()| 143),
            }
        }
        #[cfg(not(unix))]
        {
            tokio::signal::ctrl_c().await.ok().map(|()| 130)
        }
    }
}

/// Listens for SIGINT and SIGTERM: the first stops launching (and sets the exit code), the
/// second exits at once.
fn watch_signals(mut signals: Signals, stop: CancellationToken, code: Arc<AtomicI32>) {
    tokio::spawn(async move {
        let mut first = true;
        while let Some(c) = signals.next().await {
            if first {
                first = false;
                code.store(c, Ordering::SeqCst);
                eprintln!(
                    "\nstopping: no new requests; in-flight ones may finish (again to quit now)"
                );
                stop.cancel();
            } else {
                eprintln!("\nquitting now; finished results are on disk");
                std::process::exit(code.load(Ordering::SeqCst));
            }
        }
    });
}

fn main() {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("palisade: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = runtime.block_on(async move {
        let stop = CancellationToken::new();
        let signal_code = Arc::new(AtomicI32::new(0));
        // Installed here, before the run starts, not inside the spawned watcher: a task may
        // first run after the first request is out.
        match Signals::install() {
            Some(signals) => watch_signals(signals, stop.clone(), signal_code.clone()),
            None => eprintln!("palisade: cannot listen for Ctrl-C; it will stop at once"),
        }
        let result = match cli.command {
            None => demo::run(cli.demo, stop.clone()).await,
            Some(Command::Demo(a)) => demo::run(a, stop.clone()).await,
            Some(Command::Fetch(a)) => fetch::run(a, stop.clone()).await,
        };
        match result {
            Ok(code) if stop.is_cancelled() => signal_code.load(Ordering::SeqCst).max(code),
            Ok(code) => code,
            Err(message) => {
                eprintln!("palisade: {message}");
                2
            }
        }
    });
    std::process::exit(code);
}
