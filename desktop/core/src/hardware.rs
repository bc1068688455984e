//! What this machine has: sysinfo for CPU, memory, disks and OS; NVML for NVIDIA GPUs; on macOS, System
//! Information for the GPUs by name (Apple silicon has no NVML).
//!
//! NVML sits behind [`GpuProbe`] so the mapping from driver readings to capabilities is tested with recorded
//! values; [`NvmlProbe`] is the real path and is used whenever `libnvidia-ml` loads (`nvml.dll` on Windows). Without
//! the driver it fails to initialise, and the agent says "no NVIDIA GPU" and carries on. On macOS,
//! [`SystemProfilerProbe`] reads `system_profiler SPDisplaysDataType -json` once: names, vendors and dedicated
//! memory, no live figures (an Apple GPU shares the machine's memory, so it never makes a GPU-tier machine, and the
//! catalogue's CUDA services never go to it).

use std::collections::HashSet;

use commons_shared::api::GpuSample;
use commons_shared::caps::{Capabilities, Cpu, Disk, Gpu, GpuVendor};

/// One GPU as the driver reports it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GpuReading {
    /// Index.
    pub index: u32,
    /// UUID.
    pub uuid: String,
    /// Name.
    pub name: String,
    /// Total memory, bytes.
    pub memory_total: u64,
    /// Free memory, bytes.
    pub memory_free: u64,
    /// Utilisation, percent.
    pub utilization_pct: u32,
    /// Temperature, °C.
    pub temperature_c: u32,
    /// Power draw, milliwatts.
    pub power_mw: u32,
    /// Driver version.
    pub driver_version: String,
    /// CUDA driver version as NVML encodes it (1000 × major + 10 × minor).
    pub cuda_version: i32,
    /// Compute capability (major, minor).
    pub compute_capability: (i32, i32),
    /// Who made it (NVML's are NVIDIA's; macOS names Apple's, AMD's and Intel's).
    pub vendor: GpuVendor,
}

/// Why GPUs could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no NVIDIA GPU: {0}")]
pub struct NoGpu(pub String);

/// A source of GPU readings.
pub trait GpuProbe: Send + Sync {
    /// Every GPU now.
    fn read(&self) -> Result<Vec<GpuReading>, NoGpu>;
}

/// The real NVML.
pub struct NvmlProbe {
    nvml: nvml_wrapper::Nvml,
}

impl std::fmt::Debug for NvmlProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NvmlProbe")
    }
}

impl NvmlProbe {
    /// Loads the driver library; fails where there is none.
    pub fn init() -> Result<Self, NoGpu> {
        nvml_wrapper::Nvml::init()
            .map(|nvml| Self { nvml })
            .map_err(|e| NoGpu(e.to_string()))
    }
}

impl GpuProbe for NvmlProbe {
    fn read(&self) -> Result<Vec<GpuReading>, NoGpu> {
        use nvml_wrapper::enum_wrappers::device::TemperatureSensor;
        let err = |e: nvml_wrapper::error::NvmlError| NoGpu(e.to_string());
        let driver_version = self.nvml.sys_driver_version().unwrap_or_default();
        let cuda_version = self.nvml.sys_cuda_driver_version().unwrap_or(0);
        let count = self.nvml.device_count().map_err(err)?;
        let mut out = Vec::with_capacity(count as usize);
        for i in 0..count {
            let d = self.nvml.device_by_index(i).map_err(err)?;
            let mem = d.memory_info().map_err(err)?;
            let cc = d
                .cuda_compute_capability()
                .map(|c| (c.major, c.minor))
                .unwrap_or((0, 0));
            out.push(GpuReading {
                index: d.index().unwrap_or(i),
                uuid: d.uuid().unwrap_or_default(),
                name: d.name().unwrap_or_else(|_| "NVIDIA GPU".into()),
                memory_total: mem.total,
                memory_free: mem.free,
                utilization_pct: d.utilization_rates().map(|u| u.gpu).unwrap_or(0),
                temperature_c: d.temperature(TemperatureSensor::Gpu).unwrap_or(0),
                power_mw: d.power_usage().unwrap_or(0),
                driver_version: driver_version.clone(),
                cuda_version,
                compute_capability: cc,
                vendor: GpuVendor::Nvidia,
            });
        }
        Ok(out)
    }
}

/// Readings recorded earlier (tests, and machines where the driver is known to be absent).
#[derive(Debug, Clone)]
pub struct RecordedProbe(pub Result<Vec<GpuReading>, NoGpu>);

impl GpuProbe for RecordedProbe {
    fn read(&self) -> Result<Vec<GpuReading>, NoGpu> {
        self.0.clone()
    }
}

/// The GPUs macOS's System Information names (`system_profiler SPDisplaysDataType -json`), read once: they do not
/// change while the agent runs, and the command takes most of a second.
#[derive(Debug, Default)]
pub struct SystemProfilerProbe {
    read: std::sync::OnceLock<Result<Vec<GpuReading>, NoGpu>>,
}

impl GpuProbe for SystemProfilerProbe {
    fn read(&self) -> Result<Vec<GpuReading>, NoGpu> {
        self.read
            .get_or_init(|| {
                let out = std::process::Command::new("/usr/sbin/system_profiler")
                    .args(["SPDisplaysDataType", "-json"])
                    .stdin(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .output()
                    .map_err(|e| NoGpu(format!("system_profiler did not run: {e}")))?;
                if !out.status.success() {
                    return Err(NoGpu(format!("system_profiler failed ({})", out.status)));
                }
                parse_displays(&String::from_utf8_lossy(&out.stdout))
            })
            .clone()
    }
}

/// The GPUs in `system_profiler SPDisplaysDataType -json`'s answer: each entry's model (or name), its vendor, and
/// its dedicated memory where it has any ("spdisplays_vram": "8 GB"; Apple silicon shares the machine's).
pub fn parse_displays(json: &str) -> Result<Vec<GpuReading>, NoGpu> {
    let v: serde_json::Value = serde_json::from_str(json)
        .map_err(|e| NoGpu(format!("system_profiler's answer is not JSON: {e}")))?;
    let entries = v["SPDisplaysDataType"]
        .as_array()
        .ok_or_else(|| NoGpu("system_profiler lists no displays".to_owned()))?;
    let text =
        |e: &serde_json::Value, k: &str| e[k].as_str().map(str::trim).unwrap_or("").to_owned();
    Ok(entries
        .iter()
        .filter_map(|e| {
            let name = Some(text(e, "sppci_model"))
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| text(e, "_name"));
            if name.is_empty() {
                return None;
            }
            let vendor_key = text(e, "spdisplays_vendor").to_ascii_lowercase();
            let vendor = match GpuVendor::from_name(&name) {
                GpuVendor::Other if vendor_key.contains("apple") => GpuVendor::Apple,
                GpuVendor::Other if vendor_key.contains("amd") || vendor_key.contains("ati") => {
                    GpuVendor::Amd
                }
                GpuVendor::Other if vendor_key.contains("intel") => GpuVendor::Intel,
                v => v,
            };
            let vram = ["spdisplays_vram", "_spdisplays_vram"]
                .iter()
                .find_map(|k| e[*k].as_str())
                .and_then(|s| commons_shared::units::parse_size(s).ok())
                .unwrap_or(0);
            Some((name, vendor, vram))
        })
        .enumerate()
        .map(|(i, (name, vendor, vram))| GpuReading {
            index: i as u32,
            name: clip(&name),
            memory_total: vram,
            memory_free: vram,
            vendor,
            ..GpuReading::default()
        })
        .collect())
}

/// The probe for this machine: on macOS, System Information's names; elsewhere NVML when its library loads, else
/// one that says why there is no GPU.
pub fn default_probe() -> Box<dyn GpuProbe> {
    if cfg!(target_os = "macos") {
        return Box::new(SystemProfilerProbe::default());
    }
    match NvmlProbe::init() {
        Ok(p) => Box::new(p),
        Err(e) => Box::new(RecordedProbe(Err(e))),
    }
}

/// GPU readings as capabilities.
pub fn gpus_to_capabilities(readings: &[GpuReading]) -> Vec<Gpu> {
    readings
        .iter()
        .map(|r| Gpu {
            vendor: r.vendor,
            name: r.name.clone(),
            index: r.index,
            uuid: r.uuid.clone(),
            vram_bytes: r.memory_total,
            driver_version: r.driver_version.clone(),
            compute_capability: if r.compute_capability.0 > 0 {
                format!("{}.{}", r.compute_capability.0, r.compute_capability.1)
            } else {
                String::new()
            },
        })
        .collect()
}

/// GPU readings as heartbeat samples.
pub fn gpus_to_samples(readings: &[GpuReading]) -> Vec<GpuSample> {
    readings
        .iter()
        .map(|r| GpuSample {
            index: r.index,
            utilization: (r.utilization_pct.min(100) as f32) / 100.0,
            temperature_c: r.temperature_c.min(150) as f32,
            memory_used_bytes: r.memory_total.saturating_sub(r.memory_free),
        })
        .collect()
}

/// What detection found.
#[derive(Debug, Clone)]
pub struct Detected {
    /// The capabilities to register with.
    pub capabilities: Capabilities,
    /// The raw GPU readings.
    pub gpus: Vec<GpuReading>,
    /// Why there is no GPU, when there is none.
    pub no_gpu: Option<String>,
}

fn clip(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(200).collect()
}

/// Detects this machine's hardware.
pub fn detect(probe: &dyn GpuProbe) -> Detected {
    let mut sys = sysinfo::System::new().ok();
    if let Some(s) = sys.as_mut() {
        s.refresh_memory();
        s.refresh_cpu_all();
    }
    let cpus = sys.as_ref().map(|s| s.cpus()).unwrap_or(&[]);
    let threads = cpus.len() as u32;
    let cores = sysinfo::System::physical_core_count()
        .map(|c| c as u32)
        .unwrap_or(threads)
        .max(1);
    let cpu = Cpu {
        brand: cpus
            .first()
            .map(|c| clip(c.brand().trim()))
            .unwrap_or_default(),
        cores,
        threads: threads.max(cores),
        frequency_mhz: cpus.first().map(|c| c.frequency() as u32).unwrap_or(0),
    };
    let mut disks = Vec::new();
    if let Ok(list) = sysinfo::Disks::new_with_refreshed_list() {
        // The same device is mounted in several places (bind mounts): count each device once.
        let mut seen = HashSet::new();
        for d in list.iter() {
            if d.total_space() == 0 || !seen.insert(d.name().to_os_string()) {
                continue;
            }
            disks.push(Disk {
                mount: clip(&d.mount_point().to_string_lossy()),
                total_bytes: d.total_space(),
                free_bytes: d.available_space().min(d.total_space()),
            });
            if disks.len() == 32 {
                break;
            }
        }
    }
    let (gpus, no_gpu) = match probe.read() {
        Ok(g) if g.is_empty() => (
            Vec::new(),
            Some("no NVIDIA GPU: the driver reports none".to_owned()),
        ),
        Ok(g) => (g, None),
        Err(e) => (Vec::new(), Some(e.to_string())),
    };
    let capabilities = Capabilities {
        cpu,
        memory_bytes: sys.as_ref().map(|s| s.total_memory()).unwrap_or(0),
        disks,
        gpus: gpus_to_capabilities(&gpus),
        os: clip(
            &sysinfo::System::long_os_version().unwrap_or_else(|_| std::env::consts::OS.to_owned()),
        ),
        arch: std::env::consts::ARCH.to_owned(),
        hostname: clip(&sysinfo::System::host_name().unwrap_or_default()),
        region: String::new(),
        public_address: false,
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
    };
    Detected {
        capabilities,
        gpus,
        no_gpu,
    }
}

/// Live load: CPU in use, free memory, GPU samples.
#[derive(Debug)]
pub struct LoadSampler {
    sys: Option<sysinfo::System>,
}

/// One load sample.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Load {
    /// CPU in use over all cores, in [0, 1].
    pub cpu: f64,
    /// Available memory, bytes.
    pub free_memory: u64,
}

impl LoadSampler {
    /// A sampler (its first CPU reading compares against this moment).
    pub fn new() -> Self {
        let mut sys = sysinfo::System::new().ok();
        if let Some(s) = sys.as_mut() {
            s.refresh_cpu_usage();
        }
        Self { sys }
    }

    /// CPU use since the previous sample and available memory now.
    pub fn sample(&mut self) -> Load {
        let Some(s) = self.sys.as_mut() else {
            return Load::default();
        };
        s.refresh_cpu_usage();
        s.refresh_memory();
        let cpu = f64::from(s.global_cpu_usage()) / 100.0;
        Load {
            cpu: if cpu.is_finite() {
                cpu.clamp(0.0, 1.0)
            } else {
                0.0
            },
            free_memory: s.available_memory(),
        }
    }
}

impl Default for LoadSampler {
    fn default() -> Self {
        Self::new()
    }
}

/// The capabilities as a table for people.
pub fn table(d: &Detected) -> String {
    use commons_shared::units::format_size;
    let c = &d.capabilities;
    let mut out = String::new();
    let mut row = |k: &str, v: String| out.push_str(&format!("{k:<14} {v}\n"));
    row(
        "CPU",
        format!(
            "{} ({} cores, {} threads, {} MHz)",
            c.cpu.brand, c.cpu.cores, c.cpu.threads, c.cpu.frequency_mhz
        ),
    );
    row("Memory", format_size(c.memory_bytes));
    for disk in &c.disks {
        row(
            "Disk",
            format!(
                "{} {} free of {}",
                disk.mount,
                format_size(disk.free_bytes),
                format_size(disk.total_bytes)
            ),
        );
    }
    if d.gpus.is_empty() {
        row("GPU", d.no_gpu.clone().unwrap_or_else(|| "none".into()));
    }
    for g in &d.gpus {
        row(
            "GPU",
            format!(
                "#{} {} {} VRAM ({} free), {} %, {} °C, {:.1} W, driver {}, CUDA {}.{}, compute {}.{}",
                g.index,
                g.name,
                format_size(g.memory_total),
                format_size(g.memory_free),
                g.utilization_pct,
                g.temperature_c,
                f64::from(g.power_mw) / 1000.0,
                g.driver_version,
                g.cuda_version / 1000,
                (g.cuda_version % 1000) / 10,
                g.compute_capability.0,
                g.compute_capability.1
            ),
        );
    }
    row("OS", format!("{} ({})", c.os, c.arch));
    row("Host", c.hostname.clone());
    row("Agent", c.agent_version.clone());
    let tier = commons_shared::tier::classify(c, false);
    row(
        "Tier",
        format!(
            "{} (storage role: {})",
            tier.tier.number(),
            if tier.storage { "yes" } else { "no" }
        ),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use commons_shared::units::GIB;

    fn rtx3060() -> GpuReading {
        GpuReading {
            index: 0,
            uuid: "GPU-5f3a".into(),
            name: "NVIDIA GeForce RTX 3060".into(),
            memory_total: 12 * GIB,
            memory_free: 11 * GIB,
            utilization_pct: 37,
            temperature_c: 61,
            power_mw: 112_500,
            driver_version: "550.54.14".into(),
            cuda_version: 12040,
            compute_capability: (8, 6),
            vendor: GpuVendor::Nvidia,
        }
    }

    #[test]
    fn macs_name_their_gpus_and_apple_silicon_is_not_a_gpu_tier() {
        // Recorded from an M2 Pro, and an Intel MacBook Pro with its two GPUs (the JSON system_profiler prints).
        let m2 = r#"{"SPDisplaysDataType": [{"_name": "Apple M2 Pro", "spdisplays_mtlgpufamilysupport":
            "spdisplays_metal3", "spdisplays_vendor": "sppci_vendor_Apple", "sppci_bus": "spdisplays_builtin",
            "sppci_cores": "19", "sppci_device_type": "spdisplays_gpu", "sppci_model": "Apple M2 Pro"}]}"#;
        let intel = r#"{"SPDisplaysDataType": [
            {"_name": "Intel UHD Graphics 630", "spdisplays_vendor": "Intel", "sppci_model": "Intel UHD Graphics 630",
             "spdisplays_vram_shared": "1536 MB"},
            {"_name": "AMD Radeon Pro 5500M", "spdisplays_vendor": "sppci_vendor_amd",
             "sppci_model": "AMD Radeon Pro 5500M", "spdisplays_vram": "8 GB"}]}"#;
        let g = parse_displays(m2).unwrap();
        assert_eq!(
            (g[0].name.as_str(), g[0].vendor, g[0].memory_total),
            ("Apple M2 Pro", GpuVendor::Apple, 0)
        );
        let caps = gpus_to_capabilities(&g);
        assert_eq!(caps[0].vendor, GpuVendor::Apple);
        let mut mac = detect(&RecordedProbe(Ok(g))).capabilities;
        mac.memory_bytes = 32 * GIB;
        mac.cpu.cores = 12;
        assert_ne!(
            commons_shared::tier::classify(&mac, false).tier,
            commons_shared::tier::Tier::Gpu,
            "unified memory is not VRAM"
        );
        let g = parse_displays(intel).unwrap();
        let found: Vec<_> = g
            .iter()
            .map(|r| (r.index, r.name.as_str(), r.vendor, r.memory_total))
            .collect();
        assert_eq!(
            found,
            [
                (0, "Intel UHD Graphics 630", GpuVendor::Intel, 0),
                (1, "AMD Radeon Pro 5500M", GpuVendor::Amd, 8 * GIB)
            ]
        );
        assert!(parse_displays("not json").is_err());
        assert!(parse_displays("{}").is_err());
    }

    #[test]
    fn recorded_gpus_map_to_capabilities_and_samples() {
        let caps = gpus_to_capabilities(&[rtx3060()]);
        assert_eq!(caps[0].vendor, GpuVendor::Nvidia);
        assert_eq!(caps[0].vram_bytes, 12 * GIB);
        assert_eq!(caps[0].compute_capability, "8.6");
        assert_eq!(caps[0].driver_version, "550.54.14");
        let s = gpus_to_samples(&[rtx3060()]);
        assert!((s[0].utilization - 0.37).abs() < 1e-6);
        assert_eq!(s[0].temperature_c, 61.0);
        assert_eq!(s[0].memory_used_bytes, GIB);
    }

    #[test]
    fn detection_with_a_recorded_gpu_is_tier_one() {
        let d = detect(&RecordedProbe(Ok(vec![rtx3060()])));
        assert_eq!(d.capabilities.gpus.len(), 1);
        assert!(d.no_gpu.is_none());
        assert!(d.capabilities.cpu.cores >= 1);
        assert!(d.capabilities.memory_bytes > 0);
        assert_eq!(
            commons_shared::tier::classify(&d.capabilities, false).tier,
            commons_shared::tier::Tier::Gpu
        );
        assert!(table(&d).contains("RTX 3060"));
    }

    #[test]
    fn no_driver_means_no_gpu_and_carrying_on() {
        // The real NVML here: no driver, so it must fail cleanly, never crash.
        let probe = default_probe();
        let d = detect(probe.as_ref());
        if d.gpus.is_empty() {
            assert!(
                d.no_gpu.as_deref().unwrap_or("").contains("no NVIDIA GPU"),
                "{:?}",
                d.no_gpu
            );
        }
        // Whatever the machine, the capabilities pass the coordinator's own validation.
        let body = serde_json::json!({"capabilities": d.capabilities});
        commons_shared::validate::parse_registration(body.to_string().as_bytes()).unwrap();
    }

    #[test]
    fn live_load_is_a_fraction() {
        let mut s = LoadSampler::new();
        std::thread::sleep(sysinfo::MINIMUM_CPU_UPDATE_INTERVAL);
        let l = s.sample();
        assert!((0.0..=1.0).contains(&l.cpu));
        assert!(l.free_memory > 0);
    }
}
