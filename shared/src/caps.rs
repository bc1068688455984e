//! What a volunteer's machine offers: integers with units (bytes, MHz), never strings to re-parse.

use serde::{Deserialize, Serialize};

/// The CPU.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Cpu {
    /// Marketing name, e.g. "AMD Ryzen 7 5800X".
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(max_length = 256))]
    pub brand: String,
    /// Physical cores.
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 65536))]
    pub cores: u32,
    /// Resources threads (logical CPUs).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(maximum = 65536))]
    pub threads: u32,
    /// Base frequency in MHz, 0 when unknown.
    #[serde(default)]
    pub frequency_mhz: u32,
}

/// One mounted disk.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Disk {
    /// Mount point, e.g. "/" or "C:\\".
    #[cfg_attr(feature = "openapi", schema(max_length = 256))]
    pub mount: String,
    /// Size in bytes.
    pub total_bytes: u64,
    /// Free space in bytes.
    pub free_bytes: u64,
}

/// Who made a GPU.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum GpuVendor {
    /// NVIDIA (CUDA).
    Nvidia,
    /// AMD (ROCm).
    Amd,
    /// Intel.
    Intel,
    /// Apple silicon.
    Apple,
    /// Anything else.
    #[default]
    Other,
}

impl GpuVendor {
    /// Guesses the vendor from a marketing name ("NVIDIA RTX 4090", "Radeon RX 7900").
    pub fn from_name(name: &str) -> Self {
        let n = name.to_ascii_lowercase();
        if ["nvidia", "geforce", "rtx", "gtx", "quadro", "tesla"]
            .iter()
            .any(|k| n.contains(k))
        {
            Self::Nvidia
        } else if ["amd", "radeon", "instinct"].iter().any(|k| n.contains(k)) {
            Self::Amd
        } else if ["intel", "arc ", "iris"].iter().any(|k| n.contains(k)) {
            Self::Intel
        } else if n.contains("apple") {
            Self::Apple
        } else {
            Self::Other
        }
    }
}

/// One GPU.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Gpu {
    /// Vendor.
    #[serde(default)]
    pub vendor: GpuVendor,
    /// Marketing name.
    #[cfg_attr(feature = "openapi", schema(max_length = 256))]
    pub name: String,
    /// Index as the driver numbers it.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(maximum = 1023))]
    pub index: u32,
    /// Driver-assigned UUID, empty when unknown.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(max_length = 256))]
    pub uuid: String,
    /// Memory in bytes.
    pub vram_bytes: u64,
    /// Driver version, empty when unknown.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(max_length = 256))]
    pub driver_version: String,
    /// CUDA compute capability such as "8.6", empty when not NVIDIA or unknown.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(max_length = 256))]
    pub compute_capability: String,
}

/// Everything a worker reports about its machine at registration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Capabilities {
    /// The CPU.
    pub cpu: Cpu,
    /// Installed memory in bytes.
    pub memory_bytes: u64,
    /// Disks.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(max_items = 64))]
    pub disks: Vec<Disk>,
    /// GPUs.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(max_items = 64))]
    pub gpus: Vec<Gpu>,
    /// Operating system, e.g. "linux", "windows", "macos".
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(max_length = 256))]
    pub os: String,
    /// CPU architecture, e.g. "x86_64".
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(max_length = 256))]
    pub arch: String,
    /// Host name.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(max_length = 256))]
    pub hostname: String,
    /// Region or location label, e.g. "eu-west"; empty when unknown.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(max_length = 256))]
    pub region: String,
    /// Whether the host has a public (reachable) address.
    #[serde(default)]
    pub public_address: bool,
    /// The agent's version.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(max_length = 256))]
    pub agent_version: String,
}

impl Capabilities {
    /// What assignment, tiers and the pool's totals read of it.
    pub fn resources(&self) -> Resources<'_> {
        Resources {
            cores: self.cpu.cores,
            memory_bytes: self.memory_bytes,
            disks: &self.disks,
            gpus: &self.gpus,
        }
    }
}

/// The figures of a machine that decide what it can run: read from its [`Capabilities`], or from a server's compact
/// copy of them.
#[derive(Debug, Clone, Copy)]
pub struct Resources<'a> {
    /// CPU cores.
    pub cores: u32,
    /// Installed memory, bytes.
    pub memory_bytes: u64,
    /// Its disks.
    pub disks: &'a [Disk],
    /// Its GPUs.
    pub gpus: &'a [Gpu],
}

impl Resources<'_> {
    /// The largest VRAM of any single GPU, in bytes.
    pub fn max_vram(&self) -> u64 {
        self.gpus.iter().map(|g| g.vram_bytes).max().unwrap_or(0)
    }

    /// The sum of VRAM over all GPUs.
    pub fn total_vram(&self) -> u64 {
        self.gpus
            .iter()
            .fold(0u64, |sum, g| sum.saturating_add(g.vram_bytes))
    }

    /// The most free space on any one disk.
    pub fn max_free_disk(&self) -> u64 {
        self.disks.iter().map(|d| d.free_bytes).max().unwrap_or(0)
    }

    /// Free space over all disks.
    pub fn total_free_disk(&self) -> u64 {
        self.disks
            .iter()
            .fold(0u64, |sum, d| sum.saturating_add(d.free_bytes))
    }
}

/// The capabilities object of a legacy RMA worker:
/// `{"cpu_cores": 2, "ram": "23.5GB", "storage": "252.0GB", "gpu_type": "...", "gpu_memory": "16GB"}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LegacyCapabilities {
    /// CPU cores.
    pub cpu_cores: u32,
    /// Memory, e.g. "23.5GB".
    #[cfg_attr(feature = "openapi", schema(max_length = 256))]
    pub ram: String,
    /// Free storage, e.g. "252.0GB".
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(max_length = 256))]
    pub storage: Option<String>,
    /// GPU name, e.g. "NVIDIA RTX 4090".
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(max_length = 256))]
    pub gpu_type: Option<String>,
    /// GPU memory, e.g. "24GB" or "4096MB".
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(max_length = 256))]
    pub gpu_memory: Option<String>,
    /// Free-form bandwidth figure; kept for display only.
    #[serde(default)]
    pub network_bandwidth: Option<serde_json::Value>,
}
