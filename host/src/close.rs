//! A close the host sends: tungstenite's [`CloseCode`] and a reason that
//! fits a close frame. Closes chosen by the host, by a protocol error and
//! by a flow are all this one type.

use std::borrow::Cow;

use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::Utf8Bytes;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// Longest close reason that fits a control frame (125 - 2 bytes of code).
pub(crate) const MAX_CLOSE_REASON: usize = 123;

/// A close frame to send: a code and a reason of at most
/// [`MAX_CLOSE_REASON`] bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Close {
    code: CloseCode,
    reason: Cow<'static, str>,
}

/// Why a flow's close request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InvalidClose {
    /// Not a code an endpoint may send.
    Code,
    /// Longer than [`MAX_CLOSE_REASON`] bytes.
    ReasonTooLong,
}

impl Close {
    pub(crate) const NORMAL: Close = Close::fixed(CloseCode::Normal, "");
    pub(crate) const GOING_AWAY: Close = Close::fixed(CloseCode::Away, "server shutting down");
    pub(crate) const IDLE: Close = Close::fixed(CloseCode::Away, "idle timeout");
    pub(crate) const INTERNAL_ERROR: Close = Close::fixed(CloseCode::Error, "internal error");
    pub(crate) const FLOW_FAILED: Close = Close::fixed(CloseCode::Error, "flow failed");
    pub(crate) const SLOW_CLIENT: Close = Close::fixed(CloseCode::Policy, "client does not read");
    pub(crate) const SLOW_MEMBER: Close =
        Close::fixed(CloseCode::Policy, "client does not keep up with its groups");
    pub(crate) const PROTOCOL_ERROR: Close = Close::fixed(CloseCode::Protocol, "protocol error");
    pub(crate) const INVALID_UTF8: Close =
        Close::fixed(CloseCode::Invalid, "invalid UTF-8 in a text message");
    pub(crate) const TOO_BIG: Close = Close::fixed(CloseCode::Size, "message too big");
    pub(crate) const TRY_AGAIN_LATER: Close = Close::fixed(CloseCode::Again, "a group is full");
    pub(crate) const ID_IN_USE: Close =
        Close::fixed(CloseCode::Again, "connection id in use; reconnect");

    const fn fixed(code: CloseCode, reason: &'static str) -> Self {
        Self {
            code,
            reason: Cow::Borrowed(reason),
        }
    }

    /// 1007: the message content was not what the handler accepts. The
    /// reason is cut to fit.
    pub(crate) fn invalid_data(reason: String) -> Self {
        Self {
            code: CloseCode::Invalid,
            reason: Cow::Owned(truncate(reason)),
        }
    }

    /// The close a flow asked for, if it may send it: a code an endpoint may
    /// send (RFC 6455 section 7.4, with 1012-1014 from the IANA registry:
    /// service restart, try again later, bad gateway) and a reason that
    /// fits.
    pub(crate) fn requested(code: u16, reason: String) -> Result<Self, InvalidClose> {
        if !matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999) {
            return Err(InvalidClose::Code);
        }
        if reason.len() > MAX_CLOSE_REASON {
            return Err(InvalidClose::ReasonTooLong);
        }
        Ok(Self {
            code: CloseCode::from(code),
            reason: Cow::Owned(reason),
        })
    }

    /// The close code, as a number.
    pub(crate) fn code(&self) -> u16 {
        self.code.into()
    }

    pub(crate) fn reason(&self) -> &str {
        &self.reason
    }

    /// The frame that carries this close.
    pub(crate) fn into_frame(self) -> CloseFrame {
        let reason = match self.reason {
            Cow::Borrowed(text) => Utf8Bytes::from_static(text),
            Cow::Owned(text) => Utf8Bytes::from(text),
        };
        CloseFrame {
            code: self.code,
            reason,
        }
    }
}

/// Cut `reason` to at most [`MAX_CLOSE_REASON`] bytes, at a character
/// boundary.
fn truncate(mut reason: String) -> String {
    if reason.len() > MAX_CLOSE_REASON {
        let mut end = MAX_CLOSE_REASON;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
    }
    reason
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_cut_to_fit_a_frame_at_a_char_boundary() {
        let close = Close::invalid_data("é".repeat(100));
        let frame = close.into_frame();
        assert_eq!(frame.code, CloseCode::Invalid);
        assert!(frame.reason.len() <= MAX_CLOSE_REASON);
        assert_eq!(frame.reason.len() % 2, 0, "cut between characters");
    }

    #[test]
    fn a_flow_may_send_only_sendable_codes_and_short_reasons() {
        assert!(Close::requested(4000, "bye".into()).is_ok());
        // "Come back soon": a restart, an overload.
        assert!(Close::requested(1012, "restarting".into()).is_ok());
        assert!(Close::requested(1013, String::new()).is_ok());
        assert_eq!(
            Close::requested(1015, String::new()),
            Err(InvalidClose::Code)
        );
        assert_eq!(
            Close::requested(1005, String::new()),
            Err(InvalidClose::Code)
        );
        assert_eq!(
            Close::requested(999, String::new()),
            Err(InvalidClose::Code)
        );
        assert_eq!(
            Close::requested(1000, "x".repeat(124)),
            Err(InvalidClose::ReasonTooLong)
        );
    }
}
