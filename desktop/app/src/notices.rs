//! Which changes deserve a desktop notification, in words: started donating, held back by the computer (on
//! battery, too hot, in use, outside the schedule), an error, a problem to fix. Pausing by hand says nothing: the
//! volunteer knows.

use crate::donor::{DonorState, Status};

/// What the app knew at the last change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Seen {
    /// The state (none before the first status).
    pub state: Option<DonorState>,
    /// Why donating was held back.
    pub held: Option<String>,
    /// The problem shown.
    pub problem: Option<String>,
}

impl Seen {
    /// What a status says.
    pub fn of(s: &Status) -> Self {
        Self {
            state: Some(s.state),
            held: s.held.clone(),
            problem: s.problem.clone(),
        }
    }
}

/// The notification (title, body) for going from `before` to `now`, if it deserves one.
pub fn notice(before: &Seen, now: &Status) -> Option<(String, String)> {
    if now.problem.is_some() && now.problem != before.problem {
        return Some(("Commons needs you".into(), now.problem.clone()?));
    }
    if Some(now.state) == before.state && now.held == before.held {
        return None;
    }
    match now.state {
        DonorState::Active if before.state != Some(DonorState::Paused) => Some((
            "Commons is donating".into(),
            format!("{}. Thank you!", now.summary),
        )),
        DonorState::Active => Some(("Commons is donating again".into(), now.summary.clone())),
        DonorState::Paused => now
            .held
            .as_ref()
            .filter(|h| before.held.as_ref() != Some(h))
            .map(|why| {
                (
                    "Commons paused".into(),
                    format!("Paused: {why}. Donating goes on by itself when that changes."),
                )
            }),
        DonorState::Error => Some((
            "Commons stopped".into(),
            format!(
                "{}. Open Commons to fix it and press Retry.",
                now.reason.as_deref().unwrap_or("Something went wrong")
            ),
        )),
        DonorState::Stopped | DonorState::Registering | DonorState::Pulling => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(state: DonorState, held: Option<&str>) -> Status {
        Status {
            state,
            reason: None,
            worker_id: None,
            coordinator_url: None,
            summary: "Donating: 8 cores".into(),
            paused_until: None,
            tier: None,
            containers: Vec::new(),
            endpoint: None,
            reached: None,
            dht_peers: None,
            held: held.map(str::to_owned),
            problem: None,
            uptime_secs: None,
            donated_secs: 0,
            update: Default::default(),
            catalogue: None,
            contribution: None,
        }
    }

    #[test]
    fn the_important_changes_are_told_and_the_rest_is_not() {
        let joining = Seen::of(&status(DonorState::Registering, None));
        let active = status(DonorState::Active, None);
        let (title, body) = notice(&joining, &active).unwrap();
        assert_eq!(title, "Commons is donating");
        assert!(body.starts_with("Donating: 8 cores"), "{body}");
        // Nothing new: nothing said.
        assert_eq!(notice(&Seen::of(&active), &active), None);
        // Paused by hand: the volunteer knows.
        let paused = status(DonorState::Paused, None);
        assert_eq!(notice(&Seen::of(&active), &paused), None);
        // Held back by the computer: said, with why.
        let battery = status(DonorState::Paused, Some("on battery power"));
        let (title, body) = notice(&Seen::of(&active), &battery).unwrap();
        assert_eq!(title, "Commons paused");
        assert!(body.contains("on battery power"), "{body}");
        let (title, _) = notice(&Seen::of(&battery), &active).unwrap();
        assert_eq!(title, "Commons is donating again");
        // An error, and a problem to fix.
        let mut err = status(DonorState::Error, None);
        err.reason = Some("registration refused: bad token".into());
        let (_, body) = notice(&Seen::of(&active), &err).unwrap();
        assert!(
            body.contains("bad token") && body.contains("Retry"),
            "{body}"
        );
        let mut docker = status(DonorState::Active, None);
        docker.problem = Some("Docker is not running — start Docker Desktop".into());
        let (title, _) = notice(&Seen::of(&active), &docker).unwrap();
        assert_eq!(title, "Commons needs you");
        assert_eq!(notice(&Seen::of(&docker), &docker), None);
    }
}
