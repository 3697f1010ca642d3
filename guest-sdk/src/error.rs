//! The error type flows return.

use std::fmt;

/// The result of a flow's `handle`, and of the SDK's fallible helpers.
pub type Result<T = (), E = Error> = std::result::Result<T, E>;

/// An error a flow reports to the host. The host logs its message; the
/// connection stays open.
///
/// Any `std::error::Error` converts into it with `?`, so flows can mix the
/// SDK's errors with serde's or their own.
pub struct Error {
    message: String,
}

impl Error {
    /// An error with the given message.
    pub fn msg(message: impl fmt::Display) -> Self {
        Self {
            message: message.to_string(),
        }
    }
}

impl<E: std::error::Error> From<E> for Error {
    fn from(error: E) -> Self {
        let mut message = error.to_string();
        let mut source = error.source();
        while let Some(cause) = source {
            message.push_str(": ");
            message.push_str(&cause.to_string());
            source = cause.source();
        }
        Self { message }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.message, f)
    }
}
