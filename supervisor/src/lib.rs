//! kugetsu supervisor
