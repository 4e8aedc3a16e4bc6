//! The result table: each orchd figure beside its reference, the ratio, and the
//! target of issue 8 item 3. Printed as Markdown, so that it pastes into the README.

use std::fmt;
use std::time::Duration;

use crate::harness::Result;

/// One measured value and how to show it.
#[derive(Clone, Copy)]
pub struct Figure {
    value: f64,
    unit: Unit,
}

#[derive(Clone, Copy)]
enum Unit {
    PerSecond,
    Seconds,
    KiB,
    Count,
}

impl Figure {
    pub fn rate(lines: usize, d: Duration) -> Figure {
        Figure {
            value: lines as f64 / d.as_secs_f64(),
            unit: Unit::PerSecond,
        }
    }

    pub fn time(d: Duration) -> Figure {
        Figure {
            value: d.as_secs_f64(),
            unit: Unit::Seconds,
        }
    }

    pub fn kib(kib: u64) -> Figure {
        Figure {
            value: kib as f64,
            unit: Unit::KiB,
        }
    }

    pub fn count(n: u64) -> Figure {
        Figure {
            value: n as f64,
            unit: Unit::Count,
        }
    }
}

impl fmt::Display for Figure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.value;
        match self.unit {
            Unit::PerSecond if v >= 1e6 => write!(f, "{:.2} M/s", v / 1e6),
            Unit::PerSecond => write!(f, "{:.0} k/s", v / 1e3),
            Unit::Seconds if v >= 1.0 => write!(f, "{v:.2} s"),
            Unit::Seconds if v >= 1e-3 => write!(f, "{:.2} ms", v * 1e3),
            Unit::Seconds => write!(f, "{:.0} µs", v * 1e6),
            Unit::KiB => write!(f, "{:.1} MiB", v / 1024.0),
            Unit::Count => write!(f, "{v:.0}"),
        }
    }
}

/// A reference that ran: its name and figure.
pub struct Reference {
    name: String,
    figure: Figure,
}

/// Which way is better, for the ratio's target.
#[derive(Clone, Copy)]
pub enum Better {
    /// Throughput: target is a minimum of orchd / reference.
    Higher,
    /// Times: target is a maximum of orchd / reference.
    Lower,
}

#[derive(Default)]
pub struct Table {
    rows: Vec<[String; 6]>,
    notes: Vec<String>,
}

impl Table {
    /// Records a reference; one that failed becomes a note and `None`.
    pub fn reference(&mut self, name: &str, figure: Result<Figure>) -> Option<Reference> {
        match figure {
            Ok(figure) => Some(Reference {
                name: name.to_string(),
                figure,
            }),
            Err(e) => {
                self.notes
                    .push(format!("reference {name}: not measured: {e}"));
                None
            }
        }
    }

    pub fn skip(&mut self, what: &str, why: &str) {
        self.notes.push(format!("{what}: skipped: {why}"));
    }

    /// A row comparing orchd with a reference; `target` is the ratio to reach.
    pub fn compare(
        &mut self,
        what: &str,
        ours: &Result<Figure>,
        reference: &Option<Reference>,
        better: Better,
        target: Option<f64>,
    ) {
        let (ours_s, ratio) = match ours {
            Ok(o) => (
                o.to_string(),
                reference.as_ref().map(|r| o.value / r.figure.value),
            ),
            Err(e) => (format!("failed: {e}"), None),
        };
        let reference_s = reference.as_ref().map_or("not measured".to_string(), |r| {
            format!("{}: {}", r.name, r.figure)
        });
        let (target_s, met) = match (target, better) {
            (None, _) => (String::new(), None),
            (Some(t), Better::Higher) => (format!("≥ {}", ratio_str(t)), ratio.map(|r| r >= t)),
            (Some(t), Better::Lower) => (format!("≤ {}", ratio_str(t)), ratio.map(|r| r <= t)),
        };
        self.rows.push([
            what.to_string(),
            ours_s,
            reference_s,
            ratio.map_or(String::new(), ratio_str),
            target_s,
            met_str(met),
        ]);
    }

    /// A row with an absolute target: `max` is the bound (met when below it, or when
    /// 0 for a bound of 0).
    pub fn limit(&mut self, what: &str, ours: &Result<Figure>, max: Option<f64>, target: &str) {
        let (ours_s, met) = match ours {
            Ok(o) => (
                o.to_string(),
                max.map(|m| {
                    if m == 0.0 {
                        o.value == 0.0
                    } else {
                        o.value < m
                    }
                }),
            ),
            Err(e) => (format!("failed: {e}"), None),
        };
        self.rows.push([
            what.to_string(),
            ours_s,
            String::new(),
            String::new(),
            target.to_string(),
            met_str(met),
        ]);
    }

    pub fn print(&self) {
        let header = ["measure", "orchd", "reference", "ratio", "target", "met"];
        // A `|` inside a cell (`cat | cat`) would end the cell in Markdown.
        let rows: Vec<[String; 6]> = self
            .rows
            .iter()
            .map(|r| r.clone().map(|c| c.replace('|', "\\|")))
            .collect();
        let mut widths = header.map(|h| h.chars().count());
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let line = |cells: &[String]| {
            let padded: Vec<String> = cells
                .iter()
                .zip(widths)
                .map(|(c, w)| format!("{c}{}", " ".repeat(w - c.chars().count())))
                .collect();
            println!("| {} |", padded.join(" | "));
        };
        line(&header.map(String::from));
        line(&widths.map(|w| "-".repeat(w)));
        for row in &rows {
            line(row);
        }
        for note in &self.notes {
            println!("\n{note}");
        }
    }
}

fn ratio_str(r: f64) -> String {
    if r >= 10.0 {
        format!("{r:.0}×")
    } else {
        format!("{r:.2}×")
    }
}

fn met_str(met: Option<bool>) -> String {
    match met {
        Some(true) => "yes".into(),
        Some(false) => "**no**".into(),
        None => String::new(),
    }
}
