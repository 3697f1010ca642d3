//! Declared parameters: the raw strings of a path parameter, query
//! parameter or header, checked and converted to the declared type.

use crate::manifest::spec::{ParamSpec, ParamType};
use crate::runtime::bindings::ParamValue;

/// Convert the raw values given for a declared parameter. `kind` names the
/// parameter's place (`query parameter`, ...) in the message. `Ok(None)`:
/// absent and not required.
pub(super) fn convert(
    spec: &ParamSpec,
    kind: &str,
    raw: Vec<String>,
) -> Result<Option<ParamValue>, String> {
    let name = &spec.name;
    if raw.is_empty() {
        return if spec.required {
            Err(format!("{kind} `{name}` is required but missing"))
        } else {
            Ok(None)
        };
    }
    if !spec.repeating && raw.len() > 1 {
        return Err(format!(
            "{kind} `{name}` is given {} times but takes one value",
            raw.len()
        ));
    }
    let convert_one = |text: &str| -> Result<Scalar, String> {
        Scalar::parse(spec.ty, text)
            .ok_or_else(|| format!("{kind} `{name}`: `{text}` is not {}", describe(spec.ty)))
    };
    let values = raw
        .iter()
        .map(|text| convert_one(text))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(if spec.repeating {
        Scalar::list(spec.ty, values)
    } else {
        values.into_iter().next().expect("one value").single()
    }))
}

fn describe(ty: ParamType) -> &'static str {
    match ty {
        ParamType::String => "a string",
        ParamType::Number => "a number",
        ParamType::Integer => "an integer",
        ParamType::Boolean => "a boolean (true or false)",
    }
}

enum Scalar {
    Text(String),
    Number(f64),
    Integer(i64),
    Boolean(bool),
}

impl Scalar {
    fn parse(ty: ParamType, text: &str) -> Option<Self> {
        match ty {
            ParamType::String => Some(Self::Text(text.to_owned())),
            ParamType::Number => text
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|n| n.is_finite())
                .map(Self::Number),
            ParamType::Integer => text.trim().parse().ok().map(Self::Integer),
            ParamType::Boolean => match text.trim().to_ascii_lowercase().as_str() {
                "true" | "1" => Some(Self::Boolean(true)),
                "false" | "0" => Some(Self::Boolean(false)),
                _ => None,
            },
        }
    }

    fn single(self) -> ParamValue {
        match self {
            Self::Text(v) => ParamValue::Text(v),
            Self::Number(v) => ParamValue::Number(v),
            Self::Integer(v) => ParamValue::Integer(v),
            Self::Boolean(v) => ParamValue::Boolean(v),
        }
    }

    fn list(ty: ParamType, values: Vec<Self>) -> ParamValue {
        let mut texts = Vec::new();
        let mut numbers = Vec::new();
        let mut integers = Vec::new();
        let mut booleans = Vec::new();
        for value in values {
            match value {
                Self::Text(v) => texts.push(v),
                Self::Number(v) => numbers.push(v),
                Self::Integer(v) => integers.push(v),
                Self::Boolean(v) => booleans.push(v),
            }
        }
        match ty {
            ParamType::String => ParamValue::TextList(texts),
            ParamType::Number => ParamValue::NumberList(numbers),
            ParamType::Integer => ParamValue::IntegerList(integers),
            ParamType::Boolean => ParamValue::BooleanList(booleans),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn spec(ty: ParamType, repeating: bool, required: bool) -> ParamSpec {
        ParamSpec {
            name: "p".into(),
            ty,
            repeating,
            required,
        }
    }

    fn strings(values: &[&str]) -> Vec<String> {
        values.iter().map(|v| v.to_string()).collect()
    }

    fn any_type() -> impl Strategy<Value = ParamType> {
        prop_oneof![
            Just(ParamType::String),
            Just(ParamType::Number),
            Just(ParamType::Integer),
            Just(ParamType::Boolean),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn conversion_never_panics(
            ty in any_type(),
            repeating in any::<bool>(),
            required in any::<bool>(),
            raw in prop::collection::vec("\\PC{0,12}", 0..4),
        ) {
            let _ = convert(&spec(ty, repeating, required), "q", raw);
        }

        #[test]
        fn formatted_values_convert_back(
            integer in any::<i64>(),
            number in any::<f64>().prop_filter("finite", |n| n.is_finite()),
            boolean in any::<bool>(),
            integers in prop::collection::vec(any::<i64>(), 1..4),
        ) {
            let one = |ty, text: String| convert(&spec(ty, false, true), "q", vec![text]);
            let converted = one(ParamType::Integer, integer.to_string());
            prop_assert!(matches!(converted, Ok(Some(ParamValue::Integer(v))) if v == integer));
            let converted = one(ParamType::Number, number.to_string());
            prop_assert!(matches!(converted, Ok(Some(ParamValue::Number(v))) if v == number));
            let converted = one(ParamType::Boolean, boolean.to_string());
            prop_assert!(matches!(converted, Ok(Some(ParamValue::Boolean(v))) if v == boolean));
            let texts = integers.iter().map(i64::to_string).collect();
            let converted = convert(&spec(ParamType::Integer, true, true), "q", texts);
            prop_assert!(matches!(converted, Ok(Some(ParamValue::IntegerList(v))) if v == integers));
        }
    }

    #[test]
    fn converts_each_type() {
        let number = convert(
            &spec(ParamType::Number, false, false),
            "q",
            strings(&["2.5"]),
        );
        assert!(matches!(number, Ok(Some(ParamValue::Number(n))) if n == 2.5));
        let integer = convert(
            &spec(ParamType::Integer, false, false),
            "q",
            strings(&["-7"]),
        );
        assert!(matches!(integer, Ok(Some(ParamValue::Integer(-7)))));
        let boolean = convert(
            &spec(ParamType::Boolean, false, false),
            "q",
            strings(&["TRUE"]),
        );
        assert!(matches!(boolean, Ok(Some(ParamValue::Boolean(true)))));
        let list = convert(
            &spec(ParamType::Integer, true, false),
            "q",
            strings(&["1", "2"]),
        );
        assert!(matches!(list, Ok(Some(ParamValue::IntegerList(v))) if v == [1, 2]));
    }

    #[test]
    fn names_the_problem() {
        let missing = convert(
            &spec(ParamType::String, false, true),
            "query parameter",
            vec![],
        );
        assert_eq!(
            missing.unwrap_err(),
            "query parameter `p` is required but missing"
        );
        let absent = convert(
            &spec(ParamType::String, false, false),
            "query parameter",
            vec![],
        );
        assert!(matches!(absent, Ok(None)));
        let bad = convert(
            &spec(ParamType::Number, false, false),
            "header",
            strings(&["abc"]),
        );
        assert_eq!(bad.unwrap_err(), "header `p`: `abc` is not a number");
        let twice = convert(
            &spec(ParamType::String, false, false),
            "query parameter",
            strings(&["a", "b"]),
        );
        assert_eq!(
            twice.unwrap_err(),
            "query parameter `p` is given 2 times but takes one value"
        );
        let nan = convert(
            &spec(ParamType::Number, false, false),
            "q",
            strings(&["NaN"]),
        );
        assert!(nan.is_err());
    }
}
