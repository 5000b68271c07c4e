//! A fleet policy: the same backfill on many databases (a database per
//! tenant, shards), each a *target* under its own per-target signals, all
//! under one shared budget per cluster they live on.
//!
//! A fleet is an ordinary policy plus `[fleet]` and `[[target]]`: what to
//! do to rows, the limits, the controller and the signals are written once.
//! Targets may also come from a file (`targets_file`, the same
//! `[[target]]` tables) or from a query against a catalog database
//! (`targets_query`), resolved when the fleet starts.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Policy, PolicyError, Signal, Source};
use crate::text::show;

/// Longest target name: with the job's name and a '.', the per-target job
/// name must still fit pacer's 50-character job names (and Postgres's
/// 63-byte `application_name`s that carry it).
pub const MAX_TARGET_NAME: usize = 30;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetConfig {
    /// Where fleet state lives (pacer's schema in that database): which
    /// targets started, finished, failed. Required with more than one
    /// target. It may be one of the targets' databases.
    #[serde(default)]
    pub coordination_url: Option<String>,
    /// Targets running at once, over the whole fleet. Waiting targets
    /// hold no connection.
    #[serde(default = "default_max_active")]
    pub max_active_targets: u32,
    /// The first N targets (in order) run to completion, alone, before any
    /// other starts: a mistake in the update shows on one database, not on
    /// all of them.
    #[serde(default)]
    pub canary: u32,
    #[serde(default)]
    pub on_target_failure: OnTargetFailure,
    /// A TOML file of `[[target]]` tables (relative to the policy file).
    #[serde(default)]
    pub targets_file: Option<PathBuf>,
    /// Catalog database `targets_query` runs on.
    #[serde(default)]
    pub catalog_url: Option<String>,
    /// Lists the targets: columns `name` and `url` (text), optionally
    /// `replicas` (text[]) and `labels` (jsonb object of strings).
    #[serde(default)]
    pub targets_query: Option<String>,
}

fn default_max_active() -> u32 {
    4
}

/// What a target that fails does to the rest of the fleet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnTargetFailure {
    /// Start no other target and pause the running ones: a failure on one
    /// database usually means the update is wrong for all of them.
    #[default]
    PauseFleet,
    /// Record the failure and go on with the others.
    Skip,
}

impl OnTargetFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            OnTargetFailure::PauseFleet => "pause-fleet",
            OnTargetFailure::Skip => "skip",
        }
    }
}

/// One database of the fleet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetTarget {
    /// The target's key: in logs, metrics (`target` label), `pacer pause
    /// --target`, and its job's name (`<job>.<name>`).
    pub name: String,
    pub url: String,
    /// Replicas of the target's cluster, for replication lag.
    #[serde(default)]
    pub replicas: Vec<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// The `targets_file` format.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetsFile {
    #[serde(default, rename = "target")]
    targets: Vec<FleetTarget>,
}

/// Whether a signal reads the cluster (sampled once, feeds the cluster's
/// shared budget) or one target's own database (acts on that target only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Cluster,
    Target,
}

/// Postgres built-ins that read one database's own tables or sessions:
/// per target by default. Everything else (replication, WAL, connections,
/// Prometheus, HTTP) describes what the databases of a cluster share.
const TARGET_BUILTINS: &[&str] = &[
    "lock_waiters",
    "blocked_by_pacer",
    "ddl_waiting",
    "dead_tuples",
    "deadlocks_per_second",
    "oldest_transaction_seconds",
];

impl Signal {
    /// The signal's scope in a fleet: `scope` when given, else by source.
    pub fn fleet_scope(&self) -> Scope {
        self.scope.unwrap_or(match self.source() {
            Some(Source::Postgres(b)) if TARGET_BUILTINS.contains(&b) => Scope::Target,
            _ => Scope::Cluster,
        })
    }
}

impl Policy {
    /// A fleet policy: `[fleet]` or `[[target]]` present.
    pub fn is_fleet(&self) -> bool {
        self.fleet.is_some() || !self.targets.is_empty()
    }

    /// The checks of `[fleet]` and the inline `[[target]]`s that need no
    /// file and no database; `validate` calls it.
    pub(super) fn validate_fleet(&self, err: &mut dyn FnMut(&str, String)) {
        if !self.is_fleet() {
            for s in &self.signals {
                if s.scope.is_some() {
                    err(
                        &format!("signal {:?}.scope", s.name),
                        "only means something in a fleet policy ([fleet], [[target]])".into(),
                    );
                }
            }
            return;
        }
        let f = self.fleet.clone().unwrap_or_default();
        if self.database.url.is_some() {
            err(
                "database.url",
                "a fleet policy names its databases in [[target]] (url = ...); remove database.url"
                    .into(),
            );
        }
        if !self.database.replicas.is_empty() {
            err(
                "database.replicas",
                "a fleet policy names replicas per target ([[target]] replicas = [...])".into(),
            );
        }
        if self.job.standby {
            err(
                "job.standby",
                "a fleet runs every target itself; a standby fleet runner is not built yet (see docs/FLEET.md)"
                    .into(),
            );
        }
        if self.job.labels.contains_key("target") {
            err(
                "job.labels",
                "\"target\" is the label a fleet gives each target's metrics and logs; choose another name"
                    .into(),
            );
        }
        if f.max_active_targets == 0 {
            err("fleet.max_active_targets", "must be at least 1".into());
        }
        let sources = [
            !self.targets.is_empty(),
            f.targets_file.is_some(),
            f.targets_query.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if sources == 0 {
            err(
                "fleet",
                "names no target: add [[target]] tables, fleet.targets_file or fleet.targets_query"
                    .into(),
            );
        } else if sources > 1 {
            err(
                "fleet",
                "takes its targets from one place: [[target]], fleet.targets_file or fleet.targets_query, not several"
                    .into(),
            );
        }
        if f.targets_query.is_some() != f.catalog_url.is_some() {
            err(
                "fleet.catalog_url",
                "fleet.targets_query and fleet.catalog_url go together (the query runs on the catalog)"
                    .into(),
            );
        }
        if let Some(u) = &f.coordination_url {
            url_check(err, "fleet.coordination_url", u);
        }
        if let Some(u) = &f.catalog_url {
            url_check(err, "fleet.catalog_url", u);
        }
        // Targets from a file or a query are checked when they are read.
        if !self.targets.is_empty() {
            for (k, w) in self.target_problems(&self.targets) {
                err(&k, w);
            }
        }
    }

    /// The fleet's targets from the policy or its `targets_file`; `None`
    /// when they come from `targets_query` (a database is needed).
    pub fn file_targets(
        &self,
        policy_path: &Path,
    ) -> Result<Option<Vec<FleetTarget>>, PolicyError> {
        let Some(path) = self.fleet.as_ref().and_then(|f| f.targets_file.as_ref()) else {
            return Ok(self
                .fleet
                .as_ref()
                .is_none_or(|f| f.targets_query.is_none())
                .then(|| self.targets.clone()));
        };
        let full = match policy_path.parent() {
            Some(dir) if path.is_relative() => dir.join(path),
            _ => path.clone(),
        };
        let shown = full.display().to_string();
        let fail = |what: String| PolicyError::new(&shown, vec![(String::new(), what)]);
        let text = std::fs::read_to_string(&full).map_err(|e| {
            fail(format!(
                "cannot read the targets file (fleet.targets_file): {e}"
            ))
        })?;
        let parsed: TargetsFile =
            toml::from_str(&text).map_err(|e| fail(crate::text::message_line(&e.to_string())))?;
        self.check_targets(&shown, parsed.targets).map(Some)
    }

    /// Checks targets that came from a file or a catalog query, as the
    /// inline ones are: every problem at once, named by where it is.
    pub fn check_targets(
        &self,
        origin: &str,
        targets: Vec<FleetTarget>,
    ) -> Result<Vec<FleetTarget>, PolicyError> {
        let mut p = self.target_problems(&targets);
        if targets.is_empty() {
            p.push((String::new(), "lists no target".into()));
        }
        if p.is_empty() {
            Ok(targets)
        } else {
            Err(PolicyError::new(origin, p))
        }
    }

    /// Everything wrong with this list of targets under this policy:
    /// each target's own problems, and the fleet limits it cannot meet.
    fn target_problems(&self, targets: &[FleetTarget]) -> Vec<(String, String)> {
        let mut p = each_target_problems(&self.job.name, targets);
        let f = self.fleet.clone().unwrap_or_default();
        if targets.len() > 1 && f.coordination_url.is_none() {
            p.push((
                "fleet.coordination_url".into(),
                format!(
                    "is required with more than one target ({} here): fleet state lives in that database",
                    targets.len()
                ),
            ));
        }
        if (f.canary as usize) > targets.len() {
            p.push((
                "fleet.canary".into(),
                format!("{} is more than the {} targets", f.canary, targets.len()),
            ));
        }
        p
    }

    /// The single-database policy one target runs: the fleet's policy with
    /// the target's database, a job name of its own, a `target` label and
    /// only the per-target signals (the cluster's feed its shared budget).
    pub fn for_target(&self, t: &FleetTarget) -> Policy {
        let mut p = self.clone();
        p.fleet = None;
        p.targets = Vec::new();
        p.job.name = target_job_name(&self.job.name, &t.name);
        p.database.url = Some(t.url.clone());
        p.database.replicas = t.replicas.clone();
        p.job.labels.extend(t.labels.clone());
        p.job.labels.insert("target".into(), t.name.clone());
        p.signals.retain(|s| s.fleet_scope() == Scope::Target);
        for s in &mut p.signals {
            s.scope = None;
        }
        p
    }

    /// The policy of one cluster's shared budget: the cluster signals only,
    /// read through `via` (one of the cluster's targets). Replication lag
    /// is read from `via`'s replicas: a cluster whose `via` names none has
    /// no replication lag to read, and goes without that signal.
    pub fn for_cluster(&self, via: &FleetTarget, cluster: &str) -> Policy {
        let mut p = self.for_target(via);
        p.job.name = format!("{}.cluster-{cluster}", self.job.name);
        p.job.labels.remove("target");
        p.job.labels.insert("cluster".into(), cluster.to_string());
        p.signals = self
            .signals
            .iter()
            .filter(|s| s.fleet_scope() == Scope::Cluster)
            .filter(|s| {
                !via.replicas.is_empty() || s.postgres.as_deref() != Some("replication_lag_seconds")
            })
            .cloned()
            .map(|mut s| {
                s.scope = None;
                s
            })
            .collect();
        p
    }
}

impl Default for FleetConfig {
    fn default() -> Self {
        toml::from_str("").expect("fleet defaults deserialize")
    }
}

/// The job name a target's progress is kept under, in its own database.
pub fn target_job_name(job: &str, target: &str) -> String {
    format!("{job}.{target}")
}

fn url_check(err: &mut dyn FnMut(&str, String), key: &str, url: &str) {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        err(key, "must be a postgres:// URL".to_string());
    }
}

/// Names unique and usable as job-name parts, URLs that are Postgres URLs.
fn each_target_problems(job: &str, targets: &[FleetTarget]) -> Vec<(String, String)> {
    let mut p = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, t) in targets.iter().enumerate() {
        let at = format!("target[{i}]");
        if t.name.is_empty() {
            p.push((format!("{at}.name"), "must not be empty".into()));
        } else if !t
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            p.push((
                format!("{at}.name"),
                format!(
                    "{} may only contain letters, digits, '-' and '_'",
                    show(&t.name)
                ),
            ));
        } else if t.name.len() > MAX_TARGET_NAME {
            p.push((
                format!("{at}.name"),
                format!("is longer than {MAX_TARGET_NAME} characters"),
            ));
        } else if target_job_name(job, &t.name).len() > 50 {
            p.push((
                format!("{at}.name"),
                format!(
                    "makes the target's job name {} longer than 50 characters: shorten job.name or the target's name",
                    show(&target_job_name(job, &t.name))
                ),
            ));
        }
        if !t.name.is_empty() && !seen.insert(t.name.clone()) {
            p.push((
                format!("{at}.name"),
                format!(
                    "{} names two targets: names are the targets' keys",
                    show(&t.name)
                ),
            ));
        }
        let mut e = |k: &str, w: String| p.push((k.to_string(), w));
        url_check(&mut e, &format!("{at}.url"), &t.url);
        for (j, r) in t.replicas.iter().enumerate() {
            url_check(&mut e, &format!("{at}.replicas[{j}]"), r);
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
[job]
name = "fill"
table = "t"
key = "id"
pending = "x IS NULL"
update = "UPDATE t SET x = 1 WHERE id = ANY($1)"

[limits]
batch_size = { start = 100, min = 10, max = 1000 }
sleep = { start = "100ms", min = "0ms", max = "1s" }
workers = { start = 1, min = 1, max = 2 }

[[signal]]
name = "lag"
postgres = "replication_lag_seconds"
stop_above = 5

[[signal]]
name = "locks"
postgres = "lock_waiters"
stop_above = 3
"#;

    fn problems(extra: &str) -> String {
        match Policy::from_toml("f.toml", &format!("{BASE}{extra}")) {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_fleet_policy_with_targets_is_valid_and_splits_its_signals() {
        let p = Policy::from_toml(
            "f.toml",
            &format!(
                r#"{BASE}
[fleet]
coordination_url = "postgres://h/coord"
max_active_targets = 2
canary = 1
on_target_failure = "skip"

[[target]]
name = "eu-1"
url = "postgres://h1/app"
replicas = ["postgres://h1r/app"]
labels = {{ region = "eu" }}

[[target]]
name = "us-1"
url = "postgres://h2/app"
"#
            ),
        )
        .unwrap();
        assert!(p.is_fleet());
        let t = p.for_target(&p.targets[0]);
        assert_eq!(t.job.name, "fill.eu-1");
        assert_eq!(t.database.url.as_deref(), Some("postgres://h1/app"));
        assert_eq!(t.database.replicas, vec!["postgres://h1r/app".to_string()]);
        assert_eq!(t.job.labels["target"], "eu-1");
        assert_eq!(t.job.labels["region"], "eu");
        assert!(!t.is_fleet());
        // lock_waiters reads the target's own table; lag is the cluster's.
        let names = |p: &Policy| p.signals.iter().map(|s| s.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&t), vec!["locks"]);
        let c = p.for_cluster(&p.targets[0], "123456");
        assert_eq!(names(&c), vec!["lag"]);
        assert_eq!(c.job.labels["cluster"], "123456");
    }

    #[test]
    fn every_fleet_mistake_is_named_at_once() {
        let e = problems(
            r#"
[database]
url = "postgres://h/one"

[fleet]
max_active_targets = 0
canary = 5

[[target]]
name = "a b"
url = "mysql://h/x"

[[target]]
name = "c"
url = "postgres://h/c"

[[target]]
name = "c"
url = "postgres://h/c2"
"#,
        );
        for want in [
            "database.url",
            "fleet.max_active_targets: must be at least 1",
            "fleet.canary: 5 is more than the 3 targets",
            "target[0].name: \"a b\" may only contain",
            "target[0].url: must be a postgres:// URL",
            "target[2].name: \"c\" names two targets",
            "fleet.coordination_url: is required with more than one target",
        ] {
            assert!(e.contains(want), "missing {want:?} in:\n{e}");
        }
    }

    #[test]
    fn targets_come_from_one_place_and_scope_needs_a_fleet() {
        let e = problems(
            r#"
[fleet]
targets_file = "t.toml"
targets_query = "SELECT name, url FROM tenants"

[[target]]
name = "a"
url = "postgres://h/a"
"#,
        );
        assert!(e.contains("takes its targets from one place"), "{e}");
        assert!(e.contains("fleet.catalog_url"), "{e}");
        let e = problems("[fleet]\n");
        assert!(e.contains("names no target"), "{e}");
        let e = Policy::from_toml(
            "f.toml",
            &BASE.replace("stop_above = 3\n", "stop_above = 3\nscope = \"cluster\"\n"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("only means something in a fleet policy"), "{e}");
    }

    #[test]
    fn a_long_job_and_target_name_is_refused_before_it_breaks_a_job_name() {
        let e = problems(&format!(
            "[[target]]\nname = \"{}\"\nurl = \"postgres://h/a\"\n",
            "t".repeat(30)
        ))
        .replace(BASE, "");
        assert!(e.is_empty(), "{e}");
        let long = BASE.replace("name = \"fill\"", &format!("name = \"{}\"", "j".repeat(25)));
        let e = Policy::from_toml(
            "f.toml",
            &format!(
                "{long}[[target]]\nname = \"{}\"\nurl = \"postgres://h/a\"\n",
                "t".repeat(30)
            ),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("longer than 50 characters"), "{e}");
    }

    #[test]
    fn a_targets_file_is_read_next_to_the_policy_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let policy = dir.path().join("fleet.toml");
        std::fs::write(
            dir.path().join("targets.toml"),
            "[[target]]\nname = \"a\"\nurl = \"postgres://h/a\"\n[[target]]\nname = \"a\"\nurl = \"postgres://h/b\"\n",
        )
        .unwrap();
        let p = Policy::from_toml(
            "fleet.toml",
            &format!("{BASE}[fleet]\ntargets_file = \"targets.toml\"\ncoordination_url = \"postgres://h/c\"\n"),
        )
        .unwrap();
        let e = p.file_targets(&policy).unwrap_err().to_string();
        assert!(
            e.contains("targets.toml") && e.contains("names two targets"),
            "{e}"
        );
        std::fs::write(
            dir.path().join("targets.toml"),
            "[[target]]\nname = \"a\"\nurl = \"postgres://h/a\"\n[[target]]\nname = \"b\"\nurl = \"postgres://h/b\"\n",
        )
        .unwrap();
        let t = p.file_targets(&policy).unwrap().unwrap();
        assert_eq!(t.len(), 2);
        std::fs::remove_file(dir.path().join("targets.toml")).unwrap();
        let e = p.file_targets(&policy).unwrap_err().to_string();
        assert!(e.contains("cannot read the targets file"), "{e}");
    }
}
