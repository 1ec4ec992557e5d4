//! The gate every model request passes: the task's budget first, then, for a governed task,
//! the supervisor's permit.
//!
//! - Budget: before each request (the agent's turns and compaction summaries alike), the
//!   tokens and dollars the task spent so far plus the request's estimated input are compared
//!   with `budget_tokens` / `budget_usd`; a request that would pass either is never sent and
//!   the task pauses ([`LlmError::Paused`]). What was spent is restored from the journal on
//!   resume, so a restart does not refill the budget.
//! - Permit: a governed task asks the supervisor (`permit`), waits for `grant` (or `deny`),
//!   reports the response's status and rate-limit headers (`permit_head`) and, at the end, the
//!   usage (`permit_end`). A [`Permit`] dropped without [`Permit::end`] (the request was
//!   aborted) still sends its `permit_end`, so the supervisor never waits on a lost request.
//! - Cost: a completed request's usage gets its `cost_usd` here when the provider reported
//!   none, from the model's price.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use kugetsu_protocol::{PermitRequest, Price, RateHeaders, Usage, WorkerMessage};
use tokio::sync::oneshot;

use super::LlmError;
use crate::ipc::Outbox;

/// The supervisor's answer to a permit request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Grant,
    Deny { reason: String, pause: bool },
}

/// The task's budget and what it spent.
#[derive(Debug, Default)]
pub struct Budget {
    pub tokens: Option<u64>,
    pub usd: Option<f64>,
}

/// What every gate of one task shares: the budget, the spending, the permit channel.
#[derive(Debug, Default)]
pub struct Shared {
    budget: Budget,
    spent: Mutex<Usage>,
    permits: Option<Permits>,
}

/// The permit channel to the supervisor.
#[derive(Debug)]
struct Permits {
    outbox: Outbox,
    pending: Mutex<HashMap<u64, oneshot::Sender<Answer>>>,
    next: AtomicU64,
}

impl Shared {
    /// A task's shared gate state: `budget`, `spent` so far (from the journal), and the
    /// supervisor's permits when `governed`.
    pub fn new(budget: Budget, spent: Usage, governed: Option<Outbox>) -> Arc<Shared> {
        Arc::new(Shared {
            budget,
            spent: Mutex::new(spent),
            permits: governed.map(|outbox| Permits {
                outbox,
                pending: Mutex::default(),
                next: AtomicU64::new(1),
            }),
        })
    }

    /// Hands the supervisor's answer to the request waiting for it.
    pub fn answer(&self, id: u64, answer: Answer) {
        let Some(permits) = &self.permits else {
            return;
        };
        let waiting = permits
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&id);
        match waiting {
            Some(tx) => {
                let _ = tx.send(answer);
            }
            None => eprintln!("kugetsu-worker: an answer for permit {id}, which nobody awaits"),
        }
    }

    /// Sets what the task spent before this worker (a resumed journal's usage).
    pub fn restore_spent(&self, spent: Usage) {
        *self
            .spent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = spent;
    }

    /// What the task spent so far.
    pub fn spent(&self) -> Usage {
        *self
            .spent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// One model's gate: the task's shared state plus what this model's requests need.
#[derive(Debug, Clone)]
pub struct Gate {
    shared: Arc<Shared>,
    /// `PROVIDER/MODEL`, named in budget messages.
    model: String,
    price: Option<Price>,
    /// Set by the provider client: its name and account (provider, URL, key fingerprint).
    provider: &'static str,
    account: String,
}

impl Default for Gate {
    /// No budget, no governor (tests, and providers built outside a task).
    fn default() -> Gate {
        Gate {
            shared: Arc::default(),
            model: String::new(),
            price: None,
            provider: "",
            account: String::new(),
        }
    }
}

impl Gate {
    /// The gate of `model`'s requests in the task whose state is `shared`.
    pub fn new(shared: Arc<Shared>, model: &str, price: Option<Price>) -> Gate {
        Gate {
            shared,
            model: model.to_owned(),
            price,
            provider: "",
            account: String::new(),
        }
    }

    /// Names the account this gate's requests go to (the provider client does this).
    pub(crate) fn for_account(mut self, provider: &'static str, account: String) -> Gate {
        self.provider = provider;
        self.account = account;
        self
    }

    /// Waits until a request of about `input_tokens` (and at most `max_output` out) may go.
    pub(crate) async fn acquire(
        &self,
        input_tokens: u64,
        max_output: u64,
    ) -> Result<Permit, LlmError> {
        self.check_budget(input_tokens)?;
        let Some(permits) = &self.shared.permits else {
            return Ok(Permit::free(self));
        };
        let id = permits.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        permits
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(id, tx);
        // Whatever happens next (an answer, or this future dropped), `permit_end` follows.
        let mut permit = Permit {
            gate: self.clone(),
            id: Some(id),
            ended: false,
        };
        permits.outbox.send(WorkerMessage::Permit(PermitRequest {
            id,
            provider: self.provider.to_owned(),
            account: self.account.clone(),
            input_tokens,
            max_output_tokens: max_output,
        }));
        match rx.await {
            Ok(Answer::Grant) => Ok(permit),
            Ok(Answer::Deny { reason, pause }) => {
                // Nothing was sent: the supervisor needs no end report.
                permit.ended = true;
                Err(if pause {
                    LlmError::Paused(reason)
                } else {
                    LlmError::NotPermitted(reason)
                })
            }
            Err(_) => {
                permit.ended = true;
                Err(LlmError::NotPermitted(
                    "the supervisor stopped answering permit requests".to_owned(),
                ))
            }
        }
    }

    fn check_budget(&self, input_tokens: u64) -> Result<(), LlmError> {
        let budget = &self.shared.budget;
        let spent = self.shared.spent();
        if let Some(limit) = budget.tokens
            && spent.tokens() + input_tokens > limit
        {
            return Err(LlmError::Paused(format!(
                "the task's token budget ({limit}) would be passed: {} tokens used, the next \
                 request needs about {input_tokens} more; resume with a higher --budget-tokens",
                spent.tokens()
            )));
        }
        if let Some(limit) = budget.usd {
            let next = self.price.map_or(0.0, |p| p.cost(input_tokens, 0));
            let used = spent.cost_usd.unwrap_or(0.0);
            if used + next > limit {
                return Err(LlmError::Paused(format!(
                    "the task's budget of ${limit:.4} would be passed: ${used:.4} spent, the \
                     next request to {} costs about ${next:.4} more; resume with a higher \
                     --budget-usd",
                    self.model
                )));
            }
        }
        Ok(())
    }
}

/// Leave to send one request; reports what came of it.
#[derive(Debug)]
pub(crate) struct Permit {
    gate: Gate,
    /// The supervisor's permit id (`None`: ungoverned).
    id: Option<u64>,
    ended: bool,
}

impl Permit {
    /// Whether the supervisor's governor granted this permit.
    pub(crate) fn is_governed(&self) -> bool {
        self.id.is_some()
    }

    fn free(gate: &Gate) -> Permit {
        Permit {
            gate: gate.clone(),
            id: None,
            ended: false,
        }
    }

    /// The response began with `status` and these headers.
    pub(crate) fn head(&self, status: u16, headers: RateHeaders) {
        if let (Some(id), Some(permits)) = (self.id, &self.gate.shared.permits) {
            permits.outbox.send(WorkerMessage::PermitHead {
                id,
                status,
                headers,
            });
        }
    }

    /// The request is over; `usage` is what a completed one consumed (its `cost_usd` filled
    /// in from the price when the provider gave none).
    pub(crate) fn end(mut self, usage: Option<&mut Usage>) {
        let usage = usage.map(|usage| {
            if usage.cost_usd.is_none() {
                usage.cost_usd = self.gate.price.map(|p| p.cost_of(usage));
            }
            *usage
        });
        if let Some(usage) = usage {
            self.gate
                .shared
                .spent
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .add(usage);
        }
        self.send_end(usage);
    }

    fn send_end(&mut self, usage: Option<Usage>) {
        if self.ended {
            return;
        }
        self.ended = true;
        if let (Some(id), Some(permits)) = (self.id, &self.gate.shared.permits) {
            permits.outbox.send(WorkerMessage::PermitEnd { id, usage });
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.send_end(None);
    }
}

/// The rate-limit headers of a response, as the supervisor's governor reads them.
pub(crate) fn rate_headers(headers: &reqwest::header::HeaderMap) -> RateHeaders {
    headers
        .iter()
        .filter(|(name, _)| {
            let name = name.as_str();
            name.starts_with("x-ratelimit-")
                || name.starts_with("anthropic-ratelimit-")
                || name == "retry-after"
                || name == "retry-after-ms"
        })
        .filter_map(|(name, value)| {
            Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned()))
        })
        .take(32)
        .collect()
}

/// A stable fingerprint of an API key (FNV-1a, 64 bits): accounts are told apart without
/// the key leaving the worker.
pub(crate) fn fingerprint(key: &[u8]) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in key {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_request_that_would_pass_the_token_budget_pauses() {
        let spent = Usage {
            input_tokens: 900,
            output_tokens: 50,
            cost_usd: None,
        };
        let shared = Shared::new(
            Budget {
                tokens: Some(1000),
                usd: None,
            },
            spent,
            None,
        );
        let gate = Gate::new(shared.clone(), "openai/gpt-4o", None);
        assert!(gate.acquire(40, 4096).await.is_ok());
        let error = gate.acquire(60, 4096).await.unwrap_err();
        assert!(
            matches!(&error, LlmError::Paused(m) if m.contains("token budget (1000)")),
            "{error}"
        );
    }

    #[tokio::test]
    async fn spending_counts_and_cost_comes_from_the_price() {
        let price = Price {
            input_per_mtok: 1.0,
            output_per_mtok: 2.0,
        };
        let shared = Shared::new(
            Budget {
                tokens: None,
                usd: Some(0.003),
            },
            Usage::default(),
            None,
        );
        let gate = Gate::new(shared.clone(), "openai/x", Some(price));
        let permit = gate.acquire(1000, 100).await.unwrap();
        let mut usage = Usage {
            input_tokens: 1000,
            output_tokens: 500,
            cost_usd: None,
        };
        permit.end(Some(&mut usage));
        assert!((usage.cost_usd.unwrap() - 0.002).abs() < 1e-12);
        assert_eq!(shared.spent().tokens(), 1500);
        // $0.002 spent; 1000 more input tokens cost $0.001: exactly the budget, allowed.
        assert!(gate.acquire(1000, 100).await.is_ok());
        let error = gate.acquire(1001, 100).await.unwrap_err();
        assert!(matches!(error, LlmError::Paused(_)), "{error}");
    }

    #[tokio::test]
    async fn a_governed_request_waits_for_its_grant_and_reports_its_end() {
        let (outbox, mut rx) = Outbox::channel();
        let shared = Shared::new(Budget::default(), Usage::default(), Some(outbox));
        let gate =
            Gate::new(shared.clone(), "openai/x", None).for_account("openai", "acct".to_owned());
        let waiting = tokio::spawn({
            let gate = gate.clone();
            async move { gate.acquire(10, 20).await.map(|p| p.end(None)) }
        });
        let Some(WorkerMessage::Permit(request)) = rx.recv().await else {
            panic!("no permit request");
        };
        assert_eq!(
            (request.account.as_str(), request.input_tokens),
            ("acct", 10)
        );
        shared.answer(request.id, Answer::Grant);
        waiting.await.unwrap().unwrap();
        assert!(matches!(
            rx.recv().await,
            Some(WorkerMessage::PermitEnd { usage: None, .. })
        ));

        // A denial is the request's error; a pause is a pause.
        let denied = tokio::spawn({
            let gate = gate.clone();
            async move { gate.acquire(1, 1).await.map(|_| ()) }
        });
        let Some(WorkerMessage::Permit(request)) = rx.recv().await else {
            panic!("no permit request");
        };
        shared.answer(
            request.id,
            Answer::Deny {
                reason: "too long".to_owned(),
                pause: false,
            },
        );
        let error = denied.await.unwrap().unwrap_err();
        assert!(matches!(error, LlmError::NotPermitted(ref m) if m == "too long"));
    }

    #[test]
    fn fingerprints_are_stable_and_tell_keys_apart() {
        assert_eq!(fingerprint(b""), "cbf29ce484222325");
        assert_ne!(fingerprint(b"sk-a"), fingerprint(b"sk-b"));
    }
}
