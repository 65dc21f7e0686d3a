//! Progress reporting: `indicatif` bars on a terminal, nothing otherwise (the
//! JSON summary at the end is the machine-readable record).

use crate::Output;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Bars for one long-running command: an overall bar plus one per table in flight.
pub struct Progress {
    multi: Option<MultiProgress>,
    total: ProgressBar,
}

impl Progress {
    /// `total_bytes` is an estimate (on-disk size), used for the ETA.
    pub fn new(output: Output, label: &str, total_bytes: u64) -> Progress {
        if output != Output::Terminal {
            return Progress {
                multi: None,
                total: ProgressBar::hidden(),
            };
        }
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let total = multi.add(ProgressBar::new(total_bytes.max(1)));
        total.set_style(
            ProgressStyle::with_template(
                "{prefix:>12.bold} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} {msg}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        total.set_prefix(label.to_string());
        Progress {
            multi: Some(multi),
            total,
        }
    }

    /// A bar for one table; `est_bytes` and `est_rows` are the planner's estimates.
    pub fn table(&self, name: &str, est_bytes: u64, est_rows: u64) -> TableBar {
        let bar = match &self.multi {
            Some(m) => {
                let b = m.add(ProgressBar::new(est_bytes.max(1)));
                b.set_style(
                    ProgressStyle::with_template(
                        "{prefix:>30} [{bar:20}] {bytes}/~{total_bytes} {msg}",
                    )
                    .expect("valid template")
                    .progress_chars("=> "),
                );
                b.set_prefix(truncate(name, 30));
                b.set_message(format!("~{est_rows} rows"));
                b
            }
            None => ProgressBar::hidden(),
        };
        TableBar {
            bar,
            total: self.total.clone(),
        }
    }

    /// Prints a line above the bars (or to stderr when there are none and the
    /// output is for a terminal).
    pub fn println(&self, msg: &str) {
        if let Some(m) = &self.multi {
            let _ = m.println(msg);
        }
    }

    /// Removes the bars.
    pub fn finish(&self) {
        self.total.finish_and_clear();
        if let Some(m) = &self.multi {
            let _ = m.clear();
        }
    }
}

/// One table's bar; bytes also advance the overall bar.
pub struct TableBar {
    bar: ProgressBar,
    total: ProgressBar,
}

impl TableBar {
    pub fn inc(&self, bytes: u64) {
        self.bar.inc(bytes);
        self.total.inc(bytes);
    }

    pub fn done(&self, rows: u64) {
        self.bar.set_message(format!("{rows} rows"));
        self.bar.finish_and_clear();
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let tail: String = s
            .chars()
            .rev()
            .take(n - 1)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        format!("…{tail}")
    }
}
