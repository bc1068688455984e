//! Release links of the coordinator on x86_64 Linux, where rustc links with its own LLD:
//!
//! - `link-order.txt` (written by `cargo xtask link-order`) goes to the linker: the functions a serving coordinator
//!   runs are laid out together, and its resident code shrinks from most of the binary's 10.9 MB of code to about
//!   what runs (at 10,000 workers, 12.5 -> 7.1 MiB mapped from files, with the same heartbeats/s; `commons-loadgen`).
//!   Names the file lists that the binary lacks (after a dependency, the compiler or the code changes) are skipped;
//!   the layout is then only less tight until the file is made again. The names are those of the coordinator built
//!   alone (`cargo build --release -p commons-coordinator`, as it ships): built together with other packages, their
//!   features unify differently and generic functions get other names. `COMMONS_NO_LINK_ORDER` links without it.
//! - Relative relocations are packed (DT_RELR, read by glibc 2.36 and later): the dynamic loader reads every
//!   relocation at start, and the 560 kB table of them stayed resident; packed, it takes a few kB. Only where the
//!   build's own glibc reads them (the binary then needs 2.36 or later, as one built against 2.36's symbols would).
//!
//! Other targets and debug builds link as before.

fn main() {
    println!("cargo:rerun-if-changed=link-order.txt");
    println!("cargo:rerun-if-env-changed=COMMONS_NO_LINK_ORDER");
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    let lld_target = var("CARGO_CFG_TARGET_ARCH") == "x86_64"
        && var("CARGO_CFG_TARGET_OS") == "linux"
        && var("CARGO_CFG_TARGET_ENV") == "gnu";
    if !lld_target || var("PROFILE") != "release" || !links_with_rust_lld() {
        return;
    }
    let arg = |a: &str| println!("cargo:rustc-link-arg-bin=commons-coordinator={a}");
    if glibc_reads_relr() {
        arg("-Wl,-z,pack-relative-relocs");
    }
    let file = std::path::Path::new(&var("CARGO_MANIFEST_DIR")).join("link-order.txt");
    if file.exists() && std::env::var_os("COMMONS_NO_LINK_ORDER").is_none() {
        arg(&format!("-Wl,--symbol-ordering-file={}", file.display()));
        arg("-Wl,--no-warn-symbol-ordering");
    }
}

/// Whether rustc links this build with its own LLD, which reads an ordering file (the default for x86_64 Linux since
/// Rust 1.90, with rustup's toolchains): not with an older or a distribution's rustc, nor when the build names a
/// linker of its own (GNU ld rejects the option).
fn links_with_rust_lld() -> bool {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let out = |arg: &str| {
        std::process::Command::new(&rustc)
            .arg(arg)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    let minor = out("--version")
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.split('.').nth(1)?.parse::<u32>().ok())
        .unwrap_or(0);
    let sysroot = out("--print=sysroot");
    let lld = std::path::Path::new(&sysroot)
        .join("lib/rustlib/x86_64-unknown-linux-gnu/bin/gcc-ld/ld.lld")
        .exists();
    let flags = std::env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    let own_linker = std::env::var_os("CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER").is_some()
        || flags.contains("linker")
        || flags.contains("fuse-ld");
    minor >= 90 && lld && !own_linker
}

/// Whether this machine's glibc is 2.36 or later (`getconf GNU_LIBC_VERSION`: "glibc 2.36").
fn glibc_reads_relr() -> bool {
    std::process::Command::new("getconf")
        .arg("GNU_LIBC_VERSION")
        .output()
        .ok()
        .and_then(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            let (major, minor) = text.split_whitespace().nth(1)?.split_once('.')?;
            Some((major.parse::<u32>().ok()?, minor.parse::<u32>().ok()?))
        })
        .is_some_and(|v| v >= (2, 36))
}
