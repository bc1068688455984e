//! The service catalogue: which services exist, which image runs each, and what a worker needs to hold one.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};
use thiserror::Error;

use crate::units::parse_size;

/// The catalogue shipped with Commons.
pub const DEFAULT_CATALOGUE: &str = include_str!("../catalogue/default.toml");

/// At most this many services in a catalogue.
pub const MAX_SERVICES: usize = 64;

/// One service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// Name, also the routing key (`/api/service/{name}/...`): lowercase letters, digits and '-'.
    pub name: String,
    /// What it does, for people.
    #[serde(default)]
    pub description: String,
    /// Container image, pinned by tag or digest.
    pub image: String,
    /// The port the container listens on.
    pub port: u16,
    /// Environment for the container: configuration only, never secrets.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Command to run instead of the image's default, when set.
    #[serde(default)]
    pub args: Vec<String>,
    /// Needs an NVIDIA GPU.
    #[serde(default)]
    pub requires_gpu: bool,
    /// VRAM needed on one GPU, in bytes.
    #[serde(default, deserialize_with = "size")]
    pub min_vram: u64,
    /// Memory needed, in bytes.
    #[serde(default, deserialize_with = "size")]
    pub min_ram: u64,
    /// Cores needed.
    #[serde(default)]
    pub min_cores: u32,
    /// Free disk needed on one disk, in bytes.
    #[serde(default, deserialize_with = "size")]
    pub min_storage: u64,
    /// Wanted replicas across the pool.
    #[serde(default = "one")]
    pub replicas: u32,
    /// The path that answers 2xx once the service can serve (every image we build has `/health`); empty: the
    /// image has none, and a running container counts as serving.
    #[serde(default = "health")]
    pub health: String,
    /// Files the container needs (model weights), mounted read-only at `/models/{name}`.
    #[serde(default)]
    pub models: Vec<crate::api::ModelArtifact>,
    /// The service truly needs a network (the engine's; containers have none otherwise). A volunteer's settings can
    /// refuse such services.
    #[serde(default)]
    pub network: bool,
    /// For a service that keeps state per key (rag: per collection), which segment of the request's path names the
    /// key (1: the first after the service's name; 0: none). Requests with the same key go to the same replica,
    /// chosen by rendezvous hashing over the healthy ones, so a collection lives on one worker.
    #[serde(default)]
    pub sticky_segment: u8,
    /// How many requests one worker serves at once (for llm, its parallel streams); when every worker of the
    /// service is serving this many, requests wait in the coordinator's fair queue.
    #[serde(default = "concurrency")]
    pub concurrency: u32,
    /// The same service on an NVIDIA GPU, for workers that have one and let containers use it: another image (with
    /// the GPU libraries) and environment over this entry's. The worker picks it; the coordinator names the service
    /// only, and the assignment is checked against this entry.
    #[serde(default)]
    pub gpu: Option<GpuVariant>,
    /// What one request is, in words, for the volunteer's "today you served 1,234 OCR pages".
    #[serde(default)]
    pub unit: Unit,
    /// The requests whose answers are the same on every worker (OCR; embeddings on one model): the coordinator
    /// sends a sample of them to a second worker as well and compares the answers, to find volunteers that answer
    /// wrongly. Absent: its answers are never compared (chat is not deterministic).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<Verify>,
}

/// Which of a service's requests are deterministic, and what in their answers may differ from run to run
/// (`[service.verify]` in the catalogue).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Verify {
    /// Paths after the service's name (`ocr` for `POST /api/service/ocr/ocr`), matched exactly.
    pub paths: Vec<String>,
    /// Keys of a JSON answer left out of the comparison, at any depth (a timing, an id, a timestamp).
    #[serde(default)]
    pub ignore: Vec<String>,
}

/// At most this many paths, and keys to ignore, in a service's `verify`.
pub const MAX_VERIFY_ITEMS: usize = 16;

/// What one request of a service is, in words: `{ one = "OCR page", many = "OCR pages" }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Unit {
    /// One ("OCR page").
    pub one: String,
    /// Several ("OCR pages").
    pub many: String,
}

impl Default for Unit {
    fn default() -> Self {
        Self {
            one: "request".into(),
            many: "requests".into(),
        }
    }
}

/// A service's form for workers with an NVIDIA GPU (`[service.gpu]` in the catalogue).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct GpuVariant {
    /// Container image with the GPU libraries, pinned by tag or digest.
    pub image: String,
    /// Environment set over the service's own (for example, how many layers go on the GPU).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// VRAM needed on one GPU, in bytes: a worker whose GPUs all have less runs the plain form.
    #[serde(deserialize_with = "size")]
    pub min_vram: u64,
}

fn one() -> u32 {
    1
}

fn health() -> String {
    "/health".into()
}

fn concurrency() -> u32 {
    4
}

impl ServiceSpec {
    /// How to compare answers to a request for `path` (the part after the service's name), when they can be.
    pub fn verifies(&self, path: &str) -> Option<&Verify> {
        let path = path.trim_matches('/');
        self.verify
            .as_ref()
            .filter(|v| v.paths.iter().any(|p| p.trim_matches('/') == path))
    }

    /// The key a request for `path` (the part after the service's name) is routed by, when the service has one.
    pub fn sticky_key<'a>(&self, path: &'a str) -> Option<&'a str> {
        let n = usize::from(self.sticky_segment).checked_sub(1)?;
        path.trim_start_matches('/')
            .split('/')
            .nth(n)
            .filter(|k| !k.is_empty())
    }

    /// The name of the container that runs it on a worker.
    pub fn container_name(&self) -> String {
        format!("{CONTAINER_PREFIX}{}", self.name)
    }

    /// Whether `container` is the name of the container that runs it (without building that name).
    pub fn is_container(&self, container: &str) -> bool {
        container.strip_prefix(CONTAINER_PREFIX) == Some(self.name.as_str())
    }

    /// The health path, when the image has one.
    pub fn health_path(&self) -> Option<&str> {
        (!self.health.is_empty()).then_some(self.health.as_str())
    }

    /// What a worker runs for it: everything comes from this entry, so that a worker can check an assignment
    /// against the catalogue it trusts.
    pub fn assignment(&self) -> crate::api::ContainerAssignment {
        crate::api::ContainerAssignment {
            name: self.container_name(),
            service: self.name.clone(),
            image: self.image.clone(),
            port: self.port,
            env: self.env.clone(),
            args: self.args.clone(),
            requires_gpu: self.requires_gpu,
            health: self.health_path().map(str::to_owned),
            models: self.models.clone(),
            network: self.network,
        }
    }

    /// What a worker with a GPU of `vram` bytes runs instead of `assignment()`, when the entry has a GPU form that
    /// fits: that image, its environment over the entry's, with the GPU.
    pub fn gpu_assignment(&self, vram: u64) -> Option<crate::api::ContainerAssignment> {
        let gpu = self.gpu.as_ref().filter(|g| vram >= g.min_vram)?;
        let mut a = self.assignment();
        a.image.clone_from(&gpu.image);
        a.env
            .extend(gpu.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        a.requires_gpu = true;
        Some(a)
    }

    /// The images this entry can run: its own, and its GPU form's.
    pub fn images(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.image.as_str()).chain(self.gpu.as_ref().map(|g| g.image.as_str()))
    }
}

/// The service that answers the OpenAI-compatible API (`/v1/...` at the edge and at coordinators).
pub const OPENAI_SERVICE: &str = "llm";

/// What a service's container name starts with.
const CONTAINER_PREFIX: &str = "commons-";

/// The name under which an operator's catalogue is signed (the `file:` of the signature's trusted comment).
pub const SIGNED_NAME: &str = "catalogue.toml";

/// What a coordinator serves at `GET /api/catalogue`: its operator's catalogue (applied over the shipped one) and
/// its minisign signature, or nothing when it runs the shipped catalogue.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CatalogueOffer {
    /// The operator's catalogue file, as signed.
    pub catalogue: Option<String>,
    /// Its minisign signature (`minisign -S -t "file:catalogue.toml"`).
    pub signature: Option<String>,
}

/// Why a coordinator's catalogue is not trusted.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum TrustError {
    /// It comes without a signature.
    #[error("the coordinator's catalogue is not signed")]
    Unsigned,
    /// The signature does not hold, or no trusted key made it.
    #[error("the coordinator's catalogue is not signed by a key this machine trusts ({0})")]
    Signature(#[source] crate::release::Refusal),
    /// Signed, but not a valid catalogue.
    #[error("the coordinator's signed catalogue is not valid: {0}")]
    Invalid(#[source] CatalogueError),
}

impl Catalogue {
    /// The catalogue a worker trusts: the shipped one, with the coordinator's overlay when it is signed by one of
    /// `keys` (the project's release key and the operators' keys the volunteer added); and which key signed it
    /// (`None`: the shipped catalogue alone).
    pub fn trusted(
        offer: &CatalogueOffer,
        keys: &[&str],
    ) -> Result<(Self, Option<usize>), TrustError> {
        let Some(text) = &offer.catalogue else {
            return Ok((Self::builtin(), None));
        };
        let signature = offer.signature.as_deref().ok_or(TrustError::Unsigned)?;
        let signer = crate::release::verify_by_any(text.as_bytes(), signature, SIGNED_NAME, keys)
            .map_err(TrustError::Signature)?;
        let catalogue = Self::load(DEFAULT_CATALOGUE, Some(text)).map_err(TrustError::Invalid)?;
        Ok((catalogue, Some(signer)))
    }

    /// Whether `a` is exactly what this catalogue says its service runs; `Err` says what differs.
    pub fn check(&self, a: &crate::api::ContainerAssignment) -> Result<(), String> {
        let Some(spec) = self.services.iter().find(|s| s.name == a.service) else {
            return Err(format!(
                "no service {:?} in the signed catalogue",
                a.service
            ));
        };
        let want = spec.assignment();
        let differs = [
            (want.image != a.image, "image"),
            (want.args != a.args, "arguments"),
            (want.env != a.env, "environment"),
            (want.port != a.port, "port"),
            (want.name != a.name, "name"),
            (want.requires_gpu != a.requires_gpu, "GPU use"),
            (want.health != a.health, "health path"),
            (want.models != a.models, "model files"),
            (want.network != a.network, "network access"),
        ]
        .into_iter()
        .filter_map(|(d, what)| d.then_some(what))
        .collect::<Vec<_>>();
        if differs.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "the assignment for {:?} differs from the signed catalogue in its {}",
                a.service,
                differs.join(", ")
            ))
        }
    }
}

fn size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Bytes(u64),
        Text(String),
    }
    match Size::deserialize(d)? {
        Size::Bytes(b) => Ok(b),
        Size::Text(t) => parse_size(&t).map_err(serde::de::Error::custom),
    }
}

/// A loaded, validated catalogue. Services keep their order; a service's index is stable for the life of the catalogue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Catalogue {
    services: Vec<ServiceSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogueFile {
    #[serde(default)]
    service: Vec<ServiceSpec>,
    #[serde(default)]
    remove: Vec<String>,
}

/// Why a catalogue was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CatalogueError {
    /// Not valid TOML, or a field of the wrong type.
    #[error("the catalogue is not valid: {0}")]
    Parse(String),
    /// A rule about a service was broken.
    #[error("service {service:?}: {message}")]
    Invalid {
        /// The service.
        service: String,
        /// What is wrong.
        message: String,
    },
}

const SECRET_WORDS: [&str; 6] = [
    "SECRET", "TOKEN", "PASSWORD", "PASSWD", "API_KEY", "PRIVATE",
];

impl Catalogue {
    /// The shipped catalogue.
    pub fn builtin() -> Self {
        Self::load(DEFAULT_CATALOGUE, None).expect("the shipped catalogue is valid")
    }

    /// The `base` catalogue with `overlay` applied: entries replace same-named ones, new ones are appended,
    /// names in `remove` are dropped.
    pub fn load(base: &str, overlay: Option<&str>) -> Result<Self, CatalogueError> {
        let parse = |text: &str| {
            toml::from_str::<CatalogueFile>(text).map_err(|e| CatalogueError::Parse(e.to_string()))
        };
        let mut services = parse(base)?.service;
        if let Some(text) = overlay {
            let file = parse(text)?;
            services.retain(|s| !file.remove.contains(&s.name));
            for spec in file.service {
                match services.iter_mut().find(|s| s.name == spec.name) {
                    Some(slot) => *slot = spec,
                    None => services.push(spec),
                }
            }
        }
        let catalogue = Self { services };
        catalogue.validate()?;
        Ok(catalogue)
    }

    fn validate(&self) -> Result<(), CatalogueError> {
        let invalid = |s: &ServiceSpec, m: String| CatalogueError::Invalid {
            service: s.name.clone(),
            message: m,
        };
        if self.services.len() > MAX_SERVICES {
            return Err(CatalogueError::Parse(format!(
                "at most {MAX_SERVICES} services"
            )));
        }
        for (i, s) in self.services.iter().enumerate() {
            if !is_service_name(&s.name) {
                return Err(invalid(
                    s,
                    "a name is 1 to 32 lowercase letters, digits or '-'".into(),
                ));
            }
            if self.services[..i].iter().any(|o| o.name == s.name) {
                return Err(invalid(s, "appears twice".into()));
            }
            if s.images()
                .any(|i| i.is_empty() || i.len() > 256 || i.contains(char::is_whitespace))
            {
                return Err(invalid(
                    s,
                    "the image must be a reference without spaces, at most 256 characters".into(),
                ));
            }
            if s.gpu.as_ref().is_some_and(|g| g.min_vram == 0) {
                return Err(invalid(
                    s,
                    "a GPU form must say how much VRAM it needs (min_vram)".into(),
                ));
            }
            if s.port == 0 {
                return Err(invalid(s, "the port must be 1 to 65535".into()));
            }
            if !(1..=1024).contains(&s.concurrency) {
                return Err(invalid(s, "concurrency must be 1 to 1024".into()));
            }
            if s.requires_gpu && s.min_vram == 0 {
                return Err(invalid(
                    s,
                    "a GPU service must say how much VRAM it needs (min_vram)".into(),
                ));
            }
            if let Some(v) = &s.verify
                && (v.paths.is_empty()
                    || v.paths.len() > MAX_VERIFY_ITEMS
                    || v.ignore.len() > MAX_VERIFY_ITEMS
                    || v.paths
                        .iter()
                        .chain(&v.ignore)
                        .any(|p| p.is_empty() || p.len() > 128))
            {
                return Err(invalid(
                    s,
                    format!(
                        "verify needs 1 to {MAX_VERIFY_ITEMS} paths and at most {MAX_VERIFY_ITEMS} keys to ignore, each 1 to 128 characters"
                    ),
                ));
            }
            if let Some(problem) = s.models.iter().find_map(crate::api::ModelArtifact::problem) {
                return Err(invalid(s, problem));
            }
            for (j, m) in s.models.iter().enumerate() {
                if s.models[..j].iter().any(|o| o.name == m.name) {
                    return Err(invalid(s, format!("model {:?} appears twice", m.name)));
                }
            }
            for key in s.env.keys().chain(s.gpu.iter().flat_map(|g| g.env.keys())) {
                let upper = key.to_ascii_uppercase();
                if let Some(word) = SECRET_WORDS.iter().find(|w| upper.contains(*w)) {
                    return Err(invalid(
                        s,
                        format!(
                            "env {key:?} looks like a secret ({word}); secrets never go in the catalogue"
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The services, in order.
    pub fn services(&self) -> &[ServiceSpec] {
        &self.services
    }

    /// The index of the service with this name.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.services.iter().position(|s| s.name == name)
    }

    /// The service at an index.
    pub fn get(&self, index: usize) -> Option<&ServiceSpec> {
        self.services.get(index)
    }

    /// Number of services.
    pub fn len(&self) -> usize {
        self.services.len()
    }

    /// Whether the catalogue has no service.
    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }
}

/// A service name: 1 to 32 lowercase letters, digits or '-'.
pub fn is_service_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::GIB;

    #[test]
    fn builtin_loads() {
        let c = Catalogue::builtin();
        // Only the images this project builds (services/).
        let names: Vec<&str> = c.services().iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["llm", "ocr", "rag"]);
        let rag = c.get(c.index_of("rag").unwrap()).unwrap();
        assert_eq!(rag.sticky_key("collections/docs/search"), Some("docs"));
        assert_eq!(rag.sticky_key("/collections/docs"), Some("docs"));
        assert_eq!(rag.sticky_key("collections"), None);
        assert_eq!(rag.sticky_key("health"), None);
        let llm = c.get(c.index_of(OPENAI_SERVICE).unwrap()).unwrap();
        assert!(!llm.requires_gpu, "llama.cpp runs on CPU too");
        assert_eq!(llm.min_ram, 4 * GIB);
        assert_eq!(llm.env["COMMONS_LLM_MODEL"], "/models/model.gguf");
        assert_eq!(llm.sticky_key("v1/chat/completions"), None);
        // Its GPU form: another image, all layers on the GPU, for a GPU with enough VRAM only.
        let gpu = llm.gpu.as_ref().unwrap();
        assert!(gpu.image.contains("llm-cuda"));
        assert_eq!(llm.images().collect::<Vec<_>>(), [&llm.image, &gpu.image]);
        assert!(llm.gpu_assignment(gpu.min_vram - 1).is_none());
        let a = llm.gpu_assignment(gpu.min_vram).unwrap();
        assert!(a.requires_gpu && a.image == gpu.image);
        assert_eq!(a.env["COMMONS_LLM_GPU_LAYERS"], "999");
        assert_eq!(a.env["COMMONS_LLM_MODEL"], llm.env["COMMONS_LLM_MODEL"]);
        assert!(
            c.check(&a).is_err(),
            "a coordinator names the plain form only"
        );
        let ocr = c.get(c.index_of("ocr").unwrap()).unwrap();
        assert!(ocr.gpu_assignment(u64::MAX).is_none());
    }

    #[test]
    fn a_gpu_form_is_checked() {
        let entry = |gpu: &str| {
            format!(
                "[[service]]\nname = \"x\"\nimage = \"example/x:1\"\nport = 1\n[service.gpu]\n{gpu}\n"
            )
        };
        assert!(
            Catalogue::load(
                &entry("image = \"example/x-cuda:1\"\nmin_vram = \"2GB\""),
                None
            )
            .is_ok()
        );
        for (gpu, why) in [
            ("image = \"example/x-cuda:1\"", "min_vram"),
            ("image = \"\"\nmin_vram = 1", "image"),
            ("image = \"a b\"\nmin_vram = 1", "image"),
            ("image = \"i\"\nmin_vram = 0", "VRAM"),
            (
                "image = \"i\"\nmin_vram = 1\nenv = { HF_TOKEN = \"x\" }",
                "secret",
            ),
            (
                "image = \"i\"\nmin_vram = 1\nargs = [\"x\"]",
                "unknown field",
            ),
        ] {
            let err = Catalogue::load(&entry(gpu), None).unwrap_err().to_string();
            assert!(err.contains(why), "{gpu}: {err}");
        }
    }

    #[test]
    fn model_files_are_checked() {
        let entry = |models: &str| {
            format!(
                "[[service]]\nname = \"x\"\nimage = \"example/x:1\"\nport = 1\nmodels = [{models}]\n"
            )
        };
        let sha = "ab".repeat(32);
        let ok = format!(
            r#"{{ name = "m.gguf", url = "https://example.invalid/m", size = 10, sha256 = "{sha}" }}"#
        );
        let c = Catalogue::load(&entry(&ok), None).unwrap();
        let a = c.get(0).unwrap().assignment();
        assert_eq!(a.models.len(), 1);
        assert_eq!(a.models[0].size, 10);
        // The assignment must carry the same files as the catalogue.
        let mut other = a.clone();
        other.models[0].sha256 = "cd".repeat(32);
        assert!(c.check(&other).unwrap_err().contains("model files"));
        for (bad, says) in [
            (ok.replace("m.gguf", "../m"), "a name is"),
            (ok.replace("https://", "ftp://"), "http:// or https://"),
            (ok.replace("size = 10", "size = 0"), "size must be given"),
            (ok.replace(&sha, "XYZ"), "64 lowercase hex"),
            (format!("{ok}, {ok}"), "appears twice"),
        ] {
            let e = Catalogue::load(&entry(&bad), None).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn overlay_replaces_adds_and_removes() {
        let overlay = r#"
            remove = ["ocr"]
            [[service]]
            name = "llm"
            image = "example/llm:2"
            port = 9000
            requires_gpu = true
            min_vram = 17179869184
            replicas = 5
            [[service]]
            name = "translate"
            image = "example/translate:1"
            port = 7000
            min_ram = "1GB"
        "#;
        let c = Catalogue::load(DEFAULT_CATALOGUE, Some(overlay)).unwrap();
        assert!(Catalogue::builtin().index_of("ocr").is_some());
        assert!(c.index_of("ocr").is_none());
        let llm = c.get(c.index_of("llm").unwrap()).unwrap();
        assert_eq!((llm.port, llm.replicas, llm.min_vram), (9000, 5, 16 * GIB));
        let t = c.get(c.index_of("translate").unwrap()).unwrap();
        assert_eq!((t.min_ram, t.replicas), (GIB, 1));
    }

    #[test]
    fn refuses_bad_catalogues() {
        let cases = [
            (
                "[[service]]\nname='x'\nimage='i'\nport=1\nenv={DB_PASSWORD='hunter2'}",
                "secret",
            ),
            ("[[service]]\nname='X Y'\nimage='i'\nport=1", "lowercase"),
            ("[[service]]\nname='a'\nimage='i'\nport=0", "port"),
            (
                "[[service]]\nname='a'\nimage='i'\nport=1\nrequires_gpu=true",
                "min_vram",
            ),
            (
                "[[service]]\nname='a'\nimage='i'\nport=1\nmin_ram='lots'",
                "not a size",
            ),
            (
                "[[service]]\nname='a'\nimage='i'\nport=1\n[[service]]\nname='a'\nimage='i'\nport=2",
                "twice",
            ),
            (
                "[[service]]\nname='a'\nimage='i'\nport=1\ncolour='red'",
                "unknown field",
            ),
            ("not toml at all [", "not valid"),
        ];
        for (text, needle) in cases {
            let err = Catalogue::load(text, None).unwrap_err().to_string();
            assert!(
                err.contains(needle),
                "{text:?} gave {err:?}, wanted {needle:?}"
            );
        }
    }
}
