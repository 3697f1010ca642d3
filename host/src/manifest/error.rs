//! Manifest errors: what is wrong, where (file, line, column, key) and how
//! to fix it.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// A manifest that cannot be used, with the place to look.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestError {
    file: PathBuf,
    /// 1-based line and column.
    location: Option<(usize, usize)>,
    message: String,
    help: Option<String>,
}

impl ManifestError {
    pub(crate) fn new(file: &Path, message: impl Into<String>) -> Self {
        Self {
            file: file.to_path_buf(),
            location: None,
            message: message.into(),
            help: None,
        }
    }

    /// Point the error at a byte range of the manifest source.
    pub(crate) fn at(mut self, source: &str, span: Range<usize>) -> Self {
        self.location = Some(line_col(source, span.start));
        self
    }

    /// Say how to fix it.
    pub(crate) fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// A TOML syntax error, or a value serde rejected at `key`.
    pub(super) fn from_toml(
        file: &Path,
        source: &str,
        key: Option<&str>,
        error: &toml::de::Error,
    ) -> Self {
        let message = error.message().trim_end();
        let message = match key {
            Some(key) if key != "." => format!("{key}: {message}"),
            _ => message.to_owned(),
        };
        let error_at = Self::new(file, message);
        match error.span() {
            Some(span) => error_at.at(source, span),
            None => error_at,
        }
    }
}

fn line_col(source: &str, offset: usize) -> (usize, usize) {
    let before = &source[..offset.min(source.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |nl| before.len() - nl - 1)
        + 1;
    (line, column)
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some((line, column)) = self.location {
            write!(f, ":{line}:{column}")?;
        }
        write!(f, ": {}", self.message)?;
        if let Some(help) = &self.help {
            write!(f, "\n  help: {help}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ManifestError {}
