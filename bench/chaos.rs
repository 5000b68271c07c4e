//! Chaos benchmark: the real `pacer run` against PostgreSQL clusters of
//! its own under faults (restart, outage, terminated backends, read-only
//! primary, dropped table, Prometheus down/hanging/garbage, SIGSTOP, two
//! jobs on one table, `kill -9` at random moments), with rows lost and
//! rows applied twice counted after each. Run through `bench/chaos`;
//! docs/RELIABILITY.md shows a full run. The scenarios live in
//! `bench/chaos_suite.rs`, shared with the CI test `tests/chaos.rs`.
//!
//! Needs root (the throwaway cluster runs as the `postgres` OS user, as in
//! tests/exec_outage.rs) and PostgreSQL 15's binaries in
//! /usr/lib/postgresql/15/bin. It never connects to the testbed's servers
//! or to a cluster the machine already runs.

#[path = "chaos_suite.rs"]
mod suite;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;

#[derive(Parser, Debug)]
struct Args {
    /// The pacer binary.
    #[arg(long, default_value = "target/release/pacer")]
    pacer: PathBuf,
    /// How many `kill -9` of pacer at random moments.
    #[arg(long, default_value_t = 50)]
    kills: usize,
    /// Workers in every scenario.
    #[arg(long, default_value_t = 4)]
    workers: u32,
    /// Seconds the primary is down in the outage scenario.
    #[arg(long, default_value_t = 20)]
    outage: u64,
    /// Seconds pacer is frozen (SIGSTOP).
    #[arg(long, default_value_t = 20)]
    freeze: u64,
    /// Seconds the primary is read-only.
    #[arg(long, default_value_t = 10)]
    read_only: u64,
    /// Seconds each Prometheus fault lasts.
    #[arg(long, default_value_t = 10)]
    prom_fault: u64,
    /// The CI test's short timings (outage 4 s, freeze 4 s, read-only 3 s,
    /// 3 s per Prometheus fault) instead of the duration flags below.
    #[arg(long)]
    quick: bool,
    /// Seed of the kill moments and the live client.
    #[arg(long, default_value_t = 0xc4a0_5eed)]
    seed: u64,
    /// Only scenarios whose name contains this (restart, outage,
    /// terminate-workers, terminate-control, read-only, table-dropped,
    /// prometheus, frozen, two-jobs, kill-9).
    #[arg(long)]
    only: Option<String>,
    /// Write every outcome as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Directory for pacer's logs.
    #[arg(long, default_value = "target/chaos-logs")]
    logs: PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let mut cfg = if a.quick {
        suite::Config::ci(a.pacer.clone(), a.logs.clone())
    } else {
        let mut c = suite::Config::full(a.pacer.clone(), a.logs.clone());
        c.outage = Duration::from_secs(a.outage);
        c.freeze = Duration::from_secs(a.freeze);
        c.read_only = Duration::from_secs(a.read_only);
        c.prom_fault = Duration::from_secs(a.prom_fault);
        c
    };
    cfg.kills = a.kills;
    cfg.workers = a.workers;
    cfg.seed = a.seed;
    cfg.only = a.only.clone();
    anyhow::ensure!(
        cfg.pacer.exists(),
        "{} does not exist (bench/chaos builds it)",
        cfg.pacer.display()
    );
    let t0 = Instant::now();
    let outs = suite::run_all(&cfg).await?;
    println!("{}", suite::table(&outs));
    for o in &outs {
        if !o.notes.is_empty() {
            println!("- {}: {}", o.name, o.notes.join("; "));
        }
    }
    let bad: Vec<&suite::Outcome> = outs.iter().filter(|o| !o.ok).collect();
    for o in &bad {
        println!("- NOT OK {}: {}", o.name, o.problems.join("; "));
    }
    println!(
        "\n{} faults, {} as expected, in {:.0} s",
        outs.len(),
        outs.len() - bad.len(),
        t0.elapsed().as_secs_f64()
    );
    if let Some(p) = &a.json {
        std::fs::write(p, serde_json::to_string_pretty(&outs)?)?;
    }
    if !bad.is_empty() {
        std::process::exit(1);
    }
    Ok(())
}
