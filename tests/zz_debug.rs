mod support;
#[test]
fn dbg() {
    let (_, h) = support::business_day(7.0);
    eprintln!("samples {} last {:?}", h.samples.len(), h.samples.last().map(|s| (s.at, s.rows_done, &s.state)));
    for d in h.decisions.iter().filter(|d| !matches!(d.action, pacer::controller::Action::Increase | pacer::controller::Action::Decrease)) { eprintln!("{} {}", d.at, d.summary()); }
    for s in h.samples.iter().step_by(600) { eprintln!("{} {} {:?} {:.0} {:?}", s.at, s.state, s.knobs, s.rows_per_second, s.signals); }
}
