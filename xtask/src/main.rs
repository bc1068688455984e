//! Project automation.
//!
//! - `cargo xtask portal [--dev]`: builds the admin portal (wasm32 + wasm-bindgen, wasm-opt where a working one is
//!   installed) into `portal/dist`, with a gzip copy of each file for the coordinator to serve precompressed.
//! - `cargo xtask desktop-ui [--dev]`: builds the desktop app's window (Yew) into `desktop/app/ui`, next to its
//!   committed `index.html` and `style.css`; the app embeds that folder when it is compiled.
//! - `cargo xtask serve [-- <coordinator flags>]`: builds the portal, then runs the coordinator (release) on its
//!   embedded defaults serving it.
//!
//! Each sets up what the build needs first: the `wasm32-unknown-unknown` target (rustup) and a `wasm-bindgen` CLI of
//! exactly the version of the `wasm-bindgen` crate in Cargo.lock (`cargo install`, once per machine, without
//! `--locked`: its own lock file pins a crate version the registry here lacks; the version itself is pinned).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("portal") => wasm_page(&PORTAL, args.iter().any(|a| a == "--dev")),
        Some("desktop-ui") => wasm_page(&DESKTOP_UI, args.iter().any(|a| a == "--dev")),
        Some("serve") => wasm_page(&PORTAL, false).and_then(|()| serve(&args[1..])),
        _ => {
            eprintln!(
                "usage: cargo xtask portal [--dev] | cargo xtask desktop-ui [--dev] | cargo xtask serve [-- <coordinator flags>]"
            );
            return std::process::ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits in the workspace")
        .to_owned()
}

/// The version of a package in Cargo.lock.
fn locked_version(root: &Path, name: &str) -> anyhow::Result<String> {
    let lock = std::fs::read_to_string(root.join("Cargo.lock")).context("reading Cargo.lock")?;
    let mut lines = lock.lines();
    while let Some(l) = lines.next() {
        if l == format!("name = \"{name}\"")
            && let Some(v) = lines.next().and_then(|v| v.strip_prefix("version = \""))
        {
            return Ok(v.trim_end_matches('"').to_owned());
        }
    }
    bail!("{name} is not in Cargo.lock")
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {:?}", cmd.get_program()))?;
    if !status.success() {
        bail!("{:?} failed ({status})", cmd.get_program());
    }
    Ok(())
}

/// The wasm32 target and the matching wasm-bindgen CLI, installed when missing.
fn ensure_tools(root: &Path) -> anyhow::Result<()> {
    let targets = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output();
    if let Ok(out) = targets
        && out.status.success()
        && !String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l == "wasm32-unknown-unknown")
    {
        println!("xtask: adding the wasm32-unknown-unknown target");
        run(Command::new("rustup").args(["target", "add", "wasm32-unknown-unknown"]))?;
    }
    let wanted = locked_version(root, "wasm-bindgen")?;
    let have = Command::new("wasm-bindgen")
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    if have
        .as_deref()
        .is_some_and(|v| v.ends_with(&format!(" {wanted}")))
    {
        return Ok(());
    }
    println!(
        "xtask: installing wasm-bindgen-cli {wanted} (found {}; a few minutes, once per machine)",
        have.as_deref().unwrap_or("none")
    );
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(Command::new(cargo).args([
        "install",
        "wasm-bindgen-cli",
        "--version",
        &wanted,
        "--quiet",
    ]))
    .context("installing wasm-bindgen-cli")
}

/// Runs the coordinator (release) serving the built portal; extra flags go to it.
fn serve(extra: &[String]) -> anyhow::Result<()> {
    let root = root();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let extra: Vec<&str> = extra
        .iter()
        .map(String::as_str)
        .filter(|a| *a != "--")
        .collect();
    run(Command::new(cargo)
        .current_dir(&root)
        .args([
            "run",
            "--release",
            "--package",
            "commons-coordinator",
            "--",
            "--portal-dir",
        ])
        .arg(root.join("portal").join("dist"))
        .args(extra))
}

/// A Yew page built to WebAssembly.
struct Page {
    /// Its package.
    package: &'static str,
    /// The library's name (the .wasm and the generated .js are named after it).
    lib: &'static str,
    /// Where the page goes, from the workspace root.
    dist: &'static str,
    /// The hand-written files copied next to it (from the workspace root), when they live elsewhere: then `dist`
    /// is cleared first and holds only build output. Without, `dist` holds them and only the output is replaced.
    statics: Option<&'static str>,
    /// Write a gzip copy of each file (for a server to send precompressed).
    gzip: bool,
}

const PORTAL: Page = Page {
    package: "commons-portal",
    lib: "commons_portal",
    dist: "portal/dist",
    statics: Some("portal/static"),
    gzip: true,
};

const DESKTOP_UI: Page = Page {
    package: "commons-desktop-ui",
    lib: "commons_desktop_ui",
    dist: "desktop/app/ui",
    statics: None,
    gzip: false,
};

fn wasm_page(page: &Page, dev: bool) -> anyhow::Result<()> {
    let root = root();
    ensure_tools(&root)?;
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let profile = if dev { "dev" } else { "wasm" };
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(Command::new(cargo).current_dir(&root).args([
        "build",
        "--package",
        page.package,
        "--lib",
        "--target",
        "wasm32-unknown-unknown",
        "--profile",
        profile,
    ]))?;
    let out_profile = if dev { "debug" } else { profile };
    let wasm = target_dir
        .join("wasm32-unknown-unknown")
        .join(out_profile)
        .join(format!("{}.wasm", page.lib));
    let dist = root.join(page.dist);
    if page.statics.is_some() && dist.exists() {
        std::fs::remove_dir_all(&dist).with_context(|| format!("clearing {}", page.dist))?;
    }
    std::fs::create_dir_all(&dist)?;
    run(Command::new("wasm-bindgen")
        .args(["--target", "web", "--no-typescript", "--out-name", page.lib])
        .arg("--out-dir")
        .arg(&dist)
        .arg(&wasm))?;
    let bg = dist.join(format!("{}_bg.wasm", page.lib));
    if !dev {
        optimise(&bg);
    }
    if let Some(statics) = page.statics {
        for f in ["index.html", "style.css"] {
            std::fs::copy(root.join(statics).join(f), dist.join(f))
                .with_context(|| format!("copying {statics}/{f}"))?;
        }
    }
    let mut total_gz = 0;
    for entry in std::fs::read_dir(&dist)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "gz") {
            continue;
        }
        let data = std::fs::read(&path)?;
        if !page.gzip {
            println!(
                "{:<28} {:>9} bytes",
                path.file_name().unwrap_or_default().to_string_lossy(),
                data.len()
            );
            continue;
        }
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&data)?;
        let gz = gz.finish()?;
        total_gz += gz.len();
        let mut name = path.clone().into_os_string();
        name.push(".gz");
        std::fs::write(&name, &gz)?;
        println!(
            "{:<28} {:>9} bytes  {:>8} gzip",
            path.file_name().unwrap_or_default().to_string_lossy(),
            data.len(),
            gz.len()
        );
    }
    if page.gzip {
        println!("{}: {total_gz} bytes gzip in all", page.dist);
    }
    Ok(())
}

/// Runs wasm-opt -Oz where one that understands current rustc output is installed; otherwise keeps the file.
fn optimise(wasm: &Path) {
    let tmp = wasm.with_extension("opt.wasm");
    let ok = Command::new("wasm-opt")
        .args([
            "-Oz",
            "--enable-bulk-memory",
            "--enable-nontrapping-float-to-int",
            "--enable-sign-ext",
            "--enable-mutable-globals",
        ])
        .arg(wasm)
        .arg("-o")
        .arg(&tmp)
        .output()
        .is_ok_and(|o| o.status.success());
    if ok && std::fs::rename(&tmp, wasm).is_ok() {
        println!("wasm-opt -Oz applied");
    } else {
        let _ = std::fs::remove_file(&tmp);
        println!("wasm-opt not applied (none installed, or too old for this rustc's output)");
    }
}
