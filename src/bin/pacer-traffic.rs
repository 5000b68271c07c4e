//! `pacer-traffic`: the testbed's live-traffic generator. See
//! `pacer::traffic` for what it sends and docs/TESTBED.md for how to use it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use clap::Parser;
use pacer::traffic::workload::{self, Config};
use pacer::traffic::{Control, ControlUpdate, metrics::Metrics};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

#[derive(Parser, Debug)]
#[command(about = "Open-loop checkout traffic on the demo orders table, with fault injection")]
struct Args {
    /// Database with the demo `orders` table (default: the testbed's own
    /// primary, scripts/testbed).
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:15432/pacer_demo"
    )]
    database_url: String,
    /// Demo table (schema-qualified).
    #[arg(long, default_value = "public.orders")]
    table: String,
    /// Requests per second (open loop).
    #[arg(long, default_value_t = 50.0)]
    rate: f64,
    /// Share of requests that are checkouts (read + write); the rest browse.
    #[arg(long, default_value_t = 0.3)]
    checkout_share: f64,
    /// Orders one browse reads: 1 is a primary-key read, more the totals of
    /// an order history page (`id >= $1 ORDER BY id LIMIT N`, summed in the
    /// server), heavy enough that the p95 measures the database, not
    /// scheduler jitter (bench/live).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    browse_rows: u32,
    /// Address of /metrics and /control (the testbed's traffic port).
    #[arg(long, default_value = "127.0.0.1:19300")]
    listen: SocketAddr,
    /// Append every request's exact latency here (CSV).
    #[arg(long)]
    latency_log: Option<PathBuf>,
    /// Connections to the database.
    #[arg(long, default_value_t = 16)]
    pool: u32,
    /// Requests in flight beyond this are dropped and counted.
    #[arg(long, default_value_t = 512)]
    max_in_flight: usize,
    /// Stop after this long (e.g. "10m"); runs until SIGINT/SIGTERM otherwise.
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
}

struct App {
    control: Arc<Control>,
    metrics: Arc<Metrics>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let control = Arc::new(Control::new(1.0));
    control
        .apply(&ControlUpdate {
            rate: Some(args.rate),
            added_latency_ms: None,
        })
        .map_err(|e| anyhow::anyhow!("--rate: {e}"))?;
    if !(0.0..=1.0).contains(&args.checkout_share) {
        anyhow::bail!(
            "--checkout-share {} must be between 0 and 1",
            args.checkout_share
        );
    }
    let opts: PgConnectOptions = args.database_url.parse().context("--database-url")?;
    let pool = PgPoolOptions::new()
        .max_connections(args.pool)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with(opts.application_name("pacer-traffic"));
    let metrics = Arc::new(Metrics::new());

    let (log_tx, log_task) = match &args.latency_log {
        Some(p) => {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            (
                Some(tx),
                Some(tokio::spawn(workload::write_latency_log(p.clone(), rx))),
            )
        }
        None => (None, None),
    };

    let app = Arc::new(App {
        control: control.clone(),
        metrics: metrics.clone(),
    });
    let router = axum::Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/control", get(get_control).post(post_control))
        .route("/-/ready", get(|| async { "ready\n" }))
        .with_state(app);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    tracing::info!(listen = %args.listen, rate = args.rate, "pacer-traffic started");
    let server = tokio::spawn(async move { axum::serve(listener, router).await });

    let duration = args.duration;
    let shutdown = async move {
        let timer = async {
            match duration {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
            _ = timer => {}
        }
    };
    let cfg = Config {
        table: args.table.clone(),
        checkout_share: args.checkout_share,
        max_in_flight: args.max_in_flight,
        browse_rows: args.browse_rows,
    };
    workload::run(pool, cfg, control, metrics, log_tx, shutdown).await;
    if let Some(t) = log_task {
        // The sender was moved into `run` and dropped with it: the writer drains and flushes.
        t.await?.context("writing the latency log")?;
    }
    server.abort();
    tracing::info!("pacer-traffic stopped");
    Ok(())
}

async fn metrics_handler(State(app): State<Arc<App>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        app.metrics.encode(),
    )
}

async fn get_control(State(app): State<Arc<App>>) -> Json<ControlUpdate> {
    Json(app.control.state())
}

async fn post_control(
    State(app): State<Arc<App>>,
    Json(u): Json<ControlUpdate>,
) -> Result<Json<ControlUpdate>, (StatusCode, String)> {
    match app.control.apply(&u) {
        Ok(s) => {
            tracing::info!(?s, "control changed");
            Ok(Json(s))
        }
        Err(e) => Err((StatusCode::BAD_REQUEST, e + "\n")),
    }
}
