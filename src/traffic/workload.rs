//! The open-loop scheduler and the requests it sends.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::{AssertSqlSafe, PgPool};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::control::Control;
use super::metrics::{Metrics, Outcome, Route};

pub struct Config {
    /// Schema-qualified demo table; operator input, used verbatim in SQL.
    pub table: String,
    /// Fraction of requests that are checkouts (the rest are browses).
    pub checkout_share: f64,
    /// Requests in flight beyond this are dropped (and counted), so a dead
    /// database cannot make the generator exhaust memory.
    pub max_in_flight: usize,
    /// Orders a browse reads: 1 is a primary-key read; more is a range
    /// read (an order history page), heavy enough that its p95 measures
    /// the database rather than scheduler jitter (bench/live).
    pub browse_rows: u32,
}

/// One completed request, for the exact-latency file.
#[derive(Debug, Clone)]
pub struct Completed {
    /// Scheduled start, microseconds since the Unix epoch.
    pub scheduled_unix_us: u128,
    pub route: &'static str,
    pub latency: Duration,
    pub ok: bool,
}

impl Completed {
    pub const CSV_HEADER: &'static str = "scheduled_unix_us,route,latency_us,ok\n";

    pub fn csv(&self) -> String {
        format!(
            "{},{},{},{}\n",
            self.scheduled_unix_us,
            self.route,
            self.latency.as_micros(),
            self.ok as u8
        )
    }
}

struct Shared {
    pool: PgPool,
    cfg: Config,
    control: Arc<Control>,
    metrics: Arc<Metrics>,
    log: Option<mpsc::UnboundedSender<Completed>>,
    max_id: AtomicI64,
    in_flight: AtomicUsize,
}

/// Send requests until `shutdown` completes; in-flight requests are
/// awaited before returning.
pub async fn run(
    pool: PgPool,
    cfg: Config,
    control: Arc<Control>,
    metrics: Arc<Metrics>,
    log: Option<mpsc::UnboundedSender<Completed>>,
    shutdown: impl Future<Output = ()>,
) {
    let sh = Arc::new(Shared {
        pool,
        cfg,
        control,
        metrics,
        log,
        max_id: AtomicI64::new(0),
        in_flight: AtomicUsize::new(0),
    });
    let refresher = tokio::spawn(refresh_max_id(sh.clone()));
    tokio::pin!(shutdown);
    let mut next = Instant::now();
    let mut n: u64 = 0;
    loop {
        let rate = sh.control.rate();
        sh.metrics.target_rate.set(rate);
        sh.metrics
            .added_latency
            .set(sh.control.added_latency().as_secs_f64());
        next += Duration::from_secs_f64(1.0 / rate);
        let now = Instant::now();
        // After a stall (machine suspended, runtime starved) do not fire a
        // burst of thousands: count what was missed as dropped and go on.
        if now > next + Duration::from_secs(1) {
            let missed = ((now - next).as_secs_f64() * rate) as u64;
            sh.metrics.dropped.inc_by(missed);
            next = now;
        }
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tokio::time::sleep_until(next) => {}
        }
        n += 1;
        if sh.in_flight.load(Ordering::Relaxed) >= sh.cfg.max_in_flight {
            sh.metrics.dropped.inc();
            continue;
        }
        sh.in_flight.fetch_add(1, Ordering::Relaxed);
        let scheduled = next;
        let scheduled_wall = SystemTime::now()
            .checked_sub(now.saturating_duration_since(scheduled))
            .unwrap_or_else(SystemTime::now);
        tokio::spawn(request(sh.clone(), n, scheduled, scheduled_wall));
    }
    refresher.abort();
    let deadline = Instant::now() + Duration::from_secs(10);
    while sh.in_flight.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The id range grows with inserts elsewhere and may not exist yet when
/// the generator starts before the demo data.
async fn refresh_max_id(sh: Arc<Shared>) {
    let sql = format!("SELECT coalesce(max(id), 0)::int8 FROM {}", sh.cfg.table);
    loop {
        match sqlx::query_scalar::<_, i64>(AssertSqlSafe(sql.as_str()))
            .fetch_one(&sh.pool)
            .await
        {
            Ok(v) => sh.max_id.store(v, Ordering::Relaxed),
            Err(e) => tracing::warn!("reading max(id) of {}: {e}", sh.cfg.table),
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

/// Deterministic, well-mixed pseudo-random bits (splitmix64).
fn mix(n: u64) -> u64 {
    let mut z = n.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

async fn request(sh: Arc<Shared>, n: u64, scheduled: Instant, scheduled_wall: SystemTime) {
    let r = mix(n);
    let route = if (r % 10_000) as f64 / 10_000.0 < sh.cfg.checkout_share {
        "checkout"
    } else {
        "browse"
    };
    let added = sh.control.added_latency();
    if !added.is_zero() {
        tokio::time::sleep(added).await;
    }
    let max_id = sh.max_id.load(Ordering::Relaxed);
    let ok = if max_id <= 0 {
        false
    } else {
        let id = (mix(r) % max_id as u64) as i64 + 1;
        let res = match route {
            "checkout" => checkout(&sh, id).await,
            _ => browse(&sh, id).await,
        };
        if let Err(e) = &res {
            tracing::debug!("{route} id={id}: {e}");
        }
        res.is_ok()
    };
    let latency = scheduled.elapsed();
    sh.metrics
        .duration
        .get_or_create(&Route {
            route: route.into(),
        })
        .observe(latency.as_secs_f64());
    sh.metrics
        .requests
        .get_or_create(&Outcome {
            route: route.into(),
            outcome: if ok { "ok" } else { "error" }.into(),
        })
        .inc();
    if let Some(log) = &sh.log {
        let _ = log.send(Completed {
            scheduled_unix_us: scheduled_wall
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_micros())
                .unwrap_or(0),
            route,
            latency,
            ok,
        });
    }
    sh.in_flight.fetch_sub(1, Ordering::Relaxed);
}

async fn browse(sh: &Shared, id: i64) -> Result<(), sqlx::Error> {
    if sh.cfg.browse_rows <= 1 {
        let sql = format!(
            "SELECT id, status, paid_at FROM {} WHERE id = $1",
            sh.cfg.table
        );
        sqlx::query(AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&sh.pool)
            .await?;
        return Ok(());
    }
    // A summary of the next `browse_rows` orders from `id` (an account
    // page's totals): an index range read whose work stays in the server,
    // so the generator's own CPU does not grow with it.
    let sql = format!(
        "SELECT count(*), sum(amount), max(paid_at), count(status) FROM \
         (SELECT amount, paid_at, status FROM {} WHERE id >= $1 ORDER BY id LIMIT $2) page",
        sh.cfg.table
    );
    sqlx::query(AssertSqlSafe(sql))
        .bind(id)
        .bind(i64::from(sh.cfg.browse_rows))
        .fetch_one(&sh.pool)
        .await?;
    Ok(())
}

/// Read the order and mark it paid in one transaction: a row lock on the
/// same rows the backfill updates, so contention with pacer is real.
async fn checkout(sh: &Shared, id: i64) -> Result<(), sqlx::Error> {
    let mut tx = sh.pool.begin().await?;
    let read = format!(
        "SELECT id, status, paid_at FROM {} WHERE id = $1",
        sh.cfg.table
    );
    sqlx::query(AssertSqlSafe(read))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
    let write = format!(
        "UPDATE {} SET paid_at = coalesce(paid_at, now()) WHERE id = $1",
        sh.cfg.table
    );
    sqlx::query(AssertSqlSafe(write))
        .bind(id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

/// Append completed requests to `path` as CSV, flushing once a second so
/// a benchmark reading the file sees recent requests.
pub async fn write_latency_log(
    path: std::path::PathBuf,
    mut rx: mpsc::UnboundedReceiver<Completed>,
) -> std::io::Result<()> {
    let fresh = !path.exists();
    let file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .await?;
    let mut w = tokio::io::BufWriter::new(file);
    if fresh {
        w.write_all(Completed::CSV_HEADER.as_bytes()).await?;
    }
    let mut flush = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            item = rx.recv() => match item {
                Some(c) => w.write_all(c.csv().as_bytes()).await?,
                None => break,
            },
            _ = flush.tick() => w.flush().await?,
        }
    }
    w.flush().await
}
