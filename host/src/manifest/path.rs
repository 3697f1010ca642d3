//! Handler paths with `{name}` parameters, e.g. `/rooms/{room}/chat`.

use std::fmt;

/// One `/`-separated piece of a handler path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Segment {
    Literal(String),
    Param(String),
}

/// A validated handler path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PathPattern {
    text: String,
    segments: Vec<Segment>,
}

impl PathPattern {
    /// Parse a path such as `/orders/{region}`, or say what is wrong with it.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let Some(rest) = text.strip_prefix('/') else {
            return Err(format!("path `{text}` must start with `/`"));
        };
        let mut segments = Vec::new();
        if !rest.is_empty() {
            for piece in rest.split('/') {
                segments.push(parse_segment(text, piece)?);
            }
        }
        let mut names: Vec<&str> = Vec::new();
        for segment in &segments {
            if let Segment::Param(name) = segment {
                if names.contains(&name.as_str()) {
                    return Err(format!(
                        "path `{text}` uses the parameter `{{{name}}}` twice"
                    ));
                }
                names.push(name);
            }
        }
        Ok(Self {
            text: text.to_owned(),
            segments,
        })
    }

    /// The names of the path's parameters, in order.
    pub(crate) fn param_names(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().filter_map(|segment| match segment {
            Segment::Param(name) => Some(name.as_str()),
            Segment::Literal(_) => None,
        })
    }

    /// Match a request path (without query). On a match, returns the raw
    /// (still percent-encoded) value of each parameter.
    pub(crate) fn matches<'p>(&self, path: &'p str) -> Option<Vec<(&str, &'p str)>> {
        let rest = path.strip_prefix('/')?;
        let pieces: Vec<&str> = if rest.is_empty() {
            Vec::new()
        } else {
            rest.split('/').collect()
        };
        if pieces.len() != self.segments.len() {
            return None;
        }
        let mut params = Vec::new();
        for (segment, piece) in self.segments.iter().zip(pieces) {
            match segment {
                Segment::Literal(literal) if literal == piece => {}
                Segment::Literal(_) => return None,
                Segment::Param(_) if piece.is_empty() => return None,
                Segment::Param(name) => params.push((name.as_str(), piece)),
            }
        }
        Some(params)
    }

    /// Whether two patterns match exactly the same request paths (they
    /// differ at most in parameter names).
    pub(crate) fn same_shape(&self, other: &PathPattern) -> bool {
        self.segments.len() == other.segments.len()
            && self
                .segments
                .iter()
                .zip(&other.segments)
                .all(|pair| match pair {
                    (Segment::Literal(a), Segment::Literal(b)) => a == b,
                    (Segment::Param(_), Segment::Param(_)) => true,
                    _ => false,
                })
    }

    /// How many literal segments the pattern has: when several patterns
    /// match a request, the one with more literals wins.
    pub(crate) fn specificity(&self) -> usize {
        self.segments
            .iter()
            .filter(|segment| matches!(segment, Segment::Literal(_)))
            .count()
    }
}

fn parse_segment(path: &str, piece: &str) -> Result<Segment, String> {
    if let Some(inner) = piece.strip_prefix('{') {
        let Some(name) = inner.strip_suffix('}') else {
            return Err(format!(
                "path `{path}`: `{piece}` is missing its closing `}}`"
            ));
        };
        let valid = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !valid {
            return Err(format!(
                "path `{path}`: `{piece}` is not a valid parameter; \
                 names use letters, digits, `_` and `-`"
            ));
        }
        return Ok(Segment::Param(name.to_owned()));
    }
    if piece.contains(['{', '}']) {
        return Err(format!(
            "path `{path}`: a parameter must be a whole segment, like `/{{name}}`, not `{piece}`"
        ));
    }
    if piece.is_empty() {
        return Err(format!(
            "path `{path}` has an empty segment (`//` or a trailing `/`)"
        ));
    }
    Ok(Segment::Literal(piece.to_owned()))
}

impl fmt::Display for PathPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_literals_and_params() {
        let pattern = PathPattern::parse("/orders/{region}").unwrap();
        assert_eq!(pattern.matches("/orders/eu"), Some(vec![("region", "eu")]));
        assert_eq!(pattern.matches("/orders"), None);
        assert_eq!(pattern.matches("/orders/"), None);
        assert_eq!(pattern.matches("/orders/eu/x"), None);
        assert_eq!(pattern.matches("/order/eu"), None);
    }

    #[test]
    fn root_path_matches_only_root() {
        let pattern = PathPattern::parse("/").unwrap();
        assert_eq!(pattern.matches("/"), Some(vec![]));
        assert_eq!(pattern.matches("/x"), None);
    }

    #[test]
    fn rejects_malformed_paths() {
        assert!(PathPattern::parse("echo").is_err());
        assert!(PathPattern::parse("/a//b").is_err());
        assert!(PathPattern::parse("/a/{b").is_err());
        assert!(PathPattern::parse("/a/x{b}").is_err());
        assert!(PathPattern::parse("/{a}/{a}").is_err());
        assert!(PathPattern::parse("/{}").is_err());
    }

    #[test]
    fn same_shape_ignores_param_names_only() {
        let a = PathPattern::parse("/rooms/{room}").unwrap();
        let b = PathPattern::parse("/rooms/{id}").unwrap();
        let c = PathPattern::parse("/rooms/lobby").unwrap();
        assert!(a.same_shape(&b));
        assert!(!a.same_shape(&c));
        assert!(c.specificity() > a.specificity());
    }
}
