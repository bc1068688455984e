//! Volunteers: the leaderboard of credit, from the coordinator's own records of the requests each worker completed
//! and the hours it donated, with the name each volunteer chose (anonymous unless they chose one).

use commons_shared::usage::{CREDIT_PER_HOUR, Leaderboard, thousands};
use yew::prelude::*;

use crate::components::{Empty, Fetch, Loading, Problem, use_fetch};
use crate::view::volunteer_name;

/// The leaderboard.
#[function_component]
pub fn Volunteers() -> Html {
    let (board, reload) = use_fetch::<Leaderboard>("/api/volunteers".into());
    let board = match &*board {
        Fetch::Loading => return html! { <Loading /> },
        Fetch::Failed(e) => return html! { <Problem message={e.to_string()} retry={reload} /> },
        Fetch::Ready(b) => b,
    };
    html! {
        <>
            <h1>{ "Volunteers" }</h1>
            <p>{ format!("Credit: one point per request a volunteer's computer completed, one per second of its compute (a GPU's second counts four, a service worker's two), and {CREDIT_PER_HOUR} per hour it was online and donating. Failed requests earn nothing. Volunteers choose a display name in the app's settings; without one they stay anonymous.") }</p>
            if board.volunteers.is_empty() {
                <Empty>{ "No credit yet: it appears once volunteers' computers serve requests or donate for a while." }</Empty>
            } else {
                <table id="volunteers">
                    <thead><tr><th>{ "#" }</th><th>{ "Volunteer" }</th><th>{ "Requests" }</th><th>{ "Compute-seconds" }</th><th>{ "Hours donated" }</th><th>{ "Credit" }</th></tr></thead>
                    <tbody>{ for board.volunteers.iter().map(|v| html! {
                        <tr id={format!("volunteer-{}", v.worker_id)}>
                            <td>{ v.rank }</td>
                            <td class="name">{ volunteer_name(v) }</td>
                            <td class="requests">{ thousands(v.credit.requests) }</td>
                            <td>{ format!("{:.1}", v.credit.compute_secs) }</td>
                            <td>{ format!("{:.1}", v.credit.hours) }</td>
                            <td class="points">{ thousands(v.points.round() as u64) }</td>
                        </tr>
                    }) }</tbody>
                </table>
            }
        </>
    }
}
