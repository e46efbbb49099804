//! The one table the bench prints.

/// One figure.
pub struct Row {
    /// What is measured.
    pub figure: String,
    /// Kiln's value, formatted.
    pub kiln: String,
    /// The baseline's value, formatted.
    pub baseline: String,
    /// What the baseline is.
    pub basis: String,
    /// Kiln / baseline.
    pub ratio: Option<f64>,
    /// The target, in words.
    pub target: String,
    /// Whether the target is met; `None` when there is none.
    pub met: Option<bool>,
}

/// Rows in the order measured.
#[derive(Default)]
pub struct Table {
    rows: Vec<Row>,
}

impl Table {
    /// Adds a row.
    pub fn push(&mut self, row: Row) {
        eprintln!(
            "  {}: {} (baseline {}: {})",
            row.figure, row.kiln, row.basis, row.baseline
        );
        self.rows.push(row);
    }

    /// Markdown.
    pub fn render(&self) -> String {
        let header = [
            "figure",
            "Kiln",
            "baseline",
            "baseline is",
            "ratio",
            "target",
            "met",
        ];
        let cells: Vec<[String; 7]> = self
            .rows
            .iter()
            .map(|r| {
                [
                    r.figure.clone(),
                    r.kiln.clone(),
                    r.baseline.clone(),
                    r.basis.clone(),
                    r.ratio
                        .map(|x| {
                            if x >= 100.0 {
                                format!("{x:.0}x")
                            } else {
                                format!("{x:.2}x")
                            }
                        })
                        .unwrap_or_else(|| "-".into()),
                    r.target.clone(),
                    match r.met {
                        Some(true) => "yes".into(),
                        Some(false) => "NO".into(),
                        None => "-".into(),
                    },
                ]
            })
            .collect();
        let mut widths = header.map(str::len);
        for row in &cells {
            for (w, c) in widths.iter_mut().zip(row) {
                *w = (*w).max(c.chars().count());
            }
        }
        let line = |cols: Vec<&str>| {
            let padded: Vec<String> = cols
                .iter()
                .zip(widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            format!("| {} |\n", padded.join(" | "))
        };
        let mut out = line(header.to_vec());
        out.push_str(&line(
            widths
                .iter()
                .map(|w| "-".repeat(*w))
                .collect::<Vec<_>>()
                .iter()
                .map(String::as_str)
                .collect(),
        ));
        for row in &cells {
            out.push_str(&line(row.iter().map(String::as_str).collect()));
        }
        out
    }
}

/// `1234.5` as `1,235`.
pub fn thousands(v: f64) -> String {
    let n = v.round() as i64;
    let s = n.abs().to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

/// Milliseconds with one decimal.
pub fn ms(d: std::time::Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}
