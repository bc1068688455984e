//! `cargo xtask bench-report`: builds what the benchmarks need, runs their short versions, collects the figures each
//! appends to `COMMONS_FIGURES` ([`commons_shared::figures`]), and writes `bench/report.html` (every figure against
//! its goal, SVG charts drawn with plotters, the change since the last run) and a line of `bench/history.jsonl`.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;
use std::process::Command;

use anyhow::Context;
use commons_shared::figures::{FIGURES_ENV, Figure, Goal, parse_lines};
use plotters::prelude::*;

/// One benchmark run: its title, binary and arguments.
struct Bench {
    title: &'static str,
    bin: &'static str,
    args: &'static [&'static str],
    /// Added when no container engine is at `DOCKER_HOST`.
    without_engine: &'static [&'static str],
    /// What it needs built besides the release binaries.
    needs: Needs,
}

/// What a benchmark needs built before it runs (the report builds it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Needs {
    /// Nothing more.
    Nothing,
    /// The built portal (`cargo xtask portal`); Chromium and its driver are the machine's (`.ci/setup`).
    Portal,
    /// The agent builds 0.1.0 and 0.1.1 with the test key (`cargo xtask update-fixtures`).
    UpdateFixtures,
    /// The desktop app's window (`cargo xtask desktop-ui`), embedded in the release app, which the report builds;
    /// Xvfb and a session bus are the machine's.
    DesktopApp,
}

/// What runs, in order: short versions of the benchmarks the README gives figures for. The agent runs with one
/// container when an engine is at `DOCKER_HOST` (`.ci/engine.sh`), else without; the llm benchmarks need the llm
/// image or a GPU: the README shows them.
const BENCHES: &[Bench] = &[
    Bench {
        title: "coordinator, 1,000 workers",
        bin: "commons-loadgen",
        args: &[
            "--workers",
            "1000",
            "--connections",
            "64",
            "--duration",
            "5",
            "--no-ceiling",
        ],
        without_engine: &[],
        needs: Needs::Nothing,
    },
    Bench {
        title: "coordinator, 10,000 workers, against the bare-axum ceiling",
        bin: "commons-loadgen",
        args: &[
            "--workers",
            "10000",
            "--connections",
            "64",
            "--duration",
            "10",
        ],
        without_engine: &[],
        needs: Needs::Nothing,
    },
    Bench {
        title: "coordinator, 100,000 workers",
        bin: "commons-loadgen",
        args: &[
            "--workers",
            "100000",
            "--connections",
            "64",
            "--duration",
            "5",
            "--no-ceiling",
        ],
        without_engine: &[],
        needs: Needs::Nothing,
    },
    Bench {
        title: "edge and coordinator forwarding",
        bin: "commons-edgebench",
        args: &[],
        without_engine: &[],
        needs: Needs::Nothing,
    },
    Bench {
        title: "the reverse path against the direct one",
        bin: "commons-reversebench",
        args: &[],
        without_engine: &[],
        needs: Needs::Nothing,
    },
    Bench {
        title: "slow and greedy clients",
        bin: "commons-slowbench",
        args: &[],
        without_engine: &[],
        needs: Needs::Nothing,
    },
    Bench {
        title: "DHT lookups, churn and a simulated day",
        bin: "commons-dhtbench",
        // Ten seconds for the 100 nodes' records to be stored before the lookups: on a busy machine three were
        // most likely not enough (852 of 1,000 found in one report; 1,000 on a quiet machine with 3 or 20).
        args: &["--agents", "20", "--settle-secs", "10"],
        without_engine: &[],
        needs: Needs::Nothing,
    },
    Bench {
        title: "the agent: joining, idle, failover",
        bin: "commons-agentbench",
        args: &["--idle-secs", "10"],
        without_engine: &["--no-containers"],
        needs: Needs::Nothing,
    },
    Bench {
        title: "the portal: the topology of 1,000 workers in headless Chromium",
        bin: "commons-portalbench",
        args: &["--workers", "1000", "--runs", "3"],
        without_engine: &[],
        needs: Needs::Portal,
    },
    Bench {
        title: "the desktop app: cold start, RSS and CPU while donating",
        bin: "commons-desktopbench",
        args: &["--starts", "3", "--seconds", "10"],
        without_engine: &[],
        needs: Needs::DesktopApp,
    },
    Bench {
        title: "a signed self-update of the agent, step by step",
        bin: "commons-updatebench",
        args: &["3"],
        without_engine: &[],
        needs: Needs::UpdateFixtures,
    },
    Bench {
        title: "soak, short version",
        bin: "commons-soak",
        args: &[
            "--minutes",
            "2",
            "--workers",
            "2000",
            "--period-secs",
            "10",
            "--warmup-periods",
            "2",
        ],
        without_engine: &[],
        needs: Needs::Nothing,
    },
];

const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// Gives plotters the charts' font (it measures text with it), once per process.
fn register_font() -> anyhow::Result<()> {
    static DONE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    DONE.get_or_init(|| {
        let font = std::fs::read(FONT)
            .map_err(|e| format!("the charts' font {FONT}: {e} (apt install fonts-dejavu-core)"))?;
        // plotters keeps the font for the life of the process.
        plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            Box::leak(font.into_boxed_slice()),
        )
        .map_err(|_| format!("{FONT} is not a font plotters can read"))
    })
    .clone()
    .map_err(anyhow::Error::msg)
}

/// Runs the benchmarks (release builds) and writes the report.
pub fn report(root: &Path, target_dir: &Path) -> anyhow::Result<()> {
    register_font()?;
    let needs = |n: Needs| BENCHES.iter().any(|b| b.needs == n);
    if needs(Needs::Portal) {
        crate::wasm_page(&crate::PORTAL, false)?;
    }
    if needs(Needs::DesktopApp) {
        crate::wasm_page(&crate::DESKTOP_UI, false)?;
    }
    if needs(Needs::UpdateFixtures) {
        crate::update_fixtures()?;
    }
    crate::release_coordinator()?;
    let mut build = crate::cargo();
    build.args([
        "build",
        "--release",
        "-p",
        "commons-tests",
        // The agent benchmark runs the headless agent beside itself.
        "-p",
        "commons-agent",
        "--bin",
        "commons-agent",
        // The desktop benchmark runs the app as the .deb ships it.
        "-p",
        "commons",
        "--bin",
        "commons",
    ]);
    for b in BENCHES {
        build.args(["--bin", b.bin]);
    }
    crate::run(&mut build)?;
    let out = root.join("bench");
    std::fs::create_dir_all(&out)?;
    let figures_file = target_dir.join("bench-figures.jsonl");
    let _ = std::fs::remove_file(&figures_file);
    let mut ran = Vec::new();
    let engine = std::env::var_os("DOCKER_HOST").is_some();
    for b in BENCHES {
        let args: Vec<&str> = b
            .args
            .iter()
            .chain(if engine { &[][..] } else { b.without_engine })
            .copied()
            .collect();
        println!("bench-report: {} ({} {})", b.title, b.bin, args.join(" "));
        let ok = Command::new(target_dir.join("release").join(b.bin))
            .args(&args)
            .env(FIGURES_ENV, &figures_file)
            .env("RUST_LOG", "error")
            .status()
            .with_context(|| format!("cannot run {}", b.bin))?
            .success();
        ran.push((b.title, ok));
    }
    let text = std::fs::read_to_string(&figures_file).unwrap_or_default();
    let figures =
        merge(parse_lines(&text).map_err(|e| anyhow::anyhow!("{}: {e}", figures_file.display()))?);
    let history = out.join("history.jsonl");
    let previous = std::fs::read_to_string(&history)
        .ok()
        .and_then(|t| {
            t.lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .map(str::to_owned)
        })
        .and_then(|l| serde_json::from_str::<serde_json::Value>(&l).ok());
    let at = crate::output(Command::new("date").args(["-u", "+%Y-%m-%dT%H:%M:%SZ"]))?;
    let commit =
        crate::output(
            Command::new("git")
                .current_dir(root)
                .args(["rev-parse", "--short", "HEAD"]),
        )
        .unwrap_or_default();
    let html = render(&figures, &ran, previous.as_ref(), at.trim(), commit.trim())?;
    std::fs::write(out.join("report.html"), html)?;
    let entry = serde_json::json!({
        "at": at.trim(),
        "commit": commit.trim(),
        "figures": figures.iter().map(|f| serde_json::json!({
            "bench": f.bench, "name": f.name, "unit": f.unit, "value": f.value,
        })).collect::<Vec<_>>(),
    });
    let mut h = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&history)?;
    writeln!(h, "{entry}")?;
    println!(
        "bench-report: {} ({} figures)",
        out.join("report.html").display(),
        figures.len()
    );
    if ran.iter().any(|(_, ok)| !ok) {
        anyhow::bail!("a benchmark failed: see the report");
    }
    Ok(())
}

/// Figures of the same benchmark and name (from several runs, as the RSS at 1k, 10k and 100k workers) become one:
/// the points joined in x order, the last value kept.
fn merge(figures: Vec<Figure>) -> Vec<Figure> {
    let mut merged: Vec<Figure> = Vec::new();
    for f in figures {
        match merged
            .iter_mut()
            .find(|m| m.bench == f.bench && m.name == f.name)
        {
            Some(m) => {
                m.points.extend(f.points);
                m.points.sort_by(|a, b| a.0.total_cmp(&b.0));
                m.value = f.value;
                m.goal = f.goal.or(m.goal);
            }
            None => merged.push(f),
        }
    }
    merged
}

fn goal_text(g: Option<Goal>, unit: &str) -> String {
    match g {
        Some(Goal::AtMost(v)) => format!("≤ {} {unit}", number(v)),
        Some(Goal::AtLeast(v)) => format!("≥ {} {unit}", number(v)),
        None => String::new(),
    }
}

fn number(v: f64) -> String {
    if v.abs() >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn render(
    figures: &[Figure],
    ran: &[(&str, bool)],
    previous: Option<&serde_json::Value>,
    at: &str,
    commit: &str,
) -> anyhow::Result<String> {
    let before = |f: &Figure| -> Option<f64> {
        previous?["figures"]
            .as_array()?
            .iter()
            .find(|p| p["bench"] == f.bench.as_str() && p["name"] == f.name.as_str())?["value"]
            .as_f64()
    };
    let mut html = String::new();
    writeln!(
        html,
        "<!doctype html><html lang=\"en\"><meta charset=\"utf-8\"><title>Commons benchmarks</title>\
         <style>body{{font:14px system-ui,sans-serif;margin:2em auto;max-width:1000px;color:#202124}}\
         table{{border-collapse:collapse;margin:1em 0}}td,th{{border-bottom:1px solid #ddd;padding:4px 10px;text-align:left}}\
         td.n{{text-align:right;font-variant-numeric:tabular-nums}}.met{{color:#137333}}.missed{{color:#b3261e;font-weight:600}}\
         .charts{{display:flex;flex-wrap:wrap;gap:12px}}</style>\
         <h1>Commons benchmarks</h1><p>{at}, commit <code>{commit}</code>, on this machine ({cores} cores). Made by \
         <code>cargo xtask bench-report</code>; the previous run{prev}.</p><ul>",
        cores = std::thread::available_parallelism().map_or(0, |n| n.get()),
        prev = previous
            .and_then(|p| Some(format!(
                " was {} (commit <code>{}</code>)",
                p["at"].as_str()?,
                p["commit"].as_str()?
            )))
            .unwrap_or_else(|| ": none, so no changes are shown".into()),
    )?;
    for (title, ok) in ran {
        writeln!(
            html,
            "<li>{}{}</li>",
            escape(title),
            if *ok {
                ""
            } else {
                " — <b class=missed>failed</b>"
            }
        )?;
    }
    html.push_str("</ul>");
    let mut benches: Vec<&str> = figures.iter().map(|f| f.bench.as_str()).collect();
    benches.dedup();
    for bench in benches {
        let mine: Vec<&Figure> = figures.iter().filter(|f| f.bench == bench).collect();
        writeln!(
            html,
            "<h2>{}</h2><table><tr><th>figure</th><th>value</th><th>goal</th><th>since the last run</th></tr>",
            escape(bench)
        )?;
        for f in &mine {
            let (class, mark) = match f.goal {
                Some(g) if g.met(f.value) => ("met", " ✓"),
                Some(_) => ("missed", " ✗"),
                None => ("", ""),
            };
            let change = before(f)
                .filter(|b| *b != 0.0)
                .map(|b| format!("{:+.1} %", 100.0 * (f.value - b) / b.abs()))
                .unwrap_or_default();
            writeln!(
                html,
                "<tr><td>{}</td><td class=\"n {class}\">{} {}{mark}</td><td>{}</td><td class=n>{change}</td></tr>",
                escape(&f.name),
                number(f.value),
                escape(&f.unit),
                goal_text(f.goal, &f.unit),
            )?;
        }
        html.push_str("</table><div class=charts>");
        // Latency distributions of one benchmark share a chart; any other series gets its own.
        let distributions: Vec<(String, Vec<(f64, f64)>)> = mine
            .iter()
            .filter(|f| f.x == "percentile" && f.points.len() > 1)
            .map(|f| (f.name.clone(), f.points.clone()))
            .collect();
        if !distributions.is_empty() {
            html.push_str(&chart(
                &format!("{bench}: latency distributions"),
                "percentile",
                "ms",
                &distributions,
                None,
            )?);
        }
        for f in mine
            .iter()
            .filter(|f| f.x != "percentile" && f.points.len() > 1)
        {
            let goal = match f.goal {
                Some(Goal::AtMost(v) | Goal::AtLeast(v)) if f.unit != "%" => Some(v),
                _ => None,
            };
            html.push_str(&chart(
                &f.name,
                &f.x,
                &f.unit,
                &[(f.name.clone(), f.points.clone())],
                goal,
            )?);
        }
        html.push_str("</div>");
    }
    html.push_str("</html>\n");
    Ok(html)
}

/// A line chart as inline SVG: each series a line with its points marked, a goal as a dashed red line.
fn chart(
    title: &str,
    x: &str,
    unit: &str,
    series: &[(String, Vec<(f64, f64)>)],
    goal: Option<f64>,
) -> anyhow::Result<String> {
    let err = |e: String| anyhow::anyhow!("drawing {title:?}: {e}");
    let points = series.iter().flat_map(|(_, p)| p.iter());
    let (mut x0, mut x1, mut y1) = (f64::MAX, f64::MIN, goal.unwrap_or(0.0));
    for &(px, py) in points {
        x0 = x0.min(px);
        x1 = x1.max(px);
        y1 = y1.max(py);
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    let mut svg = String::new();
    {
        let area = SVGBackend::with_string(&mut svg, (480, 300)).into_drawing_area();
        area.fill(&WHITE).map_err(|e| err(e.to_string()))?;
        let mut c = ChartBuilder::on(&area)
            .caption(title, ("sans-serif", 14))
            .margin(8)
            .x_label_area_size(32)
            .y_label_area_size(48)
            .build_cartesian_2d(x0..x1, 0f64..y1 * 1.1 + f64::EPSILON)
            .map_err(|e| err(e.to_string()))?;
        c.configure_mesh()
            .x_desc(x)
            .y_desc(unit)
            .label_style(("sans-serif", 11))
            .draw()
            .map_err(|e| err(e.to_string()))?;
        let colours = [
            RGBColor(26, 115, 232),
            RGBColor(230, 124, 0),
            RGBColor(19, 115, 51),
            RGBColor(161, 66, 244),
        ];
        for (i, (name, pts)) in series.iter().enumerate() {
            let colour = colours[i % colours.len()];
            c.draw_series(LineSeries::new(pts.iter().copied(), colour.stroke_width(2)))
                .map_err(|e| err(e.to_string()))?
                .label(name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 16, y)], colour.stroke_width(2))
                });
            c.draw_series(pts.iter().map(|&p| Circle::new(p, 3, colour.filled())))
                .map_err(|e| err(e.to_string()))?;
        }
        if let Some(g) = goal {
            c.draw_series(DashedLineSeries::new(
                [(x0, g), (x1, g)],
                6,
                4,
                RED.stroke_width(1),
            ))
            .map_err(|e| err(e.to_string()))?
            .label("goal")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], RED));
        }
        c.configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK.mix(0.2))
            .label_font(("sans-serif", 11))
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .map_err(|e| err(e.to_string()))?;
        area.present().map_err(|e| err(e.to_string()))?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_of_one_figure_merge_into_one_curve_and_the_report_marks_goals() {
        register_font().unwrap();
        let rss = |n: f64, v: f64| {
            Figure::new("loadgen", "coordinator RSS against workers", "MiB", v)
                .points("workers", vec![(n, v)])
        };
        let figures = merge(vec![
            rss(10_000.0, 26.0),
            Figure::new("loadgen", "RSS per worker", "KiB", 1.2).goal(Goal::AtMost(2.0)),
            rss(1_000.0, 12.0),
            rss(100_000.0, 140.0),
            Figure::new("edge", "added p50", "ms", 1.4).goal(Goal::AtMost(1.0)),
        ]);
        assert_eq!(figures.len(), 3);
        assert_eq!(
            figures[0].points,
            vec![(1_000.0, 12.0), (10_000.0, 26.0), (100_000.0, 140.0)]
        );
        let previous = serde_json::json!({"at": "then", "commit": "abc", "figures": [
            {"bench": "loadgen", "name": "RSS per worker", "unit": "KiB", "value": 1.0}
        ]});
        let html = render(&figures, &[("all", true)], Some(&previous), "now", "def").unwrap();
        assert!(
            html.contains("1.20 KiB ✓") && html.contains("≤ 2 KiB") && html.contains("+20.0 %"),
            "{html}"
        );
        assert!(html.contains("class=\"n missed\">1.40 ms ✗"), "{html}");
        assert_eq!(html.matches("<svg").count(), 1, "one chart: the RSS curve");
    }
}
