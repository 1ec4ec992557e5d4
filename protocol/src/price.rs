//! What model tokens cost: a built-in table for well-known models, looked up by model id.
//!
//! Prices are US dollars per million tokens, as the providers list them for standard
//! (non-batch, uncached) use. Config entries (`[prices."PROVIDER/MODEL"]`) take precedence;
//! the supervisor resolves them and hands the worker the prices of the models it uses. A
//! provider's own cost figure (OpenRouter's `usage.cost`) is preferred over any table.

use serde::{Deserialize, Serialize};

use crate::event::Usage;
use crate::model::{ModelRef, ProviderKind};

/// The price of one model's tokens.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    /// US dollars per million input tokens.
    pub input_per_mtok: f64,
    /// US dollars per million output tokens.
    pub output_per_mtok: f64,
}

impl Price {
    /// What `input` and `output` tokens cost.
    pub fn cost(&self, input: u64, output: u64) -> f64 {
        (input as f64 * self.input_per_mtok + output as f64 * self.output_per_mtok) / 1e6
    }

    /// What `usage` cost.
    pub fn cost_of(&self, usage: &Usage) -> f64 {
        self.cost(usage.input_tokens, usage.output_tokens)
    }

    /// Why this price is unusable, if it is (negative, not finite).
    pub fn invalid(&self) -> Option<String> {
        for (name, value) in [
            ("input_per_mtok", self.input_per_mtok),
            ("output_per_mtok", self.output_per_mtok),
        ] {
            if !value.is_finite() || value < 0.0 {
                return Some(format!(
                    "{name} must be a non-negative number of dollars, not {value}"
                ));
            }
        }
        None
    }
}

/// Built-in prices: (model id prefix, input $/Mtok, output $/Mtok). The longest prefix that
/// ends at a `-` boundary of the id wins, so dated ids (`gpt-4o-2024-08-06`) find their model
/// and `gpt-4o-mini` is not priced as `gpt-4o`.
const BUILT_IN: &[(&str, f64, f64)] = &[
    // OpenAI
    ("gpt-5", 1.25, 10.0),
    ("gpt-5-mini", 0.25, 2.0),
    ("gpt-5-nano", 0.05, 0.40),
    ("gpt-4.1", 2.0, 8.0),
    ("gpt-4.1-mini", 0.40, 1.60),
    ("gpt-4.1-nano", 0.10, 0.40),
    ("gpt-4o", 2.50, 10.0),
    ("gpt-4o-mini", 0.15, 0.60),
    ("gpt-4-turbo", 10.0, 30.0),
    ("gpt-3.5-turbo", 0.50, 1.50),
    ("o1", 15.0, 60.0),
    ("o1-mini", 1.10, 4.40),
    ("o3", 2.0, 8.0),
    ("o3-mini", 1.10, 4.40),
    ("o4-mini", 1.10, 4.40),
    // Anthropic
    ("claude-opus-4-5", 5.0, 25.0),
    ("claude-opus-4-1", 15.0, 75.0),
    ("claude-opus-4", 15.0, 75.0),
    ("claude-sonnet-4-5", 3.0, 15.0),
    ("claude-sonnet-4", 3.0, 15.0),
    ("claude-haiku-4-5", 1.0, 5.0),
    ("claude-3-7-sonnet", 3.0, 15.0),
    ("claude-3-5-sonnet", 3.0, 15.0),
    ("claude-3-5-haiku", 0.80, 4.0),
    ("claude-3-opus", 15.0, 75.0),
    ("claude-3-haiku", 0.25, 1.25),
];

/// The built-in price of `model`, if it is a well-known one. OpenRouter ids
/// (`anthropic/claude-sonnet-4.5`, `openai/gpt-4o`) are looked up by their model part, with
/// dots in version numbers read as dashes.
pub fn built_in(model: &ModelRef) -> Option<Price> {
    let id = match model.provider {
        ProviderKind::OpenAi | ProviderKind::Anthropic => model.model.clone(),
        ProviderKind::OpenRouter => {
            let (_, id) = model.model.rsplit_once('/').unwrap_or(("", &model.model));
            let id = id.split(':').next().unwrap_or(id);
            if id.starts_with("claude") {
                id.replace('.', "-")
            } else {
                id.to_owned()
            }
        }
        ProviderKind::Ollama | ProviderKind::Scripted => return None,
    };
    let id = id.to_ascii_lowercase();
    BUILT_IN
        .iter()
        .filter(|(prefix, _, _)| {
            id == *prefix
                || id
                    .strip_prefix(prefix)
                    .is_some_and(|rest| rest.starts_with('-'))
        })
        .max_by_key(|(prefix, _, _)| prefix.len())
        .map(|&(_, input, output)| Price {
            input_per_mtok: input,
            output_per_mtok: output,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn price(model: &str) -> Option<(f64, f64)> {
        built_in(&model.parse().unwrap()).map(|p| (p.input_per_mtok, p.output_per_mtok))
    }

    #[test]
    fn the_longest_prefix_at_a_dash_wins() {
        assert_eq!(price("openai/gpt-4o"), Some((2.5, 10.0)));
        assert_eq!(price("openai/gpt-4o-2024-08-06"), Some((2.5, 10.0)));
        assert_eq!(price("openai/gpt-4o-mini"), Some((0.15, 0.6)));
        assert_eq!(price("openai/o3-mini"), Some((1.1, 4.4)));
        assert_eq!(price("openai/o3"), Some((2.0, 8.0)));
        assert_eq!(price("openai/o3x"), None);
        assert_eq!(
            price("anthropic/claude-sonnet-4-5-20250929"),
            Some((3.0, 15.0))
        );
        assert_eq!(price("anthropic/claude-opus-4-5"), Some((5.0, 25.0)));
        assert_eq!(
            price("anthropic/claude-opus-4-20250514"),
            Some((15.0, 75.0))
        );
        assert_eq!(price("openai/my-finetune"), None);
        assert_eq!(price("ollama/llama3"), None);
        assert_eq!(price("scripted/demo"), None);
    }

    #[test]
    fn openrouter_ids_find_their_model() {
        assert_eq!(price("openrouter/openai/gpt-4o-mini"), Some((0.15, 0.6)));
        assert_eq!(
            price("openrouter/anthropic/claude-sonnet-4.5"),
            Some((3.0, 15.0))
        );
        assert_eq!(price("openrouter/meta-llama/llama-3-70b"), None);
    }

    #[test]
    fn cost_is_tokens_times_price() {
        let p = Price {
            input_per_mtok: 3.0,
            output_per_mtok: 15.0,
        };
        let cost = p.cost(1_000_000, 100_000);
        assert!((cost - 4.5).abs() < 1e-9, "{cost}");
        assert!(p.invalid().is_none());
        let bad = Price {
            input_per_mtok: -1.0,
            output_per_mtok: 1.0,
        };
        assert!(bad.invalid().unwrap().contains("input_per_mtok"));
    }
}
