// Throwaway: dump a per-tick trace (every N seconds) for tuning.
use pacer::policy::Policy;
use pacer::sim::*;
fn main() {
    let a: Vec<String> = std::env::args().collect();
    let policy = Policy::load(std::path::Path::new(&a[1])).unwrap();
    let scen = Scenario::load(&a[2]).unwrap();
    let seed: u64 = a[3].parse().unwrap();
    let every: usize = a[4].parse().unwrap();
    let from: usize = a.get(5).map(|s| s.parse().unwrap()).unwrap_or(0);
    let to: usize = a.get(6).map(|s| s.parse().unwrap()).unwrap_or(usize::MAX);
    let model = Model::builtin();
    let setup = Setup::new(&policy, &model, &scen, seed, None).unwrap();
    let oracle = setup.oracle();
    let st = setup.run(&Strategy::Pacer, true).unwrap();
    let h = st.history.unwrap();
    for (k, s) in h.samples.iter().enumerate() {
        if k % every != 0 || k < from || k > to { continue; }
        let i = setup.trace.start_index + k;
        let tz: chrono_tz::Tz = policy.job.timezone.parse().unwrap();
        println!("{} {:>7} live {:.3} rate {:>7.0} safe {:>7.0} b {:>5} s {:>5}ms w {} lat {:?} true {:.4} quiet {:.4}",
            s.at.with_timezone(&tz).format("%H:%M:%S"), s.state, setup.trace.ticks[i].live, s.rows_per_second, oracle.rates[k],
            s.knobs.batch_size, s.knobs.sleep.as_millis(), s.knobs.workers,
            s.signals.values().next().unwrap().map(|v| (v*1e4).round()/1e4), 0.0, setup.quiet[i].latency);
    }
}
