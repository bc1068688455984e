//! Project automation.
//!
//! - `cargo xtask portal [--dev]`: builds the admin portal (wasm32 + wasm-bindgen, wasm-opt where a working one is
//!   installed) into `portal/dist`, with a gzip copy of each file for the coordinator to serve precompressed.
//! - `cargo xtask desktop-ui [--dev]`: builds the desktop app's window (Yew) into `desktop/app/ui`, next to its
//!   committed `index.html` and `style.css`; the app embeds that folder when it is compiled.
//! - `cargo xtask agent-deb [--profile <p>] [--version <v>]`: the headless agent as a Debian package for servers
//!   (binary, systemd unit, settings in /etc/commons, its own user, which a purge removes), laid out here and built
//!   by `dpkg-deb`, into `$CARGO_TARGET_DIR/debian/`; `--version` names the package's version (the install check
//!   builds an older one to upgrade from).
//! - `cargo xtask update-fixtures`: what the update tests run: a throw-away release key pair (minisign), and the
//!   headless agent and the desktop app each built twice with that key compiled in, as versions 0.1.0 and 0.1.1
//!   (nothing else differs), stripped, in `$CARGO_TARGET_DIR/update-fixtures/`; with `--windows`, the headless agent
//!   built for Windows the same way, in `update-fixtures/windows/` (for the update test under Wine, .ci/windows).
//! - `cargo xtask bench-report`: runs the benchmarks' short versions (release builds) and writes `bench/report.html`
//!   (each figure against its goal, SVG charts) and a line of `bench/history.jsonl` (see `bench.rs`).
//! - `cargo xtask serve [-- <coordinator flags>]`: builds the portal, then runs the coordinator (release) on its
//!   embedded defaults serving it.
//! - `cargo xtask images --registry <host:port[/prefix]> [--profile <p>] [--tag <t>]`: the service images of
//!   `services/`, each a Debian root made by `mmdebstrap` from the service's `packages` (cached under
//!   `~/.cache/commons-images`, keyed by the suite and the package list) with our binary on top (its `Dockerfile`),
//!   built by the engine `DOCKER_HOST` names and pushed to the registry. The references, pinned by digest, go to
//!   `$CARGO_TARGET_DIR/images/images.toml`.
//!
//! Each sets up what the build needs first: the `wasm32-unknown-unknown` target (rustup) and a `wasm-bindgen` CLI of
//! exactly the version of the `wasm-bindgen` crate in Cargo.lock (`cargo install`, once per machine, without
//! `--locked`: its own lock file pins a crate version the registry here lacks; the version itself is pinned).

mod bench;
mod link_order;

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
        Some("agent-deb") => {
            let flag = |name: &str| {
                args.iter()
                    .position(|a| a == name)
                    .and_then(|i| args.get(i + 1))
                    .map(String::as_str)
            };
            agent_deb(
                flag("--profile").unwrap_or("release"),
                flag("--version").unwrap_or(env!("CARGO_PKG_VERSION")),
            )
        }
        Some("update-fixtures") => match args.get(1).map(String::as_str) {
            None => update_fixtures(),
            Some("--windows") => update_fixtures_windows(),
            Some(other) => Err(anyhow::anyhow!(
                "update-fixtures takes --windows or nothing, not {other:?}"
            )),
        },
        Some("bench-report") => bench::report(&root(), &target_dir(&root())),
        Some("link-order") => link_order::link_order(&root(), &target_dir(&root())),
        Some("images") => images(&args[1..]),
        _ => {
            eprintln!(
                "usage: cargo xtask portal [--dev] | cargo xtask desktop-ui [--dev] | cargo xtask agent-deb [--profile <p>] [--version <v>] | cargo xtask update-fixtures [--windows] | cargo xtask bench-report | cargo xtask link-order | cargo xtask images --registry <host:port> [--profile <p>] [--tag <t>] | cargo xtask serve [-- <coordinator flags>]"
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

/// A `cargo` command for a build of the workspace, in it: the cargo that runs xtask, without the variables `cargo run`
/// set for xtask itself. A build script that reads one of them sees it change between this build and a plain `cargo
/// build` (ring's reads `CARGO_MANIFEST_DIR`), and each would build that crate and every crate above it again.
fn cargo() -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(root());
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("CARGO_PKG_")
            || [
                "CARGO_MANIFEST_DIR",
                "CARGO_MANIFEST_PATH",
                "CARGO_CRATE_NAME",
                "CARGO_BIN_NAME",
                "CARGO_PRIMARY_PACKAGE",
            ]
            .contains(&name.as_ref())
        {
            c.env_remove(name.as_ref());
        }
    }
    c
}

/// Where cargo builds: `$CARGO_TARGET_DIR`, else `target/` in the workspace.
/// Builds the release coordinator alone, as it ships, so that its functions have the names
/// `coordinator/link-order.txt` lists: built with other packages, their features unify differently and generic
/// functions get other names.
fn release_coordinator() -> anyhow::Result<()> {
    run(cargo().args([
        "build",
        "--release",
        "-p",
        "commons-coordinator",
        "--bin",
        "commons-coordinator",
    ]))
}

fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
}

/// The folder a cargo profile builds into (`dev` builds into `debug`).
fn profile_dir(profile: &str) -> &str {
    if profile == "dev" { "debug" } else { profile }
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
    run(cargo().args([
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
    let extra: Vec<&str> = extra
        .iter()
        .map(String::as_str)
        .filter(|a| *a != "--")
        .collect();
    run(cargo()
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
    let target_dir = target_dir(&root);
    let profile = if dev { "dev" } else { "wasm" };
    run(cargo().args([
        "build",
        "--package",
        page.package,
        "--lib",
        "--target",
        "wasm32-unknown-unknown",
        "--profile",
        profile,
    ]))?;
    let out_profile = profile_dir(profile);
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

/// The update tests' fixtures: a throw-away release key, and the agent and the desktop app built as two versions.
fn update_fixtures() -> anyhow::Result<()> {
    let root = root();
    let target_dir = target_dir(&root);
    let out = target_dir.join("update-fixtures");
    std::fs::create_dir_all(&out)?;
    let (secret, public) = (out.join("test-release.key"), out.join("test-release.pub"));
    if !public.exists() || !secret.exists() {
        run(Command::new("minisign")
            .args(["-G", "-W", "-f", "-p"])
            .arg(&public)
            .arg("-s")
            .arg(&secret)
            .stdout(std::process::Stdio::null()))
        .context("minisign is needed (apt install minisign)")?;
    }
    let key = std::fs::read_to_string(&public)?;
    // The agent and the desktop app, each built twice with the test key: only the version differs.
    let build = |env: &[(&str, &str)]| {
        run(cargo()
            .args([
                "build",
                "--package",
                "commons-agent",
                "--bin",
                "commons-agent",
            ])
            .args(["--package", "commons", "--bin", "commons"])
            .envs(env.iter().copied()))
    };
    for version in ["0.1.0", "0.1.1"] {
        build(&[
            ("COMMONS_BUILD_VERSION", version),
            ("COMMONS_RELEASE_KEY", key.as_str()),
        ])?;
        for (bin, name) in [
            ("commons-agent", "commons-agent"),
            ("commons", "commons-desktop"),
        ] {
            let to = out.join(format!("{name}-{version}"));
            std::fs::copy(target_dir.join("debug").join(bin), &to)?;
            run(Command::new("strip").arg("--strip-debug").arg(&to))
                .context("strip (binutils) is needed")?;
        }
    }
    // Leave the ordinary builds in place for the tests that run them.
    build(&[])?;
    println!("update fixtures in {}", out.display());
    Ok(())
}

/// The Windows fixtures of the update test under Wine (.ci/windows): the headless agent built for
/// `x86_64-pc-windows-gnu` as 0.1.0 and 0.1.1 with the test key of [`update_fixtures`] (which must have run), stripped,
/// in `$CARGO_TARGET_DIR/update-fixtures/windows/`. The Windows build is left as 0.1.1: the next ordinary one rebuilds
/// the agent's crate only.
fn update_fixtures_windows() -> anyhow::Result<()> {
    let root = root();
    let target_dir = target_dir(&root);
    let fixtures = target_dir.join("update-fixtures");
    let key = std::fs::read_to_string(fixtures.join("test-release.pub"))
        .context("no test release key: run `cargo xtask update-fixtures` first")?;
    let out = fixtures.join("windows");
    std::fs::create_dir_all(&out)?;
    let target = "x86_64-pc-windows-gnu";
    for version in ["0.1.0", "0.1.1"] {
        run(cargo()
            .args(["build", "--target", target, "--package", "commons-agent"])
            // With the app's package too, as .ci/windows builds them: the same features, so the same build of
            // every crate they share (only the agent's is built again).
            .args(["--package", "commons", "--bin", "commons-agent"])
            .env("COMMONS_BUILD_VERSION", version)
            .env("COMMONS_RELEASE_KEY", &key))?;
        let to = out.join(format!("commons-agent-{version}.exe"));
        std::fs::copy(target_dir.join(target).join("debug/commons-agent.exe"), &to)?;
        run(Command::new("x86_64-w64-mingw32-strip")
            .arg("--strip-debug")
            .arg(&to))
        .context("x86_64-w64-mingw32-strip (mingw-w64) is needed")?;
    }
    println!("Windows update fixtures in {}", out.display());
    Ok(())
}

/// The headless agent's .deb: `/usr/bin/commons-agent`, its systemd unit, `/etc/commons/agent.toml` (a conffile),
/// and maintainer scripts that create its user, stop it before removal, and on purge remove the user and its state.
/// Prints the package's path.
fn agent_deb(profile: &str, version: &str) -> anyhow::Result<()> {
    let root = root();
    run(cargo().args([
        "build",
        "--package",
        "commons-agent",
        "--bin",
        "commons-agent",
        "--profile",
        profile,
    ]))?;
    let target_dir = target_dir(&root);
    let out_profile = profile_dir(profile);
    let binary = target_dir.join(out_profile).join("commons-agent");
    let arch = String::from_utf8(
        Command::new("dpkg")
            .arg("--print-architecture")
            .output()
            .context("dpkg (Debian's package tool) is needed")?
            .stdout,
    )?
    .trim()
    .to_owned();
    let out = target_dir.join("debian");
    let stage = out.join(format!("commons-agent_{version}_{arch}"));
    if stage.exists() {
        std::fs::remove_dir_all(&stage)?;
    }
    let packaging = root.join("desktop/core/packaging");
    let place = |from: &Path, to: &str, mode: u32| -> anyhow::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let to = stage.join(to);
        std::fs::create_dir_all(to.parent().expect("a folder"))?;
        std::fs::copy(from, &to).with_context(|| format!("copying {}", from.display()))?;
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(mode))?;
        Ok(())
    };
    place(&binary, "usr/bin/commons-agent", 0o755)?;
    place(
        &packaging.join("commons-agent.service"),
        "lib/systemd/system/commons-agent.service",
        0o644,
    )?;
    place(
        &packaging.join("agent.toml"),
        "etc/commons/agent.toml",
        0o644,
    )?;
    place(&packaging.join("postinst"), "DEBIAN/postinst", 0o755)?;
    place(&packaging.join("prerm"), "DEBIAN/prerm", 0o755)?;
    place(&packaging.join("postrm"), "DEBIAN/postrm", 0o755)?;
    let size_kib = walk_size(&stage)? / 1024;
    std::fs::write(stage.join("DEBIAN/conffiles"), "/etc/commons/agent.toml\n")?;
    std::fs::write(
        stage.join("DEBIAN/control"),
        format!(
            "Package: commons-agent\n\
             Version: {version}\n\
             Architecture: {arch}\n\
             Maintainer: The Commons project <commons@example.invalid>\n\
             Installed-Size: {size_kib}\n\
             Depends: libc6, libdbus-1-3, adduser\n\
             Recommends: docker.io | docker-ce\n\
             Section: net\n\
             Priority: optional\n\
             Homepage: https://example.invalid/commons\n\
             Description: Commons volunteer agent for servers (headless)\n \
             Donates this server's spare GPU, CPU and disk to Commons, a volunteer pool that runs AI\n \
             services (OCR, LLM inference, RAG, storage) for the people who need them. Runs as a systemd\n \
             service under its own user; containers run unprivileged, capped and labelled.\n"
        ),
    )?;
    let deb = out.join(format!("commons-agent_{version}_{arch}.deb"));
    run(Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zgzip", "--build"])
        .arg(&stage)
        .arg(&deb))?;
    println!("{}", deb.display());
    Ok(())
}

fn walk_size(dir: &Path) -> anyhow::Result<u64> {
    let mut total = 0;
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let m = e.metadata()?;
        total += if m.is_dir() {
            walk_size(&e.path())?
        } else {
            m.len()
        };
    }
    Ok(total)
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

/// A service image: its folder under `services/` (its root's packages), the folder whose Dockerfile builds it, and
/// the workspace binary that Dockerfile copies.
struct ServiceImage {
    service: &'static str,
    dockerfile: &'static str,
    package: &'static str,
    binary: &'static str,
}

const SERVICE_IMAGES: &[ServiceImage] = &[
    ServiceImage {
        service: "ocr",
        dockerfile: "ocr",
        package: "commons-ocr",
        binary: "commons-ocr",
    },
    ServiceImage {
        service: "llm",
        dockerfile: "llm",
        package: "commons-llm",
        binary: "commons-llm",
    },
    // llm's GPU form: the same front and Dockerfile on a root with ggml's CUDA backend.
    ServiceImage {
        service: "llm-cuda",
        dockerfile: "llm",
        package: "commons-llm",
        binary: "commons-llm",
    },
    ServiceImage {
        service: "rag",
        dockerfile: "rag",
        package: "commons-rag",
        binary: "commons-rag",
    },
];

fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

fn sha256_hex(parts: &[&[u8]]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    h.finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>()
}

/// This machine's Debian suite: the images' roots match it, so that our binaries find the same C library.
fn host_suite() -> anyhow::Result<String> {
    let os = std::fs::read_to_string("/etc/os-release").context("cannot read /etc/os-release")?;
    os.lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|s| s.trim_matches('"').to_owned())
        .filter(|s| !s.is_empty())
        .context("/etc/os-release names no VERSION_CODENAME (a Debian host is needed to build the images)")
}

/// The host's apt sources, for mmdebstrap (the mirror this machine can reach).
fn apt_sources() -> Option<PathBuf> {
    [
        "/etc/apt/sources.list.d/debian.sources",
        "/etc/apt/sources.list",
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

/// The Debian mirror the host's sources name first (for a root of another suite than the host's).
fn host_mirror() -> String {
    apt_sources()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|text| {
            text.lines().find_map(|l| {
                let l = l.trim();
                l.strip_prefix("URIs:")
                    .and_then(|u| u.split_whitespace().next())
                    .or_else(|| {
                        l.strip_prefix("deb ")
                            .and_then(|r| r.split_whitespace().find(|w| w.contains("://")))
                    })
                    .map(str::to_owned)
            })
        })
        .unwrap_or_else(|| "http://deb.debian.org/debian".into())
}

fn docker() -> Command {
    let mut c = Command::new("docker");
    // The classic builder: it needs no buildx plugin, and these Dockerfiles only copy files.
    c.env("DOCKER_BUILDKIT", "0");
    c
}

fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{:?} failed ({}): {}",
            cmd.get_program(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The Debian suite of `service`'s root: its `suite` file, or the host's (our binaries then find the same C
/// library; a newer one runs them too).
fn service_suite(root: &Path, service: &str, host: &str) -> anyhow::Result<String> {
    let file = root.join("services").join(service).join("suite");
    if !file.exists() {
        return Ok(host.to_owned());
    }
    std::fs::read_to_string(&file)?
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .with_context(|| format!("{} names no suite", file.display()))
}

/// The lines of a service's list file (`packages`, `components`) that are not comments; none when it is absent.
fn service_list(root: &Path, service: &str, file: &str) -> anyhow::Result<Vec<String>> {
    let path = root.join("services").join(service).join(file);
    if !path.exists() {
        return Ok(Vec::new());
    }
    Ok(std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .flat_map(|l| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
        .collect())
}

/// The service's own packages (each folder of it with a `DEBIAN/control`), built with dpkg-deb into the cache:
/// their paths, and their control files (for the root's key).
fn local_packages(
    root: &Path,
    service: &str,
    cache: &Path,
) -> anyhow::Result<(Vec<String>, Vec<u8>)> {
    let (mut paths, mut controls) = (Vec::new(), Vec::new());
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root.join("services").join(service))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("DEBIAN/control").is_file())
        .collect();
    dirs.sort();
    for dir in dirs {
        let control = std::fs::read(dir.join("DEBIAN/control"))?;
        let name = dir.file_name().unwrap_or_default().to_string_lossy();
        let deb = cache.join(format!(
            "{service}-{name}-{}.deb",
            &sha256_hex(&[&control])[..16]
        ));
        if !deb.exists() {
            run(Command::new("dpkg-deb")
                .args(["--build", "--root-owner-group"])
                .arg(&dir)
                .arg(&deb)
                .stdout(std::process::Stdio::null()))
            .context("dpkg-deb is needed")?;
        }
        paths.push(deb.display().to_string());
        controls.extend(control);
    }
    Ok((paths, controls))
}

/// The Debian root of `service` as a tarball, made once per suite, archive areas and package list.
fn base_root(
    root: &Path,
    service: &str,
    suite: &str,
    host: &str,
) -> anyhow::Result<(PathBuf, String)> {
    let packages = service_list(root, service, "packages")?;
    let components = service_list(root, service, "components")?;
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/tmp"))
        .join("commons-images");
    std::fs::create_dir_all(&cache)?;
    let (debs, controls) = local_packages(root, service, &cache)?;
    let mut options = vec!["--variant=minbase".to_owned()];
    if !packages.is_empty() {
        options.push(format!("--include={}", packages.join(",")));
    }
    // Local packages by path, each in its own option (mmdebstrap splits a list on commas); apt inside the root
    // finds them where the hook mounts them.
    options.extend(debs.iter().map(|d| format!("--include={d}")));
    if !debs.is_empty() {
        options.push("--hook-dir=/usr/share/mmdebstrap/hooks/file-mirror-automount".into());
    }
    if !components.is_empty() {
        options.push(format!("--components={}", components.join(",")));
    }
    options.extend([
        "--dpkgopt=path-exclude=/usr/share/doc/*".into(),
        "--dpkgopt=path-exclude=/usr/share/man/*".into(),
        "--dpkgopt=path-exclude=/usr/share/locale/*".into(),
    ]);
    let key =
        sha256_hex(&[suite.as_bytes(), options.join(" ").as_bytes(), &controls])[..16].to_owned();
    let tar = cache.join(format!("{service}-root-{suite}-{key}.tar"));
    if !tar.exists() {
        println!(
            "images: {service}: a {suite} root with {}",
            packages
                .iter()
                .chain(&debs)
                .cloned()
                .collect::<Vec<_>>()
                .join(" ")
        );
        // mmdebstrap picks the format from the name: it must end in .tar.
        let partial = cache.join(format!("{service}-root-{suite}-{key}.partial.tar"));
        let mut cmd = Command::new("mmdebstrap");
        cmd.args(&options)
            .arg("--aptopt=Acquire::Retries \"3\"")
            // A mirror that serves a frozen snapshot outlives its Release files' Valid-Until; the signatures are
            // still checked.
            .arg("--aptopt=Acquire::Check-Valid-Until \"false\"")
            .arg(suite)
            .arg(&partial);
        // The host's own sources for its suite (security updates included); its mirror for another suite.
        if suite == host {
            if let Some(src) = apt_sources() {
                cmd.arg(src);
            }
        } else {
            cmd.arg(host_mirror());
        }
        run(cmd.stdout(std::process::Stdio::null())).context(
            "mmdebstrap is needed (apt install mmdebstrap; .ci/packages tests installs it)",
        )?;
        std::fs::rename(&partial, &tar)?;
    }
    Ok((tar, key))
}

fn images(args: &[String]) -> anyhow::Result<()> {
    let registry = flag(args, "--registry")
        .context("give the registry to push to: --registry <host:port[/prefix]>")?
        .trim_end_matches('/');
    let profile = flag(args, "--profile").unwrap_or("release");
    let root = root();
    let target = target_dir(&root);
    let host = host_suite()?;
    let out_dir = target.join("images");
    std::fs::create_dir_all(&out_dir)?;
    let mut listing = String::from(
        "# Written by `cargo xtask images`: each service's image, pinned by digest.\n",
    );
    for img in SERVICE_IMAGES {
        run(cargo().args([
            "build",
            "--profile",
            profile,
            "--package",
            img.package,
            "--bin",
            img.binary,
        ]))?;
        let suite = service_suite(&root, img.service, &host)?;
        let (tar, root_key) = base_root(&root, img.service, &suite, &host)?;
        let base = format!("{registry}/commons-{}-root:{root_key}", img.service);
        if output(docker().args(["image", "inspect", "--format", "{{.Id}}", &base])).is_err() {
            println!("images: {}: importing its root as {base}", img.service);
            output(docker().arg("import").arg(&tar).arg(&base))?;
        }
        let context = out_dir.join(img.service);
        std::fs::create_dir_all(&context)?;
        let dockerfile = root
            .join("services")
            .join(img.dockerfile)
            .join("Dockerfile");
        std::fs::copy(&dockerfile, context.join("Dockerfile"))?;
        let bin = context.join(img.binary);
        std::fs::copy(target.join(profile_dir(profile)).join(img.binary), &bin)?;
        run(Command::new("strip").arg("--strip-debug").arg(&bin))
            .context("strip (binutils) is needed")?;
        let tag = match flag(args, "--tag") {
            Some(t) => t.to_owned(),
            None => sha256_hex(&[
                &std::fs::read(&dockerfile)?,
                &std::fs::read(&bin)?,
                root_key.as_bytes(),
            ])[..16]
                .to_owned(),
        };
        let image = format!("{registry}/commons-{}:{tag}", img.service);
        if output(docker().args(["image", "inspect", "--format", "{{.Id}}", &image])).is_err() {
            println!("images: {}: building {image}", img.service);
            output(
                docker()
                    .args(["build", "--quiet", "--build-arg"])
                    .arg(format!("BASE={base}"))
                    .args(["-t", &image])
                    .arg(&context),
            )?;
        }
        output(docker().args(["push", "--quiet", &image]))?;
        let pinned = output(docker().args([
            "image",
            "inspect",
            "--format",
            "{{index .RepoDigests 0}}",
            &image,
        ]))?;
        println!("images: {} = {pinned}", img.service);
        listing.push_str(&format!("{} = {pinned:?}\n", img.service));
    }
    std::fs::write(out_dir.join("images.toml"), listing)?;
    println!(
        "images: listed in {}",
        out_dir.join("images.toml").display()
    );
    Ok(())
}
