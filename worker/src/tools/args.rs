//! Typed access to a tool call's JSON arguments.
//!
//! Models are not always exact with types, so numbers given as strings (`"10"`) are accepted;
//! a `null` argument counts as absent. Every error names the argument it is about.

use serde_json::{Map, Value};

use super::outcome::ToolError;

/// The arguments of one call: a JSON object (or `null`, read as an empty object).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Args<'a> {
    /// `None` when the model sent `null` for the whole arguments object.
    map: Option<&'a Map<String, Value>>,
}

impl<'a> Args<'a> {
    /// Checks that `value` is an object (or null).
    pub(crate) fn new(value: &'a Value) -> Result<Self, ToolError> {
        match value {
            Value::Object(map) => Ok(Self { map: Some(map) }),
            Value::Null => Ok(Self { map: None }),
            other => Err(ToolError::NotAnObject(type_name(other))),
        }
    }

    fn get(&self, name: &str) -> Option<&'a Value> {
        self.map
            .and_then(|map| map.get(name))
            .filter(|value| !value.is_null())
    }

    /// A string argument that must be present (it may be empty).
    pub(crate) fn required_str(&self, name: &'static str) -> Result<&'a str, ToolError> {
        self.optional_str(name)?
            .ok_or(ToolError::MissingArgument(name))
    }

    /// A string argument that may be absent.
    pub(crate) fn optional_str(&self, name: &'static str) -> Result<Option<&'a str>, ToolError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(text)) => Ok(Some(text)),
            Some(other) => Err(ToolError::invalid(
                name,
                format!("must be a string, not {}", type_name(other)),
            )),
        }
    }

    /// A whole number argument that may be absent.
    pub(crate) fn optional_count(&self, name: &'static str) -> Result<Option<u64>, ToolError> {
        let Some(value) = self.get(name) else {
            return Ok(None);
        };
        let number = match value {
            Value::Number(number) => number.as_u64().or_else(|| {
                number
                    .as_f64()
                    .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f <= u64::MAX as f64)
                    .map(|f| f as u64)
            }),
            Value::String(text) => text.trim().parse::<u64>().ok(),
            _ => None,
        };
        number.map(Some).ok_or_else(|| {
            ToolError::invalid(
                name,
                format!("must be a non-negative whole number, not {value}"),
            )
        })
    }

    /// A positive number of seconds (fractions allowed) that may be absent.
    pub(crate) fn optional_seconds(&self, name: &'static str) -> Result<Option<f64>, ToolError> {
        let Some(value) = self.get(name) else {
            return Ok(None);
        };
        let seconds = match value {
            Value::Number(number) => number.as_f64(),
            Value::String(text) => text.trim().parse::<f64>().ok(),
            _ => None,
        };
        match seconds {
            Some(s) if s.is_finite() && s > 0.0 => Ok(Some(s)),
            _ => Err(ToolError::invalid(
                name,
                format!("must be a positive number of seconds, not {value}"),
            )),
        }
    }
}

/// The JSON type of `value`, for messages.
fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn args_name_the_argument_at_fault() {
        let value = json!({"path": 3, "offset": "12", "limit": -1, "t": 0.5, "n": null});
        let args = Args::new(&value).unwrap();
        let err = args.required_str("path").unwrap_err().render();
        assert_eq!(err, "argument `path` must be a string, not a number");
        assert_eq!(args.optional_count("offset").unwrap(), Some(12));
        assert!(
            args.optional_count("limit")
                .unwrap_err()
                .render()
                .contains("`limit`")
        );
        assert_eq!(args.optional_seconds("t").unwrap(), Some(0.5));
        assert_eq!(args.optional_str("n").unwrap(), None);
        let err = args.required_str("command").unwrap_err().render();
        assert_eq!(err, "missing required argument `command`");
    }

    #[test]
    fn args_must_be_an_object() {
        let value = json!([1]);
        let err = Args::new(&value).unwrap_err().render();
        assert_eq!(err, "the arguments must be a JSON object, not an array");
        assert!(Args::new(&Value::Null).is_ok());
    }
}
