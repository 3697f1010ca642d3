//! App properties and `${NAME}` references to them in string settings.

use std::collections::BTreeMap;
use std::fmt;

/// An environment variable `WSFLOW_PROP_<NAME>` overrides (or supplies) the
/// property `NAME`; in the variable name, `NAME` is upper-cased and every
/// character other than a letter or digit becomes `_`.
pub(crate) const PROPERTY_ENV_PREFIX: &str = "WSFLOW_PROP_";

/// The properties of one app, after environment overrides.
#[derive(Debug, Clone, Default)]
pub(crate) struct Properties {
    values: BTreeMap<String, String>,
    /// The `WSFLOW_PROP_*` environment variables, captured once so that
    /// validation and loading agree.
    environment: BTreeMap<String, String>,
}

/// A `${...}` reference that cannot be resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PropertyError {
    Undefined(String),
    Unterminated,
    EmptyName,
}

impl PropertyError {
    pub(crate) fn help(&self) -> String {
        match self {
            PropertyError::Undefined(name) => format!(
                "define it under [properties] or set the environment variable {}",
                env_name(name)
            ),
            PropertyError::Unterminated => "close the reference with `}`".into(),
            PropertyError::EmptyName => "write `${NAME}`, or `$${` for a literal `${`".into(),
        }
    }
}

impl fmt::Display for PropertyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PropertyError::Undefined(name) => write!(f, "the property `{name}` is not defined"),
            PropertyError::Unterminated => {
                f.write_str("a `${` property reference has no closing `}`")
            }
            PropertyError::EmptyName => f.write_str("`${}` names no property"),
        }
    }
}

/// The environment variable that overrides property `name`.
pub(crate) fn env_name(name: &str) -> String {
    let mut env = String::from(PROPERTY_ENV_PREFIX);
    env.extend(name.chars().map(|c| {
        if c.is_ascii_alphanumeric() {
            c.to_ascii_uppercase()
        } else {
            '_'
        }
    }));
    env
}

/// The names of the properties `text` refers to with `${NAME}`.
pub(crate) fn references(text: &str) -> Vec<&str> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find('$') {
        let after = &rest[start..];
        if let Some(escaped) = after.strip_prefix("$${") {
            rest = escaped;
        } else if let Some(reference) = after.strip_prefix("${")
            && let Some(end) = reference.find('}')
        {
            names.push(reference[..end].trim());
            rest = &reference[end + 1..];
        } else {
            rest = &after[1..];
        }
    }
    names
}

impl Properties {
    /// The manifest's `[properties]`, each overridden by its variable in
    /// `environment` (the process environment, or a test's) when set.
    pub(crate) fn new(
        declared: &BTreeMap<String, String>,
        environment: impl IntoIterator<Item = (String, String)>,
    ) -> Self {
        let environment: BTreeMap<String, String> = environment
            .into_iter()
            .filter(|(name, _)| name.starts_with(PROPERTY_ENV_PREFIX))
            .collect();
        let values = declared
            .iter()
            .map(|(name, value)| {
                let value = environment.get(&env_name(name)).unwrap_or(value).clone();
                (name.clone(), value)
            })
            .collect();
        Self {
            values,
            environment,
        }
    }

    /// The value of property `name`: the manifest's (or its override), else
    /// one supplied only through the environment.
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.values
            .get(name)
            .or_else(|| self.environment.get(&env_name(name)))
            .map(String::as_str)
    }

    /// The properties a flow can read: those the manifest declares (with
    /// their overrides). Values supplied only through the environment serve
    /// settings such as TLS keys and stay hidden from flows.
    pub(crate) fn values(&self) -> &BTreeMap<String, String> {
        &self.values
    }

    /// Replace each `${NAME}` in `text` with the property's value; `$${`
    /// stands for a literal `${`.
    pub(crate) fn substitute(&self, text: &str) -> Result<String, PropertyError> {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(start) = rest.find('$') {
            out.push_str(&rest[..start]);
            let after = &rest[start..];
            if let Some(escaped) = after.strip_prefix("$${") {
                out.push_str("${");
                rest = escaped;
            } else if let Some(reference) = after.strip_prefix("${") {
                let end = reference.find('}').ok_or(PropertyError::Unterminated)?;
                let name = reference[..end].trim();
                if name.is_empty() {
                    return Err(PropertyError::EmptyName);
                }
                let value = self
                    .get(name)
                    .ok_or_else(|| PropertyError::Undefined(name.to_owned()))?;
                out.push_str(value);
                rest = &reference[end + 1..];
            } else {
                out.push('$');
                rest = &after[1..];
            }
        }
        out.push_str(rest);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn properties(pairs: &[(&str, &str)], env: &[(&str, &str)]) -> Properties {
        let declared = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        Properties::new(&declared, env)
    }

    #[test]
    fn substitutes_references_and_escapes() {
        let p = properties(&[("HOST", "example.org"), ("PORT", "80")], &[]);
        assert_eq!(p.substitute("${HOST}:${PORT}").unwrap(), "example.org:80");
        assert_eq!(p.substitute("cost $5 $${HOST}").unwrap(), "cost $5 ${HOST}");
        assert_eq!(p.substitute("plain").unwrap(), "plain");
    }

    #[test]
    fn reports_undefined_and_malformed_references() {
        let p = properties(&[], &[]);
        assert_eq!(
            p.substitute("${NOPE}"),
            Err(PropertyError::Undefined("NOPE".into()))
        );
        assert_eq!(p.substitute("${NOPE"), Err(PropertyError::Unterminated));
        assert_eq!(p.substitute("${}"), Err(PropertyError::EmptyName));
    }

    #[test]
    fn environment_overrides_and_supplies_properties() {
        let p = properties(
            &[("port", "1"), ("db-url", "x")],
            &[("WSFLOW_PROP_PORT", "2"), ("WSFLOW_PROP_SECRET", "s3")],
        );
        assert_eq!(p.get("port"), Some("2"));
        assert_eq!(p.get("db-url"), Some("x"));
        assert_eq!(p.get("SECRET"), Some("s3"));
        assert_eq!(env_name("db-url"), "WSFLOW_PROP_DB_URL");
    }
}
