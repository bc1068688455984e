//! The `ocr` service: Tesseract behind HTTP.
//!
//! `POST /ocr[?lang=eng]` takes a PNG, JPEG, TIFF or one-page PDF as the body (recognised by its first bytes) and
//! answers `{text, words: [{text, confidence, bbox: [x, y, w, h]}], language, ms}`. `GET /health` says which
//! languages it reads. Tesseract (and `pdftoppm` for a PDF) run as child processes in a private temporary
//! directory, at most one per core at a time, each killed when its request ends or takes too long.
#![deny(missing_docs)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::Router;
use axum::extract::{Request, State};
use axum::routing::{get, post};
use commons_server::error::ApiError;
use commons_server::extract::Query;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

/// The largest image taken.
pub const MAX_IMAGE_BYTES: usize = 20 * 1024 * 1024;

/// An image format the service reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// PNG.
    Png,
    /// JPEG.
    Jpeg,
    /// TIFF (either byte order).
    Tiff,
    /// PDF (one page).
    Pdf,
}

impl Format {
    /// The format of `bytes`, from their first bytes.
    pub fn detect(bytes: &[u8]) -> Option<Self> {
        match bytes {
            [0x89, b'P', b'N', b'G', ..] => Some(Self::Png),
            [0xFF, 0xD8, 0xFF, ..] => Some(Self::Jpeg),
            [b'I', b'I', 42, 0, ..] | [b'M', b'M', 0, 42, ..] => Some(Self::Tiff),
            [b'%', b'P', b'D', b'F', b'-', ..] => Some(Self::Pdf),
            _ => None,
        }
    }

    fn extension(self) -> &'static str {
        match self {
            Self::Png => "png",
            Self::Jpeg => "jpg",
            Self::Tiff => "tif",
            Self::Pdf => "pdf",
        }
    }
}

/// One recognised word.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Word {
    /// The word.
    pub text: String,
    /// Tesseract's confidence, 0 to 100.
    pub confidence: f32,
    /// Left, top, width, height in pixels of the (first) page.
    pub bbox: [u32; 4],
}

/// The answer to `POST /ocr`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recognised {
    /// The text, a line per line read, a blank line between blocks.
    pub text: String,
    /// Every word with its place and confidence.
    pub words: Vec<Word>,
    /// The language it was read as.
    pub language: String,
    /// How long the recognition took.
    pub ms: u64,
}

/// `GET /health`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Health {
    /// "ok".
    pub status: String,
    /// The languages it reads.
    pub languages: Vec<String>,
}

/// Reads Tesseract's TSV output: the text (lines joined by newlines, blocks by a blank line) and the words.
pub fn parse_tsv(tsv: &str) -> (String, Vec<Word>) {
    let mut words = Vec::new();
    let mut text = String::new();
    let mut last_line: Option<(u32, u32, u32)> = None;
    for row in tsv.lines().skip(1) {
        let f: Vec<&str> = row.splitn(12, '\t').collect();
        let [
            level,
            _page,
            block,
            par,
            line,
            _word,
            left,
            top,
            width,
            height,
            conf,
            word,
        ] = f.as_slice()
        else {
            continue;
        };
        let num = |s: &str| s.trim().parse::<u32>().ok();
        if *level != "5" || word.trim().is_empty() {
            continue;
        }
        let (Some(block), Some(par), Some(line)) = (num(block), num(par), num(line)) else {
            continue;
        };
        let here = (block, par, line);
        match last_line {
            None => {}
            Some(prev) if prev == here => text.push(' '),
            Some((b, _, _)) if b != block => text.push_str("\n\n"),
            Some(_) => text.push('\n'),
        }
        last_line = Some(here);
        text.push_str(word.trim());
        words.push(Word {
            text: word.trim().to_owned(),
            confidence: conf.trim().parse().unwrap_or(0.0),
            bbox: [
                num(left).unwrap_or(0),
                num(top).unwrap_or(0),
                num(width).unwrap_or(0),
                num(height).unwrap_or(0),
            ],
        });
    }
    (text, words)
}

/// Why an image could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OcrError {
    /// Not an image format the service reads.
    #[error("the body is not a PNG, JPEG, TIFF or PDF image")]
    Format,
    /// A PDF with more than one page.
    #[error("the PDF has {0} pages; send one page at a time")]
    Pages(u32),
    /// A language the service does not read.
    #[error("language {0:?} is not served here (see GET /health)")]
    Language(String),
    /// Every slot is busy and the queue is full.
    #[error("busy: too many images in progress; try again shortly")]
    Busy,
    /// A tool took too long.
    #[error("{0} took longer than {1} s")]
    Timeout(&'static str, u64),
    /// A tool failed (the image is unreadable to it, or it is missing).
    #[error("{tool} failed: {message}")]
    Tool {
        /// The program.
        tool: &'static str,
        /// What it said.
        message: String,
    },
    /// The scratch directory failed.
    #[error("scratch space: {0}")]
    Scratch(#[from] std::io::Error),
}

impl From<OcrError> for ApiError {
    fn from(e: OcrError) -> Self {
        match e {
            OcrError::Format => ApiError::Invalid {
                field: "body".into(),
                message: e.to_string(),
            },
            OcrError::Pages(_) => ApiError::Invalid {
                field: "body".into(),
                message: e.to_string(),
            },
            OcrError::Language(_) => ApiError::Invalid {
                field: "lang".into(),
                message: e.to_string(),
            },
            OcrError::Busy => ApiError::Unavailable(e.to_string()),
            OcrError::Timeout(..) => ApiError::GatewayTimeout(e.to_string()),
            OcrError::Tool { .. } => ApiError::Invalid {
                field: "body".into(),
                message: e.to_string(),
            },
            OcrError::Scratch(_) => ApiError::Internal(e.to_string()),
        }
    }
}

/// The recogniser: its languages, its slots and its time limit.
#[derive(Debug)]
pub struct Ocr {
    languages: Vec<String>,
    /// One per image being read.
    slots: Semaphore,
    /// One per image being read or waiting for a slot: none left means busy.
    admitted: Semaphore,
    timeout: Duration,
}

impl Ocr {
    /// Reads `languages` (the first is the default), `parallel` images at a time, at most `max_waiting` queued.
    pub fn new(languages: Vec<String>, parallel: usize, max_waiting: usize) -> Self {
        let parallel = parallel.max(1);
        Self {
            languages,
            slots: Semaphore::new(parallel),
            admitted: Semaphore::new(parallel + max_waiting),
            timeout: Duration::from_secs(60),
        }
    }

    /// The languages it reads.
    pub fn languages(&self) -> &[String] {
        &self.languages
    }

    /// Recognises the text of `image` in `language` (the default when `None`).
    pub async fn recognise(
        &self,
        image: &[u8],
        language: Option<&str>,
    ) -> Result<Recognised, OcrError> {
        let format = Format::detect(image).ok_or(OcrError::Format)?;
        let language = match language {
            None => self
                .languages
                .first()
                .cloned()
                .unwrap_or_else(|| "eng".into()),
            Some(l) if self.languages.iter().any(|x| x == l) => l.to_owned(),
            Some(l) => return Err(OcrError::Language(l.to_owned())),
        };
        let _admitted = self.admitted.try_acquire().map_err(|_| OcrError::Busy)?;
        let _slot = self.slots.acquire().await.map_err(|_| OcrError::Busy)?;
        let started = Instant::now();
        let dir = tempfile::tempdir()?;
        let input = dir.path().join(format!("in.{}", format.extension()));
        tokio::fs::write(&input, image).await?;
        let page = match format {
            Format::Pdf => self.render_pdf(dir.path(), &input).await?,
            _ => input,
        };
        let out = self
            .run(
                "tesseract",
                &[
                    page.as_os_str(),
                    "stdout".as_ref(),
                    "-l".as_ref(),
                    language.as_ref(),
                    "tsv".as_ref(),
                ],
            )
            .await?;
        let (text, words) = parse_tsv(&String::from_utf8_lossy(&out));
        Ok(Recognised {
            text,
            words,
            language,
            ms: started.elapsed().as_millis() as u64,
        })
    }

    /// The first page of a one-page PDF as a 300 dpi PNG.
    async fn render_pdf(&self, dir: &Path, pdf: &Path) -> Result<std::path::PathBuf, OcrError> {
        let info = self.run("pdfinfo", &[pdf.as_os_str()]).await?;
        let pages = String::from_utf8_lossy(&info)
            .lines()
            .find_map(|l| l.strip_prefix("Pages:"))
            .and_then(|n| n.trim().parse::<u32>().ok())
            .unwrap_or(1);
        if pages != 1 {
            return Err(OcrError::Pages(pages));
        }
        let stem = dir.join("page");
        self.run(
            "pdftoppm",
            &[
                "-r".as_ref(),
                "300".as_ref(),
                "-png".as_ref(),
                "-singlefile".as_ref(),
                pdf.as_os_str(),
                stem.as_os_str(),
            ],
        )
        .await?;
        Ok(dir.join("page.png"))
    }

    /// Runs a tool within the time limit (killed when it is exceeded or the request goes away); its stdout.
    async fn run(
        &self,
        tool: &'static str,
        args: &[&std::ffi::OsStr],
    ) -> Result<Vec<u8>, OcrError> {
        let child = tokio::process::Command::new(tool)
            .args(args)
            .env("OMP_THREAD_LIMIT", "1")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(self.timeout, child)
            .await
            .map_err(|_| OcrError::Timeout(tool, self.timeout.as_secs()))?
            .map_err(|e| OcrError::Tool {
                tool,
                message: e.to_string(),
            })?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            let last = err
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("");
            return Err(OcrError::Tool {
                tool,
                message: format!("{} ({})", last.trim(), out.status),
            });
        }
        Ok(out.stdout)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OcrQuery {
    lang: Option<String>,
}

async fn recognise(
    State(ocr): State<Arc<Ocr>>,
    Query(q): Query<OcrQuery>,
    req: Request,
) -> Result<Json<Recognised>, ApiError> {
    let body = axum::body::to_bytes(req.into_body(), MAX_IMAGE_BYTES)
        .await
        .map_err(|_| ApiError::TooLarge(MAX_IMAGE_BYTES))?;
    Ok(Json(ocr.recognise(&body, q.lang.as_deref()).await?))
}

async fn health(State(ocr): State<Arc<Ocr>>) -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        languages: ocr.languages().to_vec(),
    })
}

/// The service's routes.
pub fn router(ocr: Arc<Ocr>) -> Router {
    commons_server::finish(
        Router::new()
            .route("/health", get(health))
            .route("/ocr", post(recognise))
            .layer(axum::extract::DefaultBodyLimit::disable())
            .with_state(ocr),
    )
}

/// Sample documents with known text, for tests and benchmarks.
pub mod sample {
    /// A one-page PDF (420 pt square) that shows `lines` in Helvetica 24 pt.
    pub fn pdf_with_text(lines: &[&str]) -> Vec<u8> {
        let mut content = String::from("BT /F1 24 Tf 30 TL 20 380 Td\n");
        for l in lines {
            content.push_str(&format!("({l}) Tj T*\n"));
        }
        content.push_str("ET");
        let objects = [
            "<< /Type /Catalog /Pages 2 0 R >>".to_owned(),
            "<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_owned(),
            "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 420 420] /Contents 4 0 R /Resources << /Font << /F1 5 0 R >> >> >>"
                .to_owned(),
            format!("<< /Length {} >>\nstream\n{content}\nendstream", content.len()),
            "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>".to_owned(),
        ];
        let mut pdf = b"%PDF-1.4\n".to_vec();
        let mut offsets = Vec::new();
        for (i, o) in objects.iter().enumerate() {
            offsets.push(pdf.len());
            pdf.extend_from_slice(format!("{} 0 obj\n{o}\nendobj\n", i + 1).as_bytes());
        }
        let xref = pdf.len();
        pdf.extend_from_slice(
            format!("xref\n0 {}\n0000000000 65535 f \n", objects.len() + 1).as_bytes(),
        );
        for o in offsets {
            pdf.extend_from_slice(format!("{o:010} 00000 n \n").as_bytes());
        }
        pdf.extend_from_slice(
            format!(
                "trailer\n<< /Size {} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n",
                objects.len() + 1
            )
            .as_bytes(),
        );
        pdf
    }

    /// The PDF's page as a 200 dpi PNG, through this machine's `pdftoppm` (Poppler).
    pub fn png_of(pdf: &[u8]) -> std::io::Result<Vec<u8>> {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("t.pdf"), pdf)?;
        let status = std::process::Command::new("pdftoppm")
            .args(["-r", "200", "-png", "-singlefile"])
            .arg(dir.path().join("t.pdf"))
            .arg(dir.path().join("t"))
            .status()?;
        if !status.success() {
            return Err(std::io::Error::other(format!("pdftoppm failed ({status})")));
        }
        std::fs::read(dir.path().join("t.png"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_are_told_by_their_first_bytes() {
        assert_eq!(Format::detect(b"\x89PNG\r\n\x1a\n"), Some(Format::Png));
        assert_eq!(
            Format::detect(&[0xFF, 0xD8, 0xFF, 0xE0]),
            Some(Format::Jpeg)
        );
        assert_eq!(Format::detect(b"II*\0"), Some(Format::Tiff));
        assert_eq!(Format::detect(b"MM\0*"), Some(Format::Tiff));
        assert_eq!(Format::detect(b"%PDF-1.7"), Some(Format::Pdf));
        assert_eq!(Format::detect(b"GIF89a"), None);
        assert_eq!(Format::detect(b""), None);
    }

    #[test]
    fn tsv_becomes_lines_blocks_and_words() {
        let tsv = "level\tpage_num\tblock_num\tpar_num\tline_num\tword_num\tleft\ttop\twidth\theight\tconf\ttext
1\t1\t0\t0\t0\t0\t0\t0\t640\t480\t-1\t
5\t1\t1\t1\t1\t1\t10\t20\t50\t15\t96.5\tHello
5\t1\t1\t1\t1\t2\t70\t20\t60\t15\t91.0\tworld
5\t1\t1\t1\t2\t1\t10\t40\t40\t15\t88\tsecond
5\t1\t2\t1\t1\t1\t10\t90\t40\t15\t77\tnext
5\t1\t2\t1\t1\t2\t60\t90\t40\t15\t77\t   
";
        let (text, words) = parse_tsv(tsv);
        assert_eq!(text, "Hello world\nsecond\n\nnext");
        assert_eq!(words.len(), 4);
        assert_eq!(
            words[0],
            Word {
                text: "Hello".into(),
                confidence: 96.5,
                bbox: [10, 20, 50, 15]
            }
        );
    }
}
