//! Authentication: one bearer token, kept in `<state_dir>/http.token`.
//!
//! The file is made at the first start with `--http` (32 bytes from the OS's random source,
//! hex encoded, mode 0600, written atomically) and reused afterwards. The daemon refuses to
//! start when the file is not a regular file owned by its user with mode 0600 (anyone else
//! who can read it can drive the daemon), or holds no usable token.
//!
//! Every request must carry the token: `Authorization: Bearer TOKEN`, or the cookie
//! `kugetsu_token=TOKEN` that `GET /?token=TOKEN` sets (HttpOnly, SameSite=Strict, Path=/)
//! before it redirects to `/`, so the token leaves the address bar. Tokens are compared in
//! constant time. Without a valid token: 401, as JSON for the API and as a page telling the
//! user how to sign in for the dashboard.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};

use crate::exit::CliError;
use crate::http::AppState;
use crate::http::error::ApiError;
use crate::rpc;

/// The name of the token file in the state dir.
pub const TOKEN_FILE: &str = "http.token";
/// The sign-in cookie's name.
pub const COOKIE: &str = "kugetsu_token";
/// Random bytes in a new token (hex encoded: twice as many characters).
const TOKEN_BYTES: usize = 32;
/// The shortest token accepted from an existing file.
const MIN_TOKEN_CHARS: usize = 16;

/// The secret a request must present. Its `Debug` does not show it.
#[derive(Clone)]
pub struct Token(String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

impl Token {
    /// Whether `candidate` is this token, in time independent of where they differ.
    pub fn matches(&self, candidate: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), candidate.as_bytes());
        if a.len() != b.len() {
            return false;
        }
        a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }

    /// The token's text.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// Where the token file of the state dir `root` is.
pub fn token_path(root: &Path) -> PathBuf {
    root.join(TOKEN_FILE)
}

/// Reads the token of the state dir `root`, making it the first time.
pub fn load_or_create(root: &Path) -> Result<Token, CliError> {
    let path = token_path(root);
    match std::fs::symlink_metadata(&path) {
        Ok(meta) => {
            check_file(&path, &meta)?;
            let text = std::fs::read_to_string(&path).map_err(|e| {
                CliError::Usage(format!(
                    "cannot read the HTTP token {}: {}",
                    path.display(),
                    crate::exit::describe_io(&e)
                ))
            })?;
            let token = text.trim();
            if token.len() < MIN_TOKEN_CHARS
                || !token.bytes().all(|b| b.is_ascii_graphic() && b != b';')
            {
                return Err(CliError::Usage(format!(
                    "the HTTP token in {} is unusable: it must be at least {MIN_TOKEN_CHARS} \
                     visible characters (no spaces or ';'); remove the file to have a new one made",
                    path.display()
                )));
            }
            Ok(Token(token.to_owned()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => create(&path),
        Err(e) => Err(CliError::Usage(format!(
            "cannot read the HTTP token {}: {}",
            path.display(),
            crate::exit::describe_io(&e)
        ))),
    }
}

/// Refuses a token file anyone but us could read or replace.
fn check_file(path: &Path, meta: &std::fs::Metadata) -> Result<(), CliError> {
    let refuse = |why: String| {
        CliError::Usage(format!(
            "refusing to use the HTTP token {}: {why}",
            path.display()
        ))
    };
    if !meta.file_type().is_file() {
        return Err(refuse("it is not a regular file".to_owned()));
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return Err(refuse(format!(
            "it belongs to uid {}, not to this user (uid {me})",
            meta.uid()
        )));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode != 0o600 {
        return Err(refuse(format!(
            "its mode is {mode:04o}, not 0600 (fix it with chmod 600 {})",
            path.display()
        )));
    }
    Ok(())
}

/// Makes a new token file: random, 0600 from its creation, renamed into place, synced.
fn create(path: &Path) -> Result<Token, CliError> {
    let failed = |what: &str, e: std::io::Error| {
        CliError::Usage(format!(
            "cannot {what} the HTTP token {}: {}",
            path.display(),
            crate::exit::describe_io(&e)
        ))
    };
    let mut bytes = [0u8; TOKEN_BYTES];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .map_err(|e| failed("make", e))?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let temp = path.with_extension(format!("token.tmp{}", std::process::id()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temp)
        .and_then(|mut file| {
            file.write_all(token.as_bytes())?;
            file.write_all(b"\n")?;
            file.sync_all()
        })
        .and_then(|()| std::fs::rename(&temp, path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&temp);
        return Err(failed("write", e));
    }
    if let Some(dir) = path.parent()
        && let Ok(dir) = std::fs::File::open(dir)
    {
        let _ = dir.sync_all();
    }
    Ok(Token(token))
}

/// The token a request carries: its bearer token, else its sign-in cookie.
fn presented(headers: &HeaderMap) -> Option<&str> {
    if let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let (scheme, token) = value.trim().split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then_some(token.trim());
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == COOKIE).then_some(value)
        })
}

/// The value of `name` in a query string, percent-decoded.
pub fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(key) == name).then(|| percent_decode(value))
    })
}

fn percent_decode(text: &str) -> String {
    let hex = |b: u8| char::from(b).to_digit(16);
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = match bytes.get(i..i + 3) {
            Some([b'%', hi, lo]) => hex(*hi).zip(hex(*lo)).map(|(h, l)| (h * 16 + l) as u8),
            _ => None,
        };
        match (escaped, bytes[i]) {
            (Some(b), _) => {
                out.push(b);
                i += 3;
            }
            (None, b'+') => {
                out.push(b' ');
                i += 1;
            }
            (None, b) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether a path is one of the API's (answered with JSON), not the dashboard's (a page).
fn is_api(path: &str) -> bool {
    path.starts_with("/api/") || path == "/metrics"
}

/// The middleware in front of every route: lets through requests with the token, signs a
/// browser in at `/?token=`, and answers 401 otherwise.
pub async fn require(State(app): State<AppState>, request: Request, next: Next) -> Response {
    let path = request.uri().path();
    if path == "/"
        && let Some(token) = request.uri().query().and_then(|q| query_param(q, "token"))
    {
        let host = request
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("ADDR")
            .to_owned();
        return sign_in(&app, &token, &host);
    }
    if presented(request.headers()).is_some_and(|t| app.token().matches(t)) {
        return next.run(request).await;
    }
    let wrong = presented(request.headers()).is_some();
    if is_api(path) {
        let message = if wrong {
            "unauthorized: wrong token"
        } else {
            "unauthorized: send Authorization: Bearer TOKEN (the token is in <state_dir>/http.token)"
        };
        let mut response =
            ApiError::new(StatusCode::UNAUTHORIZED, rpc::INVALID_REQUEST, message).into_response();
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"kugetsu\""),
        );
        return response;
    }
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("ADDR")
        .to_owned();
    unauthorized_page(&host, wrong)
}

/// `GET /?token=T`: the right token sets the cookie and sends the browser to `/`.
fn sign_in(app: &AppState, token: &str, host: &str) -> Response {
    if !app.token().matches(token) {
        return unauthorized_page(host, true);
    }
    let cookie = format!(
        "{COOKIE}={}; HttpOnly; SameSite=Strict; Path=/",
        app.token().expose()
    );
    let mut response = StatusCode::SEE_OTHER.into_response();
    let headers = response.headers_mut();
    headers.insert(header::LOCATION, HeaderValue::from_static("/"));
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        headers.insert(header::SET_COOKIE, value);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The 401 page a browser sees without the cookie.
fn unauthorized_page(host: &str, wrong: bool) -> Response {
    let why = if wrong {
        "<p><strong>That token is wrong.</strong></p>"
    } else {
        ""
    };
    let host = escape_html(host);
    let page = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>kugetsu: sign in</title></head><body><h1>kugetsu: sign in</h1>{why}\
         <p>Open <code>http://{host}/?token=TOKEN</code> with the token the daemon keeps in \
         <code>&lt;state_dir&gt;/http.token</code> (by default \
         <code>~/.local/state/kugetsu/http.token</code>), for example:</p>\
         <pre>xdg-open \"http://{host}/?token=$(cat ~/.local/state/kugetsu/http.token)\"</pre>\
         </body></html>\n"
    );
    (StatusCode::UNAUTHORIZED, Html(page)).into_response()
}

/// Text safe inside HTML.
fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_match_only_exactly() {
        let token = Token("0123456789abcdef".to_owned());
        assert!(token.matches("0123456789abcdef"));
        assert!(!token.matches("0123456789abcdeF"));
        assert!(!token.matches("0123456789abcde"));
        assert!(!token.matches(""));
        assert_eq!(format!("{token:?}"), "Token(..)");
    }

    #[test]
    fn query_params_are_decoded() {
        assert_eq!(
            query_param("a=1&token=ab%2Fc", "token").as_deref(),
            Some("ab/c")
        );
        assert_eq!(query_param("token", "token").as_deref(), Some(""));
        assert_eq!(query_param("x=%zz", "x").as_deref(), Some("%zz"));
        assert_eq!(query_param("x=%4", "x").as_deref(), Some("%4"));
        assert_eq!(query_param("a=1", "token"), None);
    }

    #[test]
    fn the_token_file_is_made_0600_and_reused_and_a_loose_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create(dir.path()).unwrap();
        let path = token_path(dir.path());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(first.expose().len(), 2 * TOKEN_BYTES);
        let again = load_or_create(dir.path()).unwrap();
        assert_eq!(first.expose(), again.expose());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let error = load_or_create(dir.path()).unwrap_err().to_string();
        assert!(
            error.contains("0644") && error.contains("chmod 600"),
            "{error}"
        );
    }
}
