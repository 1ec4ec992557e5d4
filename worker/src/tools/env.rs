//! The environment bash commands run with: the worker's own, minus anything secret.
//!
//! The model must not see (or leak) the provider API keys the worker holds, nor talk to the
//! systemd notify socket. A variable is dropped when its name, upper-cased, contains one of
//! [`SECRET_WORDS`], starts with one of [`SECRET_FAMILIES`], or is in [`SECRET_NAMES`].
//! Everything else (PATH, HOME, LANG, TERM, USER, ...) is kept.
//!
//! The source of variables is a parameter, so tests pass their own instead of changing the
//! process environment (which is `unsafe` in edition 2024).

use std::ffi::{OsStr, OsString};

/// Words that mark a variable as a secret wherever they appear in its name.
pub(crate) const SECRET_WORDS: [&str; 10] = [
    "KEY",
    "TOKEN",
    "SECRET",
    "PASSWORD",
    "PASSWD",
    "CREDENTIAL",
    "PRIVATE",
    "AUTH",
    "COOKIE",
    "SESSION",
];

/// Prefixes of whole families of provider and cloud variables.
pub(crate) const SECRET_FAMILIES: [&str; 10] = [
    "OPENAI_",
    "ANTHROPIC_",
    "OPENROUTER_",
    "AWS_",
    "AZURE_",
    "GOOGLE_",
    "GH_",
    "GITHUB_",
    "HF_",
    "WATCHDOG_",
];

/// Single variables that let a process act for the service (systemd notification).
pub(crate) const SECRET_NAMES: [&str; 1] = ["NOTIFY_SOCKET"];

/// Whether the variable `name` must not reach a tool process.
pub(crate) fn is_secret(name: &OsStr) -> bool {
    let upper = name.to_string_lossy().to_ascii_uppercase();
    SECRET_WORDS.iter().any(|word| upper.contains(word))
        || SECRET_FAMILIES
            .iter()
            .any(|prefix| upper.starts_with(prefix))
        || SECRET_NAMES.contains(&upper.as_str())
}

/// `vars` without the secret ones.
pub(crate) fn scrubbed<I>(vars: I) -> Vec<(OsString, OsString)>
where
    I: IntoIterator<Item = (OsString, OsString)>,
{
    vars.into_iter()
        .filter(|(name, _)| !is_secret(name))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_drops_secrets_and_keeps_the_rest() {
        let vars = [
            ("OPENAI_API_KEY", "sk"),
            ("OPENAI_BASE_URL", "http://x"),
            ("anthropic_api_key", "sk"),
            ("MY_TOKEN", "t"),
            ("DB_PASSWORD", "p"),
            ("SSH_AUTH_SOCK", "/s"),
            ("AWS_REGION", "eu"),
            ("GH_HOST", "h"),
            ("HF_HOME", "/h"),
            ("NOTIFY_SOCKET", "/run/n"),
            ("WATCHDOG_USEC", "1"),
            ("XDG_SESSION_ID", "3"),
            ("PATH", "/usr/bin"),
            ("HOME", "/home/u"),
            ("LANG", "C.UTF-8"),
            ("TERM", "xterm"),
            ("USER", "u"),
            ("CARGO_HOME", "/c"),
        ];
        let kept = scrubbed(
            vars.iter()
                .map(|(k, v)| (OsString::from(k), OsString::from(v))),
        );
        let names: Vec<_> = kept.iter().map(|(k, _)| k.to_str().unwrap()).collect();
        assert_eq!(
            names,
            ["PATH", "HOME", "LANG", "TERM", "USER", "CARGO_HOME"]
        );
    }
}
