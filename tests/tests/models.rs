//! The model cache on the donated disk, against a real HTTP server on loopback: a download that is cut resumes
//! where it stopped, a file that is not the catalogue's is refused and deleted, and the cache stays within its cap by
//! deleting the least recently used models.

use commons_agent::models::{ModelCache, ModelError};
use commons_shared::api::ModelArtifact;
use commons_tests::FileServer;
use sha2::Digest;

fn artifact(name: &str, url: String, bytes: &[u8]) -> ModelArtifact {
    ModelArtifact {
        name: name.into(),
        url,
        size: bytes.len() as u64,
        sha256: hex::encode(sha2::Sha256::digest(bytes)),
    }
}

fn bytes(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[tokio::test]
async fn a_cut_download_resumes_and_is_verified_once() {
    let server = FileServer::start().await;
    let data = bytes(1, 3 << 20);
    let m = artifact("m.gguf", server.put("m.gguf", data.clone()), &data);
    let dir = tempfile::tempdir().unwrap();
    let cache = ModelCache::new(dir.path().to_owned(), 64 << 20);
    // The first answer stops after 1 MiB; the next try asks for the rest only.
    server.cut_next(1, 1 << 20);
    let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
    let local = cache
        .ensure(std::slice::from_ref(&m), &[], Some((&tx, "img:1")))
        .await
        .unwrap();
    assert_eq!(local[0].mount, "/models/m.gguf");
    assert_eq!(std::fs::read(&local[0].path).unwrap(), data);
    assert!(local[0].bind().ends_with(":/models/m.gguf:ro"));
    let asked = server.asked();
    assert_eq!(asked.len(), 2, "{asked:?}");
    assert_eq!(asked[0].1, None);
    assert_eq!(
        asked[1].1.as_deref(),
        Some(format!("bytes={}-", 1 << 20).as_str()),
        "the second request resumes after what arrived"
    );
    // The download said how far it was, and that it ended verified.
    let mut last = None;
    while let Ok(p) = rx.try_recv() {
        last = Some(p);
    }
    let last = last.expect("progress");
    assert!(last.done && last.current == data.len() as u64, "{last:?}");
    assert_eq!(
        (last.image.as_str(), last.layer.as_str()),
        ("img:1", "model m.gguf")
    );
    // Present and verified: nothing is downloaded again.
    cache.ensure(&[m], &[], None).await.unwrap();
    assert_eq!(server.asked().len(), 2);
    assert!(
        !std::fs::read_dir(dir.path()).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".part")),
        "no partial file is left"
    );
}

#[tokio::test]
async fn a_tampered_model_is_refused_and_deleted() {
    let server = FileServer::start().await;
    let data = bytes(2, 200_000);
    let mut tampered = data.clone();
    tampered[100_000] ^= 1;
    let m = artifact("m.gguf", server.put("m.gguf", tampered), &data);
    let dir = tempfile::tempdir().unwrap();
    let cache = ModelCache::new(dir.path().to_owned(), 64 << 20);
    let e = cache
        .ensure(std::slice::from_ref(&m), &[], None)
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            ModelError::Mismatch {
                what: "SHA-256",
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("nothing runs with it"), "{e}");
    assert!(
        std::fs::read_dir(dir.path()).unwrap().all(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".lock")),
        "nothing of it is kept"
    );
    // Longer than the catalogue says: refused as soon as it is.
    let longer = [data.as_slice(), b"more"].concat();
    let m = artifact("m.gguf", server.put("m.gguf", longer), &data);
    let e = cache.ensure(&[m], &[], None).await.unwrap_err();
    assert!(
        matches!(e, ModelError::Mismatch { what: "size", .. }),
        "{e}"
    );
    // A missing file: the server's status, in words.
    let mut gone = artifact("gone.gguf", server.put("x", vec![1]), &data);
    gone.url = gone.url.replace("/x", "/gone");
    let e = cache.ensure(&[gone], &[], None).await.unwrap_err();
    assert!(e.to_string().contains("404"), "{e}");
}

#[tokio::test]
async fn the_cache_stays_within_its_cap_deleting_the_least_recently_used() {
    let server = FileServer::start().await;
    let size = 1 << 20;
    let [a, b, c] = [1u8, 2, 3].map(|seed| {
        let data = bytes(seed, size);
        artifact(
            &format!("{seed}.gguf"),
            server.put(&format!("{seed}.gguf"), data.clone()),
            &data,
        )
    });
    let dir = tempfile::tempdir().unwrap();
    // Room for two and a half.
    let cache = ModelCache::new(dir.path().to_owned(), (size * 5 / 2) as u64);
    cache
        .ensure(std::slice::from_ref(&a), &[], None)
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    cache
        .ensure(std::slice::from_ref(&b), &[], None)
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    // a is used again: b is now the least recently used.
    cache
        .ensure(std::slice::from_ref(&a), &[], None)
        .await
        .unwrap();
    cache
        .ensure(std::slice::from_ref(&c), &[], None)
        .await
        .unwrap();
    assert!(cache.path(&a).exists() && cache.path(&c).exists());
    assert!(!cache.path(&b).exists(), "the least recently used one went");
    // What a current assignment needs is never deleted: with a and c both needed, b does not fit.
    let e = cache
        .ensure(std::slice::from_ref(&b), &[&a.sha256, &c.sha256], None)
        .await
        .unwrap_err();
    assert!(matches!(e, ModelError::TooBig { .. }), "{e}");
    assert!(e.to_string().contains("models_disk_mb"), "{e}");
    assert!(cache.path(&a).exists() && cache.path(&c).exists());
}

#[tokio::test]
async fn two_caches_on_one_folder_download_a_file_once() {
    let server = FileServer::start().await;
    let data = bytes(4, 4 << 20);
    let m = artifact("m.gguf", server.put("m.gguf", data.clone()), &data);
    let dir = tempfile::tempdir().unwrap();
    // Two agents on one machine, one cache folder, the same model at once.
    let (a, b) = (
        ModelCache::new(dir.path().to_owned(), 64 << 20),
        ModelCache::new(dir.path().to_owned(), 64 << 20),
    );
    let (ra, rb) = tokio::join!(
        a.ensure(std::slice::from_ref(&m), &[], None),
        b.ensure(std::slice::from_ref(&m), &[], None)
    );
    assert_eq!(ra.unwrap(), rb.unwrap());
    assert_eq!(std::fs::read(a.path(&m)).unwrap(), data);
    assert_eq!(server.asked().len(), 1, "downloaded once");
}
