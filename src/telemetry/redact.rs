//! Credentials never reach a log line, an error message, `/status` or a
//! report. Callers redact URLs they print on purpose (`url`); the log
//! formatter, the HTTP API and the report also pass all of their text through
//! `text`, a safety net for the URL someone logs by accident — or for the
//! `Debug` of sqlx's `PgConnectOptions`, which prints the password.

use std::borrow::Cow;

/// What a secret is replaced with.
pub const MASK: &str = "***";

/// A connection URL or libpq keyword/value string with its password
/// masked: `postgres://app:s3cret@db/orders` → `postgres://app:***@db/orders`,
/// `host=db password='a b'` → `host=db password='***'`.
///
/// Stricter than `text`, because the whole input is known to be one
/// connection string: everything between the user name and the last `@`
/// before the query is the password, so an unencoded space or `@` in it
/// cannot leak its tail.
pub fn url(url: &str) -> String {
    let mut out = url.to_string();
    if let Some(i) = out.find("://") {
        let auth = i + 3;
        let scope_end = out[auth..].find(['?', '#']).map_or(out.len(), |e| auth + e);
        if let Some(at) = out[auth..scope_end].rfind('@').map(|a| auth + a)
            && let Some(colon) = out[auth..at].find(':')
            && auth + colon + 1 < at
        {
            out.replace_range(auth + colon + 1..at, MASK);
        }
    }
    text(&out).into_owned()
}

/// Every credential found in free text masked: passwords in URLs
/// (`scheme://user:pass@host`), and values of `password`-like keys
/// (`password=...`, `sslpassword='...'`, `password: Some("...")`, `"password":"..."`).
/// Borrowed when nothing needed masking, so it is cheap on every log line.
pub fn text(input: &str) -> Cow<'_, str> {
    let mut spans = url_password_spans(input);
    spans.extend(keyed_password_spans(input));
    if spans.is_empty() {
        return Cow::Borrowed(input);
    }
    spans.sort_unstable();
    let mut out = String::with_capacity(input.len());
    let mut pos = 0;
    for (start, end) in spans {
        if end <= pos {
            continue;
        }
        let start = start.max(pos);
        out.push_str(&input[pos..start]);
        out.push_str(MASK);
        pos = end;
    }
    out.push_str(&input[pos..]);
    Cow::Owned(out)
}

/// An error and all its causes on one line, redacted: the form in which
/// errors are logged and printed.
pub fn error(err: &anyhow::Error) -> String {
    text(&format!("{err:#}")).into_owned()
}

/// Redact every string inside a JSON value (keys are left alone; values of
/// password-like keys are masked whole).
pub fn json(value: &mut serde_json::Value) {
    use serde_json::Value;
    match value {
        Value::String(s) => {
            if let Cow::Owned(r) = text(s) {
                *s = r;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(json),
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                if is_password_key(k) && !v.is_null() {
                    *v = Value::String(MASK.into());
                } else {
                    json(v);
                }
            }
        }
        _ => {}
    }
}

/// Characters that end a URL in running text.
fn ends_token(c: char) -> bool {
    c.is_whitespace() || matches!(c, '"' | '\'' | '<' | '>' | '`' | '\\')
}

/// Byte ranges of the passwords in `scheme://user:password@host` URLs.
/// The userinfo ends at the last `@` before the path's query or fragment, so
/// a password with an unencoded `/` or `@` is still caught whole.
fn url_password_spans(s: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(i) = s[from..].find("://") {
        let auth_start = from + i + 3;
        let token_end = s[auth_start..]
            .find(ends_token)
            .map_or(s.len(), |e| auth_start + e);
        let token = &s[auth_start..token_end];
        let scope = &token[..token.find(['?', '#']).unwrap_or(token.len())];
        if let Some(at) = scope.rfind('@') {
            let userinfo = &scope[..at];
            if let Some(colon) = userinfo.find(':')
                && colon + 1 < userinfo.len()
            {
                out.push((auth_start + colon + 1, auth_start + at));
            }
        }
        from = auth_start;
    }
    out
}

/// Keys whose values are credentials: libpq's `password`, `PGPASSWORD`,
/// `sslpassword`, and pacer's own tokens (`bearer_token`,
/// `PACER_CONTROL_TOKEN`).
fn is_password_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    k == "password"
        || k == "passwd"
        || k == "pwd"
        || k == "sslpassword"
        || k == "pgpassword"
        || k.ends_with("_password")
        || k == "token"
        || k.ends_with("_token")
        || k == "secret"
        || k.ends_with("_secret")
}

/// Fragments every password-like key contains; the scan starts from them.
const KEY_NEEDLES: &[&str] = &["pass", "pwd", "token", "secret"];

/// Byte ranges of values of password-like keys: `password=v`,
/// `password = 'v w'`, `password: Some("v")`, `"password": "v"`,
/// `PGPASSWORD=v`.
fn keyed_password_spans(s: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    for needle in KEY_NEEDLES {
        keyed_spans_from(s, needle, &mut out);
    }
    out
}

fn keyed_spans_from(s: &str, needle: &str, out: &mut Vec<(usize, usize)>) {
    let lower = s.to_ascii_lowercase();
    let bytes = s.as_bytes();
    let mut from = 0;
    while let Some(i) = lower[from..].find(needle) {
        let at = from + i;
        from = at + needle.len();
        // Extend the key over identifier characters on both sides.
        let key_start = lower[..at]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(0, |p| p + 1);
        let key_end = lower[at..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(s.len(), |p| at + p);
        if !is_password_key(&lower[key_start..key_end]) {
            continue;
        }
        let mut j = key_end;
        // A JSON key: `"password": "v"`.
        if bytes.get(j) == Some(&b'"') {
            j += 1;
        }
        while bytes.get(j).is_some_and(|b| *b == b' ') {
            j += 1;
        }
        if !matches!(bytes.get(j), Some(b'=') | Some(b':')) {
            continue;
        }
        j += 1;
        while bytes.get(j).is_some_and(|b| *b == b' ') {
            j += 1;
        }
        if s[j..].starts_with("Some(") {
            j += 5;
        }
        if s[j..].starts_with("None") {
            continue;
        }
        // A quote escaped by an outer layer of quoting: `\"value\"`.
        if bytes.get(j) == Some(&b'\\') && matches!(bytes.get(j + 1), Some(b'"') | Some(b'\'')) {
            let q = &s[j..j + 2];
            let start = j + 2;
            let end = s[start..].find(q).map_or(s.len(), |e| start + e);
            if end > start {
                out.push((start, end));
                from = end;
            }
            continue;
        }
        let (start, end) = match bytes.get(j) {
            Some(q @ (b'"' | b'\'')) => {
                let start = j + 1;
                let mut k = start;
                while k < bytes.len() && bytes[k] != *q {
                    // Skip escaped characters (JSON, Debug, libpq quoting).
                    k += if bytes[k] == b'\\' { 2 } else { 1 };
                }
                (start, k.min(bytes.len()))
            }
            Some(_) => {
                let end = s[j..]
                    .find(|c: char| {
                        c.is_whitespace()
                            || matches!(c, '&' | ';' | ',' | ')' | '}' | '"' | '\'' | '\\')
                    })
                    .map_or(s.len(), |e| j + e);
                (j, end)
            }
            None => continue,
        };
        if end > start {
            out.push((start, end));
            from = end;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            url("postgres://app:s3cret@db:5432/orders"),
            "postgres://app:***@db:5432/orders"
        );
        assert_eq!(url("postgres://app@db/orders"), "postgres://app@db/orders");
        assert_eq!(url("postgres://db/orders"), "postgres://db/orders");
        assert_eq!(
            url("postgresql://u:p%40ss/w@h/db?sslmode=require"),
            "postgresql://u:***@h/db?sslmode=require"
        );
        assert_eq!(
            url("postgres://u:pw@h/db?password=x&a=b"),
            "postgres://u:***@h/db?password=***&a=b"
        );
        assert_eq!(
            url("http://prom:9090/api?x=a@b"),
            "http://prom:9090/api?x=a@b"
        );
        // Unencoded characters a parser would stop at stay masked whole.
        assert_eq!(
            url("postgres://app:pa ss@w/rd@db/orders"),
            "postgres://app:***@db/orders"
        );
        assert_eq!(
            url("host=db user=app password='s3 cr\\'et' dbname=x"),
            "host=db user=app password='***' dbname=x"
        );
        assert_eq!(url("PGPASSWORD=s3cret psql"), "PGPASSWORD=*** psql");
    }

    #[test]
    fn conninfo_and_debug() {
        assert_eq!(
            text("host=db user=app password=s3cret dbname=x"),
            "host=db user=app password=*** dbname=x"
        );
        assert_eq!(
            text("host=db password = 'se cret' x=1"),
            "host=db password = '***' x=1"
        );
        assert_eq!(
            text(r#"PgConnectOptions { username: "app", password: Some("s3cret"), port: 5432 }"#),
            r#"PgConnectOptions { username: "app", password: Some("***"), port: 5432 }"#
        );
        assert_eq!(text(r#"password: None"#), "password: None");
        assert_eq!(
            text(r#"options="Opts { password: Some(\"s3cret\"), port: 1 }""#),
            r#"options="Opts { password: Some(\"***\"), port: 1 }""#
        );
        assert_eq!(
            text(r#"{"password":"s3\"cret","x":1}"#),
            r#"{"password":"***","x":1}"#
        );
        assert_eq!(text("pwd=s3cret user=x"), "pwd=*** user=x");
        assert_eq!(
            text("PACER_CONTROL_TOKEN=s3cret bearer_token: \"s3cret\""),
            "PACER_CONTROL_TOKEN=*** bearer_token: \"***\""
        );
        assert_eq!(
            text("password authentication failed for user app"),
            "password authentication failed for user app"
        );
        assert!(matches!(text("nothing here"), Cow::Borrowed(_)));
    }

    #[test]
    fn json_values() {
        let mut v = serde_json::json!({"db": "postgres://a:b@h/d", "password": "zz", "n": [ "x password=y" ]});
        json(&mut v);
        assert_eq!(
            v,
            serde_json::json!({"db": "postgres://a:***@h/d", "password": "***", "n": ["x password=***"]})
        );
    }
}
