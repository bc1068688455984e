//! Small building blocks shared by the pages.

mod chart;
mod fetch;

pub use chart::{LineChart, LineChartProps};
pub use fetch::{Fetch, use_fetch};

use yew::prelude::*;

/// Props of [`Card`].
#[derive(Debug, Properties, PartialEq)]
pub struct CardProps {
    /// Element id (tests find cards by it).
    pub id: AttrValue,
    /// What is counted.
    pub label: AttrValue,
    /// The figure.
    pub value: AttrValue,
    /// A smaller line under it.
    #[prop_or_default]
    pub note: Option<AttrValue>,
}

/// A figure with its label.
#[function_component]
pub fn Card(p: &CardProps) -> Html {
    html! {
        <div class="card" id={p.id.clone()}>
            <div class="card-label">{ p.label.clone() }</div>
            <div class="card-value">{ p.value.clone() }</div>
            if let Some(n) = &p.note { <div class="card-note">{ n.clone() }</div> }
        </div>
    }
}

/// Props of [`Problem`].
#[derive(Debug, Properties, PartialEq)]
pub struct ProblemProps {
    /// What went wrong, in words.
    pub message: AttrValue,
    /// Retry.
    #[prop_or_default]
    pub retry: Option<Callback<()>>,
}

/// An error with what to do next.
#[function_component]
pub fn Problem(p: &ProblemProps) -> Html {
    let retry = p
        .retry
        .clone()
        .map(|r| Callback::from(move |_: MouseEvent| r.emit(())));
    html! {
        <div class="problem" role="alert">
            <p>{ p.message.clone() }</p>
            if let Some(r) = retry { <button onclick={r}>{ "Retry" }</button> }
        </div>
    }
}

/// "Loading…".
#[function_component]
pub fn Loading() -> Html {
    html! { <p class="loading">{ "Loading…" }</p> }
}

/// Props of [`Empty`].
#[derive(Debug, Properties, PartialEq)]
pub struct EmptyProps {
    /// What is missing and what to do about it.
    pub children: Html,
}

/// An empty state that says what to do.
#[function_component]
pub fn Empty(p: &EmptyProps) -> Html {
    html! { <div class="empty">{ p.children.clone() }</div> }
}
