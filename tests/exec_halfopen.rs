//! A half-open network: every connection pacer has open at one moment stops
//! carrying bytes, without a FIN or a RST (a path that died, a NAT that
//! forgot the flow). The server keeps those sessions; pacer's sockets
//! never error. What must hold: no await of pacer waits forever (each has a
//! client deadline), the run carries on over new connections, the runner
//! ends its own stale control session (which still holds the runner lock),
//! and every row is applied exactly once.
//!
//! The proxy lives in the test (tokio): it forwards to the testbed primary
//! and, when frozen, stops forwarding on the connections open at that
//! moment while keeping both of their sockets open. New connections flow,
//! as after a network path change.

mod exec_common;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use exec_common::*;
use sqlx::PgPool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Connections with an id below `frozen_below` carry nothing.
struct Proxy {
    port: u16,
    next_id: Arc<AtomicU64>,
    frozen_below: Arc<AtomicU64>,
    tasks: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Proxy {
    async fn start(target: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let next_id = Arc::new(AtomicU64::new(0));
        let frozen_below = Arc::new(AtomicU64::new(0));
        let tasks = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (ids, frozen, held) = (next_id.clone(), frozen_below.clone(), tasks.clone());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)).await else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let id = ids.fetch_add(1, Ordering::SeqCst);
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                let mut held = held.lock().unwrap();
                held.push(tokio::spawn(pump(cr, sw, id, frozen.clone())));
                held.push(tokio::spawn(pump(sr, cw, id, frozen.clone())));
            }
        });
        tasks.lock().unwrap().push(accept);
        Proxy {
            port,
            next_id,
            frozen_below,
            tasks,
        }
    }

    /// Freeze every connection open now.
    fn freeze(&self) -> u64 {
        let n = self.next_id.load(Ordering::SeqCst);
        self.frozen_below.store(n, Ordering::SeqCst);
        n
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // Closing the held sockets lets the server end the frozen sessions
        // before the test's database is dropped.
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }
}

/// Copy `from` to `to` until the connection is frozen; then hold both
/// halves open, silently, for as long as the test runs.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    id: u64,
    frozen_below: Arc<AtomicU64>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if id < frozen_below.load(Ordering::SeqCst) {
            break;
        }
        let n = match tokio::time::timeout(Duration::from_millis(50), from.read(&mut buf)).await {
            Err(_) => continue,
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(n)) => n,
        };
        if id < frozen_below.load(Ordering::SeqCst) {
            break;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
    tokio::time::sleep(Duration::from_secs(3600)).await;
    drop((from, to));
}

/// The test database's URL with its port replaced by the proxy's.
fn through(url: &str, port: u16) -> (String, u16) {
    let (server, db) = url.rsplit_once('/').unwrap();
    let (host, target) = server.rsplit_once(':').unwrap();
    (format!("{host}:{port}/{db}"), target.parse().unwrap())
}

fn log_path() -> PathBuf {
    std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("pacer-halfopen-{}.log", std::process::id()))
}

/// Frozen mid-run for 15 s (statement_timeout 2 s): the run carries on over
/// new connections within statement_timeout + the client deadline's slack
/// + the lock grace, ends its old control session, and finishes with every
/// row applied once.
#[sqlx::test]
async fn a_half_open_network_neither_stalls_nor_doubles(pool: PgPool) {
    counter_table(&pool, "t", 40_000).await;
    let direct = url_of(&pool).await;
    let (_, target) = through(&direct, 0);
    let proxy = Proxy::start(target).await;
    let (url, _) = through(&direct, proxy.port);
    let (_d, p) = policy(
        &url,
        &Spec {
            job: "halfopen",
            batch: (200, 50, 300),
            workers: (2, 1, 2),
            statement_timeout_ms: 2000,
            ..Spec::default()
        },
    );
    let listen = listen_of(&p);
    let mut cmd = capped(pacer(&["run"], &p));
    let log = log_path();
    cmd.stderr(std::process::Stdio::from(
        std::fs::File::create(&log).unwrap(),
    ));
    let mut child = cmd.spawn().unwrap();
    assert!(
        wait_until(Duration::from_secs(30), || async {
            counters(&pool, "t").await.1 > 4000
        })
        .await,
        "the job did not start"
    );

    let frozen = proxy.freeze();
    let t0 = Instant::now();
    let at_freeze = counters(&pool, "t").await.1;
    // The tick is not stalled: the status endpoint answers while every
    // database connection pacer had is silent.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let st = http
        .get(format!("http://{listen}/status"))
        .send()
        .await
        .expect("/status answers during the freeze");
    assert!(st.status().is_success());

    // The run goes on over new connections.
    assert!(
        wait_until(Duration::from_secs(40), || async {
            counters(&pool, "t").await.1 > at_freeze + 2000
        })
        .await,
        "pacer did not carry on after the freeze; log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let carried_on = t0.elapsed();
    eprintln!("half-open: {frozen} connections frozen, the run carried on after {carried_on:.1?}");

    let Ok(status) = tokio::time::timeout(Duration::from_secs(120), child.wait()).await else {
        let _ = child.kill().await;
        panic!(
            "pacer did not finish within 120 s (rows applied 0, 1, 2+ times: {:?}); log:\n{}",
            counters(&pool, "t").await,
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    };
    let status = status.unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(0), "pacer failed; log:\n{text}");
    assert_eq!(
        counters(&pool, "t").await,
        (0, 40_000, 0),
        "rows lost or doubled; log:\n{text}"
    );
    // The stale control session held the runner lock: pacer ended it, or
    // the reconnect could not have taken the lock again.
    assert!(
        text.contains("control connection lost") || text.contains("database unreachable"),
        "the freeze was not reported as a pause; log:\n{text}"
    );
    assert!(
        carried_on < Duration::from_secs(30),
        "carrying on took {carried_on:?}"
    );
    drop(proxy);
}
