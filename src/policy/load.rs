//! From a file (and environment overrides) to a validated `Policy`.
//!
//! The environment comes in as a list of (name, value) pairs, so the same
//! code serves `pacer` (the process environment) and tests and fuzzers
//! (any list, no global state).

use std::ffi::OsString;
use std::path::Path;

use super::tree::Node;
use super::{ENV_PREFIX, Policy, PolicyError};

/// One `PACER_POLICY__A__B=value` override.
struct Override {
    var: String,
    /// Lowercased path segments (`["limits", "batch_size", "max"]`).
    key: Vec<String>,
    value: String,
}

impl Override {
    fn dotted(&self) -> String {
        self.key.join(".")
    }
}

/// The pairs `load` needs from the process environment: the overrides and
/// `DATABASE_URL`. Read as `OsString`s, since `std::env::vars` panics on a
/// variable that is not UTF-8 — anyone's variable, not only pacer's.
pub(super) fn process_env() -> Vec<(String, String)> {
    let ours = |k: &str| k.starts_with(&format!("{ENV_PREFIX}__")) || k == "DATABASE_URL";
    std::env::vars_os()
        .filter_map(|(k, v): (OsString, OsString)| {
            let k = k.to_string_lossy().into_owned();
            ours(&k).then(|| (k, v.to_string_lossy().into_owned()))
        })
        .collect()
}

pub(super) fn load(
    path: &Path,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Policy, PolicyError> {
    let file = path.display().to_string();
    let mut database_url = None;
    let mut overrides = Vec::new();
    let mut problems = Vec::new();
    for (var, value) in env {
        if var == "DATABASE_URL" {
            database_url = Some(value);
            continue;
        }
        let Some(rest) = var.strip_prefix(&format!("{ENV_PREFIX}__")) else {
            continue;
        };
        let key: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
        if key.iter().any(String::is_empty) {
            problems.push((
                String::new(),
                format!("{var}: names no key (use {ENV_PREFIX}__SECTION__KEY)"),
            ));
        }
        overrides.push(Override { var, key, value });
    }
    let fail = |problems: Vec<(String, String)>, overrides: &[Override]| {
        PolicyError {
            file: file.clone(),
            overrides: overrides
                .iter()
                .map(|o| (o.var.clone(), o.dotted()))
                .collect(),
            problems,
        }
        .masked(
            &overrides
                .iter()
                .map(|o| (o.var.clone(), o.value.clone()))
                .collect::<Vec<_>>(),
        )
    };
    if !problems.is_empty() {
        return Err(fail(problems, &overrides));
    }
    let text = std::fs::read_to_string(path).map_err(|e| {
        fail(
            vec![(String::new(), format!("cannot read: {e}"))],
            &overrides,
        )
    })?;
    let mut policy = parse(&text, &overrides).map_err(|p| fail(p, &overrides))?;
    // A fleet's databases are its targets': DATABASE_URL is not one of them.
    if policy.database.url.is_none() && !policy.is_fleet() {
        policy.database.url = database_url;
    }
    policy
        .validate(&file)
        .map_err(|e| fail(e.problems, &overrides))?;
    Ok(policy)
}

/// A policy from text with no overrides (tests and embedded examples).
pub(super) fn from_text(name: &str, text: &str) -> Result<Policy, PolicyError> {
    let policy = parse(text, &[]).map_err(|p| PolicyError::new(name, p).masked(&[]))?;
    policy.validate(name).map_err(|e| e.masked(&[]))?;
    Ok(policy)
}

/// TOML → tree → overrides grafted on → typed policy, or the problems.
fn parse(text: &str, overrides: &[Override]) -> Result<Policy, Vec<(String, String)>> {
    let table: toml::Table = toml::from_str(text).map_err(|e| vec![toml_problem(text, &e)])?;
    let mut tree = Node::table(table);
    let problems: Vec<(String, String)> = overrides
        .iter()
        .filter_map(|o| graft(&mut tree, o).err())
        .collect();
    if !problems.is_empty() {
        return Err(problems);
    }
    serde_path_to_error::deserialize::<_, Policy>(tree)
        .map_err(|e| vec![serde_problem(e.path().to_string(), &e.inner().to_string())])
}

/// A TOML syntax error as one line with its position; the toml crate's own
/// rendering quotes the offending line, which can be megabytes long.
fn toml_problem(text: &str, e: &toml::de::Error) -> (String, String) {
    let msg = e.message().trim().replace('\n', "; ");
    let at = match e.span() {
        Some(span) => {
            let start = span.start.min(text.len());
            let start = (0..=start)
                .rev()
                .find(|&i| text.is_char_boundary(i))
                .unwrap_or(0);
            let upto = &text[..start];
            let line = upto.matches('\n').count() + 1;
            let col = upto.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!(" at line {line}, column {col}")
        }
        None => String::new(),
    };
    (String::new(), format!("not valid TOML{at}: {msg}"))
}

/// Put an override's text at its key, creating tables on the way. Arrays of
/// tables (`[[signal]]`) have no stable names to address, so they are not
/// reachable.
fn graft(tree: &mut Node, o: &Override) -> Result<(), (String, String)> {
    let mut node = tree;
    let (last, parents) = o.key.split_last().expect("split on __ yields a segment");
    for (i, seg) in parents.iter().enumerate() {
        let Node::Table(map) = node else {
            return Err(not_a_table(o, i, node));
        };
        node = map
            .entry(seg.clone())
            .or_insert_with(|| Node::Table(Default::default()));
    }
    match node {
        Node::Table(map) => {
            map.insert(last.clone(), Node::Env(o.value.clone()));
            Ok(())
        }
        other => Err(not_a_table(o, parents.len(), other)),
    }
}

fn not_a_table(o: &Override, depth: usize, found: &Node) -> (String, String) {
    let at = o.key[..depth].join(".");
    let why = if matches!(found, Node::Array(_)) {
        "arrays of tables ([[signal]], [[window]]) cannot be overridden from the environment: edit the file"
            .to_string()
    } else {
        format!("is {found}, not a table with keys")
    };
    (at, format!("{} cannot be applied: {why}", o.var))
}

/// A deserialization error as (key, message): serde says "field" where a
/// policy author thinks "key", names a missing key only in the message, and
/// lists every known key after an unknown one.
fn serde_problem(path: String, msg: &str) -> (String, String) {
    let path = if path == "." { String::new() } else { path };
    let join = |k: &str| {
        if path.is_empty() {
            k.to_string()
        } else {
            format!("{path}.{k}")
        }
    };
    if let Some(rest) = msg.strip_prefix("missing field `")
        && let Some(name) = rest.strip_suffix('`')
    {
        return (join(name), "missing key (required)".into());
    }
    if let Some(rest) = msg.strip_prefix("unknown field `")
        && let Some((name, known)) = rest.split_once('`')
    {
        let known = known
            .trim_start_matches(", ")
            .replace("expected one of ", "known keys: ")
            .replace("expected ", "known key: ")
            .replace("there are no fields", "no keys are known here");
        let key = if path.ends_with(name) {
            path.clone()
        } else {
            join(name)
        };
        return (
            key,
            format!(
                "unknown key `{}` (unknown keys are errors so a typo cannot silently disable a limit); {known}",
                crate::text::elide(name, crate::text::MAX_VALUE)
            ),
        );
    }
    (path, msg.to_string())
}
