//! Component markup, rendered natively with Yew's server renderer.

use commons_portal::components::{
    Card, CardProps, LineChart, LineChartProps, Problem, ProblemProps,
};
use commons_portal::pages::login::{Login, LoginProps};
use commons_portal::view::Series;
use yew::{Callback, LocalServerRenderer};

fn render<C: yew::BaseComponent>(props: C::Properties) -> String {
    futures::executor::block_on(LocalServerRenderer::<C>::with_props(props).render())
}

#[test]
fn a_card_shows_label_value_and_note() {
    let html = render::<Card>(CardProps {
        id: "card-total".into(),
        label: "Workers".into(),
        value: "12".into(),
        note: Some("3 GPUs".into()),
    });
    assert!(html.contains(r#"id="card-total""#), "{html}");
    assert!(
        html.contains(">Workers<") && html.contains(">12<") && html.contains(">3 GPUs<"),
        "{html}"
    );
}

#[test]
fn a_chart_without_points_says_so_and_with_points_draws_a_line_per_series() {
    let empty = render::<LineChart>(LineChartProps {
        title: "Workers online".into(),
        id: "c".into(),
        series: vec![Series {
            label: "tier 1".into(),
            colour: "#d93025",
            points: vec![(0.0, 1.0)],
        }],
        fraction: false,
    });
    assert!(empty.contains("No data yet"), "{empty}");
    assert!(!empty.contains(r#"class="series""#));
    let full = render::<LineChart>(LineChartProps {
        title: "Workers online".into(),
        id: "c".into(),
        series: vec![
            Series {
                label: "tier 1".into(),
                colour: "#d93025",
                points: vec![(0.0, 1.0), (60.0, 3.0)],
            },
            Series {
                label: "tier 2".into(),
                colour: "#1a73e8",
                points: vec![(0.0, 2.0), (60.0, 2.0)],
            },
        ],
        fraction: false,
    });
    assert_eq!(full.matches(r#"class="series""#).count(), 2, "{full}");
    assert!(full.contains(">tier 1<") && full.contains(">tier 2<"));
    assert!(!full.contains("No data yet"));
}

#[test]
fn a_problem_offers_retry_only_when_it_can() {
    let with = render::<Problem>(ProblemProps {
        message: "the coordinator did not answer".into(),
        retry: Some(Callback::noop()),
    });
    assert!(
        with.contains(r#"role="alert""#) && with.contains(">Retry<"),
        "{with}"
    );
    let without = render::<Problem>(ProblemProps {
        message: "gone".into(),
        retry: None,
    });
    assert!(!without.contains("Retry"));
}

#[test]
fn the_login_form_has_a_password_field_and_shows_why_the_user_is_there() {
    let html = render::<Login>(LoginProps {
        on_login: Callback::noop(),
        notice: Some("Your session ended. Log in again.".into()),
    });
    assert!(html.contains(r#"type="password""#), "{html}");
    assert!(html.contains(r#"id="login""#));
    assert!(html.contains("Your session ended. Log in again."));
    assert!(
        !html.contains(r#"id="login-error""#),
        "no error before a try"
    );
}
