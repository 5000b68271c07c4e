//! Bounded, single-line text for messages built from values pacer did not
//! write itself: policy values, override text, pause reasons from the
//! control API. A value echoed whole can be megabytes long (an error that
//! buries its own key), and a newline or escape in it can forge a log line
//! or repaint a terminal, so such text is elided and its control characters
//! escaped before it reaches an error, a log line, the store or `/status`.

/// Longest error or problem line pacer prints, in characters.
pub const MAX_MESSAGE: usize = 300;

/// Longest user value echoed inside a message, in characters.
pub const MAX_VALUE: usize = 40;

/// `s` cut to at most `max` characters by replacing its middle with `…`:
/// the start names the thing and the end often carries the hint.
pub fn elide(s: &str, max: usize) -> String {
    let n = s.chars().count();
    if n <= max {
        return s.to_string();
    }
    if max == 0 {
        return String::new();
    }
    let keep = max - 1;
    let head = keep.div_ceil(2);
    let tail = keep - head;
    let mut out: String = s.chars().take(head).collect();
    out.push('…');
    out.extend(s.chars().skip(n - tail));
    out
}

/// A user value for a message: quoted, control characters escaped, long
/// values elided (`"aaaa…aaaa"`).
pub fn show(value: &str) -> String {
    format!("\"{}\"", elide(&escape_controls(value), MAX_VALUE))
}

/// Control characters (newline, ESC, DEL, C1, bidi overrides, ...) as
/// visible escapes (`\n`, `\u{1b}`), so text stays one line that says only
/// what it says.
pub fn escape_controls(s: &str) -> String {
    if !s.chars().any(is_unsafe) {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if is_unsafe(c) => out.push_str(&c.escape_unicode().to_string()),
            c => out.push(c),
        }
    }
    out
}

/// Characters that change how a line renders rather than what it says:
/// C0/C1 controls and DEL, and Unicode format characters that reorder or
/// hide text (bidi overrides, zero-width joiners, line separators).
fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2060}'..='\u{2069}' | '\u{feff}')
}

/// Free text from an operator (a pause reason, who asked) made safe to log,
/// store and serve: trimmed, control characters escaped, at most `max`
/// characters.
pub fn operator_text(s: &str, max: usize) -> String {
    elide(&escape_controls(s.trim()), max)
}

/// One message line: control characters escaped and at most `MAX_MESSAGE`
/// characters.
pub fn message_line(s: &str) -> String {
    elide(&escape_controls(s), MAX_MESSAGE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elide_keeps_both_ends_within_the_limit() {
        assert_eq!(elide("short", 10), "short");
        let e = elide(&("a".repeat(100) + "END"), 21);
        assert_eq!(e.chars().count(), 21);
        assert!(e.starts_with("aaaa") && e.ends_with("END") && e.contains('…'));
        assert_eq!(elide("ééééé", 3), "é…é");
    }

    #[test]
    fn controls_become_visible_escapes() {
        assert_eq!(
            escape_controls("a\nINFO forged\x1b[2J\u{202e}"),
            "a\\nINFO forged\\u{1b}[2J\\u{202e}"
        );
        assert_eq!(
            escape_controls("plain text, ünïcode ok"),
            "plain text, ünïcode ok"
        );
        assert_eq!(operator_text("  sale\r\n ", 100), "sale");
        assert_eq!(show("x\ny"), "\"x\\ny\"");
    }
}
