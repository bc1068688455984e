//! Recording a benchmark's figures for `cargo xtask bench-report` ([`commons_shared::figures`]).

pub use commons_shared::figures::{Figure, Goal};

/// Appends `figures` as JSON lines to the file `COMMONS_FIGURES` names; nothing when it is unset. A file that
/// cannot be written is said on stderr (the printed figures stand).
pub fn record(figures: &[Figure]) {
    use std::io::Write;
    let Some(path) = std::env::var_os(commons_shared::figures::FIGURES_ENV) else {
        return;
    };
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| {
            let mut text = String::new();
            for fig in figures {
                text.push_str(&serde_json::to_string(fig).map_err(std::io::Error::other)?);
                text.push('\n');
            }
            f.write_all(text.as_bytes())
        });
    if let Err(e) = written {
        eprintln!(
            "cannot append the figures to {}: {e}",
            path.to_string_lossy()
        );
    }
}

/// The percentiles a latency distribution is drawn with.
pub const PERCENTILES: [f64; 9] = [10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.9, 100.0];

/// A distribution's points (percentile, value) from sorted values, through `at` (sorted, fraction → value).
pub fn distribution(at: impl Fn(f64) -> f64) -> Vec<(f64, f64)> {
    PERCENTILES.iter().map(|&p| (p, at(p / 100.0))).collect()
}
