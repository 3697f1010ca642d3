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
    use proptest::prelude::*;

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

    /// A literal segment: no `/`, no braces, not empty.
    fn literal() -> impl Strategy<Value = String> {
        "[A-Za-z0-9._~%-]{1,8}"
    }

    /// Segments of a pattern: literals, and params with distinct names.
    fn segments() -> impl Strategy<Value = Vec<Segment>> {
        prop::collection::vec(
            prop_oneof![
                literal().prop_map(Segment::Literal),
                Just(Segment::Param(String::new()))
            ],
            0..6,
        )
        .prop_map(|segments| {
            segments
                .into_iter()
                .enumerate()
                .map(|(i, segment)| match segment {
                    Segment::Param(_) => Segment::Param(format!("p{i}")),
                    literal => literal,
                })
                .collect()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn parsing_and_matching_never_panic(pattern in "\\PC{0,24}", path in "\\PC{0,24}") {
            if let Ok(pattern) = PathPattern::parse(&pattern) {
                let _ = pattern.matches(&path);
            }
        }

        #[test]
        fn parsing_and_matching_path_like_text_never_panics(
            pattern in "[/{}a_-]{0,16}",
            path in "[/{}a_-]{0,16}",
        ) {
            if let Ok(pattern) = PathPattern::parse(&pattern)
                && let Some(params) = pattern.matches(&path)
            {
                prop_assert_eq!(params.len(), pattern.param_names().count());
            }
        }

        #[test]
        fn a_path_built_from_a_pattern_matches_it_with_the_values_put_in(
            segments in segments(),
            values in prop::collection::vec("[^/]{1,8}", 6),
        ) {
            let text_of = |segment: &Segment, i: usize, for_request: bool| match segment {
                Segment::Literal(literal) => literal.clone(),
                Segment::Param(_) if for_request => values[i].clone(),
                Segment::Param(name) => format!("{{{name}}}"),
            };
            let build = |for_request: bool| {
                let pieces: Vec<String> = segments
                    .iter()
                    .enumerate()
                    .map(|(i, segment)| text_of(segment, i, for_request))
                    .collect();
                format!("/{}", pieces.join("/"))
            };
            let text = build(false);
            let pattern = PathPattern::parse(&text).unwrap();
            prop_assert_eq!(pattern.to_string(), text);
            prop_assert_eq!(&pattern.segments, &segments);
            let request = build(true);
            let expected: Vec<(String, &str)> = segments
                .iter()
                .enumerate()
                .filter_map(|(i, segment)| match segment {
                    Segment::Param(name) => Some((name.clone(), values[i].as_str())),
                    Segment::Literal(_) => None,
                })
                .collect();
            let matched: Vec<(String, &str)> = pattern
                .matches(&request)
                .expect("the request matches its own pattern")
                .into_iter()
                .map(|(name, value)| (name.to_owned(), value))
                .collect();
            prop_assert_eq!(matched, expected);
            // One segment more or less does not match.
            prop_assert!(pattern.matches(&(request.clone() + "/x")).is_none());
        }
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
