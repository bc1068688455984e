//! Which services a worker runs.
//!
//! Rules: a worker only gets a service whose needs it meets, counting what it already holds (memory and storage
//! add up, each GPU service takes a GPU of its own); services furthest below their wanted replicas are filled first;
//! a new worker whose every candidate is already covered still gets the least-covered service it can hold, so no
//! donated machine sits idle.

use crate::caps::{Capabilities, GpuVendor, Resources};
use crate::catalogue::{Catalogue, ServiceSpec};

impl<'a> From<&'a Capabilities> for Resources<'a> {
    fn from(caps: &'a Capabilities) -> Self {
        caps.resources()
    }
}

/// What a worker has already committed to the services it holds.
#[derive(Debug, Clone)]
struct Holding<'a> {
    hw: Resources<'a>,
    ram: u64,
    storage: u64,
    gpu_taken: Vec<bool>,
}

impl<'a> Holding<'a> {
    fn new(hw: Resources<'a>) -> Self {
        Self {
            hw,
            ram: 0,
            storage: 0,
            gpu_taken: vec![false; hw.gpus.len()],
        }
    }

    /// The GPU a service would take: the smallest free NVIDIA GPU with enough VRAM.
    fn gpu_for(&self, spec: &ServiceSpec) -> Option<usize> {
        self.hw
            .gpus
            .iter()
            .enumerate()
            .filter(|(i, g)| {
                !self.gpu_taken[*i]
                    && g.vendor == GpuVendor::Nvidia
                    && g.vram_bytes >= spec.min_vram
            })
            .min_by_key(|(_, g)| g.vram_bytes)
            .map(|(i, _)| i)
    }

    fn try_take(&mut self, spec: &ServiceSpec) -> bool {
        if self.hw.cores < spec.min_cores
            || self.ram.saturating_add(spec.min_ram) > self.hw.memory_bytes
            || self.storage.saturating_add(spec.min_storage) > self.hw.max_free_disk()
        {
            return false;
        }
        let gpu = if spec.requires_gpu {
            match self.gpu_for(spec) {
                Some(i) => Some(i),
                None => return false,
            }
        } else {
            None
        };
        if let Some(i) = gpu {
            self.gpu_taken[i] = true;
        }
        self.ram += spec.min_ram;
        self.storage += spec.min_storage;
        true
    }
}

/// Whether a machine could run this one service on its own.
pub fn can_hold<'a>(hw: impl Into<Resources<'a>>, spec: &ServiceSpec) -> bool {
    Holding::new(hw.into()).try_take(spec)
}

/// Whether a machine could run all of these services at once.
pub fn can_hold_all<'a>(
    hw: impl Into<Resources<'a>>,
    catalogue: &Catalogue,
    services: &[usize],
) -> bool {
    let mut h = Holding::new(hw.into());
    services
        .iter()
        .all(|&i| catalogue.get(i).is_some_and(|s| h.try_take(s)))
}

/// The services a worker should run: those it holds (`current`, kept) plus what it can add.
///
/// `coverage[i]` is how many live workers already run service `i` (this worker excluded). At most `max_services`
/// services in all. With `fill_idle`, a worker left with nothing gets the least-covered service it can hold even if
/// every service already has its wanted replicas (used at registration; rebalancing only fills gaps).
pub fn assign<'a>(
    hw: impl Into<Resources<'a>>,
    catalogue: &Catalogue,
    coverage: &[u32],
    current: &[usize],
    max_services: usize,
    fill_idle: bool,
) -> Vec<usize> {
    let mut holding = Holding::new(hw.into());
    let mut chosen: Vec<usize> = Vec::with_capacity(max_services);
    for &i in current {
        if let Some(spec) = catalogue.get(i)
            && !chosen.contains(&i)
            && holding.try_take(spec)
        {
            chosen.push(i);
        }
    }
    let cover = |i: usize| coverage.get(i).copied().unwrap_or(0);
    let mut order: Vec<usize> = (0..catalogue.len())
        .filter(|i| !chosen.contains(i))
        .collect();
    // Least covered first, as a fraction of what is wanted; GPU services before CPU ones at equal coverage so a
    // scarce GPU is not spent on nothing; then catalogue order.
    order.sort_by(|&a, &b| {
        let (sa, sb) = (catalogue.get(a).unwrap(), catalogue.get(b).unwrap());
        let ra = f64::from(cover(a)) / f64::from(sa.replicas.max(1));
        let rb = f64::from(cover(b)) / f64::from(sb.replicas.max(1));
        ra.total_cmp(&rb)
            .then(sb.requires_gpu.cmp(&sa.requires_gpu))
            .then(a.cmp(&b))
    });
    for &i in &order {
        if chosen.len() >= max_services {
            break;
        }
        let spec = catalogue.get(i).unwrap();
        if cover(i) < spec.replicas && holding.try_take(spec) {
            chosen.push(i);
        }
    }
    if fill_idle
        && chosen.is_empty()
        && max_services > 0
        && let Some(&i) = order
            .iter()
            .find(|&&i| holding.try_take(catalogue.get(i).unwrap()))
    {
        chosen.push(i);
    }
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::caps::{Cpu, Disk, Gpu};
    use crate::units::GIB;

    fn catalogue() -> Catalogue {
        Catalogue::load(
            r#"
            [[service]]
            name = "gpu-big"
            image = "i"
            port = 1
            requires_gpu = true
            min_vram = "16GB"
            min_ram = "8GB"
            replicas = 1
            [[service]]
            name = "gpu-small"
            image = "i"
            port = 2
            requires_gpu = true
            min_vram = "8GB"
            min_ram = "4GB"
            replicas = 2
            [[service]]
            name = "cpu"
            image = "i"
            port = 3
            min_ram = "4GB"
            min_cores = 2
            replicas = 2
            [[service]]
            name = "tiny"
            image = "i"
            port = 4
            min_ram = "512MB"
            replicas = 1
            [[service]]
            name = "disk"
            image = "i"
            port = 5
            min_ram = "1GB"
            min_storage = "100GB"
            replicas = 1
        "#,
            None,
        )
        .unwrap()
    }

    fn caps(cores: u32, ram_gib: u64, vram_gib: &[u64], free_gib: u64) -> Capabilities {
        Capabilities {
            cpu: Cpu {
                cores,
                ..Default::default()
            },
            memory_bytes: ram_gib * GIB,
            gpus: vram_gib
                .iter()
                .map(|v| Gpu {
                    vendor: GpuVendor::Nvidia,
                    name: "g".into(),
                    vram_bytes: v * GIB,
                    ..Default::default()
                })
                .collect(),
            disks: vec![Disk {
                mount: "/".into(),
                total_bytes: free_gib * GIB,
                free_bytes: free_gib * GIB,
            }],
            ..Default::default()
        }
    }

    fn names(c: &Catalogue, v: &[usize]) -> Vec<String> {
        v.iter().map(|&i| c.get(i).unwrap().name.clone()).collect()
    }

    #[test]
    fn assignment_table() {
        let c = catalogue();
        // (cores, ram, vram, free disk, coverage per service, max) -> services
        type Row<'a> = ((u32, u64, &'a [u64], u64), [u32; 5], usize, &'a [&'a str]);
        let table: &[Row] = &[
            // Empty pool, a 24 GiB GPU box: GPU services first; one GPU holds one GPU service.
            (
                (8, 32, &[24], 50),
                [0, 0, 0, 0, 0],
                3,
                &["gpu-big", "cpu", "tiny"],
            ),
            // Two GPUs: both GPU services.
            (
                (8, 32, &[24, 8], 50),
                [0, 0, 0, 0, 0],
                3,
                &["gpu-big", "gpu-small", "cpu"],
            ),
            // gpu-big covered: the small GPU service goes first.
            (
                (8, 32, &[24], 50),
                [1, 0, 0, 0, 0],
                3,
                &["gpu-small", "cpu", "tiny"],
            ),
            // A laptop: no GPU, 2 GiB: only what fits in memory.
            ((2, 2, &[], 50), [0, 0, 0, 0, 0], 3, &["tiny"]),
            // Memory adds up: 5 GiB holds cpu (4) + tiny (0.5) but not disk (1) too.
            ((4, 5, &[], 500), [0, 0, 0, 0, 0], 3, &["cpu", "tiny"]),
            // Storage role: a big disk gets the disk service when it is the least covered.
            ((4, 16, &[], 500), [0, 0, 2, 1, 0], 1, &["disk"]),
            // Everything covered: an idle worker still gets the least-covered service it can hold.
            ((4, 16, &[], 50), [1, 2, 2, 1, 1], 3, &["cpu"]),
            // An 8 GiB GPU cannot hold a 16 GiB service, and 7 GiB cannot hold an 8 GiB one.
            ((8, 32, &[7], 50), [0, 0, 2, 1, 1], 3, &["cpu"]),
            // Max services respected.
            (
                (8, 64, &[24, 24], 500),
                [0, 0, 0, 0, 0],
                2,
                &["gpu-big", "gpu-small"],
            ),
        ];
        for ((cores, ram, vram, free), coverage, max, want) in table {
            let got = assign(
                &caps(*cores, *ram, vram, *free),
                &c,
                coverage,
                &[],
                *max,
                true,
            );
            assert_eq!(
                names(&c, &got),
                *want,
                "cores={cores} ram={ram} vram={vram:?} coverage={coverage:?}"
            );
        }
    }

    #[test]
    fn never_assigns_what_cannot_be_held() {
        let c = catalogue();
        for cores in [1, 2, 8] {
            for ram in [0, 1, 4, 9, 64] {
                for vram in [&[][..], &[4], &[8], &[16, 8]] {
                    for free in [0, 100, 1000] {
                        let m = caps(cores, ram, vram, free);
                        for cov in [[0; 5], [9; 5], [1, 0, 3, 0, 1]] {
                            let got = assign(&m, &c, &cov, &[], 8, true);
                            assert!(can_hold_all(&m, &c, &got), "{m:?} got {got:?}");
                            for &i in &got {
                                assert!(can_hold(&m, c.get(i).unwrap()));
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn rebalancing_keeps_current_and_fills_gaps_only() {
        let c = catalogue();
        let m = caps(8, 32, &[24], 50);
        let tiny = c.index_of("tiny").unwrap();
        // All covered: nothing added, current kept.
        assert_eq!(
            assign(&m, &c, &[1, 2, 2, 1, 1], &[tiny], 3, false),
            vec![tiny]
        );
        // cpu has a gap: it is added beside tiny.
        let got = assign(&m, &c, &[1, 2, 0, 1, 1], &[tiny], 3, false);
        assert_eq!(names(&c, &got), ["tiny", "cpu"]);
        // Without fill_idle an idle worker stays idle when everything is covered.
        assert!(assign(&m, &c, &[1, 2, 2, 1, 1], &[], 3, false).is_empty());
    }

    #[test]
    fn amd_gpus_do_not_get_cuda_services() {
        let c = catalogue();
        let mut m = caps(8, 32, &[24], 50);
        m.gpus[0].vendor = GpuVendor::Amd;
        let got = names(&c, &assign(&m, &c, &[0; 5], &[], 3, true));
        assert!(!got.iter().any(|n| n.starts_with("gpu")), "{got:?}");
    }
}
