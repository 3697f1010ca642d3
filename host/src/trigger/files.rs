//! Static files next to the WebSocket endpoints (`static_dir` on a
//! trigger), so a browser client can be served from the same origin.
//!
//! A request that is not an upgrade is answered here (see [`super::http1`]
//! for how the trigger tells): `GET`/`HEAD` with a file of the directory
//! (`index.html` for a directory), 404 when there is none, 405 for other
//! methods. A path never leaves the directory: `..`, hidden names and
//! encoded separators are refused, and the file found is checked to lie
//! inside the directory after symbolic links are resolved.

use std::path::{Path, PathBuf};

use super::handshake::percent_decode;
use super::http1::{Body, Plain, Response};

/// The largest file served; a larger one is answered with 403. With the
/// response deadline (one second per MiB at least), this bounds how long
/// one request may hold its socket.
const MAX_FILE_SIZE: u64 = 64 << 20;

/// The directory a trigger serves.
#[derive(Debug, Clone)]
pub(super) struct StaticFiles {
    /// Canonical (checked at load).
    root: PathBuf,
}

impl StaticFiles {
    pub(super) fn new(root: PathBuf) -> Self {
        Self { root }
    }

    /// The answer to a plain request.
    pub(super) async fn respond(&self, request: &Plain) -> Response {
        let head_only = match request.method.as_str() {
            "GET" => false,
            "HEAD" => true,
            _ => return Response::status(405),
        };
        let Some(path) = self.resolve(&request.path) else {
            return Response::status(404);
        };
        let Ok(file) = tokio::fs::File::open(&path).await else {
            return Response::status(404);
        };
        let Ok(len) = file.metadata().await.map(|metadata| metadata.len()) else {
            return Response::status(404);
        };
        if len > MAX_FILE_SIZE {
            tracing::debug!(
                "{}: {len} bytes, over the {MAX_FILE_SIZE} bytes served",
                path.display()
            );
            return Response::text(
                403,
                format!(
                    "this file is larger than the largest file served ({} MiB)\n",
                    MAX_FILE_SIZE >> 20
                ),
            );
        }
        Response {
            status: 200,
            content_type: content_type(&path),
            // A `HEAD` needs the length only: the file is not read.
            body: Body::File((!head_only).then_some(file), len),
            head_only,
        }
    }

    /// The file `target` names inside the directory, if there is one.
    fn resolve(&self, target: &str) -> Option<PathBuf> {
        let path = target.split(['?', '#']).next()?;
        let mut file = self.root.clone();
        for segment in path.strip_prefix('/')?.split('/') {
            let segment = percent_decode(segment, false)?;
            if segment.is_empty() {
                continue;
            }
            // `..`, hidden files, and separators smuggled in encoded.
            if segment.starts_with('.') || segment.contains(['/', '\\', '\0']) {
                return None;
            }
            file.push(segment);
        }
        if file.is_dir() {
            file.push("index.html");
        }
        // Symbolic links may point anywhere: the file must still be inside.
        let file = std::fs::canonicalize(file).ok()?;
        (file.starts_with(&self.root) && file.is_file()).then_some(file)
    }
}

/// The content type for a file, by its extension.
fn content_type(path: &Path) -> &'static str {
    let extension = path
        .extension()
        .and_then(|extension| extension.to_str())
        .map(str::to_ascii_lowercase);
    match extension.as_deref() {
        Some("html" | "htm") => "text/html; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("json" | "map") => "application/json",
        Some("txt") => "text/plain; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("gif") => "image/gif",
        Some("webp") => "image/webp",
        Some("ico") => "image/x-icon",
        Some("wasm") => "application/wasm",
        Some("woff2") => "font/woff2",
        Some("woff") => "font/woff",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site() -> (tempfile::TempDir, StaticFiles) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("site");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("index.html"), "home").unwrap();
        std::fs::write(root.join("sub/a.txt"), "a").unwrap();
        std::fs::write(root.join(".env"), "secret").unwrap();
        std::fs::write(dir.path().join("outside.txt"), "secret").unwrap();
        let files = StaticFiles::new(std::fs::canonicalize(&root).unwrap());
        (dir, files)
    }

    #[test]
    fn paths_resolve_inside_the_directory_only() {
        let (dir, files) = site();
        let root = &files.root;
        assert_eq!(files.resolve("/"), Some(root.join("index.html")));
        assert_eq!(files.resolve("/?x=1"), Some(root.join("index.html")));
        assert_eq!(files.resolve("/sub/a.txt"), Some(root.join("sub/a.txt")));
        assert_eq!(files.resolve("/sub/%61.txt"), Some(root.join("sub/a.txt")));
        for bad in [
            "/../outside.txt",
            "/sub/../../outside.txt",
            "/%2e%2e/outside.txt",
            "/sub%2f..%2f..%2foutside.txt",
            "/..%5coutside.txt",
            "/.env",
            "/missing",
            "/sub",
            "relative",
            "/bad%zz",
        ] {
            assert_eq!(files.resolve(bad), None, "{bad}");
        }
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(dir.path().join("outside.txt"), root.join("link.txt"))
                .unwrap();
            assert_eq!(
                files.resolve("/link.txt"),
                None,
                "a link out of the directory"
            );
        }
    }
}
