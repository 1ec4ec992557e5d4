//! Placeholder until the openai client lands (replaced by the real client in this branch series).

use kugetsu_protocol::ModelRef;

use super::{Completion, LlmError, LlmRequest};

/// Client for the openai API.
#[derive(Debug)]
pub struct OpenAiClient {
    model: String,
}

impl OpenAiClient {
    pub fn new(model: &ModelRef, _env: &dyn Fn(&str) -> Option<String>) -> Result<Self, LlmError> {
        Ok(Self {
            model: model.model.clone(),
        })
    }

    pub async fn complete(
        &self,
        _request: &LlmRequest<'_>,
        _on_text: &mut (dyn FnMut(&str) + Send),
    ) -> Result<Completion, LlmError> {
        Err(LlmError::Config(format!(
            "{} client not built yet",
            self.model
        )))
    }
}
