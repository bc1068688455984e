//! Properties of the parsers and the pure logic, over generated inputs (proptest): sizes, registrations in both
//! shapes, catalogue overlays, and assignment.

use proptest::prelude::*;

use crate::assign::{assign, can_hold_all};
use crate::caps::{Capabilities, Cpu, Disk, Gpu, GpuVendor};
use crate::catalogue::{Catalogue, DEFAULT_CATALOGUE};
use crate::units::{GIB, format_size, parse_size};
use crate::validate::{InputError, parse_heartbeat, parse_registration};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn a_size_in_bytes_reads_back_exactly(n in 0u64..(1 << 53)) {
        prop_assert_eq!(parse_size(&n.to_string()), Ok(n));
        prop_assert_eq!(parse_size(&format!("{n}B")), Ok(n));
    }

    #[test]
    fn a_formatted_size_reads_back_within_its_rounding(n in 1u64..(1 << 50)) {
        let text = format_size(n);
        let back = parse_size(&text.replace(' ', "")).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        // One decimal of the unit (or none past 100): within 5 % of the unit, so of the value.
        let error = (back as f64 - n as f64).abs() / n as f64;
        prop_assert!(error <= 0.05, "{n} -> {text} -> {back}");
    }

    #[test]
    fn any_text_is_a_size_or_an_error(text in ".{0,24}") {
        let _ = parse_size(&text);
    }

    #[test]
    fn any_body_is_a_registration_or_an_error_naming_its_field(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        field_named(parse_registration(&body).map(|_| ()));
        field_named(parse_heartbeat(&body).map(|_| ()));
    }

    #[test]
    fn any_json_object_is_a_registration_or_an_error_naming_its_field(
        cores in any::<i64>(),
        memory in any::<i64>(),
        endpoint in "(http|https|ftp)://[a-z0-9.:]{0,20}",
        legacy_ram in "[0-9.]{0,6}(GB|MB|TB|)",
        legacy in any::<bool>(),
    ) {
        let body = if legacy {
            serde_json::json!({"capabilities": {"cpu_cores": cores, "ram": legacy_ram}, "ip_address": "10.0.0.1"})
        } else {
            serde_json::json!({"capabilities": {"cpu": {"cores": cores}, "memory_bytes": memory}, "endpoint": endpoint})
        };
        let parsed = parse_registration(body.to_string().as_bytes());
        if let Ok(w) = &parsed {
            // What is accepted is what the documents promise.
            prop_assert!((1..=crate::validate::MAX_CORES).contains(&w.capabilities.cpu.cores));
            prop_assert_eq!(w.legacy, legacy);
            if !legacy {
                prop_assert_eq!(i64::from(w.capabilities.cpu.cores), cores);
                prop_assert_eq!(w.capabilities.memory_bytes as i64, memory);
            }
        }
        field_named(parsed.map(|_| ()));
    }

    #[test]
    fn any_overlay_is_a_catalogue_or_an_error(text in "(\\[\\[service\\]\\]\n)?([a-z_]{1,12} = (\"[a-z0-9/:.]{0,12}\"|[0-9]{1,6}|true)\n){0,8}") {
        if let Ok(c) = Catalogue::load(DEFAULT_CATALOGUE, Some(&text)) {
            prop_assert!(!c.is_empty());
            for s in c.services() {
                prop_assert!(crate::catalogue::is_service_name(&s.name), "{}", s.name);
            }
        }
    }

    #[test]
    fn a_generated_service_reads_back(
        name in "[a-z][a-z0-9-]{0,20}",
        port in 1u16..,
        ram_mib in 1u64..100_000,
        cores in 0u32..64,
        replicas in 1u32..100,
    ) {
        let overlay = format!(
            "[[service]]\nname = {name:?}\nimage = \"example/{name}:1\"\nport = {port}\nmin_ram = \"{ram_mib}MB\"\n\
             min_cores = {cores}\nreplicas = {replicas}\n"
        );
        let c = Catalogue::load(DEFAULT_CATALOGUE, Some(&overlay)).unwrap();
        let s = &c.services()[c.index_of(&name).unwrap()];
        prop_assert_eq!((s.port, s.min_ram, s.min_cores, s.replicas), (port, ram_mib << 20, cores, replicas));
    }

    #[test]
    fn nothing_is_assigned_that_the_machine_cannot_hold(
        cores in 1u32..64,
        memory_gib in 0u64..256,
        disk_gib in 0u64..2000,
        vram_gib in proptest::collection::vec(0u64..48, 0..4),
        coverage in proptest::collection::vec(0u32..5, 0..8),
        current in proptest::collection::vec(0usize..8, 0..4),
        max_services in 0usize..5,
        fill_idle in any::<bool>(),
    ) {
        let catalogue = Catalogue::load(DEFAULT_CATALOGUE, None).unwrap();
        let caps = Capabilities {
            cpu: Cpu { cores, threads: cores * 2, ..Default::default() },
            memory_bytes: memory_gib * GIB,
            disks: vec![Disk { mount: "/".into(), total_bytes: disk_gib * GIB, free_bytes: disk_gib * GIB }],
            gpus: vram_gib
                .iter()
                .enumerate()
                .map(|(i, v)| Gpu { vendor: GpuVendor::Nvidia, name: "g".into(), index: i as u32, vram_bytes: v * GIB,
                                    ..Default::default() })
                .collect(),
            ..Default::default()
        };
        let chosen = assign(&caps, &catalogue, &coverage, &current, max_services, fill_idle);
        prop_assert!(can_hold_all(&caps, &catalogue, &chosen), "{chosen:?} on {caps:?}");
        let mut unique = chosen.clone();
        unique.sort_unstable();
        unique.dedup();
        prop_assert_eq!(unique.len(), chosen.len());
        // What it held is kept (as far as the machine holds it); new services only up to the limit.
        let kept = chosen.iter().filter(|i| current.contains(i)).count();
        prop_assert!(chosen.len() <= max_services.max(kept), "{chosen:?}, {max_services}");
    }
}

/// An error names a field (or says the body is not JSON): never a panic, never an empty name.
fn field_named(r: Result<(), InputError>) {
    match r {
        Ok(()) | Err(InputError::Syntax(_)) => {}
        Err(InputError::Field { field, message }) => {
            assert!(
                !field.is_empty() && !message.is_empty(),
                "{field}: {message}"
            );
        }
    }
}
