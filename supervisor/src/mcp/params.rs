//! Reading a tool call's arguments. Every refusal names the field and says what it takes, so a
//! model can correct its call; these come back as tool errors, not protocol errors.

use rmcp::model::JsonObject;
use serde_json::Value;

use crate::mcp::tools::ToolName;

/// A call's arguments, checked against the fields its tool takes.
#[derive(Debug)]
pub struct Params {
    tool: ToolName,
    map: JsonObject,
}

/// Which argument was wrong, and how: the message for the model.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadArgument(pub String);

impl Params {
    /// The arguments of a call of `tool`: refuses a field the tool does not take.
    pub fn new(tool: ToolName, arguments: Option<JsonObject>) -> Result<Params, BadArgument> {
        let map = arguments.unwrap_or_default();
        let known = known_fields(tool);
        if let Some(unknown) = map.keys().find(|k| !known.contains(&k.as_str())) {
            return Err(BadArgument(format!(
                "{} takes no argument `{unknown}`; its arguments are {}",
                tool.as_str(),
                known
                    .iter()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        Ok(Params { tool, map })
    }

    /// A string argument; absent, `null` or blank reads as `None`.
    pub fn string(&self, field: &str) -> Result<Option<String>, BadArgument> {
        match self.map.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(text)) if text.trim().is_empty() => Ok(None),
            Some(Value::String(text)) => Ok(Some(text.clone())),
            Some(other) => Err(self.wrong_type(field, "a string", other)),
        }
    }

    /// A string argument that must be given.
    pub fn required(&self, field: &str) -> Result<String, BadArgument> {
        self.string(field)?.ok_or_else(|| {
            BadArgument(format!(
                "{}: `{field}` is required (a non-empty string)",
                self.tool.as_str()
            ))
        })
    }

    /// A whole number of at least 1; absent or `null` reads as `None`.
    pub fn positive_integer(&self, field: &str) -> Result<Option<u64>, BadArgument> {
        let value = match self.map.get(field) {
            None | Some(Value::Null) => return Ok(None),
            Some(value) => value,
        };
        let number = match value {
            Value::Number(n) => n.as_u64().or_else(|| {
                n.as_f64()
                    .filter(|f| f.fract() == 0.0 && *f >= 0.0)
                    .map(|f| f as u64)
            }),
            _ => return Err(self.wrong_type(field, "a whole number of at least 1", value)),
        };
        match number {
            Some(n) if n >= 1 => Ok(Some(n)),
            _ => Err(BadArgument(format!(
                "{}: `{field}` must be a whole number of at least 1, not {value}",
                self.tool.as_str()
            ))),
        }
    }

    /// A boolean argument; absent or `null` reads as `false`.
    pub fn flag(&self, field: &str) -> Result<bool, BadArgument> {
        match self.map.get(field) {
            None | Some(Value::Null) => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(other) => Err(self.wrong_type(field, "true or false", other)),
        }
    }

    /// One of `choices`; absent or `null` reads as `None`.
    pub fn choice(&self, field: &str, choices: &[&str]) -> Result<Option<String>, BadArgument> {
        match self.string(field)? {
            None => Ok(None),
            Some(text) if choices.contains(&text.as_str()) => Ok(Some(text)),
            Some(text) => Err(BadArgument(format!(
                "{}: `{field}` must be one of {}, not {text:?}",
                self.tool.as_str(),
                choices.join(", ")
            ))),
        }
    }

    fn wrong_type(&self, field: &str, wanted: &str, got: &Value) -> BadArgument {
        let got = match got {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Number(_) => "a number",
            Value::String(_) => "a string",
            Value::Array(_) => "an array",
            Value::Object(_) => "an object",
        };
        BadArgument(format!(
            "{}: `{field}` must be {wanted}, not {got}",
            self.tool.as_str()
        ))
    }
}

/// The fields each tool takes (its input schema's properties).
fn known_fields(tool: ToolName) -> &'static [&'static str] {
    match tool {
        ToolName::Run => &["prompt", "repo", "model", "base", "timeout_s"],
        ToolName::Submit => &["prompt", "repo", "model", "base", "priority"],
        ToolName::Status => &["task"],
        ToolName::Cancel | ToolName::Logs => &["task"],
        ToolName::Steer => &["task", "text"],
        ToolName::Diff => &["task", "stat"],
        ToolName::Merge => &["task", "into"],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn params(tool: ToolName, value: Value) -> Result<Params, BadArgument> {
        match value {
            Value::Object(map) => Params::new(tool, Some(map)),
            _ => Params::new(tool, None),
        }
    }

    #[test]
    fn the_fields_match_the_schemas() {
        for tool in ToolName::ALL {
            let definition = tool.definition();
            let mut properties: Vec<&str> = definition
                .input_schema
                .get("properties")
                .and_then(Value::as_object)
                .map(|p| p.keys().map(String::as_str).collect())
                .unwrap_or_default();
            properties.sort_unstable();
            let mut known = known_fields(tool).to_vec();
            known.sort_unstable();
            assert_eq!(properties, known, "{}", tool.as_str());
        }
    }

    #[test]
    fn errors_name_the_field() {
        let p = params(ToolName::Run, json!({"prompt": 3})).unwrap();
        assert_eq!(
            p.required("prompt").unwrap_err().0,
            "kugetsu_run: `prompt` must be a string, not a number"
        );
        let p = params(ToolName::Run, json!({"prompt": "  "})).unwrap();
        assert!(
            p.required("prompt")
                .unwrap_err()
                .0
                .contains("`prompt` is required")
        );
        let p = params(ToolName::Run, json!({"timeout_s": 0})).unwrap();
        assert!(
            p.positive_integer("timeout_s")
                .unwrap_err()
                .0
                .contains("`timeout_s`")
        );
        let p = params(ToolName::Run, json!({"timeout_s": "10"})).unwrap();
        assert!(p.positive_integer("timeout_s").is_err());
        let p = params(ToolName::Run, json!({"timeout_s": 30.0})).unwrap();
        assert_eq!(p.positive_integer("timeout_s").unwrap(), Some(30));
        let p = params(ToolName::Submit, json!({"priority": "urgent"})).unwrap();
        assert!(
            p.choice("priority", &["high", "normal", "low"])
                .unwrap_err()
                .0
                .contains("`priority` must be one of high, normal, low")
        );
        let p = params(ToolName::Diff, json!({"stat": "yes"})).unwrap();
        assert!(p.flag("stat").unwrap_err().0.contains("`stat`"));
        let e = params(ToolName::Cancel, json!({"id": "x"})).unwrap_err();
        assert_eq!(
            e.0,
            "kugetsu_cancel takes no argument `id`; its arguments are `task`"
        );
    }

    #[test]
    fn absent_and_null_are_none() {
        let p = params(ToolName::Merge, json!({"task": "t", "into": null})).unwrap();
        assert_eq!(p.string("into").unwrap(), None);
        assert_eq!(p.required("task").unwrap(), "t");
        let p = params(ToolName::Status, Value::Null).unwrap();
        assert_eq!(p.string("task").unwrap(), None);
    }
}
