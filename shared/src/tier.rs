//! Tier and role rules (seed 003): one pure function.

use serde::{Deserialize, Serialize};

use crate::caps::Capabilities;
use crate::units::GIB;

/// VRAM of one GPU that makes a tier-1 (GPU) worker.
pub const GPU_TIER_MIN_VRAM: u64 = 8 * GIB;
/// Memory that makes a tier-2 (service) worker, with [`SERVICE_TIER_MIN_CORES`].
pub const SERVICE_TIER_MIN_RAM: u64 = 4 * GIB;
/// Cores that make a tier-2 (service) worker.
pub const SERVICE_TIER_MIN_CORES: u32 = 2;
/// Free space on one disk above which a worker also takes the storage role.
pub const STORAGE_ROLE_MIN_FREE: u64 = 100 * GIB;

/// A worker's tier. Serialised as the seeds' integer (1, 2, 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tier {
    /// Tier 1: a GPU with at least 8 GiB of VRAM.
    Gpu = 1,
    /// Tier 2: at least 4 GiB of memory and 2 cores.
    Service = 2,
    /// Tier 3: data and storage.
    Data = 3,
}

impl Tier {
    /// All tiers, in order.
    pub const ALL: [Tier; 3] = [Tier::Gpu, Tier::Service, Tier::Data];

    /// 1, 2 or 3.
    pub fn number(self) -> u8 {
        self as u8
    }

    /// The tier with that number.
    pub fn from_number(n: u8) -> Option<Self> {
        match n {
            1 => Some(Self::Gpu),
            2 => Some(Self::Service),
            3 => Some(Self::Data),
            _ => None,
        }
    }

    /// The seeds' key for this tier in stats objects: `gpu_workers`, `service_workers`, `data_workers`.
    pub fn stats_key(self) -> &'static str {
        match self {
            Self::Gpu => "gpu_workers",
            Self::Service => "service_workers",
            Self::Data => "data_workers",
        }
    }
}

impl Serialize for Tier {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u8(self.number())
    }
}

impl<'de> Deserialize<'de> for Tier {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = u8::deserialize(d)?;
        Tier::from_number(n).ok_or_else(|| serde::de::Error::custom("tier must be 1, 2 or 3"))
    }
}

/// Tier plus roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Classification {
    /// The tier.
    pub tier: Tier,
    /// Serves as an edge (public address and the volunteer opted in).
    pub edge: bool,
    /// Offers storage (more than 100 GiB free on one disk).
    pub storage: bool,
}

/// The tier and roles a machine earns.
pub fn classify(caps: &Capabilities, edge_opt_in: bool) -> Classification {
    let tier = if caps.resources().max_vram() >= GPU_TIER_MIN_VRAM {
        Tier::Gpu
    } else if caps.memory_bytes >= SERVICE_TIER_MIN_RAM && caps.cpu.cores >= SERVICE_TIER_MIN_CORES
    {
        Tier::Service
    } else {
        Tier::Data
    };
    Classification {
        tier,
        edge: caps.public_address && edge_opt_in,
        storage: caps.resources().max_free_disk() > STORAGE_ROLE_MIN_FREE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::caps::{Cpu, Disk, Gpu};

    fn machine(
        cores: u32,
        ram_gib: u64,
        vram_gib: &[u64],
        free_gib: u64,
        public: bool,
    ) -> Capabilities {
        Capabilities {
            cpu: Cpu {
                cores,
                threads: cores * 2,
                ..Default::default()
            },
            memory_bytes: ram_gib * GIB,
            gpus: vram_gib
                .iter()
                .enumerate()
                .map(|(i, v)| Gpu {
                    name: format!("gpu{i}"),
                    index: i as u32,
                    vram_bytes: v * GIB,
                    ..Default::default()
                })
                .collect(),
            disks: vec![Disk {
                mount: "/".into(),
                total_bytes: 2 * free_gib * GIB,
                free_bytes: free_gib * GIB,
            }],
            public_address: public,
            ..Default::default()
        }
    }

    #[test]
    fn tier_table() {
        // (cores, ram GiB, VRAM per GPU, free GiB, public, opt-in) -> (tier, edge, storage)
        type Row<'a> = ((u32, u64, &'a [u64], u64, bool, bool), (Tier, bool, bool));
        let table: &[Row] = &[
            ((8, 32, &[24], 500, false, false), (Tier::Gpu, false, true)),
            ((8, 32, &[8], 50, false, false), (Tier::Gpu, false, false)),
            (
                (8, 32, &[7], 50, false, false),
                (Tier::Service, false, false),
            ),
            (
                (8, 32, &[4, 4], 50, false, false),
                (Tier::Service, false, false),
            ),
            ((2, 4, &[], 50, false, false), (Tier::Service, false, false)),
            ((1, 16, &[], 50, false, false), (Tier::Data, false, false)),
            ((4, 3, &[], 50, false, false), (Tier::Data, false, false)),
            ((2, 4, &[], 101, true, true), (Tier::Service, true, true)),
            ((2, 4, &[], 100, true, false), (Tier::Service, false, false)),
            ((1, 1, &[], 0, false, true), (Tier::Data, false, false)),
        ];
        for ((cores, ram, vram, free, public, opt_in), want) in table {
            let c = classify(&machine(*cores, *ram, vram, *free, *public), *opt_in);
            assert_eq!(
                (c.tier, c.edge, c.storage),
                *want,
                "cores={cores} ram={ram} vram={vram:?} free={free}"
            );
        }
    }

    #[test]
    fn tier_serialises_as_number() {
        assert_eq!(serde_json::to_string(&Tier::Service).unwrap(), "2");
        assert_eq!(serde_json::from_str::<Tier>("1").unwrap(), Tier::Gpu);
        assert!(serde_json::from_str::<Tier>("4").is_err());
    }
}
