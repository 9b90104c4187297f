//! HTTP/1.1 GETs over loopback: palisade's full client beside hyper-util's legacy `Client`,
//! reqwest (no TLS) and hyper's raw client connections, the "physical limit".
//!
//! Run with `cargo bench -p palisade-client --bench client`. It prints a table, not criterion
//! output: the figures wanted are requests per second and latency percentiles of a fixed
//! workload, which criterion's per-iteration model does not give.
//!
//! # The workload
//!
//! - **Upstream**: a hyper 1 `http1` server on `127.0.0.1:0`, started inside this binary: every
//!   request is answered `200` with a 13-byte body (`hello, world\n`), keep-alive on, `TCP_NODELAY`
//!   on accepted sockets. It counts accepted connections, so the table shows how many
//!   connections each client opened.
//! - **Runtime**: one tokio multi-thread runtime with 2 workers (the machine has 2 cores). By
//!   default the upstream *shares* it with the clients, so the two sides never ask for more
//!   than the 2 cores. `CLIENT_BENCH_UPSTREAM=own` gives the upstream its own 1-worker runtime
//!   instead (3 busy threads on 2 cores).
//! - **Load**: 32 tasks, each sending GETs one after the other and reading each body to the end;
//!   `CLIENT_BENCH_REQUESTS` requests in all per client (default 100,000), split evenly. Each
//!   request's latency (from just before the request is built to the end of its body) is
//!   recorded; p50 and p99 are nearest-rank over all requests of the run. req/s is requests /
//!   wall time from the first spawn to the last task's end.
//! - **Rounds**: `CLIENT_BENCH_ROUNDS` rounds (default 3), the clients interleaved in each round
//!   (the order rotated by one each round, so none always goes first) and each one built fresh
//!   for its run (so its connections are counted per run) and dropped after. The machine has
//!   slow phases: compare within a round; the closing summary gives per client the median over
//!   the rounds, and the median and worst of its within-round ratios. A warm-up pass (a tenth of
//!   the requests per client, not reported) comes first.
//! - **CPU/req**: the process's CPU time (user + system, every thread: the upstream's too, the
//!   same work for every client) over the run / requests, from `/proc/self/stat` (Linux), and
//!   its `user` part alone: the kernel's share (loopback TCP, the same syscalls per request for
//!   every client) is most of it, so the user part is where the clients differ. On 2 cores this
//!   run is CPU-bound, so req/s ≈ 2 s / CPU per request when the machine is otherwise idle;
//!   CPU/req moves less than req/s when other processes take cores.
//! - `CLIENT_BENCH_CLIENTS=ours,raw8` (a comma list of the names below) runs only some clients,
//!   e.g. to profile one.
//!
//! # The clients
//!
//! Every client sends `GET /` with `Host` and the same `User-Agent` (`palisade/` and the crate's
//! version): ours by default, the others told to.
//!
//! - `palisade`: `palisade_client::Client` with a rate of `100000000/s`, burst 1,000,000 (far
//!   above anything reached: the limiter is on the path but never makes a request wait), and
//!   `max_connections_per_host(32)`; everything else default (breaker, 30 s timeout, shutdown
//!   gate). Requests are `client.get("/")` and `.bytes()`.
//! - `legacy`: `hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http()`
//!   as it comes (its defaults: no idle limit, `TCP_NODELAY` off), body `Empty<Bytes>`; each
//!   request is `client.request(..)` of a `GET` to a `Uri` parsed once, with the `User-Agent`
//!   below, then the body collected.
//! - `reqwest`: reqwest 0.13 with `default-features = false` (no TLS, no HTTP/2, no system
//!   proxy), `reqwest::Client::new()`; `client.get(&url)` with the URL as a string and the
//!   `User-Agent` below, `.send()`, then `.bytes()` (reqwest adds `Accept: */*` of its own).
//! - `raw×8`: 8 connections made with `hyper::client::conn::http1::handshake` over
//!   `TCP_NODELAY` sockets, each shared by 4 tasks through a `tokio::sync::Mutex` held from
//!   `ready()` to the end of the body (HTTP/1.1 has one request in flight per connection). The
//!   requests are built by hand (origin-form URI, `Host` and `User-Agent` headers). This is the issue's
//!   "raw connections ×8", and the reference of the `vs raw×8` column.
//! - `raw×32`: 32 such connections, one per task, no lock: the floor of what any client can
//!   add over hyper's connection itself. Shown for reference.
//!
//! Without `--bench` (as under `cargo test --benches`) it runs one quick round of 3,200
//! requests per client, as a smoke test.
//!
//! Wall-clock time is read with `tokio::time::Instant` (std's unless a runtime pauses time, which
//! none does here).

use std::convert::Infallible;
use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::USER_AGENT;
use http::{Request, Response, Uri};
use http_body_util::{BodyExt, Empty, Full};
use hyper::client::conn::http1 as client_http1;
use hyper::server::conn::http1 as server_http1;
use hyper_util::client::legacy::Client as LegacyClient;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio::sync::Mutex;
use tokio::time::Instant;

/// Concurrent tasks per client.
/// The `User-Agent` every client sends: ours sends it by default, and the others are given the
/// same header, so every request is the same bytes on the wire and the upstream, in the same
/// process, parses the same request for each. (Before, ours alone carried it, and the work of
/// writing and parsing that header was counted against our client alone.)
const UA: &str = concat!("palisade/", env!("CARGO_PKG_VERSION"));

const TASKS: usize = 32;
/// Worker threads of the clients' runtime.
const WORKERS: usize = 2;
/// Connections of the `raw×8` client (each shared by `TASKS / 8` tasks).
const RAW_SHARED: usize = 8;
/// The upstream's answer.
const BODY: &[u8] = b"hello, world\n";

// ===== the upstream =====

/// A minimal HTTP/1.1 upstream; counts the connections it accepted.
struct Upstream {
    addr: SocketAddr,
    accepted: Arc<AtomicU64>,
}

impl Upstream {
    /// Binds `127.0.0.1:0` and serves on `rt` until the process ends.
    fn start(rt: &Runtime) -> Upstream {
        let listener = rt
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .expect("bind the upstream");
        let addr = listener.local_addr().expect("upstream address");
        let accepted = Arc::new(AtomicU64::new(0));
        let count = accepted.clone();
        rt.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                count.fetch_add(1, Ordering::Relaxed);
                let _ = stream.set_nodelay(true);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(|_req| async {
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(BODY))))
                    });
                    // Errors are the clients hanging up (a dropped pool): nothing to report.
                    let _ = server_http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Upstream { addr, accepted }
    }

    fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
}

// ===== the clients =====

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Palisade,
    Legacy,
    Reqwest,
    Raw8,
    Raw32,
}

impl Kind {
    const ALL: [Kind; 5] = [
        Kind::Palisade,
        Kind::Legacy,
        Kind::Reqwest,
        Kind::Raw8,
        Kind::Raw32,
    ];

    fn name(self) -> &'static str {
        match self {
            Kind::Palisade => "palisade",
            Kind::Legacy => "legacy",
            Kind::Reqwest => "reqwest",
            Kind::Raw8 => "raw×8",
            Kind::Raw32 => "raw×32",
        }
    }

    /// Names accepted by `CLIENT_BENCH_CLIENTS`.
    fn matches(self, s: &str) -> bool {
        let s = s.trim();
        match self {
            Kind::Palisade => s == "palisade" || s == "ours",
            Kind::Legacy => s == "legacy",
            Kind::Reqwest => s == "reqwest",
            Kind::Raw8 => s == "raw8" || s == "raw×8",
            Kind::Raw32 => s == "raw32" || s == "raw×32",
        }
    }
}

/// What one run measured.
struct Run {
    kind: Kind,
    requests: u64,
    wall: Duration,
    p50: Duration,
    p99: Duration,
    connections: u64,
    /// Process CPU time per request (all threads, the upstream's too), if known.
    cpu: Option<Cpu>,
}

/// CPU time: user and system.
#[derive(Debug, Clone, Copy)]
struct Cpu {
    user: Duration,
    system: Duration,
}

impl Cpu {
    fn total(self) -> Duration {
        self.user + self.system
    }
}

impl Run {
    fn per_sec(&self) -> f64 {
        self.requests as f64 / self.wall.as_secs_f64()
    }
}

/// Spawns `TASKS` tasks; task `t` calls `per_task(t)`'s request function `n_t` times in sequence.
/// Returns the wall time and every request's latency.
async fn drive<F, Fut>(requests: u64, mut per_task: impl FnMut(usize) -> F) -> (Duration, Vec<u32>)
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let tasks = TASKS as u64;
    let start = Instant::now();
    let handles: Vec<_> = (0..TASKS)
        .map(|t| {
            let n = requests / tasks + u64::from((t as u64) < requests % tasks);
            let mut one = per_task(t);
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    let t0 = Instant::now();
                    one().await;
                    lat.push(u32::try_from(t0.elapsed().as_nanos()).unwrap_or(u32::MAX));
                }
                lat
            })
        })
        .collect();
    let mut all = Vec::with_capacity(requests as usize);
    for h in handles {
        all.extend(h.await.expect("task completes"));
    }
    (start.elapsed(), all)
}

async fn run_palisade(up: &Upstream, requests: u64) -> (Duration, Vec<u32>) {
    let builder = palisade_client::Client::builder(format!("http://{}/", up.addr))
        .rate("100000000/s")
        .burst(1_000_000)
        .max_connections_per_host(TASKS);
    // No HTTPS here: skip reading the system's trust store.
    #[cfg(feature = "tls")]
    let builder = builder.no_system_roots();
    let client = builder.build().expect("palisade client");
    let out = drive(requests, |_| {
        let client = client.clone();
        move || {
            let client = client.clone();
            async move {
                let res = client.get("/").await.expect("palisade GET");
                assert_eq!(res.status(), 200);
                let body = res.bytes().await.expect("palisade body");
                assert_eq!(body.len(), BODY.len());
            }
        }
    })
    .await;
    let report = client.shutdown(Duration::from_secs(5)).await;
    assert!(report.drained, "{report}");
    out
}

async fn run_legacy(up: &Upstream, requests: u64) -> (Duration, Vec<u32>) {
    let client: LegacyClient<_, Empty<Bytes>> =
        LegacyClient::builder(TokioExecutor::new()).build_http();
    let uri: Uri = format!("http://{}/", up.addr).parse().expect("uri");
    drive(requests, |_| {
        let client = client.clone();
        let uri = uri.clone();
        move || {
            let client = client.clone();
            let uri = uri.clone();
            async move {
                let req = Request::get(uri)
                    .header(USER_AGENT, UA)
                    .body(Empty::new())
                    .expect("request");
                let res = client.request(req).await.expect("legacy GET");
                assert_eq!(res.status(), 200);
                let body = res.into_body().collect().await.expect("legacy body");
                assert_eq!(body.to_bytes().len(), BODY.len());
            }
        }
    })
    .await
}

async fn run_reqwest(up: &Upstream, requests: u64) -> (Duration, Vec<u32>) {
    let client = reqwest::Client::new();
    let url = format!("http://{}/", up.addr);
    drive(requests, |_| {
        let client = client.clone();
        let url = url.clone();
        move || {
            let client = client.clone();
            let url = url.clone();
            async move {
                let res = client
                    .get(&url)
                    .header(USER_AGENT, UA)
                    .send()
                    .await
                    .expect("reqwest GET");
                assert_eq!(res.status(), 200);
                let body = res.bytes().await.expect("reqwest body");
                assert_eq!(body.len(), BODY.len());
            }
        }
    })
    .await
}

type Sender = client_http1::SendRequest<Empty<Bytes>>;

async fn raw_connection(addr: SocketAddr) -> Sender {
    let tcp = TcpStream::connect(addr).await.expect("raw connect");
    tcp.set_nodelay(true).expect("nodelay");
    let (sender, conn) = client_http1::handshake(TokioIo::new(tcp))
        .await
        .expect("raw handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
}

/// One GET on a raw connection: wait until it is ready, send, read the body to the end.
async fn raw_get(sender: &mut Sender, host: &http::HeaderValue) {
    sender.ready().await.expect("raw ready");
    let req = Request::get("/")
        .header(http::header::HOST, host.clone())
        .header(USER_AGENT, UA)
        .body(Empty::new())
        .expect("request");
    let res = sender.send_request(req).await.expect("raw GET");
    assert_eq!(res.status(), 200);
    let body = res.into_body().collect().await.expect("raw body");
    assert_eq!(body.to_bytes().len(), BODY.len());
}

async fn run_raw(up: &Upstream, requests: u64, conns: usize) -> (Duration, Vec<u32>) {
    let host = http::HeaderValue::from_str(&up.addr.to_string()).expect("host");
    // Connections made before the clock starts (the pooled clients connect inside it; a few
    // dozen loopback connects are noise beside 100,000 requests).
    let mut senders = Vec::with_capacity(conns);
    for _ in 0..conns {
        senders.push(Arc::new(Mutex::new(raw_connection(up.addr).await)));
    }
    drive(requests, |t| {
        let sender = senders[t % conns].clone();
        let host = host.clone();
        move || {
            let sender = sender.clone();
            let host = host.clone();
            async move {
                let mut sender = sender.lock().await;
                raw_get(&mut sender, &host).await;
            }
        }
    })
    .await
}

fn run(rt: &Runtime, up: &Upstream, kind: Kind, requests: u64) -> Run {
    let before = up.accepted();
    let cpu_before = process_cpu();
    let (wall, mut lat) = rt.block_on(async {
        match kind {
            Kind::Palisade => run_palisade(up, requests).await,
            Kind::Legacy => run_legacy(up, requests).await,
            Kind::Reqwest => run_reqwest(up, requests).await,
            Kind::Raw8 => run_raw(up, requests, RAW_SHARED).await,
            Kind::Raw32 => run_raw(up, requests, TASKS).await,
        }
    });
    let connections = up.accepted() - before;
    let cpu = process_cpu().zip(cpu_before).map(|(after, before)| Cpu {
        user: after
            .user
            .saturating_sub(before.user)
            .div_f64(requests as f64),
        system: after
            .system
            .saturating_sub(before.system)
            .div_f64(requests as f64),
    });
    assert_eq!(lat.len() as u64, requests);
    lat.sort_unstable();
    let pct = |p: f64| {
        let rank = ((p * lat.len() as f64).ceil() as usize).clamp(1, lat.len());
        Duration::from_nanos(u64::from(lat[rank - 1]))
    };
    Run {
        kind,
        requests,
        wall,
        p50: pct(0.50),
        p99: pct(0.99),
        connections,
        cpu,
    }
}

/// CPU time of this process so far (user + system, every thread), from `/proc/self/stat`
/// (Linux; counted in clock ticks of 10 ms where `USER_HZ` is 100, the Linux default: fine
/// over runs of seconds). `None` elsewhere.
fn process_cpu() -> Option<Cpu> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let mut fields = rest.split(' ');
    // `rest` starts at field 3 (state); utime and stime are fields 14 and 15.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(Cpu {
        user: Duration::from_millis(utime * 10),
        system: Duration::from_millis(stime * 10),
    })
}

/// The 1-minute load average, to show how busy the machine was (`None` off Linux).
fn load_average() -> Option<String> {
    let s = std::fs::read_to_string("/proc/loadavg").ok()?;
    s.split(' ').next().map(str::to_owned)
}

// ===== the table =====

fn micros(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

/// Microseconds with one decimal (CPU time per request is a few dozen).
fn micros1(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

fn ratio(a: f64, b: Option<f64>) -> String {
    b.map_or_else(|| "-".to_owned(), |b| format!("{:.2}×", a / b))
}

fn table(round: &str, runs: &[Run]) -> String {
    let of = |k: Kind| runs.iter().find(|r| r.kind == k).map(Run::per_sec);
    let (legacy, raw8) = (of(Kind::Legacy), of(Kind::Raw8));
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<5} {:<8} {:>8} {:>7} {:>7} {:>7} {:>8} {:>5} {:>7} {:>7} {:>9} {:>8}",
        "round",
        "client",
        "requests",
        "seconds",
        "req/s",
        "p50",
        "p99",
        "conns",
        "CPU/req",
        "user",
        "vs legacy",
        "vs raw×8"
    );
    for r in runs {
        let _ = writeln!(
            out,
            "{:<5} {:<8} {:>8} {:>7.3} {:>7.0} {:>7} {:>8} {:>5} {:>7} {:>7} {:>9} {:>8}",
            round,
            r.kind.name(),
            r.requests,
            r.wall.as_secs_f64(),
            r.per_sec(),
            micros(r.p50),
            micros(r.p99),
            r.connections,
            r.cpu.map_or_else(|| "-".to_owned(), |c| micros1(c.total())),
            r.cpu.map_or_else(|| "-".to_owned(), |c| micros1(c.user)),
            ratio(r.per_sec(), legacy),
            ratio(r.per_sec(), raw8),
        );
    }
    out
}

/// The median of `v` (the mean of the middle two for an even count); `None` when empty.
fn median(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

/// Per client over all rounds: median req/s, median and worst p99, median CPU per request
/// (total and user), and the median and worst of its within-round ratios to legacy and to
/// raw×8 (the figures the targets are judged on).
fn summary(rounds: &[Vec<Run>]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<8} {:>9} {:>8} {:>8} {:>9} {:>9} {:>17} {:>17}",
        "client",
        "med req/s",
        "med p99",
        "max p99",
        "med CPU",
        "med user",
        "vs legacy med/min",
        "vs raw×8 med/min"
    );
    let kinds: Vec<Kind> = rounds
        .first()
        .map(|r| r.iter().map(|r| r.kind).collect())
        .unwrap_or_default();
    for k in kinds {
        let mine: Vec<&Run> = rounds.iter().flatten().filter(|r| r.kind == k).collect();
        let ratios_to = |peer: Kind| -> Vec<f64> {
            rounds
                .iter()
                .filter_map(|round| {
                    let a = round.iter().find(|r| r.kind == k)?;
                    let b = round.iter().find(|r| r.kind == peer)?;
                    Some(a.per_sec() / b.per_sec())
                })
                .collect()
        };
        let med_min = |v: Vec<f64>| {
            let min = v.iter().copied().reduce(f64::min);
            match (median(v), min) {
                (Some(m), Some(min)) => format!("{m:.2}× / {min:.2}×"),
                _ => "-".to_owned(),
            }
        };
        let med_rate = median(mine.iter().map(|r| r.per_sec()).collect()).unwrap_or(0.0);
        let p99s: Vec<f64> = mine.iter().map(|r| r.p99.as_secs_f64()).collect();
        let max_p99 = p99s.iter().copied().fold(0.0, f64::max);
        let med_p99 = median(p99s).unwrap_or(0.0);
        let cpu_median = |part: fn(Cpu) -> Duration| {
            median(
                mine.iter()
                    .filter_map(|r| r.cpu)
                    .map(|c| part(c).as_secs_f64())
                    .collect(),
            )
            .map_or_else(|| "-".to_owned(), |c| micros1(Duration::from_secs_f64(c)))
        };
        let _ = writeln!(
            out,
            "{:<8} {:>9.0} {:>8} {:>8} {:>9} {:>9} {:>17} {:>17}",
            k.name(),
            med_rate,
            micros(Duration::from_secs_f64(med_p99)),
            micros(Duration::from_secs_f64(max_p99)),
            cpu_median(Cpu::total),
            cpu_median(|c| c.user),
            med_min(ratios_to(Kind::Legacy)),
            med_min(ratios_to(Kind::Raw8)),
        );
    }
    out
}

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .replace(['_', ','], "")
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a whole number")),
        Err(_) => default,
    }
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not: then a quick smoke run.
    let bench = std::env::args().any(|a| a == "--bench");
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let requests = if bench {
        env_u64("CLIENT_BENCH_REQUESTS", 100_000).max(TASKS as u64)
    } else {
        3_200
    };
    let rounds = if bench {
        env_u64("CLIENT_BENCH_ROUNDS", 3).max(1)
    } else {
        1
    };
    let kinds: Vec<Kind> = match std::env::var("CLIENT_BENCH_CLIENTS") {
        Ok(list) => Kind::ALL
            .into_iter()
            .filter(|k| list.split(',').any(|s| k.matches(s)))
            .collect(),
        Err(_) => Kind::ALL.to_vec(),
    };
    let own_upstream = std::env::var("CLIENT_BENCH_UPSTREAM").is_ok_and(|v| v == "own");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKERS)
        .enable_all()
        .build()
        .expect("runtime");
    let upstream_rt = own_upstream.then(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("upstream")
            .enable_all()
            .build()
            .expect("upstream runtime")
    });
    let up = Upstream::start(upstream_rt.as_ref().unwrap_or(&rt));

    println!(
        "palisade-client bench: HTTP/1.1 GET over loopback, {TASKS} tasks, {WORKERS}-worker \
         runtime, upstream on {}; {requests} requests per client per round, {rounds} round(s)",
        if own_upstream {
            "its own 1-worker runtime"
        } else {
            "the same runtime"
        }
    );
    if bench {
        for &k in &kinds {
            run(&rt, &up, k, (requests / 10).max(TASKS as u64));
        }
    }
    let mut all = Vec::new();
    for round in 1..=rounds {
        let load = load_average().unwrap_or_else(|| "?".to_owned());
        // The order rotates by one client each round, so no client always goes first.
        let mut order = kinds.clone();
        order.rotate_left((round as usize - 1) % kinds.len().max(1));
        let mut runs: Vec<Run> = order.iter().map(|&k| run(&rt, &up, k, requests)).collect();
        runs.sort_by_key(|r| kinds.iter().position(|&k| k == r.kind));
        let order: Vec<&str> = order.iter().map(|k| k.name()).collect();
        print!(
            "\nround {round} (1-min load average before it: {load}; run order: {})\n{}",
            order.join(", "),
            table(&round.to_string(), &runs)
        );
        all.push(runs);
    }
    if rounds > 1 {
        println!("\nover the {rounds} rounds (ratios are within a round):");
        print!("{}", summary(&all));
    }
}
