//! A worker's machine as the registry keeps it: its [`Capabilities`] in 80 bytes, with the text that many workers
//! share (operating system, architecture, CPU brand, region, agent version) held once in a [`Kind`] they point to.
//!
//! At 10,000 workers every byte of a worker is 10 kB: the capabilities as sent took 224 bytes of each worker and
//! six small allocations; here they take 80 bytes and two or three (the host name, the disks, any GPUs).

use std::collections::HashSet;
use std::sync::Arc;

use commons_shared::caps::{Capabilities, Cpu, Disk, Gpu, Resources};
use parking_lot::Mutex;

/// The text that many machines share.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Kind {
    os: Box<str>,
    arch: Box<str>,
    cpu_brand: Box<str>,
    region: Box<str>,
    agent_version: Box<str>,
}

/// The kinds in use, each held once. Keyed by text that workers choose, so hashed with the standard library's
/// keyed hash; kinds no worker points to any more go at the next [`Kinds::sweep`].
#[derive(Debug, Default)]
pub struct Kinds(Mutex<HashSet<Arc<Kind>>>);

impl Kinds {
    /// The compact copy of `caps`.
    pub fn machine(&self, caps: Capabilities) -> Machine {
        let kind = Kind {
            os: caps.os.into(),
            arch: caps.arch.into(),
            cpu_brand: caps.cpu.brand.into(),
            region: caps.region.into(),
            agent_version: caps.agent_version.into(),
        };
        let kind = {
            let mut kinds = self.0.lock();
            match kinds.get(&kind) {
                Some(k) => k.clone(),
                None => {
                    let k = Arc::new(kind);
                    kinds.insert(k.clone());
                    k
                }
            }
        };
        Machine {
            kind,
            hostname: caps.hostname.into(),
            memory_bytes: caps.memory_bytes,
            cores: caps.cpu.cores,
            threads: caps.cpu.threads,
            frequency_mhz: caps.cpu.frequency_mhz,
            public_address: caps.public_address,
            disks: caps.disks.into(),
            gpus: caps.gpus.into(),
        }
    }

    /// Forgets the kinds no machine points to. Returns how many are left.
    pub fn sweep(&self) -> usize {
        let mut kinds = self.0.lock();
        kinds.retain(|k| Arc::strong_count(k) > 1);
        kinds.len()
    }
}

/// A worker's machine: what it reported at registration.
#[derive(Debug)]
pub struct Machine {
    kind: Arc<Kind>,
    hostname: Box<str>,
    memory_bytes: u64,
    cores: u32,
    threads: u32,
    frequency_mhz: u32,
    public_address: bool,
    disks: Box<[Disk]>,
    gpus: Box<[Gpu]>,
}

impl Machine {
    /// The capabilities it reported.
    pub fn capabilities(&self) -> Capabilities {
        let k = &*self.kind;
        Capabilities {
            cpu: Cpu {
                brand: k.cpu_brand.to_string(),
                cores: self.cores,
                threads: self.threads,
                frequency_mhz: self.frequency_mhz,
            },
            memory_bytes: self.memory_bytes,
            disks: self.disks.to_vec(),
            gpus: self.gpus.to_vec(),
            os: k.os.to_string(),
            arch: k.arch.to_string(),
            hostname: self.hostname.to_string(),
            region: k.region.to_string(),
            public_address: self.public_address,
            agent_version: k.agent_version.to_string(),
        }
    }

    /// What assignment and the pool's totals read of it.
    pub fn resources(&self) -> Resources<'_> {
        Resources {
            cores: self.cores,
            memory_bytes: self.memory_bytes,
            disks: &self.disks,
            gpus: &self.gpus,
        }
    }

    /// Its region or location label; empty when unknown.
    pub fn region(&self) -> &str {
        &self.kind.region
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(host: &str, region: &str) -> Capabilities {
        Capabilities {
            cpu: Cpu {
                brand: "Ryzen 9".into(),
                cores: 16,
                threads: 32,
                frequency_mhz: 4200,
            },
            memory_bytes: 64 << 30,
            disks: vec![
                Disk {
                    mount: "/".into(),
                    total_bytes: 900 << 30,
                    free_bytes: 300 << 30,
                },
                Disk {
                    mount: "/data".into(),
                    total_bytes: 2000 << 30,
                    free_bytes: 1000 << 30,
                },
            ],
            gpus: Vec::new(),
            os: "linux".into(),
            arch: "x86_64".into(),
            hostname: host.into(),
            region: region.into(),
            public_address: true,
            agent_version: "0.3.1".into(),
        }
    }

    #[test]
    fn a_machine_gives_back_what_was_reported_and_shares_its_kind() {
        let kinds = Kinds::default();
        let a = kinds.machine(caps("a", "eu-west"));
        let b = kinds.machine(caps("b", "eu-west"));
        let c = kinds.machine(caps("c", "us-east"));
        assert_eq!(a.capabilities(), caps("a", "eu-west"));
        assert_eq!(c.capabilities(), caps("c", "us-east"));
        assert!(Arc::ptr_eq(&a.kind, &b.kind), "one kind, held once");
        assert!(!Arc::ptr_eq(&a.kind, &c.kind));
        let hw = a.resources();
        assert_eq!(
            (hw.cores, hw.memory_bytes, hw.max_free_disk()),
            (16, 64 << 30, 1000 << 30)
        );
        assert_eq!(hw.total_free_disk(), 1300 << 30);
        assert_eq!(kinds.sweep(), 2);
        drop(c);
        assert_eq!(kinds.sweep(), 1, "a kind no machine uses goes");
        drop((a, b));
        assert_eq!(kinds.sweep(), 0);
    }

    #[test]
    fn a_machine_takes_80_bytes() {
        assert_eq!(std::mem::size_of::<Machine>(), 80);
    }
}
