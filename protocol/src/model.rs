//! `PROVIDER/MODEL` strings: which provider a task talks to and what it needs to do so.

use std::fmt;
use std::str::FromStr;

/// A provider family kugetsu can drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProviderKind {
    /// OpenAI chat completions (also vLLM, llama.cpp, any compatible server).
    OpenAi,
    /// Anthropic Messages API.
    Anthropic,
    /// OpenRouter's OpenAI-compatible endpoint.
    OpenRouter,
    /// A local Ollama server's OpenAI-compatible endpoint.
    Ollama,
    /// Replays a JSON script of assistant turns; no network.
    Scripted,
}

impl ProviderKind {
    /// Every provider, in the order error messages list them.
    pub const ALL: [ProviderKind; 5] = [
        ProviderKind::OpenAi,
        ProviderKind::Anthropic,
        ProviderKind::OpenRouter,
        ProviderKind::Ollama,
        ProviderKind::Scripted,
    ];

    /// The provider called `name`, if there is one.
    pub fn from_name(name: &str) -> Option<ProviderKind> {
        ProviderKind::ALL.into_iter().find(|p| p.name() == name)
    }

    /// The name used before the `/`.
    pub fn name(self) -> &'static str {
        match self {
            ProviderKind::OpenAi => "openai",
            ProviderKind::Anthropic => "anthropic",
            ProviderKind::OpenRouter => "openrouter",
            ProviderKind::Ollama => "ollama",
            ProviderKind::Scripted => "scripted",
        }
    }

    /// The environment variable holding the API key, for providers that need one.
    pub fn api_key_env(self) -> Option<&'static str> {
        match self {
            ProviderKind::OpenAi => Some("OPENAI_API_KEY"),
            ProviderKind::Anthropic => Some("ANTHROPIC_API_KEY"),
            ProviderKind::OpenRouter => Some("OPENROUTER_API_KEY"),
            ProviderKind::Ollama | ProviderKind::Scripted => None,
        }
    }

    /// The environment variable overriding the base URL, and the default base URL.
    pub fn base_url(self) -> Option<(&'static str, &'static str)> {
        match self {
            ProviderKind::OpenAi => Some(("OPENAI_BASE_URL", "https://api.openai.com/v1")),
            ProviderKind::Anthropic => Some(("ANTHROPIC_BASE_URL", "https://api.anthropic.com")),
            ProviderKind::OpenRouter => {
                Some(("OPENROUTER_BASE_URL", "https://openrouter.ai/api/v1"))
            }
            ProviderKind::Ollama => Some(("OLLAMA_BASE_URL", "http://127.0.0.1:11434/v1")),
            ProviderKind::Scripted => None,
        }
    }
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A parsed `PROVIDER/MODEL` string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelRef {
    pub provider: ProviderKind,
    /// Everything after the first `/`, passed to the provider as is.
    pub model: String,
}

/// Why a model string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    #[error("model {0:?} is not of the form PROVIDER/MODEL (e.g. openai/gpt-4.1-mini)")]
    NoSlash(String),
    #[error(
        "unknown provider {provider:?} in model {model:?} (known: openai, anthropic, openrouter, ollama, scripted)"
    )]
    UnknownProvider { provider: String, model: String },
    #[error("model {0:?} names no model after the provider")]
    EmptyModel(String),
}

impl FromStr for ModelRef {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (provider, model) = s
            .split_once('/')
            .ok_or_else(|| ModelError::NoSlash(s.to_owned()))?;
        let provider = ProviderKind::ALL
            .into_iter()
            .find(|p| p.name() == provider)
            .ok_or_else(|| ModelError::UnknownProvider {
                provider: provider.to_owned(),
                model: s.to_owned(),
            })?;
        if model.trim().is_empty() {
            return Err(ModelError::EmptyModel(s.to_owned()));
        }
        Ok(ModelRef {
            provider,
            model: model.to_owned(),
        })
    }
}

impl fmt::Display for ModelRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.provider, self.model)
    }
}
