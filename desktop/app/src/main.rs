//! `commons`: the tray app.
#![cfg_attr(not(debug_assertions), windows_subsystem = "windows")]

fn main() -> std::process::ExitCode {
    use std::io::IsTerminal;
    // `commons --version`: what a packager or a support request asks first; no window, no display needed.
    if std::env::args()
        .nth(1)
        .is_some_and(|a| a == "--version" || a == "-V")
    {
        println!("commons {}", commons_desktop::VERSION);
        return std::process::ExitCode::SUCCESS;
    }
    // Logs go to stdout; in colour only on a terminal (a log file or the journal gets plain text).
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(std::io::stdout().is_terminal())
        .init();
    // An update's trial run: the new binary proves it starts, without a window (see commons_agent::update).
    if let Some(report) = std::env::var_os(commons_agent::update::TRIAL_ENV) {
        return match commons_desktop::trial(report.into()) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("commons: {e:#}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    match commons_desktop::run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("commons: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
