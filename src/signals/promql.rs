//! What a PromQL query says about its own timing and inputs, read from its
//! syntax tree rather than from the text, so `rate(x[1m] offset 30s)` and a
//! subquery count as what Prometheus makes of them.
//!
//! A reading of `histogram_quantile(0.95, rate(h_bucket[1m]))` describes the
//! last minute, not this instant: the range (plus any offset and subquery
//! range) is how far back its data reaches. The simulator uses it to imitate
//! the query, `pacer check` to find the histogram behind a quantile.

use std::time::Duration;

use promql_parser::parser::{self, Expr, Offset};

/// How far back the data of `query` reaches: the largest range + offset
/// along any path of the expression, with subquery ranges and offsets
/// added to what they contain. `Ok(None)` when the query has no range at
/// all (a recording rule or a gauge): its delay cannot be read from it.
pub fn lookback(query: &str) -> Result<Option<Duration>, String> {
    let expr = parser::parse(query).map_err(|e| shorten(&e))?;
    Ok(reach(&expr))
}

/// The bucket series under the first `histogram_quantile` of `query`, as a
/// selector string (`h_bucket{route="checkout"}`), for reading the
/// histogram's bucket bounds. `None` when the query has none.
pub fn histogram_selector(query: &str) -> Option<String> {
    let expr = parser::parse(query).ok()?;
    find_histogram(&expr)
}

/// The scrape jobs `query` reads, from `job="…"` matchers: `Some(jobs)`
/// when every series selector names its job that way, else `None` (any
/// job may feed it). Used to pick the scrape interval that applies.
pub fn scrape_jobs(query: &str) -> Option<Vec<String>> {
    let expr = parser::parse(query).ok()?;
    let mut jobs = Vec::new();
    jobs_of(&expr, &mut jobs).then_some(())?;
    jobs.sort();
    jobs.dedup();
    (!jobs.is_empty()).then_some(jobs)
}

/// Adds the `job` of each selector in `e` to `out`; false when a selector
/// does not pin its job to one value.
fn jobs_of(e: &Expr, out: &mut Vec<String>) -> bool {
    use promql_parser::label::MatchOp;
    match e {
        Expr::VectorSelector(v) => {
            match v
                .matchers
                .matchers
                .iter()
                .find(|m| m.name == "job" && m.op == MatchOp::Equal)
            {
                Some(m) if v.matchers.or_matchers.is_empty() => {
                    out.push(m.value.clone());
                    true
                }
                _ => false,
            }
        }
        Expr::MatrixSelector(m) => jobs_of(&Expr::VectorSelector(m.vs.clone()), out),
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) => true,
        Expr::Subquery(s) => jobs_of(&s.expr, out),
        Expr::Aggregate(a) => {
            jobs_of(&a.expr, out) && a.param.as_deref().is_none_or(|p| jobs_of(p, out))
        }
        Expr::Unary(u) => jobs_of(&u.expr, out),
        Expr::Binary(b) => jobs_of(&b.lhs, out) && jobs_of(&b.rhs, out),
        Expr::Paren(p) => jobs_of(&p.expr, out),
        Expr::Call(c) => c.args.args.iter().all(|a| jobs_of(a, out)),
        Expr::Extension(_) => false,
    }
}

fn offset(o: &Option<Offset>) -> Duration {
    match o {
        Some(Offset::Pos(d)) => *d,
        // A negative offset looks into the future of the evaluation time:
        // it makes the data no older.
        Some(Offset::Neg(_)) | None => Duration::ZERO,
    }
}

fn reach(e: &Expr) -> Option<Duration> {
    match e {
        Expr::MatrixSelector(m) => Some(m.range + offset(&m.vs.offset)),
        Expr::VectorSelector(_) | Expr::NumberLiteral(_) | Expr::StringLiteral(_) => None,
        Expr::Subquery(s) => {
            let inner = reach(&s.expr).unwrap_or_default();
            Some(s.range + offset(&s.offset) + inner)
        }
        Expr::Aggregate(a) => max(reach(&a.expr), a.param.as_deref().and_then(reach)),
        Expr::Unary(u) => reach(&u.expr),
        Expr::Binary(b) => max(reach(&b.lhs), reach(&b.rhs)),
        Expr::Paren(p) => reach(&p.expr),
        Expr::Call(c) => c.args.args.iter().map(|a| reach(a)).fold(None, max),
        Expr::Extension(_) => None,
    }
}

fn max(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

fn find_histogram(e: &Expr) -> Option<String> {
    match e {
        Expr::Call(c) if c.func.name == "histogram_quantile" => {
            c.args.args.iter().find_map(|a| selector(a))
        }
        Expr::Call(c) => c.args.args.iter().find_map(|a| find_histogram(a)),
        Expr::Aggregate(a) => find_histogram(&a.expr),
        Expr::Unary(u) => find_histogram(&u.expr),
        Expr::Binary(b) => find_histogram(&b.lhs).or_else(|| find_histogram(&b.rhs)),
        Expr::Paren(p) => find_histogram(&p.expr),
        Expr::Subquery(s) => find_histogram(&s.expr),
        _ => None,
    }
}

/// The first plain series selector inside `e`, without range or offset.
fn selector(e: &Expr) -> Option<String> {
    match e {
        Expr::VectorSelector(v) => {
            let mut v = v.clone();
            v.offset = None;
            v.at = None;
            Some(v.to_string())
        }
        Expr::MatrixSelector(m) => selector(&Expr::VectorSelector(m.vs.clone())),
        Expr::Call(c) => c.args.args.iter().find_map(|a| selector(a)),
        Expr::Aggregate(a) => selector(&a.expr),
        Expr::Unary(u) => selector(&u.expr),
        Expr::Binary(b) => selector(&b.lhs).or_else(|| selector(&b.rhs)),
        Expr::Paren(p) => selector(&p.expr),
        Expr::Subquery(s) => selector(&s.expr),
        _ => None,
    }
}

/// Parser errors can quote the whole query; keep the message short.
fn shorten(e: &str) -> String {
    let e = e.trim();
    match e.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &e[..i]),
        None => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn scrape_jobs_only_when_every_selector_names_its_job() {
        use super::scrape_jobs;
        let q =
            r#"histogram_quantile(0.95, sum by (le) (rate(h_bucket{job="api",route="x"}[1m])))"#;
        assert_eq!(scrape_jobs(q), Some(vec!["api".to_string()]));
        let q = r#"sum(rate(a{job="api"}[1m])) / sum(rate(b{job="web"}[1m])) * 100"#;
        assert_eq!(scrape_jobs(q), Some(vec!["api".into(), "web".into()]));
        assert_eq!(scrape_jobs(r#"rate(a{job="api"}[1m]) / rate(b[1m])"#), None);
        assert_eq!(scrape_jobs(r#"rate(a{job=~"api.*"}[1m])"#), None);
        assert_eq!(scrape_jobs("checkout:p95"), None);
    }

    use super::*;

    fn secs(q: &str) -> Option<u64> {
        lookback(q).unwrap().map(|d| d.as_secs())
    }

    #[test]
    fn ranges_offsets_and_subqueries_add_up() {
        assert_eq!(
            secs(
                r#"histogram_quantile(0.95, sum by (le) (rate(h_bucket{route="/checkout"}[1m])))"#
            ),
            Some(60)
        );
        assert_eq!(secs("rate(x[30s] offset 1m)"), Some(90));
        assert_eq!(secs("max_over_time(rate(x[1m])[5m:10s])"), Some(360));
        assert_eq!(
            secs("rate(a[2m]) / rate(b[30s])"),
            Some(120),
            "the older side sets the delay"
        );
        assert_eq!(secs("up"), None, "a gauge has no range");
        assert_eq!(secs("job:latency_p95:5m"), None, "a recording rule");
    }

    #[test]
    fn unparseable_queries_are_errors() {
        let e = lookback("rate(x[1m]").unwrap_err();
        assert!(!e.is_empty() && e.len() < 220, "{e}");
    }

    #[test]
    fn the_histogram_behind_a_quantile() {
        assert_eq!(
            histogram_selector(
                r#"histogram_quantile(0.95, sum by (le) (rate(h_bucket{route="checkout"}[30s])))"#
            )
            .as_deref(),
            Some(r#"h_bucket{route="checkout"}"#)
        );
        assert_eq!(histogram_selector("rate(x[1m])"), None);
    }
}
