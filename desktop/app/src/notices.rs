//! Which changes deserve a desktop notification, in words: started donating, held back by the computer (on
//! battery, too hot, in use, outside the schedule), an error, a problem to fix. Pausing by hand says nothing: the
//! volunteer knows.

use crate::donor::Status;

/// What the app knew at the last change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Seen {
    /// The state's word.
    pub state: String,
    /// Why donating was held back.
    pub held: Option<String>,
    /// The problem shown.
    pub problem: Option<String>,
}

impl Seen {
    /// What a status says.
    pub fn of(s: &Status) -> Self {
        Self {
            state: s.state.clone(),
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
    if now.state == before.state && now.held == before.held {
        return None;
    }
    match now.state.as_str() {
        "active" if before.state != "paused" => Some((
            "Commons is donating".into(),
            format!("{}. Thank you!", now.summary),
        )),
        "active" => Some(("Commons is donating again".into(), now.summary.clone())),
        "paused" => now
            .held
            .as_ref()
            .filter(|h| before.held.as_ref() != Some(h))
            .map(|why| {
                (
                    "Commons paused".into(),
                    format!("Paused: {why}. Donating goes on by itself when that changes."),
                )
            }),
        "error" => Some((
            "Commons stopped".into(),
            format!(
                "{}. Open Commons to fix it and press Retry.",
                now.reason.as_deref().unwrap_or("Something went wrong")
            ),
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(state: &str, held: Option<&str>) -> Status {
        Status {
            state: state.into(),
            reason: None,
            worker_id: None,
            coordinator_url: None,
            summary: "Donating: 8 cores".into(),
            paused_until: None,
            tier: None,
            containers: Vec::new(),
            endpoint: None,
            dht_peers: None,
            held: held.map(str::to_owned),
            problem: None,
            uptime_secs: None,
            donated_secs: 0,
            update: Default::default(),
        }
    }

    #[test]
    fn the_important_changes_are_told_and_the_rest_is_not() {
        let joining = Seen::of(&status("registering", None));
        let active = status("active", None);
        let (title, body) = notice(&joining, &active).unwrap();
        assert_eq!(title, "Commons is donating");
        assert!(body.starts_with("Donating: 8 cores"), "{body}");
        // Nothing new: nothing said.
        assert_eq!(notice(&Seen::of(&active), &active), None);
        // Paused by hand: the volunteer knows.
        let paused = status("paused", None);
        assert_eq!(notice(&Seen::of(&active), &paused), None);
        // Held back by the computer: said, with why.
        let battery = status("paused", Some("on battery power"));
        let (title, body) = notice(&Seen::of(&active), &battery).unwrap();
        assert_eq!(title, "Commons paused");
        assert!(body.contains("on battery power"), "{body}");
        let (title, _) = notice(&Seen::of(&battery), &active).unwrap();
        assert_eq!(title, "Commons is donating again");
        // An error, and a problem to fix.
        let mut err = status("error", None);
        err.reason = Some("registration refused: bad token".into());
        let (_, body) = notice(&Seen::of(&active), &err).unwrap();
        assert!(
            body.contains("bad token") && body.contains("Retry"),
            "{body}"
        );
        let mut docker = status("active", None);
        docker.problem = Some("Docker is not running — start Docker Desktop".into());
        let (title, _) = notice(&Seen::of(&active), &docker).unwrap();
        assert_eq!(title, "Commons needs you");
        assert_eq!(notice(&Seen::of(&docker), &docker), None);
    }
}
