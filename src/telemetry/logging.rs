//! Log output: one line per event, human text on a terminal or JSON lines
//! for a log pipeline, with the job's name and labels on every line and
//! credentials masked on the way out.
//!
//! Lines go to stderr (stdout is for command results such as `--json`),
//! through the progress bar when one is showing so the two never garble
//! each other (see `progress`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::IsTerminal;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use super::redact;
use crate::cli::LogFormat;
use crate::text::escape_controls;

/// Name of the span that carries a job's name and labels.
pub const JOB_SPAN: &str = "pacer_job";

/// Event fields whose text is JSON and is embedded as structured JSON in
/// JSON lines (and left out of text lines, whose sentence already says it).
const JSON_FIELDS: &[&str] = &["causes", "windows"];

/// Event fields that the text format leaves out because the message
/// sentence already carries them.
const TEXT_HIDDEN: &[&str] = &[
    "causes",
    "windows",
    "batch_before",
    "batch_after",
    "sleep_before_ms",
    "sleep_after_ms",
    "workers_before",
    "workers_after",
];

/// A span that attaches the job's name and labels to every log line emitted
/// inside it. It is an ERROR-level span so that no level filter that lets
/// any pacer line through can drop the labels from it.
pub fn job_span(job: &str, labels: &BTreeMap<String, String>) -> tracing::Span {
    let labels = serde_json::to_string(labels).unwrap_or_default();
    tracing::error_span!(target: "pacer", JOB_SPAN, job = job, labels = labels.as_str())
}

/// The level filter: `--log-level`/`PACER_LOG_LEVEL` wins, then `RUST_LOG`,
/// then `info`. A bad directive is an error naming it rather than a silent
/// fallback that might hide the lines the operator asked for.
pub fn filter(level: Option<&str>) -> anyhow::Result<EnvFilter> {
    let (directives, from) = match level {
        Some(l) => (l.to_string(), "--log-level"),
        None => match std::env::var("RUST_LOG") {
            Ok(v) if !v.trim().is_empty() => (v, "RUST_LOG"),
            _ => ("info".to_string(), "default"),
        },
    };
    EnvFilter::builder()
        .parse(&directives)
        .map_err(|e| anyhow::anyhow!("{from} = {directives:?} is not a valid log filter: {e}"))
}

/// Install the global subscriber for the process: stderr, text (coloured on
/// a terminal unless `NO_COLOR`) or JSON lines.
pub fn init(format: LogFormat, level: Option<&str>) -> anyhow::Result<()> {
    let ansi = format == LogFormat::Text
        && std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none();
    let sub = subscriber(format, filter(level)?, StderrWriter, ansi);
    tracing::subscriber::set_global_default(sub)
        .map_err(|e| anyhow::anyhow!("logging already initialised: {e}"))
}

/// The subscriber `init` installs, with any writer: tests capture lines with
/// it exactly as an operator would see them.
pub fn subscriber<W>(
    format: LogFormat,
    filter: EnvFilter,
    writer: W,
    ansi: bool,
) -> impl Subscriber + Send + Sync
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(ansi)
        .event_format(LineFormat {
            json: format == LogFormat::Json,
            ansi,
        });
    Registry::default()
        .with(SpanFieldsLayer)
        .with(fmt.with_filter(filter))
}

/// Fields of a span, kept as JSON values so both formats can print them.
struct SpanFields(Map<String, Value>);

/// Records span fields into `SpanFields` so the line format can put them on
/// every event inside the span.
struct SpanFieldsLayer;

impl<S> Layer<S> for SpanFieldsLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: Context<'_, S>,
    ) {
        let mut v = JsonVisitor::default();
        attrs.record(&mut v);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut()
                .insert(SpanFields(v.0.into_iter().collect()));
        }
    }

    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        ctx: Context<'_, S>,
    ) {
        if let Some(span) = ctx.span(id) {
            let mut ext = span.extensions_mut();
            let mut v = JsonVisitor::default();
            values.record(&mut v);
            if let Some(f) = ext.get_mut::<SpanFields>() {
                f.0.extend(v.0);
            }
        }
    }
}

/// Collects event or span fields as JSON values, in the order they were
/// written (the text format prints them in that order).
#[derive(Default)]
struct JsonVisitor(Vec<(String, Value)>);

impl Visit for JsonVisitor {
    fn record_f64(&mut self, field: &Field, value: f64) {
        let v = serde_json::Number::from_f64(value).map_or(Value::Null, Value::Number);
        self.0.push((field.name().into(), v));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.push((field.name().into(), value.into()));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.push((field.name().into(), value.into()));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.push((field.name().into(), value.into()));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.insert_text(field.name(), value.to_string());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        // Errors print with their whole chain: the root cause is usually the
        // useful part ("connection refused").
        let mut s = value.to_string();
        let mut src = value.source();
        while let Some(e) = src {
            let _ = write!(s, ": {e}");
            src = e.source();
        }
        self.insert_text(field.name(), s);
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.insert_text(field.name(), format!("{value:?}"));
    }
}

impl JsonVisitor {
    fn insert_text(&mut self, name: &str, text: String) {
        // Mask credentials in the raw value, before quoting or JSON escaping
        // can hide their shape from the line-level pass.
        let text = match redact::text(&text) {
            std::borrow::Cow::Owned(r) => r,
            std::borrow::Cow::Borrowed(_) => text,
        };
        let v = if JSON_FIELDS.contains(&name) || name == "labels" {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        } else {
            Value::String(text)
        };
        self.0.retain(|(k, _)| k != name);
        self.0.push((name.into(), v));
    }
}

/// pacer's line format, text or JSON.
struct LineFormat {
    json: bool,
    ansi: bool,
}

impl<S, N> FormatEvent<S, N> for LineFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let mut fields = JsonVisitor::default();
        event.record(&mut fields);
        let mut fields = fields.0;
        let message = match fields.iter().position(|(k, _)| k == "message") {
            Some(i) => match fields.remove(i).1 {
                Value::String(s) => s,
                v => v.to_string(),
            },
            None => String::new(),
        };
        // Span fields, outermost first; the job span's labels are flattened.
        let mut context = Map::new();
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                if let Some(f) = span.extensions().get::<SpanFields>() {
                    for (k, v) in &f.0 {
                        context.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        let labels = match context.remove("labels") {
            Some(Value::Object(m)) => m,
            _ => Map::new(),
        };
        let meta = event.metadata();
        let now = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ");
        let line = if self.json {
            let mut obj = Map::new();
            obj.insert("timestamp".into(), now.to_string().into());
            obj.insert("level".into(), meta.level().as_str().into());
            obj.insert("target".into(), meta.target().into());
            obj.insert("message".into(), message.into());
            for (k, v) in context {
                obj.insert(k, v);
            }
            if !labels.is_empty() {
                obj.insert("labels".into(), Value::Object(labels));
            }
            for (k, v) in fields {
                obj.insert(k, v);
            }
            Value::Object(obj).to_string()
        } else {
            let mut s = String::new();
            let _ = write!(s, "{now} {}", self.level(*meta.level()));
            let mut tags: Vec<String> = Vec::new();
            if let Some(job) = context.remove("job") {
                tags.push(plain(&job));
            }
            tags.extend(context.iter().map(|(k, v)| format!("{k}={}", plain(v))));
            tags.extend(labels.iter().map(|(k, v)| format!("{k}={}", plain(v))));
            if !tags.is_empty() {
                let _ = write!(s, " [{}]", tags.join(" "));
            }
            // One event, one line: a newline or escape inside a value (a
            // pause reason, a database error) must not start a line of its
            // own that reads like pacer's.
            let _ = write!(s, " {}", escape_controls(&message));
            let shown: Vec<String> = fields
                .iter()
                .filter(|(k, _)| !TEXT_HIDDEN.contains(&k.as_str()))
                .map(|(k, v)| format!("{k}={}", quoted(v)))
                .collect();
            if !shown.is_empty() {
                let sep = if self.ansi { "\x1b[2m" } else { "" };
                let end = if self.ansi { "\x1b[0m" } else { "" };
                let _ = write!(s, "  {sep}{}{end}", shown.join(" "));
            }
            s
        };
        writeln!(writer, "{}", redact::text(&line))
    }
}

impl LineFormat {
    fn level(&self, level: Level) -> String {
        let name = format!("{:>5}", level.as_str());
        if !self.ansi {
            return name;
        }
        let colour = match level {
            Level::ERROR => "31",
            Level::WARN => "33",
            Level::INFO => "32",
            Level::DEBUG => "34",
            Level::TRACE => "35",
        };
        format!("\x1b[{colour}m{name}\x1b[0m")
    }
}

/// A value as a person reads it: strings without JSON quotes, control
/// characters escaped.
fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => escape_controls(s),
        v => v.to_string(),
    }
}

/// A value for `key=value`: quoted only when it has spaces.
fn quoted(v: &Value) -> String {
    match v {
        Value::String(s) if s.is_empty() || s.contains(char::is_whitespace) => format!("{s:?}"),
        v => plain(v),
    }
}

/// Writes each formatted line to stderr, around the progress bar if one is
/// showing. tracing's fmt layer hands over one whole line per `write_all`,
/// so a line is never split by a bar redraw.
#[derive(Clone, Copy, Default)]
pub struct StderrWriter;

impl<'a> MakeWriter<'a> for StderrWriter {
    type Writer = StderrWriter;
    fn make_writer(&'a self) -> Self::Writer {
        StderrWriter
    }
}

impl std::io::Write for StderrWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        super::progress::write_around_bar(|| std::io::stderr().lock().write_all(buf))?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}
