//! One `/metrics` for many jobs (a fleet's targets): each job keeps its own
//! registry, and the hub merges their expositions into one, family by
//! family. Concatenating them would repeat `# HELP`/`# TYPE` lines, which
//! Prometheus rejects; the series differ by their `pacer_job` and
//! `target` labels, so they can share one family block.

use std::sync::{Arc, Mutex};

use super::metrics::{Metrics, classic};

/// Something `/metrics` can serve.
pub trait Exposition: Send + Sync {
    /// OpenMetrics text, ending in `# EOF`.
    fn encode(&self) -> String;
    /// The classic text format.
    fn encode_classic(&self) -> String {
        classic(&self.encode())
    }
}

impl Exposition for Metrics {
    fn encode(&self) -> String {
        Metrics::encode(self)
    }
}

#[derive(Default)]
pub struct MetricsHub {
    sources: Mutex<Vec<Arc<dyn Exposition>>>,
}

impl std::fmt::Debug for MetricsHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MetricsHub")
    }
}

impl MetricsHub {
    /// Serve `source` from now on, for as long as the hub lives (a job
    /// that ended keeps its last numbers: its `done` state stays visible).
    pub fn add(&self, source: Arc<dyn Exposition>) {
        self.sources
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(source);
    }
}

impl Exposition for MetricsHub {
    fn encode(&self) -> String {
        let texts: Vec<String> = self
            .sources
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|s| s.encode())
            .collect();
        merge(&texts)
    }
}

/// Merge OpenMetrics expositions: each family's metadata once (from the
/// first exposition that has it), then every exposition's samples of it.
pub fn merge(texts: &[String]) -> String {
    // (family, metadata lines, sample lines), in first-seen order.
    let mut families: Vec<(String, Vec<String>, Vec<String>)> = Vec::new();
    for text in texts {
        let mut current: Option<usize> = None;
        for line in text.lines() {
            if line == "# EOF" || line.is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix("# ") {
                let mut parts = rest.splitn(3, ' ');
                let (Some(_kind), Some(name)) = (parts.next(), parts.next()) else {
                    continue;
                };
                let i = match families.iter().position(|f| f.0 == name) {
                    Some(i) => i,
                    None => {
                        families.push((name.to_string(), Vec::new(), Vec::new()));
                        families.len() - 1
                    }
                };
                // A family's metadata is the same for every job: keep the
                // first job's.
                if !families[i].1.iter().any(|l| l == line) && families[i].2.is_empty() {
                    families[i].1.push(line.to_string());
                }
                current = Some(i);
            } else if let Some(i) = current {
                families[i].2.push(line.to_string());
            }
        }
    }
    let mut out = String::new();
    for (_, meta, samples) in &families {
        for l in meta.iter().chain(samples) {
            out.push_str(l);
            out.push('\n');
        }
    }
    out.push_str("# EOF\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn two_jobs_share_one_block_per_family() {
        let labels = |t: &str| BTreeMap::from([("target".to_string(), t.to_string())]);
        let a = Arc::new(Metrics::new("fl.a", &labels("a")).unwrap());
        let b = Arc::new(Metrics::new("fl.b", &labels("b")).unwrap());
        let hub = MetricsHub::default();
        hub.add(a.clone());
        hub.add(b.clone());
        let text = hub.encode();
        for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
            assert_eq!(
                text.lines().filter(|l| *l == line).count(),
                1,
                "{line} repeated:\n{text}"
            );
        }
        let rows = |t: &str| {
            text.lines()
                .filter(|l| {
                    l.starts_with("pacer_rows_done_total{")
                        && l.contains(&format!("target=\"{t}\""))
                })
                .count()
        };
        assert_eq!((rows("a"), rows("b")), (1, 1), "{text}");
        assert!(text.ends_with("# EOF\n"));
        assert_eq!(text.matches("# EOF").count(), 1);
        // Samples follow their family's metadata, not another's.
        let type_at = text.find("# TYPE pacer_rows_done counter").unwrap();
        let a_at = text.find("pacer_rows_done_total{").unwrap();
        let next_type = text[type_at + 1..].find("# TYPE").unwrap() + type_at + 1;
        assert!(type_at < a_at && a_at < next_type, "{text}");
        // The classic format (curl, promtool) has no OpenMetrics `# EOF`.
        assert!(!hub.encode_classic().contains("# EOF"));
    }
}
