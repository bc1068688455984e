//! `cargo xtask link-order`: records which functions a release coordinator runs (under valgrind's callgrind, driven
//! by the load generator and a short soak) and writes their names to `coordinator/link-order.txt`, which
//! `coordinator/build.rs` hands to the linker. The functions that run are then laid out together, so that the code a
//! serving coordinator touches is a few megabytes of its binary, not pages scattered over all of it (each touched
//! page maps its neighbours too).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::{cargo, output, run};

/// Records the profile and writes the file.
pub fn link_order(root: &Path, target_dir: &Path) -> anyhow::Result<()> {
    if Command::new("valgrind").arg("--version").output().is_err() {
        bail!("valgrind is not installed: `apt-get install valgrind`, then run this again");
    }
    crate::release_coordinator()?;
    run(cargo().args([
        "build",
        "--release",
        "-p",
        "commons-tests",
        "--bin",
        "commons-loadgen",
        "--bin",
        "commons-soak",
    ]))?;
    let release = target_dir.join("release");
    let coordinator = release.join("commons-coordinator");
    let work = &target_dir.join("link-order");
    // A profile left by an earlier run would be read with this one's.
    let _ = std::fs::remove_dir_all(work);
    std::fs::create_dir_all(work)?;
    // Not exec: the benchmarks kill the process they started, and callgrind writes its profile only when the
    // coordinator exits; the wrapper dies and the coordinator is stopped below with SIGTERM.
    let wrapper = work.join("coordinator");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nvalgrind --tool=callgrind --callgrind-out-file={}/cg.%p --demangle=no --compress-strings=no \
             --log-file={}/valgrind.%p {} \"$@\"\n",
            work.display(),
            work.display(),
            coordinator.display()
        ),
    )?;
    let mut perms = std::fs::metadata(&wrapper)?.permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&wrapper, perms)?;

    // Registrations and heartbeats; then churn, service requests, the flusher and the ledger.
    let runs: [(&str, &[&str]); 2] = [
        (
            "commons-loadgen",
            &[
                "--workers",
                "2000",
                "--connections",
                "8",
                "--duration",
                "5",
                "--no-ceiling",
            ],
        ),
        (
            "commons-soak",
            &[
                "--minutes",
                "2",
                "--workers",
                "500",
                "--period-secs",
                "30",
                "--warmup-periods",
                "1",
                "--requests-per-sec",
                "5",
            ],
        ),
    ];
    for (bin, args) in runs {
        println!("link-order: {bin} against the coordinator under callgrind");
        // Under valgrind the coordinator is tens of times slower: a benchmark that reports errors or slow answers
        // still recorded what ran.
        let status = Command::new(release.join(bin))
            .args(args)
            .arg("--coordinator-bin")
            .arg(&wrapper)
            .status()
            .with_context(|| format!("cannot run {bin}"))?;
        if !status.success() {
            println!(
                "link-order: {bin} ended with {status} under valgrind; its profile is used all the same"
            );
        }
        stop_coordinators(work)?;
    }

    let mut ran = BTreeSet::new();
    for entry in std::fs::read_dir(work)? {
        let path = entry?.path();
        if path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("cg."))
        {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            for line in text.lines() {
                if let Some(name) = line
                    .strip_prefix("fn=")
                    .or_else(|| line.strip_prefix("cfn="))
                {
                    ran.insert(name.to_owned());
                }
            }
        }
    }
    // Only the binary's own functions (not libc's, not valgrind's).
    let symbols = output(Command::new("nm").arg(&coordinator))?;
    let ours: BTreeSet<&str> = symbols
        .lines()
        .filter_map(|l| {
            let mut p = l.split_whitespace();
            let (_, kind, name) = (p.next()?, p.next()?, p.next()?);
            matches!(kind, "t" | "T" | "w" | "W").then_some(name)
        })
        .collect();
    let order: Vec<&str> = ran
        .iter()
        .map(String::as_str)
        .filter(|n| ours.contains(n))
        .collect();
    if order.len() < 500 {
        bail!(
            "only {} of the coordinator's functions were seen running: the profile did not record",
            order.len()
        );
    }
    let file = link_order_file(root);
    std::fs::write(&file, order.join("\n") + "\n")?;
    println!(
        "link-order: {} functions written to {}; build the coordinator again to lay them out",
        order.len(),
        file.display()
    );
    Ok(())
}

fn link_order_file(root: &Path) -> PathBuf {
    root.join("coordinator").join("link-order.txt")
}

/// SIGTERM to the coordinators still running under valgrind (their wrapper was killed), and waits until each wrote
/// its profile.
fn stop_coordinators(work: &Path) -> anyhow::Result<()> {
    let pids: Vec<String> = std::fs::read_dir(work)?
        .filter_map(|e| {
            let name = e.ok()?.file_name().to_string_lossy().into_owned();
            name.strip_prefix("valgrind.").map(str::to_owned)
        })
        .filter(|pid| Path::new("/proc").join(pid).exists())
        .collect();
    for pid in &pids {
        // A coordinator that already exited is no error.
        let _ = Command::new("kill").args(["-TERM", pid]).status();
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while pids.iter().any(|p| Path::new("/proc").join(p).exists()) {
        if Instant::now() > deadline {
            bail!("a coordinator under valgrind did not stop within 2 minutes of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}
