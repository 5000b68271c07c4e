//! The progress bar and log lines share a terminal without garbling each
//! other: every log line is written through `write_around_bar`, which
//! clears the bar, prints the line and redraws the bar below it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use indicatif::{ProgressDrawTarget, TermLike};
use pacer::controller::Knobs;
use pacer::telemetry::ProgressLine;
use pacer::telemetry::progress::{ProgressView, RateMeter, bar_message, write_around_bar};

/// A minimal virtual terminal: a grid of lines and a cursor.
#[derive(Debug, Clone, Default)]
struct Screen(Arc<Mutex<(Vec<String>, usize, usize)>>);

impl Screen {
    fn lines(&self) -> Vec<String> {
        let g = self.0.lock().unwrap();
        let mut l = g.0.clone();
        while l.last().is_some_and(|x| x.is_empty()) {
            l.pop();
        }
        l
    }
    fn put(&self, s: &str) {
        let mut g = self.0.lock().unwrap();
        let (row, col) = (g.1, g.2);
        while g.0.len() <= row {
            g.0.push(String::new());
        }
        let line = &mut g.0[row];
        let mut chars: Vec<char> = line.chars().collect();
        chars.resize(chars.len().max(col), ' ');
        for (i, c) in s.chars().enumerate() {
            if col + i < chars.len() {
                chars[col + i] = c;
            } else {
                chars.push(c);
            }
        }
        *line = chars.into_iter().collect();
        g.2 = col + s.chars().count();
    }
}

impl TermLike for Screen {
    fn width(&self) -> u16 {
        200
    }
    fn move_cursor_up(&self, n: usize) -> std::io::Result<()> {
        let mut g = self.0.lock().unwrap();
        g.1 = g.1.saturating_sub(n);
        Ok(())
    }
    fn move_cursor_down(&self, n: usize) -> std::io::Result<()> {
        self.0.lock().unwrap().1 += n;
        Ok(())
    }
    fn move_cursor_right(&self, n: usize) -> std::io::Result<()> {
        self.0.lock().unwrap().2 += n;
        Ok(())
    }
    fn move_cursor_left(&self, n: usize) -> std::io::Result<()> {
        let mut g = self.0.lock().unwrap();
        g.2 = g.2.saturating_sub(n);
        Ok(())
    }
    fn write_line(&self, s: &str) -> std::io::Result<()> {
        self.put(s);
        let mut g = self.0.lock().unwrap();
        g.1 += 1;
        g.2 = 0;
        Ok(())
    }
    fn write_str(&self, s: &str) -> std::io::Result<()> {
        self.put(s);
        Ok(())
    }
    fn clear_line(&self) -> std::io::Result<()> {
        let mut g = self.0.lock().unwrap();
        let row = g.1;
        if let Some(l) = g.0.get_mut(row) {
            l.clear();
        }
        g.2 = 0;
        Ok(())
    }
    fn flush(&self) -> std::io::Result<()> {
        Ok(())
    }
}

fn progress(done: u64, state: &str) -> ProgressLine {
    ProgressLine {
        rows_done: done,
        rows_pending: Some(8_000 - done),
        rate: 250.0,
        state: state.into(),
        knobs: Knobs {
            batch_size: 2000,
            sleep: Duration::from_millis(100),
            workers: 3,
        },
    }
}

#[test]
fn log_lines_and_the_bar_do_not_garble_each_other() {
    let screen = Screen::default();
    let view = ProgressView::with_target(ProgressDrawTarget::term_like(Box::new(screen.clone())));
    view.update(&progress(1_000, "running"));
    let before = screen.lines();
    assert_eq!(before.len(), 1, "{before:?}");
    assert!(before[0].contains("1,000/8,000 rows · 250 rows/s · ETA 28s · running · batch 2000 · sleep 100ms · 3 workers"), "{before:?}");

    let log1 = "2026-11-24T12:00:00.000Z  INFO [demo] slowing down: replica_lag 3 > slow 2; sleep 100ms→200ms";
    let log2 = "2026-11-24T12:00:05.000Z  INFO [demo] pausing: replica_lag 12 > stop 10";
    write_around_bar(|| screen.write_line(log1)).unwrap();
    view.update(&progress(2_000, "paused"));
    write_around_bar(|| screen.write_line(log2)).unwrap();

    let lines = screen.lines();
    assert_eq!(lines.len(), 3, "{lines:#?}");
    assert_eq!(lines[0], log1);
    assert_eq!(lines[1], log2);
    assert!(
        lines[2].contains("2,000/8,000 rows") && lines[2].contains("paused"),
        "{lines:#?}"
    );
    drop(view);

    // Without the bar in place, a write goes straight through.
    let plain = Screen::default();
    write_around_bar(|| plain.write_line("after")).unwrap();
    assert_eq!(plain.lines(), vec!["after".to_string()]);
}

#[test]
fn bar_message_without_a_total() {
    let p = ProgressLine {
        rows_pending: None,
        rate: 0.0,
        ..progress(1234, "slowing")
    };
    assert_eq!(
        bar_message(&p),
        "1,234 rows · 0 rows/s · ETA ? · slowing · batch 2000 · sleep 100ms · 3 workers"
    );
}

#[test]
fn rate_meter_averages_over_its_window() {
    let t0 = chrono::Utc::now();
    let at = |s: i64| t0 + chrono::Duration::seconds(s);
    let mut m = RateMeter::new(Duration::from_secs(60));
    assert_eq!(m.rate(), 0.0);
    m.observe(at(0), 0);
    assert_eq!(m.rate(), 0.0);
    for s in 1..=120 {
        // 100 rows/s for the first minute, 400 rows/s for the second.
        let rows = if s <= 60 {
            s as u64 * 100
        } else {
            6000 + (s as u64 - 60) * 400
        };
        m.observe(at(s), rows);
    }
    let r = m.rate();
    assert!(
        (r - 400.0).abs() < 10.0,
        "rate over the last minute should be ~400, got {r}"
    );
}
