//! Typed access to path parameters, query parameters and headers.

pub use crate::bindings::wsflow::flow::types::ParamValue;

/// A Rust type a parameter value converts to.
///
/// Implemented for `String`, `f64`, `i64`, `bool`, their `Vec`s (repeating
/// parameters) and `Option<T>` (parameters that may be absent).
pub trait FromParam: Sized {
    /// Convert `value` (`None`: the parameter is absent), or say why not.
    fn from_param(value: Option<&ParamValue>) -> Result<Self, String>;
}

impl<T: FromParam> FromParam for Option<T> {
    fn from_param(value: Option<&ParamValue>) -> Result<Self, String> {
        value.map(|v| T::from_param(Some(v))).transpose()
    }
}

fn describe(value: &ParamValue) -> &'static str {
    match value {
        ParamValue::Text(_) => "a string",
        ParamValue::Number(_) => "a number",
        ParamValue::Integer(_) => "an integer",
        ParamValue::Boolean(_) => "a boolean",
        ParamValue::TextList(_) => "a list of strings",
        ParamValue::NumberList(_) => "a list of numbers",
        ParamValue::IntegerList(_) => "a list of integers",
        ParamValue::BooleanList(_) => "a list of booleans",
    }
}

fn present(value: Option<&ParamValue>) -> Result<&ParamValue, String> {
    value.ok_or_else(|| "is absent".to_string())
}

fn mismatch<T>(value: &ParamValue, wanted: &str) -> Result<T, String> {
    Err(format!("is {}, not {wanted}", describe(value)))
}

impl FromParam for String {
    fn from_param(value: Option<&ParamValue>) -> Result<Self, String> {
        match present(value)? {
            ParamValue::Text(text) => Ok(text.clone()),
            ParamValue::Number(n) => Ok(n.to_string()),
            ParamValue::Integer(n) => Ok(n.to_string()),
            ParamValue::Boolean(b) => Ok(b.to_string()),
            ParamValue::TextList(list) if list.len() == 1 => Ok(list[0].clone()),
            other => mismatch(other, "a single value"),
        }
    }
}

impl FromParam for f64 {
    fn from_param(value: Option<&ParamValue>) -> Result<Self, String> {
        match present(value)? {
            ParamValue::Number(n) => Ok(*n),
            ParamValue::Integer(n) => Ok(*n as f64),
            ParamValue::Text(text) => text
                .parse()
                .map_err(|_| format!("`{text}` is not a number")),
            other => mismatch(other, "a number"),
        }
    }
}

impl FromParam for i64 {
    fn from_param(value: Option<&ParamValue>) -> Result<Self, String> {
        match present(value)? {
            ParamValue::Integer(n) => Ok(*n),
            ParamValue::Text(text) => text
                .parse()
                .map_err(|_| format!("`{text}` is not an integer")),
            other => mismatch(other, "an integer"),
        }
    }
}

impl FromParam for bool {
    fn from_param(value: Option<&ParamValue>) -> Result<Self, String> {
        match present(value)? {
            ParamValue::Boolean(b) => Ok(*b),
            ParamValue::Text(text) => text
                .parse()
                .map_err(|_| format!("`{text}` is not true or false")),
            other => mismatch(other, "a boolean"),
        }
    }
}

impl FromParam for Vec<String> {
    fn from_param(value: Option<&ParamValue>) -> Result<Self, String> {
        match value {
            None => Ok(Vec::new()),
            Some(ParamValue::TextList(list)) => Ok(list.clone()),
            Some(single) => String::from_param(Some(single)).map(|s| vec![s]),
        }
    }
}

impl FromParam for Vec<f64> {
    fn from_param(value: Option<&ParamValue>) -> Result<Self, String> {
        match value {
            None => Ok(Vec::new()),
            Some(ParamValue::NumberList(list)) => Ok(list.clone()),
            Some(single) => f64::from_param(Some(single)).map(|n| vec![n]),
        }
    }
}

impl FromParam for Vec<i64> {
    fn from_param(value: Option<&ParamValue>) -> Result<Self, String> {
        match value {
            None => Ok(Vec::new()),
            Some(ParamValue::IntegerList(list)) => Ok(list.clone()),
            Some(single) => i64::from_param(Some(single)).map(|n| vec![n]),
        }
    }
}

impl FromParam for Vec<bool> {
    fn from_param(value: Option<&ParamValue>) -> Result<Self, String> {
        match value {
            None => Ok(Vec::new()),
            Some(ParamValue::BooleanList(list)) => Ok(list.clone()),
            Some(single) => bool::from_param(Some(single)).map(|b| vec![b]),
        }
    }
}
