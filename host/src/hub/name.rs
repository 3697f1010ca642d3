//! Group names: validated once, then shared.

use std::fmt;
use std::sync::Arc;

use super::HubError;

/// Longest group name, in bytes.
const MAX_NAME_LEN: usize = 128;

/// The rule, as the error says it.
pub(super) const NAME_RULE: &str = "a group name is 1 to 128 characters: ASCII letters, digits \
     and - _ . : /";

/// A group name: 1 to 128 ASCII letters, digits and `-` `_` `.` `:` `/`.
/// Short and plain, so it is safe in logs and maps onto a broker subject:
/// no name holds whitespace or a subject wildcard (`*`, `>`); a cluster
/// transport escapes `.`, a subject's token separator.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct GroupName(Arc<str>);

impl GroupName {
    pub(crate) fn parse(name: &str) -> Result<Self, HubError> {
        let allowed = |c: u8| c.is_ascii_alphanumeric() || b"-_.:/".contains(&c);
        if name.is_empty() || name.len() > MAX_NAME_LEN || !name.bytes().all(allowed) {
            return Err(HubError::InvalidName);
        }
        Ok(Self(name.into()))
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for GroupName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_short_and_plain() {
        for good in ["lobby", "room:42", "user/ann", "a.b-c_d", &"x".repeat(128)] {
            assert_eq!(GroupName::parse(good).unwrap().as_str(), good);
        }
        for bad in [
            "",
            "has space",
            "wild*",
            "more>",
            "é",
            "tab\t",
            &"x".repeat(129),
        ] {
            assert_eq!(GroupName::parse(bad), Err(HubError::InvalidName), "{bad:?}");
        }
    }
}
