//! kugetsu's end-to-end tests: one integration binary, its suites in `suite/`.
//!
//! The tests run the real `kugetsu` and `kugetsu-worker` binaries (build them first:
//! `cargo build --workspace`, or run `cargo test --workspace`) against the fake LLM of
//! `kugetsu_tests::fake_llm`, in throwaway git repositories.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests: a failed expectation is a failed test"
)]

mod suite;
