//! The real `commons-ocr` binary against the host's Tesseract and Poppler: text rendered into a one-page PDF
//! (and, through `pdftoppm`, into a PNG) is read back; bad input gets the right JSON error.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use commons_ocr::sample::{pdf_with_text, png_of};
use serde_json::Value;

struct Server {
    child: Child,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start() -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_commons-ocr"))
        .env("COMMONS_LISTEN", "127.0.0.1:0")
        .env("COMMONS_OCR_LANGUAGES", "eng")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line.trim().rsplit(' ').next().unwrap().to_owned();
    Server {
        child,
        url: format!("http://{addr}"),
    }
}

async fn post(url: &str, body: Vec<u8>) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(url)
        .body(body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test]
async fn rendered_text_is_read_back_from_a_png_and_a_pdf() {
    let s = start();
    let health: Value = reqwest::get(format!("{}/health", s.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["languages"], serde_json::json!(["eng"]));
    let pdf = pdf_with_text(&["Commons reads", "donated text"]);
    let png = png_of(&pdf).expect("pdftoppm (poppler-utils, from .ci/packages tests)");
    for (what, body) in [("png", png), ("pdf", pdf.clone())] {
        let (status, v) = post(&format!("{}/ocr", s.url), body).await;
        assert_eq!(status, 200, "{what}: {v}");
        let text = v["text"].as_str().unwrap();
        assert!(
            text.contains("Commons reads") && text.contains("donated text"),
            "{what}: read {text:?}"
        );
        let words = v["words"].as_array().unwrap();
        assert!(words.len() >= 4, "{what}: {words:?}");
        assert!(words.iter().all(|w| w["bbox"][2].as_u64().unwrap() > 0));
        assert_eq!(v["language"], "eng");
    }
}

#[tokio::test]
async fn bad_input_gets_a_clear_json_error() {
    let s = start();
    let (status, v) = post(&format!("{}/ocr", s.url), b"GIF89a not supported".to_vec()).await;
    assert_eq!(
        (status, v["error"].as_str()),
        (422, Some("invalid_field")),
        "{v}"
    );
    assert!(v["message"].as_str().unwrap().contains("PNG"));
    let pdf = pdf_with_text(&["x"]);
    let (status, v) = post(&format!("{}/ocr?lang=xyz", s.url), pdf).await;
    assert_eq!(status, 422, "{v}");
    assert!(v["message"].as_str().unwrap().contains("xyz"));
    let (status, v) = post(
        &format!("{}/ocr", s.url),
        b"\x89PNG\r\n\x1a\nbroken".to_vec(),
    )
    .await;
    assert_eq!(status, 422, "{v}");
    let (status, v) = post(&format!("{}/ocr", s.url), vec![0u8; 21 * 1024 * 1024]).await;
    assert_eq!(status, 413, "{v}");
    let r = reqwest::get(format!("{}/nope", s.url)).await.unwrap();
    assert_eq!(r.status(), 404);
}
