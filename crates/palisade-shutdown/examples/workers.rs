//! The seed's "spawn workers until shutdown", done right.
//!
//! The seed lesson's loop was
//!
//! ```text
//! while not shutdown.is_set():
//!     tg.create_task(worker())
//! ```
//!
//! It never awaits, so the event loop never runs the signal handler that would end it, and it
//! spawns tasks without bound: it cannot shut down at all. Here instead:
//!
//! - a fixed pool of [`WORKERS`] tasks, spawned with [`Shutdown::spawn`] so the drain waits for
//!   them, takes jobs from a bounded queue: a producer that outruns them waits (and yields)
//!   instead of piling up work;
//! - every loop awaits, so signals are handled; the producer stops at the trigger, and each
//!   worker checks its token between jobs: it finishes the job in hand and takes no more;
//! - the drain has a deadline, and the report says what finished and what was cut off.
//!
//! It runs until SIGTERM or SIGINT, or triggers itself after 2 s, then drains for at most
//! 5 s, prints `report: ...` and exits with status 0 (2 if the drain was cut short).
//!
//! ```text
//! cargo run --example workers
//! ```

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use palisade_shutdown::Shutdown;
use tokio::sync::{mpsc, Mutex};

/// Jobs handled at once.
const WORKERS: usize = 4;
/// Jobs waiting at most; the producer waits when the queue is full.
const QUEUE: usize = 8;

#[tokio::main]
async fn main() -> std::io::Result<ExitCode> {
    let shutdown = Shutdown::new(Duration::from_secs(5));
    shutdown.listen_for_signals()?;

    let (tx, rx) = mpsc::channel::<u64>(QUEUE);
    // One queue, several consumers: the worker waiting for the next job holds the lock.
    let rx = Arc::new(Mutex::new(rx));

    let producer = shutdown.spawn(move |stop| async move {
        let mut sent = 0;
        loop {
            tokio::select! {
                biased;
                () = stop.cancelled() => break,
                // Waits while the queue is full: bounded, and yields to the runtime.
                res = tx.send(sent) => match res {
                    Ok(()) => sent += 1,
                    Err(_) => break, // every worker is gone
                },
            }
        }
        sent
    });

    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            let rx = rx.clone();
            shutdown.spawn(move |stop| async move {
                let mut done = 0;
                loop {
                    // The token is checked between jobs: the job in hand is finished, then
                    // no other is taken.
                    let job = tokio::select! {
                        biased;
                        () = stop.cancelled() => break,
                        job = async { rx.lock().await.recv().await } => job,
                    };
                    let Some(job) = job else { break };
                    work(job).await;
                    done += 1;
                }
                done
            })
        })
        .collect();

    tokio::select! {
        () = shutdown.triggered() => {}
        () = tokio::time::sleep(Duration::from_secs(2)) => {
            eprintln!("no signal after 2 s: shutting down");
            shutdown.trigger();
        }
    }
    let report = shutdown.drain().await;

    // A task cut at the force yields `None`.
    let sent = producer.await.ok().flatten().unwrap_or(0);
    let mut done = 0;
    for worker in workers {
        done += worker.await.ok().flatten().unwrap_or(0);
    }
    // Jobs still queued were never started: a real service hands them back (e.g. nacks them to
    // its broker) so that another instance takes them.
    let left = rx.lock().await.len();
    println!("{sent} jobs queued, {done} done, {left} left in the queue");
    println!("report: {report}");
    Ok(if report.forced.is_some() {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

/// One job: stands in for a call to a database or another service.
async fn work(job: u64) {
    tokio::time::sleep(Duration::from_millis(50 + job % 5 * 50)).await;
}
