//! The soak's short version: `commons-soak` for 2 minutes against the coordinator binary (2,000 workers heartbeating
//! every 5 s, 1 % of them replaced every 10 s, 20 service requests a second). Any error fails it; its per-period
//! figures (p99 latencies, RSS) are printed, not asserted: `commons-soak --minutes 60` in release measures them.

#[test]
fn two_minutes_of_churn_heartbeats_and_requests_without_an_error() {
    let coordinator = commons_tests::target_dir().join("debug/commons-coordinator");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_commons-soak"))
        .args([
            "--minutes",
            "2",
            "--workers",
            "2000",
            "--heartbeat-secs",
            "5",
            "--period-secs",
            "10",
            "--churn-percent",
            "1",
            "--requests-per-sec",
            "20",
        ])
        .arg("--coordinator-bin")
        .arg(&coordinator)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("total: ") && stdout.contains(" 0 errors"),
        "{stdout}"
    );
}
