//! A strict parser for the OpenMetrics text that `/metrics` serves, so
//! tests check the exposition itself, not just substrings of it.

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

#[derive(Debug, Default)]
pub struct Exposition {
    /// Family name → type (`counter`, `gauge`, `histogram`, `info`, ...).
    pub types: BTreeMap<String, String>,
    pub help: BTreeMap<String, String>,
    pub samples: Vec<Sample>,
}

impl Exposition {
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
    }
}

fn valid_name(n: &str) -> bool {
    let mut c = n.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_' || f == ':')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_' || x == ':')
}

fn parse_value(v: &str) -> Result<f64, String> {
    match v {
        "NaN" => Ok(f64::NAN),
        "+Inf" | "Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        _ => v
            .parse::<f64>()
            .map_err(|e| format!("bad value {v:?}: {e}")),
    }
}

pub fn parse(text: &str) -> Result<Exposition, String> {
    let mut e = Exposition::default();
    let lines: Vec<&str> = text.lines().collect();
    if lines.last() != Some(&"# EOF") {
        return Err("exposition does not end with # EOF".into());
    }
    for (i, line) in lines[..lines.len() - 1].iter().enumerate() {
        let ctx = |m: String| format!("line {}: {m}: {line:?}", i + 1);
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let kind = parts.next().unwrap_or("");
            let name = parts
                .next()
                .ok_or_else(|| ctx("metadata without a name".into()))?;
            let val = parts.next().unwrap_or("").to_string();
            if !valid_name(name) {
                return Err(ctx(format!("bad family name {name:?}")));
            }
            match kind {
                "TYPE" => {
                    if ![
                        "counter",
                        "gauge",
                        "histogram",
                        "info",
                        "summary",
                        "stateset",
                        "unknown",
                        "gaugehistogram",
                    ]
                    .contains(&val.as_str())
                    {
                        return Err(ctx(format!("unknown type {val:?}")));
                    }
                    if e.types.insert(name.to_string(), val).is_some() {
                        return Err(ctx("duplicate TYPE".into()));
                    }
                }
                "HELP" => {
                    e.help.insert(name.to_string(), val);
                }
                "UNIT" => {}
                _ => return Err(ctx(format!("unknown metadata {kind:?}"))),
            }
            continue;
        }
        let (name, rest) = match line.find(['{', ' ']) {
            Some(p) => (&line[..p], &line[p..]),
            None => return Err(ctx("sample without a value".into())),
        };
        if !valid_name(name) {
            return Err(ctx(format!("bad metric name {name:?}")));
        }
        let mut labels = BTreeMap::new();
        let rest = if let Some(body) = rest.strip_prefix('{') {
            let mut chars = body.char_indices().peekable();
            let end;
            loop {
                let Some((start, c)) = chars.next() else {
                    return Err(ctx("unterminated labels".into()));
                };
                if c == '}' {
                    end = start + 1;
                    break;
                }
                if c == ',' {
                    continue;
                }
                let mut key = String::from(c);
                loop {
                    match chars.next() {
                        Some((_, '=')) => break,
                        Some((_, k)) => key.push(k),
                        None => return Err(ctx("label without =".into())),
                    }
                }
                if !valid_name(&key) || key.contains(':') {
                    return Err(ctx(format!("bad label name {key:?}")));
                }
                if chars.next().map(|x| x.1) != Some('"') {
                    return Err(ctx("label value not quoted".into()));
                }
                let mut val = String::new();
                loop {
                    match chars.next() {
                        Some((_, '"')) => break,
                        Some((_, '\\')) => match chars.next() {
                            Some((_, 'n')) => val.push('\n'),
                            Some((_, x @ ('\\' | '"'))) => val.push(x),
                            _ => return Err(ctx("bad escape in label value".into())),
                        },
                        Some((_, x)) => val.push(x),
                        None => return Err(ctx("unterminated label value".into())),
                    }
                }
                if labels.insert(key.clone(), val).is_some() {
                    return Err(ctx(format!("duplicate label {key:?}")));
                }
            }
            &body[end..]
        } else {
            rest
        };
        let mut fields = rest.split_whitespace();
        let value =
            parse_value(fields.next().ok_or_else(|| ctx("no value".into()))?).map_err(ctx)?;
        let family = [
            "_total", "_bucket", "_count", "_sum", "_created", "_info", "",
        ]
        .iter()
        .find_map(|suf| name.strip_suffix(suf).filter(|f| e.types.contains_key(*f)))
        .ok_or_else(|| ctx(format!("sample {name:?} has no TYPE")))?;
        let _ = family;
        e.samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    Ok(e)
}
