//! Ids shaped like the ones real providers send.

use std::time::{SystemTime, UNIX_EPOCH};

const ALPHANUMERIC: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// A small xorshift generator: ids need to be unpredictable-looking, not secure.
#[derive(Debug, Clone)]
pub(crate) struct IdGen {
    state: u64,
}

impl IdGen {
    pub fn new(seed: u64) -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Self {
            state: (seed ^ nanos ^ 0x9E37_79B9_7F4A_7C15) | 1,
        }
    }

    fn next(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.state = x;
        x
    }

    /// `len` random ASCII letters and digits.
    pub fn alphanumeric(&mut self, len: usize) -> String {
        (0..len)
            .map(|_| char::from(ALPHANUMERIC[(self.next() % ALPHANUMERIC.len() as u64) as usize]))
            .collect()
    }

    /// `chatcmpl-…`, the id of an OpenAI completion.
    pub fn openai_completion(&mut self) -> String {
        format!("chatcmpl-{}", self.alphanumeric(29))
    }

    /// `call_…`, an OpenAI tool call id.
    pub fn openai_call(&mut self) -> String {
        format!("call_{}", self.alphanumeric(24))
    }

    /// A llama.cpp tool call id: 32 random characters, no prefix.
    pub fn llama_call(&mut self) -> String {
        self.alphanumeric(32)
    }

    /// `msg_01…`, an Anthropic message id.
    pub fn anthropic_message(&mut self) -> String {
        format!("msg_01{}", self.alphanumeric(22))
    }

    /// `toolu_01…`, an Anthropic tool use id.
    pub fn anthropic_tool_use(&mut self) -> String {
        format!("toolu_01{}", self.alphanumeric(22))
    }

    /// `req_…`, a request id header value.
    pub fn request_id(&mut self) -> String {
        format!("req_{}", self.alphanumeric(24))
    }
}
