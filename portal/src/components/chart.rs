//! A line chart in SVG.

use yew::prelude::*;

use crate::view::{Series, chart_path};

const W: f64 = 560.0;
const H: f64 = 160.0;

/// Props of [`LineChart`].
#[derive(Debug, Properties, PartialEq)]
pub struct LineChartProps {
    /// Title.
    pub title: AttrValue,
    /// Element id.
    pub id: AttrValue,
    /// Lines.
    pub series: Vec<Series>,
    /// Whether y is a fraction (load): the axis then ends at 1.
    #[prop_or_default]
    pub fraction: bool,
}

/// Lines over time with a legend; "no data yet" without points.
#[function_component]
pub fn LineChart(p: &LineChartProps) -> Html {
    let all = p.series.iter().flat_map(|s| s.points.iter());
    let (mut x0, mut x1, mut y1) = (f64::MAX, f64::MIN, 0.0f64);
    let mut n = 0;
    for (x, y) in all {
        x0 = x0.min(*x);
        x1 = x1.max(*x);
        y1 = y1.max(*y);
        n += 1;
    }
    let y_max = if p.fraction {
        1.0
    } else {
        (y1 * 1.1).max(1.0).ceil()
    };
    let body = if n < 2 {
        html! { <text x="50%" y="50%" text-anchor="middle" class="chart-empty">{ "No data yet: points appear once a minute" }</text> }
    } else {
        p.series
            .iter()
            .map(|s| {
                let d = chart_path(&s.points, x0, x1, y_max, W, H);
                html! { <path d={d} stroke={s.colour} fill="none" stroke-width="2" class="series" /> }
            })
            .collect::<Html>()
    };
    let top = if p.fraction {
        "100%".to_owned()
    } else {
        format!("{y_max}")
    };
    html! {
        <figure class="chart" id={p.id.clone()}>
            <figcaption>{ p.title.clone() }</figcaption>
            <svg viewBox={format!("-40 -10 {} {}", W + 50.0, H + 30.0)} preserveAspectRatio="none">
                <line x1="0" y1={H.to_string()} x2={W.to_string()} y2={H.to_string()} class="axis" />
                <line x1="0" y1="0" x2="0" y2={H.to_string()} class="axis" />
                <text x="-6" y="4" text-anchor="end" class="tick">{ top }</text>
                <text x="-6" y={H.to_string()} text-anchor="end" class="tick">{ "0" }</text>
                { body }
            </svg>
            <div class="legend">
                { for p.series.iter().map(|s| html! {
                    <span><i style={format!("background:{}", s.colour)}></i>{ s.label.clone() }</span>
                }) }
            </div>
        </figure>
    }
}
