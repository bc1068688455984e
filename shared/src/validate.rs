//! Bounds on what a client may send, and the parsers that turn a request body into a checked value or an error
//! that names the field.
//!
//! Syntax errors (not JSON at all) are [`InputError::Syntax`] (HTTP 400); JSON of the wrong shape or with values
//! out of bounds is [`InputError::Field`] (HTTP 422) with the field's dotted path.

use serde::de::DeserializeOwned;
use thiserror::Error;

use crate::api::{HeartbeatRequest, LegacyRegisterRequest, NewWorker, PathKind, RegisterRequest};
use crate::caps::{Capabilities, Cpu, Disk, Gpu, GpuVendor};
use crate::edge::{CoordinatorFigures, EdgeHeartbeat, EdgeRegisterRequest};
use crate::units::parse_size;

/// Largest body on worker routes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Longest id.
pub const MAX_ID_LEN: usize = 64;
/// Longest string field.
pub const MAX_STRING_LEN: usize = 256;
/// Longest list.
pub const MAX_LIST_LEN: usize = 64;
/// The most CPU cores (and hardware threads) a machine can report.
pub const MAX_CORES: u32 = 65_536;
/// The highest GPU index a machine can report.
pub const MAX_GPU_INDEX: u32 = 1023;
/// The longest round trip a heartbeat can report, ms (ten minutes: anything longer is not a round trip).
pub const MAX_RTT_MS: u32 = 600_000;
/// The most connections of one kind a heartbeat's path can count.
pub const MAX_PATH_CONNECTIONS: u32 = 100_000;

/// A list of bounded strings in the OpenAPI document, for `schema_with` (field attributes cannot bound the items of
/// a `Vec<String>`).
#[cfg(feature = "openapi")]
pub(crate) fn string_list(
    max_items: usize,
    max_length: usize,
    pattern: Option<&str>,
    description: &str,
) -> utoipa::openapi::schema::Array {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Type};
    ArrayBuilder::new()
        .items(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(pattern.map(|_| 1))
                .max_length(Some(max_length))
                .pattern(pattern),
        )
        .max_items(Some(max_items))
        .description(Some(description))
        .build()
}

/// A request body that cannot be accepted.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum InputError {
    /// Not JSON.
    #[error("the body is not valid JSON: {0}")]
    Syntax(String),
    /// A field is missing, of the wrong type, or out of bounds.
    #[error("{field}: {message}")]
    Field {
        /// Dotted path, e.g. `capabilities.gpu_memory`.
        field: String,
        /// What is wrong with it.
        message: String,
    },
}

impl InputError {
    /// A field error.
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Field {
            field: field.into(),
            message: message.into(),
        }
    }
}

fn from_json_error(e: serde_path_to_error::Error<serde_json::Error>) -> InputError {
    let path = e.path().to_string();
    let inner = e.into_inner();
    match inner.classify() {
        serde_json::error::Category::Data => {
            let field = if path == "." { "body".to_owned() } else { path };
            // serde's message already names a missing field; keep it but drop the position suffix.
            let msg = inner.to_string();
            let msg = msg.split(" at line ").next().unwrap_or(&msg).to_owned();
            InputError::Field {
                field,
                message: msg,
            }
        }
        _ => InputError::Syntax(inner.to_string()),
    }
}

/// Parses JSON into `T`, naming the field on a shape error.
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, InputError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut de).map_err(from_json_error)?;
    de.end().map_err(|e| InputError::Syntax(e.to_string()))?;
    Ok(value)
}

fn from_value<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, InputError> {
    serde_path_to_error::deserialize(value).map_err(from_json_error)
}

/// Checks string lengths, list lengths and numbers.
#[derive(Debug, Default)]
struct Check {
    error: Option<InputError>,
}

impl Check {
    fn fail(&mut self, field: &str, message: String) {
        if self.error.is_none() {
            self.error = Some(InputError::field(field, message));
        }
    }

    /// At most `max` characters (as the OpenAPI document's `maxLength` counts them), no control characters.
    fn string(&mut self, field: &str, value: &str, max: usize) {
        // Bytes bound characters from above: only a long string is counted.
        let chars = if value.len() > max {
            value.chars().count()
        } else {
            value.len()
        };
        if chars > max {
            self.fail(
                field,
                format!("is {chars} characters long; at most {max} allowed"),
            );
        } else if value.chars().any(char::is_control) {
            self.fail(field, "contains control characters".into());
        }
    }

    fn opt_string(&mut self, field: &str, value: &Option<String>, max: usize) {
        if let Some(v) = value {
            self.string(field, v, max);
        }
    }

    fn list<T>(&mut self, field: &str, list: &[T]) {
        if list.len() > MAX_LIST_LEN {
            self.fail(
                field,
                format!("has {} entries; at most {MAX_LIST_LEN} allowed", list.len()),
            );
        }
    }

    fn fraction(&mut self, field: &str, v: f64) {
        if !v.is_finite() || !(0.0..=1.0).contains(&v) {
            self.fail(field, format!("must be a number from 0 to 1, got {v}"));
        }
    }

    fn url(&mut self, field: &str, value: &Option<String>) {
        if let Some(v) = value {
            self.string(field, v, MAX_STRING_LEN);
            if !(v.starts_with("http://") || v.starts_with("https://"))
                || v.len() < 10
                || v.contains(char::is_whitespace)
            {
                self.fail(
                    field,
                    format!("must be an http:// or https:// URL, got {v:?}"),
                );
            }
        }
    }

    fn finish(self) -> Result<(), InputError> {
        self.error.map_or(Ok(()), Err)
    }
}

fn check_capabilities(c: &mut Check, caps: &Capabilities) {
    c.string("capabilities.cpu.brand", &caps.cpu.brand, MAX_STRING_LEN);
    if !(1..=MAX_CORES).contains(&caps.cpu.cores) {
        c.fail(
            "capabilities.cpu.cores",
            format!("must be from 1 to {MAX_CORES}"),
        );
    }
    if caps.cpu.threads > MAX_CORES {
        c.fail(
            "capabilities.cpu.threads",
            format!("must be at most {MAX_CORES}"),
        );
    }
    c.list("capabilities.disks", &caps.disks);
    for (i, d) in caps.disks.iter().enumerate() {
        c.string(
            &format!("capabilities.disks[{i}].mount"),
            &d.mount,
            MAX_STRING_LEN,
        );
        if d.free_bytes > d.total_bytes {
            c.fail(
                &format!("capabilities.disks[{i}].free_bytes"),
                "is larger than total_bytes".into(),
            );
        }
    }
    c.list("capabilities.gpus", &caps.gpus);
    for (i, g) in caps.gpus.iter().enumerate() {
        if g.index > MAX_GPU_INDEX {
            c.fail(
                &format!("capabilities.gpus[{i}].index"),
                format!("must be at most {MAX_GPU_INDEX}"),
            );
        }
        c.string(
            &format!("capabilities.gpus[{i}].name"),
            &g.name,
            MAX_STRING_LEN,
        );
        c.string(
            &format!("capabilities.gpus[{i}].uuid"),
            &g.uuid,
            MAX_STRING_LEN,
        );
        c.string(
            &format!("capabilities.gpus[{i}].driver_version"),
            &g.driver_version,
            MAX_STRING_LEN,
        );
        c.string(
            &format!("capabilities.gpus[{i}].compute_capability"),
            &g.compute_capability,
            MAX_STRING_LEN,
        );
    }
    for (field, v) in [
        ("capabilities.os", &caps.os),
        ("capabilities.arch", &caps.arch),
        ("capabilities.hostname", &caps.hostname),
        ("capabilities.region", &caps.region),
        ("capabilities.agent_version", &caps.agent_version),
    ] {
        c.string(field, v, MAX_STRING_LEN);
    }
}

fn legacy_size(field: &str, text: &str) -> Result<u64, InputError> {
    parse_size(text).map_err(|e| InputError::field(field, e.to_string()))
}

fn from_legacy(req: LegacyRegisterRequest) -> Result<NewWorker, InputError> {
    let l = &req.capabilities;
    let mut c = Check::default();
    c.string("capabilities.ram", &l.ram, MAX_STRING_LEN);
    c.opt_string("capabilities.storage", &l.storage, MAX_STRING_LEN);
    c.opt_string("capabilities.gpu_type", &l.gpu_type, MAX_STRING_LEN);
    c.opt_string("capabilities.gpu_memory", &l.gpu_memory, MAX_STRING_LEN);
    c.finish()?;
    if !(1..=MAX_CORES).contains(&l.cpu_cores) {
        return Err(InputError::field(
            "capabilities.cpu_cores",
            format!("must be from 1 to {MAX_CORES}"),
        ));
    }
    let memory_bytes = legacy_size("capabilities.ram", &l.ram)?;
    let storage = l
        .storage
        .as_deref()
        .map(|s| legacy_size("capabilities.storage", s))
        .transpose()?;
    let gpu_name = l
        .gpu_type
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty() && !s.eq_ignore_ascii_case("none"));
    let gpus = match (gpu_name, l.gpu_memory.as_deref()) {
        (Some(name), vram) => vec![Gpu {
            vendor: GpuVendor::from_name(name),
            name: name.to_owned(),
            vram_bytes: vram
                .map(|v| legacy_size("capabilities.gpu_memory", v))
                .transpose()?
                .unwrap_or(0),
            ..Default::default()
        }],
        (None, Some(v)) => {
            // VRAM without a GPU name: still check it so a bad value is reported, then keep an unnamed GPU.
            let vram_bytes = legacy_size("capabilities.gpu_memory", v)?;
            vec![Gpu {
                name: "unknown".into(),
                vram_bytes,
                ..Default::default()
            }]
        }
        (None, None) => Vec::new(),
    };
    let capabilities = Capabilities {
        cpu: Cpu {
            cores: l.cpu_cores,
            threads: l.cpu_cores,
            ..Default::default()
        },
        memory_bytes,
        disks: storage
            .map(|s| {
                vec![Disk {
                    mount: "/".into(),
                    total_bytes: s,
                    free_bytes: s,
                }]
            })
            .unwrap_or_default(),
        gpus,
        ..Default::default()
    };
    Ok(NewWorker {
        capabilities,
        endpoint: None,
        tunnel_url: req.tunnel_url,
        ip_address: req.ip_address,
        edge_opt_in: false,
        enrollment_token: req.enrollment_token,
        legacy: true,
        peer_id: None,
    })
}

/// Parses and checks a registration body in either shape.
///
/// The legacy shape is recognised by its capabilities (`ram` or `cpu_cores` present).
pub fn parse_registration(body: &[u8]) -> Result<NewWorker, InputError> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| match e.classify() {
            serde_json::error::Category::Data => InputError::field("body", e.to_string()),
            _ => InputError::Syntax(e.to_string()),
        })?;
    let Some(obj) = value.as_object() else {
        return Err(InputError::field("body", "must be a JSON object"));
    };
    let legacy = obj
        .get("capabilities")
        .and_then(|c| c.as_object())
        .is_some_and(|c| c.contains_key("ram") || c.contains_key("cpu_cores"));
    let worker = if legacy {
        from_legacy(from_value::<LegacyRegisterRequest>(value)?)?
    } else {
        let r: RegisterRequest = from_value(value)?;
        NewWorker {
            capabilities: r.capabilities,
            endpoint: r.endpoint,
            tunnel_url: r.tunnel_url,
            ip_address: r.ip_address,
            edge_opt_in: r.edge_opt_in,
            enrollment_token: r.enrollment_token,
            legacy: false,
            peer_id: r.peer_id,
        }
    };
    let mut c = Check::default();
    check_capabilities(&mut c, &worker.capabilities);
    c.url("endpoint", &worker.endpoint);
    c.url("tunnel_url", &worker.tunnel_url);
    c.opt_string("ip_address", &worker.ip_address, MAX_STRING_LEN);
    if let Some(ip) = &worker.ip_address
        && ip.parse::<std::net::IpAddr>().is_err()
    {
        c.fail("ip_address", format!("{ip:?} is not an IP address"));
    }
    c.opt_string("enrollment_token", &worker.enrollment_token, MAX_STRING_LEN);
    if let Some(p) = &worker.peer_id
        && !is_peer_id(p)
    {
        c.fail(
            "peer_id",
            "is not a libp2p peer id (base58, 40 to 64 characters)".into(),
        );
    }
    c.finish()?;
    Ok(worker)
}

/// Whether `s` looks like a base58 libp2p peer id (the DHT checks signatures against the real thing).
pub fn is_peer_id(s: &str) -> bool {
    (40..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() && !matches!(b, b'0' | b'O' | b'I' | b'l'))
}

/// Parses and checks a heartbeat body. `free_memory_bytes` is filled from the legacy `available_memory` when only that is sent.
pub fn parse_heartbeat(body: &[u8]) -> Result<HeartbeatRequest, InputError> {
    let mut hb: HeartbeatRequest = parse_json(body)?;
    let mut c = Check::default();
    c.string("worker_id", &hb.worker_id, MAX_ID_LEN);
    c.fraction("load", hb.load);
    c.list("gpus", &hb.gpus);
    for (i, g) in hb.gpus.iter().enumerate() {
        if g.index > MAX_GPU_INDEX {
            c.fail(
                &format!("gpus[{i}].index"),
                format!("must be at most {MAX_GPU_INDEX}"),
            );
        }
        c.fraction(&format!("gpus[{i}].utilization"), f64::from(g.utilization));
        if !g.temperature_c.is_finite() || !(-50.0..=150.0).contains(&g.temperature_c) {
            c.fail(
                &format!("gpus[{i}].temperature_c"),
                format!("must be from -50 to 150 °C, got {}", g.temperature_c),
            );
        }
    }
    c.list("containers", &hb.containers);
    for (i, k) in hb.containers.iter().enumerate() {
        c.string(&format!("containers[{i}].name"), &k.name, MAX_STRING_LEN);
    }
    c.opt_string("available_memory", &hb.available_memory, MAX_STRING_LEN);
    c.opt_string("agent_version", &hb.agent_version, MAX_STRING_LEN);
    c.url("endpoint", &hb.endpoint);
    if hb.rtt_ms.is_some_and(|r| r > MAX_RTT_MS) {
        c.fail("rtt_ms", format!("must be at most {MAX_RTT_MS}"));
    }
    if let Some(paths) = &hb.paths {
        if paths.len() > PathKind::ALL.len() {
            c.fail(
                "paths",
                format!("must have at most {} entries", PathKind::ALL.len()),
            );
        }
        for (i, p) in paths.iter().enumerate() {
            if paths[..i].iter().any(|q| q.kind == p.kind) {
                c.fail(
                    &format!("paths[{i}].kind"),
                    format!("{} is listed twice", p.kind.as_str()),
                );
            }
            if p.rtt_ms.is_some_and(|r| r > MAX_RTT_MS) {
                c.fail(
                    &format!("paths[{i}].rtt_ms"),
                    format!("must be at most {MAX_RTT_MS}"),
                );
            }
            if p.connections > MAX_PATH_CONNECTIONS {
                c.fail(
                    &format!("paths[{i}].connections"),
                    format!("must be at most {MAX_PATH_CONNECTIONS}"),
                );
            }
        }
    }
    c.finish()?;
    if let Some(name) = &hb.display_name {
        hb.display_name = Some(crate::usage::check_display_name(name)?);
    }
    if hb.free_memory_bytes.is_none()
        && let Some(text) = &hb.available_memory
    {
        hb.free_memory_bytes = Some(legacy_size("available_memory", text)?);
    }
    Ok(hb)
}

fn check_figures(c: &mut Check, prefix: &str, f: &CoordinatorFigures) {
    c.fraction(&format!("{prefix}load"), f.load);
    if !f.latency_ms.is_finite() || f.latency_ms < 0.0 {
        c.fail(
            &format!("{prefix}latency_ms"),
            format!(
                "must be a finite number of at least 0, got {}",
                f.latency_ms
            ),
        );
    }
    c.list(
        &format!("{prefix}services"),
        &f.services.iter().collect::<Vec<_>>(),
    );
    for name in f.services.keys() {
        c.string(&format!("{prefix}services"), name, MAX_ID_LEN);
    }
}

/// A coordinator's registration at the edge, checked; the URL (`url` or `tunnel_url`) is required.
pub fn parse_edge_register(body: &[u8]) -> Result<(EdgeRegisterRequest, String), InputError> {
    let r: EdgeRegisterRequest = parse_json(body)?;
    let url = r.url.clone().or_else(|| r.tunnel_url.clone());
    let Some(url) = url else {
        return Err(InputError::field(
            "url",
            "is required: the coordinator's public URL (url or tunnel_url)",
        ));
    };
    let mut c = Check::default();
    c.url("url", &Some(url.clone()));
    c.opt_string("id", &r.id, MAX_ID_LEN);
    if let Some(id) = &r.id
        && (id.is_empty()
            || !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
    {
        c.fail("id", "must be letters, digits, '-' or '_'".into());
    }
    c.opt_string("region", &r.region, MAX_STRING_LEN);
    if let Some(caps) = &r.capabilities {
        c.opt_string("capabilities.location", &caps.location, MAX_STRING_LEN);
    }
    c.list("dht_addrs", &r.dht_addrs);
    for (i, a) in r.dht_addrs.iter().enumerate() {
        c.string(&format!("dht_addrs[{i}]"), a, MAX_STRING_LEN);
    }
    if let Some(f) = &r.figures {
        check_figures(&mut c, "figures.", f);
    }
    c.finish()?;
    Ok((r, url))
}

/// A coordinator's heartbeat at the edge, checked.
pub fn parse_edge_heartbeat(body: &[u8]) -> Result<EdgeHeartbeat, InputError> {
    let hb: EdgeHeartbeat = parse_json(body)?;
    let mut c = Check::default();
    c.string("id", &hb.id, MAX_ID_LEN);
    check_figures(&mut c, "", &hb.figures);
    c.finish()?;
    Ok(hb)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::GIB;

    #[test]
    fn legacy_registration_units() {
        let w = parse_registration(
            br#"{"capabilities": {"cpu_cores": 2, "ram": "23.5GB", "storage": "252.0GB", "gpu_type": "NVIDIA RTX 3050", "gpu_memory": "4096MB"}, "ip_address": "10.0.0.7", "tunnel_url": "https://abc.trycloudflare.com"}"#,
        )
        .unwrap();
        assert!(w.legacy);
        assert_eq!(w.capabilities.memory_bytes, 23 * GIB + GIB / 2);
        assert_eq!(w.capabilities.resources().max_free_disk(), 252 * GIB);
        assert_eq!(w.capabilities.gpus[0].vram_bytes, 4 * GIB);
        assert_eq!(w.capabilities.gpus[0].vendor, GpuVendor::Nvidia);
        assert_eq!(w.capabilities.cpu.cores, 2);
        assert_eq!(w.ip_address.as_deref(), Some("10.0.0.7"));
    }

    fn field_of(body: &str) -> String {
        match parse_registration(body.as_bytes()) {
            Err(InputError::Field { field, .. }) => field,
            other => panic!("{body}: expected a field error, got {other:?}"),
        }
    }

    #[test]
    fn bad_registrations_name_the_field() {
        let table = [
            (
                r#"{"capabilities": {"cpu_cores": 2, "ram": "lots"}}"#,
                "capabilities.ram",
            ),
            (
                r#"{"capabilities": {"cpu_cores": 2, "ram": "8GB", "gpu_type": "Radeon", "gpu_memory": "Unknown (AMD)"}}"#,
                "capabilities.gpu_memory",
            ),
            (
                r#"{"capabilities": {"cpu_cores": 2, "ram": "8GB", "storage": "big"}}"#,
                "capabilities.storage",
            ),
            (
                r#"{"capabilities": {"cpu_cores": -2, "ram": "8GB"}}"#,
                "capabilities.cpu_cores",
            ),
            (
                r#"{"capabilities": {"cpu_cores": 0, "ram": "8GB"}}"#,
                "capabilities.cpu_cores",
            ),
            (
                r#"{"capabilities": {"cpu_cores": 2147483648, "ram": "8GB"}}"#,
                "capabilities.cpu_cores",
            ),
            (
                r#"{"capabilities": {"cpu": {"cores": 2147483648}, "memory_bytes": 1}}"#,
                "capabilities.cpu.cores",
            ),
            (
                r#"{"capabilities": {"cpu": {"cores": 2, "threads": 70000}, "memory_bytes": 1}}"#,
                "capabilities.cpu.threads",
            ),
            (
                r#"{"capabilities": {"cpu": {"cores": 2}, "memory_bytes": 1, "gpus": [{"name": "g", "index": 5000, "vram_bytes": 1}]}}"#,
                "capabilities.gpus[0].index",
            ),
            (r#"{"capabilities": {"cpu_cores": 2}}"#, "capabilities"),
            (
                r#"{"capabilities": {"cpu": {"cores": 2}, "memory_bytes": 1}, "peer_id": "not a peer id"}"#,
                "peer_id",
            ),
            (
                r#"{"capabilities": {"cpu": {"cores": 2}, "memory_bytes": -1}}"#,
                "capabilities.memory_bytes",
            ),
            (
                r#"{"capabilities": {"cpu": {"cores": 2}, "memory_bytes": 1}, "endpoint": "ftp://x"}"#,
                "endpoint",
            ),
            (
                r#"{"capabilities": {"cpu": {"cores": 2}, "memory_bytes": 1}, "ip_address": "not-an-ip"}"#,
                "ip_address",
            ),
            (
                r#"{"capabilities": {"cpu": {"cores": 2}, "memory_bytes": 1}, "surprise": 1}"#,
                "surprise",
            ),
            (r#"[1, 2]"#, "body"),
            (r#"{}"#, "body"),
        ];
        for (body, want) in table {
            let got = field_of(body);
            assert!(
                got.contains(want) || (want == "body" && got == "body"),
                "{body}: field {got:?}, wanted {want:?}"
            );
        }
    }

    #[test]
    fn long_fields_and_lists_are_refused() {
        // Characters are counted, as the document's maxLength counts them: 256 of "é" (512 bytes) pass.
        let accented = "é".repeat(MAX_STRING_LEN);
        let body = serde_json::json!({"capabilities": {"cpu": {"brand": accented, "cores": 2}, "memory_bytes": 1}});
        parse_registration(body.to_string().as_bytes()).unwrap();
        let body = serde_json::json!({"capabilities": {"cpu": {"brand": accented + "é", "cores": 2}, "memory_bytes": 1}});
        assert_eq!(field_of(&body.to_string()), "capabilities.cpu.brand");
        let long = "x".repeat(MAX_STRING_LEN + 1);
        let body = format!(
            r#"{{"capabilities": {{"cpu": {{"cores": 2, "brand": "{long}"}}, "memory_bytes": 1}}}}"#
        );
        assert_eq!(field_of(&body), "capabilities.cpu.brand");
        let disks: Vec<String> = (0..65)
            .map(|i| format!(r#"{{"mount": "/d{i}", "total_bytes": 1, "free_bytes": 1}}"#))
            .collect();
        let body = format!(
            r#"{{"capabilities": {{"cpu": {{"cores": 2}}, "memory_bytes": 1, "disks": [{}]}}}}"#,
            disks.join(",")
        );
        assert_eq!(field_of(&body), "capabilities.disks");
    }

    #[test]
    fn syntax_errors_are_not_field_errors() {
        for body in ["", "{", "{\"capabilities\": }", "nope"] {
            assert!(
                matches!(
                    parse_registration(body.as_bytes()),
                    Err(InputError::Syntax(_))
                ),
                "{body}"
            );
        }
    }

    #[test]
    fn edge_registrations() {
        let (r, url) = parse_edge_register(br#"{"worker_id": "c1", "tunnel_url": "http://127.0.0.1:9000", "capabilities": {"location": "London"}}"#).unwrap();
        assert_eq!(
            (r.id.as_deref(), url.as_str()),
            (Some("c1"), "http://127.0.0.1:9000")
        );
        for (body, field) in [
            (r#"{"id": "c1"}"#, "url"),
            (r#"{"url": "nope"}"#, "url"),
            (r#"{"url": "http://127.0.0.1:1", "id": "a b"}"#, "id"),
            (
                r#"{"url": "http://127.0.0.1:1", "figures": {"load": 2}}"#,
                "figures.load",
            ),
        ] {
            assert!(
                matches!(parse_edge_register(body.as_bytes()), Err(InputError::Field { field: f, .. }) if f == field),
                "{body}"
            );
        }
        assert!(
            matches!(parse_edge_heartbeat(br#"{"id": "c1", "load": -1}"#), Err(InputError::Field { field, .. }) if field == "load")
        );
        assert_eq!(
            parse_edge_heartbeat(br#"{"id": "c1", "load": 0.5, "services": {"ocr": 2}}"#)
                .unwrap()
                .figures
                .services["ocr"],
            2
        );
    }

    #[test]
    fn heartbeats() {
        let hb = parse_heartbeat(br#"{"worker_id": "worker-195d5431", "status": "healthy", "current_load": 1.0, "available_memory": "22.4GB"}"#).unwrap();
        assert_eq!(hb.load, 1.0);
        assert_eq!(
            hb.free_memory_bytes,
            Some((22.4 * GIB as f64).round() as u64)
        );
        let bad = [
            (
                r#"{"worker_id": "a", "status": "sleepy", "load": 0.5}"#,
                "status",
            ),
            (
                r#"{"worker_id": "a", "status": "healthy", "load": 1.5}"#,
                "load",
            ),
            (
                r#"{"worker_id": "a", "status": "healthy", "load": -0.1}"#,
                "load",
            ),
            (
                r#"{"worker_id": "a", "status": "healthy", "load": "high"}"#,
                "load",
            ),
            (
                r#"{"worker_id": "a", "status": "healthy", "load": 0.1, "free_memory_bytes": -5}"#,
                "free_memory_bytes",
            ),
            (
                r#"{"worker_id": "a", "status": "healthy", "load": 0.1, "gpus": [{"index": 0, "temperature_c": 900}]}"#,
                "gpus[0].temperature_c",
            ),
            (
                r#"{"worker_id": "a", "status": "healthy", "load": 0.1, "containers": [{"name": "c", "state": "vibing"}]}"#,
                "containers[0].state",
            ),
            (
                r#"{"worker_id": "a", "status": "healthy", "load": 0.1, "paths": [{"kind": "wormhole"}]}"#,
                "paths[0].kind",
            ),
            (
                r#"{"worker_id": "a", "status": "healthy", "load": 0.1, "paths": [{"kind": "relayed", "connections": 1}, {"kind": "relayed", "connections": 2}]}"#,
                "paths[1].kind",
            ),
            (
                r#"{"worker_id": "a", "status": "healthy", "load": 0.1, "paths": [{"kind": "direct", "rtt_ms": 700000, "connections": 1}]}"#,
                "paths[0].rtt_ms",
            ),
            (
                r#"{"worker_id": "a", "status": "healthy", "load": 0.1, "paths": [{"kind": "direct", "connections": 100001}]}"#,
                "paths[0].connections",
            ),
            (
                r#"{"worker_id": "a", "status": "healthy", "load": 0.1, "rtt_ms": 4000000000}"#,
                "rtt_ms",
            ),
        ];
        for (body, want) in bad {
            match parse_heartbeat(body.as_bytes()) {
                Err(InputError::Field { field, .. }) => assert_eq!(field, want, "{body}"),
                other => panic!("{body}: {other:?}"),
            }
        }
        let hb = parse_heartbeat(br#"{"worker_id": "a", "status": "healthy", "load": 0.1, "paths": [{"kind": "reverse", "rtt_ms": 3, "connections": 1}, {"kind": "hole_punched", "connections": 2}]}"#).unwrap();
        let paths = hb.paths.unwrap();
        assert_eq!(
            (
                paths[0].kind,
                paths[0].rtt_ms,
                paths[1].kind,
                paths[1].rtt_ms
            ),
            (PathKind::Reverse, Some(3), PathKind::HolePunched, None)
        );
        let long_id = format!(
            r#"{{"worker_id": "{}", "status": "healthy", "load": 0.1}}"#,
            "a".repeat(65)
        );
        assert!(
            matches!(parse_heartbeat(long_id.as_bytes()), Err(InputError::Field { field, .. }) if field == "worker_id")
        );
        // 1e999 is not a finite number: refused, never stored as infinity.
        assert!(
            parse_heartbeat(br#"{"worker_id": "a", "status": "healthy", "load": 1e999}"#).is_err()
        );
    }
}
