//! Test support for kugetsu end-to-end tests.
