//! A `tools/call` result as the text the model gets.

use rmcp::model::CallToolResult;

/// Bytes of a result the model gets; the rest is cut with a note (like the file tools).
pub(crate) const MAX_OUTPUT_BYTES: usize = 32 * 1024;

/// The text of `result`: text blocks joined by newlines, other kinds of content summarized in
/// one line each, structured content when there is nothing else; capped at
/// [`MAX_OUTPUT_BYTES`]. Returns the text and whether it was cut.
pub(crate) fn render(result: &CallToolResult) -> (String, bool) {
    let mut parts: Vec<String> = Vec::new();
    for block in &result.content {
        let value = serde_json::to_value(block).unwrap_or_default();
        let kind = value
            .get("type")
            .and_then(|t| t.as_str())
            .unwrap_or("unknown");
        let part = match kind {
            "text" => value
                .get("text")
                .and_then(|t| t.as_str())
                .unwrap_or_default()
                .to_owned(),
            "image" | "audio" => {
                let mime = value
                    .get("mimeType")
                    .and_then(|m| m.as_str())
                    .unwrap_or("unknown type");
                let bytes = value
                    .get("data")
                    .and_then(|d| d.as_str())
                    .map_or(0, |d| d.len() * 3 / 4);
                format!("[{kind} content: {mime}, about {bytes} bytes, not shown]")
            }
            "resource" => {
                let resource = value.get("resource").cloned().unwrap_or_default();
                let uri = resource.get("uri").and_then(|u| u.as_str()).unwrap_or("?");
                match resource.get("text").and_then(|t| t.as_str()) {
                    Some(text) => format!("[resource {uri}]\n{text}"),
                    None => format!("[binary resource {uri}, not shown]"),
                }
            }
            "resource_link" => {
                let uri = value.get("uri").and_then(|u| u.as_str()).unwrap_or("?");
                format!("[resource link {uri}]")
            }
            other => format!("[{other} content, not shown]"),
        };
        parts.push(part);
    }
    if parts.is_empty()
        && let Some(structured) = &result.structured_content
    {
        parts.push(structured.to_string());
    }
    let mut text = parts.join("\n");
    if text.is_empty() {
        text.push_str("(no output)");
    }
    cap(text)
}

/// `text` cut to [`MAX_OUTPUT_BYTES`] at a character boundary, with a note saying so.
pub(crate) fn cap(mut text: String) -> (String, bool) {
    if text.len() <= MAX_OUTPUT_BYTES {
        return (text, false);
    }
    let total = text.len();
    let mut end = MAX_OUTPUT_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push_str(&format!(
        "\n[... {} of {total} bytes omitted: the MCP tool's output is capped]",
        total - end
    ));
    (text, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(json: serde_json::Value) -> CallToolResult {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn text_is_joined_and_other_content_summarized() {
        let (text, cut) = render(&result(serde_json::json!({
            "content": [
                {"type": "text", "text": "one"},
                {"type": "image", "data": "AAAA", "mimeType": "image/png"},
                {"type": "text", "text": "two"},
            ]
        })));
        assert!(!cut);
        assert_eq!(
            text,
            "one\n[image content: image/png, about 3 bytes, not shown]\ntwo"
        );
    }

    #[test]
    fn long_output_is_capped_at_a_char_boundary() {
        let long = "é".repeat(MAX_OUTPUT_BYTES);
        let (text, cut) = render(&result(serde_json::json!({
            "content": [{"type": "text", "text": long}]
        })));
        assert!(cut);
        assert!(text.len() < MAX_OUTPUT_BYTES + 200, "{}", text.len());
        assert!(text.ends_with("the MCP tool's output is capped]"), "{text}");
    }

    #[test]
    fn structured_content_stands_in_for_missing_text() {
        let (text, _) = render(&result(serde_json::json!({
            "content": [], "structuredContent": {"sum": 5}
        })));
        assert_eq!(text, r#"{"sum":5}"#);
    }
}
