//! Environments with the secrets taken out: what a worker is started with (by the supervisor)
//! and what a tool process sees (from the worker).
//!
//! A variable is dropped when its name, upper-cased, contains one of [`SECRET_WORDS`], starts
//! with one of [`SECRET_FAMILIES`], or is in [`SECRET_NAMES`]. A variable that is kept has any
//! password embedded in a URL removed from its value (`postgres://u:pw@h/db` becomes
//! `postgres://u@h/db`), so a `DATABASE_URL` is usable without its secret. Everything else
//! (PATH, HOME, LANG, TERM, USER, ...) is kept.
//!
//! The source of variables is a parameter, so tests pass their own instead of changing the
//! process environment (which is `unsafe` in edition 2024).

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt as _, OsStringExt as _};

/// Words that mark a variable as a secret wherever they appear in its name.
pub const SECRET_WORDS: [&str; 12] = [
    "KEY",
    "TOKEN",
    "SECRET",
    "PASSWORD",
    "PASSWD",
    "PASSPHRASE",
    "CREDENTIAL",
    "PRIVATE",
    "AUTH",
    "COOKIE",
    "SESSION",
    "SIGNATURE",
];

/// Prefixes of whole families of provider and cloud variables.
pub const SECRET_FAMILIES: [&str; 10] = [
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
pub const SECRET_NAMES: [&str; 1] = ["NOTIFY_SOCKET"];

/// Whether the variable `name` must not reach a tool process.
pub fn is_secret(name: &OsStr) -> bool {
    let upper = name.to_string_lossy().to_ascii_uppercase();
    SECRET_WORDS.iter().any(|word| upper.contains(word))
        || SECRET_FAMILIES
            .iter()
            .any(|prefix| upper.starts_with(prefix))
        || SECRET_NAMES.contains(&upper.as_str())
}

/// `vars` without the secret ones, and with URL passwords removed from the rest.
pub fn scrubbed<I>(vars: I) -> Vec<(OsString, OsString)>
where
    I: IntoIterator<Item = (OsString, OsString)>,
{
    vars.into_iter()
        .filter(|(name, _)| !is_secret(name))
        .map(|(name, value)| {
            let value = strip_url_passwords(&value);
            (name, value)
        })
        .collect()
}

/// `value` with the password of every `scheme://user:password@host` in it removed.
pub fn strip_url_passwords(value: &OsStr) -> OsString {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut rest = bytes;
    while let Some(at) = find(rest, b"://") {
        let (before, after) = rest.split_at(at + 3);
        out.extend_from_slice(before);
        // The authority ends at the first `/`, `?`, `#` or whitespace (or a separator of a
        // list of URLs such as `,` or `;`).
        let end = after
            .iter()
            .position(|b| matches!(b, b'/' | b'?' | b'#' | b',' | b';' | b' ' | b'\t' | b'\n'))
            .unwrap_or(after.len());
        let authority = &after[..end];
        match authority.iter().rposition(|b| *b == b'@') {
            Some(at) => {
                let userinfo = &authority[..at];
                let user = match userinfo.iter().position(|b| *b == b':') {
                    Some(colon) => &userinfo[..colon],
                    None => userinfo,
                };
                out.extend_from_slice(user);
                out.extend_from_slice(&authority[at..]);
            }
            None => out.extend_from_slice(authority),
        }
        rest = &after[end..];
    }
    out.extend_from_slice(rest);
    OsString::from_vec(out)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
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

    #[test]
    fn url_passwords_are_removed_and_the_rest_kept() {
        let cases = [
            ("postgres://u:pw@h/db", "postgres://u@h/db"),
            ("postgres://u:p%40w@h:5432", "postgres://u@h:5432"),
            ("redis://:pw@h", "redis://@h"),
            ("https://user@h/x", "https://user@h/x"),
            ("http://h/a@b", "http://h/a@b"),
            (
                "a=mysql://r:s@h,b=amqp://x:y@z/",
                "a=mysql://r@h,b=amqp://x@z/",
            ),
            ("no url here", "no url here"),
        ];
        for (value, expected) in cases {
            assert_eq!(
                strip_url_passwords(OsStr::new(value)),
                OsString::from(expected),
                "{value}"
            );
        }
        let kept = scrubbed([("DATABASE_URL".into(), "postgres://u:hunter2@db/x".into())]);
        assert_eq!(kept[0].1, "postgres://u@db/x");
    }
}
