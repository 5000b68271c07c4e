//! What is wrong with a policy, one line per problem: `FILE: KEY: what`.
//!
//! A line names where to look (the file, and the override that set the key
//! when one did) and the key, and stays under `text::MAX_MESSAGE`
//! characters however long the offending value is, so the key is never
//! buried. Override values never appear: they may be secrets.

use std::fmt;

use crate::telemetry::redact;
use crate::text::{MAX_MESSAGE, elide, escape_controls};

/// Longest file name shown (the end of a path is kept: it has the name).
const MAX_FILE: usize = 100;
/// Longest key shown.
const MAX_KEY: usize = 80;

/// Errors found in a policy, each naming the key and what is wrong.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyError {
    /// The policy file as given.
    pub file: String,
    /// Environment overrides applied to the file, as (variable, dotted key).
    pub overrides: Vec<(String, String)>,
    /// (dotted key, what is wrong); an empty key is about the whole file.
    pub problems: Vec<(String, String)>,
}

impl PolicyError {
    pub fn new(file: &str, problems: Vec<(String, String)>) -> PolicyError {
        PolicyError {
            file: file.to_string(),
            overrides: Vec::new(),
            problems,
        }
    }

    /// Hide every occurrence of these values (override text) in the
    /// messages, and any credential.
    pub(crate) fn masked(mut self, secrets: &[(String, String)]) -> PolicyError {
        for (_, what) in &mut self.problems {
            let mut w = redact::text(what).into_owned();
            for (var, value) in secrets {
                w = mask(&w, value, &format!("<{var}>"));
            }
            *what = w;
        }
        self
    }

    /// `p.toml` or `p.toml (with PACER_POLICY__A)`: the overrides related to
    /// `key` (set it, or a key inside or around it), else all of them.
    fn label(&self, key: &str) -> String {
        let file = tail(&escape_controls(&self.file), MAX_FILE);
        if self.overrides.is_empty() {
            return file;
        }
        let related: Vec<&str> = self
            .overrides
            .iter()
            .filter(|(_, k)| {
                !key.is_empty()
                    && (key == k
                        || key.starts_with(&format!("{k}."))
                        || k.starts_with(&format!("{key}.")))
            })
            .map(|(v, _)| v.as_str())
            .collect();
        let names: Vec<&str> = if related.is_empty() {
            self.overrides.iter().map(|(v, _)| v.as_str()).collect()
        } else {
            related
        };
        let shown = names
            .iter()
            .take(2)
            .map(|n| elide(&escape_controls(n), 60))
            .collect::<Vec<_>>()
            .join(", ");
        let more = match names.len() {
            0..=2 => String::new(),
            n => format!(" and {} more", n - 2),
        };
        format!("{file} (with {shown}{more})")
    }

    /// Every problem as the line `Display` prints for it.
    pub fn lines(&self) -> Vec<String> {
        self.problems
            .iter()
            .map(|(key, what)| {
                let label = self.label(key);
                let key = elide(&escape_controls(key), MAX_KEY);
                let head = if key.is_empty() {
                    format!("{label}: ")
                } else {
                    format!("{label}: {key}: ")
                };
                let room = MAX_MESSAGE.saturating_sub(head.chars().count()).max(20);
                format!("{head}{}", elide(&escape_controls(what), room))
            })
            .collect()
    }
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.lines().join("\n"))
    }
}

impl std::error::Error for PolicyError {}

/// The last `max` characters of a path, `…` in front when cut.
fn tail(s: &str, max: usize) -> String {
    let n = s.chars().count();
    if n <= max {
        return s.to_string();
    }
    let mut out = String::from("…");
    out.extend(s.chars().skip(n - (max - 1)));
    out
}

/// `text` with every occurrence of `value` (raw, or as Rust/JSON quoting
/// escapes it) replaced by `with`. Occurrences glued to a letter or digit
/// are left: a value `10` must not eat the middle of `100ms`.
fn mask(text: &str, value: &str, with: &str) -> String {
    let value = value.trim();
    if value.is_empty() {
        return text.to_string();
    }
    let debug = format!("{value:?}");
    let escaped = &debug[1..debug.len() - 1];
    let mut out = text.to_string();
    for needle in [value, escaped] {
        out = replace_bounded(&out, needle, with);
    }
    out
}

fn replace_bounded(text: &str, needle: &str, with: &str) -> String {
    let word = |c: Option<char>| c.is_some_and(char::is_alphanumeric);
    let edge = |a: Option<char>, b: Option<char>| word(a) && word(b);
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(needle) {
        let before = rest[..i].chars().last().or(out.chars().last());
        let after = rest[i + needle.len()..].chars().next();
        out.push_str(&rest[..i]);
        if edge(before, needle.chars().next()) || edge(needle.chars().last(), after) {
            out.push_str(needle);
        } else {
            out.push_str(with);
        }
        rest = &rest[i + needle.len()..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masking_hides_values_but_not_words_that_contain_them() {
        assert_eq!(
            mask("max 10 is below 100ms", "10", "<V>"),
            "max <V> is below 100ms"
        );
        assert_eq!(
            mask(
                r#"invalid value: string "hun\"ter", expected x"#,
                "hun\"ter",
                "<V>"
            ),
            r#"invalid value: string "<V>", expected x"#
        );
        assert_eq!(mask("a hunter2b", "hunter2", "<V>"), "a hunter2b");
        assert_eq!(mask("x", "  ", "<V>"), "x");
    }

    #[test]
    fn lines_stay_short_and_name_file_override_and_key() {
        let e = PolicyError {
            file: format!("/{}/p.toml", "d".repeat(500)),
            overrides: vec![
                ("PACER_POLICY__JOB__NAME".into(), "job.name".into()),
                (
                    "PACER_POLICY__CONTROLLER__TICK".into(),
                    "controller.tick".into(),
                ),
            ],
            problems: vec![("job.name".into(), "x".repeat(10_000))],
        };
        let line = &e.lines()[0];
        assert!(line.chars().count() <= MAX_MESSAGE, "{line}");
        assert!(
            line.contains("p.toml (with PACER_POLICY__JOB__NAME): job.name: xxx"),
            "{line}"
        );
        assert!(!line.contains("TICK"), "{line}");
    }
}
