//! The web dashboard at `/`: one hand-written page, its script and its style sheet, compiled
//! into the binary (`include_str!`), so it works offline and needs no build step.
//!
//! The routes sit behind the same authentication as the API (the `kugetsu_token` cookie that
//! `/?token=T` sets); the page itself only talks to the REST and SSE endpoints of
//! [`super`], same origin, with that cookie. Each asset is answered with an `ETag` (a hash of
//! its bytes, fixed at compile time) and `Cache-Control: no-cache`: a browser revalidates on
//! every load and gets `304 Not Modified` until the binary changes, so an upgraded daemon never
//! serves a stale script. The page carries a Content-Security-Policy allowing only its own
//! origin (no inline script, no other hosts), a second wall behind the script's rule that
//! model-produced text only ever becomes text nodes.

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::AppState;

/// One file of the dashboard.
struct Asset {
    body: &'static str,
    content_type: &'static str,
    /// Quoted, as the header carries it.
    etag: &'static str,
}

/// The page's policy: its own origin only; no inline scripts or styles; no framing.
const PAGE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

/// FNV-1a, 64 bits: enough to tell two builds' assets apart, computed at compile time.
const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    hash
}

/// `"<16 hex digits>"` of `hash`, at compile time.
const fn etag_of(hash: u64) -> [u8; 18] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [b'"'; 18];
    let mut i = 0;
    while i < 16 {
        out[1 + i] = HEX[((hash >> (60 - 4 * i)) & 0xf) as usize];
        i += 1;
    }
    out
}

macro_rules! asset {
    ($file:literal, $content_type:literal) => {{
        const BODY: &str = include_str!($file);
        const TAG: [u8; 18] = etag_of(fnv1a(BODY.as_bytes()));
        Asset {
            body: BODY,
            content_type: $content_type,
            etag: match std::str::from_utf8(&TAG) {
                Ok(tag) => tag,
                Err(_) => "\"0\"",
            },
        }
    }};
}

static PAGE: Asset = asset!("assets/index.html", "text/html; charset=utf-8");
static SCRIPT: Asset = asset!("assets/app.js", "text/javascript; charset=utf-8");
static STYLE: Asset = asset!("assets/style.css", "text/css; charset=utf-8");

/// `GET /`, `GET /assets/app.js`, `GET /assets/style.css`.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(page))
        .route("/assets/app.js", get(script))
        .route("/assets/style.css", get(style))
}

async fn page(headers: HeaderMap) -> Response {
    let mut response = serve(&PAGE, &headers);
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(PAGE_CSP),
    );
    // The address may have carried the token a moment ago (`/?token=T` redirects here).
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

async fn script(headers: HeaderMap) -> Response {
    serve(&SCRIPT, &headers)
}

async fn style(headers: HeaderMap) -> Response {
    serve(&STYLE, &headers)
}

/// The asset, or `304 Not Modified` when the browser already holds this version.
fn serve(asset: &'static Asset, request: &HeaderMap) -> Response {
    let etag = HeaderValue::from_static(asset.etag);
    let cached = request
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|tag| tag.trim().trim_start_matches("W/"))
        .any(|tag| tag == asset.etag || tag == "*");
    let common = [
        (header::ETAG, etag),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
    ];
    if cached {
        return (StatusCode::NOT_MODIFIED, common).into_response();
    }
    (
        StatusCode::OK,
        common,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(asset.content_type),
        )],
        asset.body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_asset_has_its_own_etag_from_its_bytes() {
        assert_eq!(PAGE.etag.len(), 18);
        assert!(PAGE.etag.starts_with('"') && PAGE.etag.ends_with('"'));
        assert_ne!(PAGE.etag, SCRIPT.etag);
        assert_ne!(SCRIPT.etag, STYLE.etag);
        assert_eq!(
            SCRIPT.etag,
            std::str::from_utf8(&etag_of(fnv1a(SCRIPT.body.as_bytes()))).unwrap()
        );
        // FNV-1a's published test vector.
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn a_matching_if_none_match_gets_304_and_another_gets_the_file() {
        let mut headers = HeaderMap::new();
        let fresh = serve(&SCRIPT, &headers);
        assert_eq!(fresh.status(), StatusCode::OK);
        assert_eq!(
            fresh.headers()[header::CONTENT_TYPE],
            "text/javascript; charset=utf-8"
        );
        assert_eq!(fresh.headers()[header::ETAG], SCRIPT.etag);
        assert_eq!(fresh.headers()[header::CACHE_CONTROL], "no-cache");

        headers.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_str(&format!("\"0000000000000000\", W/{}", SCRIPT.etag)).unwrap(),
        );
        let cached = serve(&SCRIPT, &headers);
        assert_eq!(cached.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(cached.headers()[header::ETAG], SCRIPT.etag);

        headers.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"stale\""));
        assert_eq!(serve(&SCRIPT, &headers).status(), StatusCode::OK);
        assert_eq!(serve(&STYLE, &headers).status(), StatusCode::OK);
    }

    /// Model output is hostile: the script must never hand text to the HTML parser.
    #[test]
    fn the_script_never_parses_markup() {
        for sink in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "createContextualFragment",
            "eval(",
            "new Function",
        ] {
            assert!(!SCRIPT.body.contains(sink), "app.js uses {sink}");
        }
    }

    #[test]
    fn the_page_loads_only_its_own_assets() {
        assert!(PAGE.body.contains("src=\"/assets/app.js\""));
        assert!(PAGE.body.contains("href=\"/assets/style.css\""));
        for outside in ["http://", "https://", "//fonts", "<script>"] {
            assert!(!PAGE.body.contains(outside), "index.html has {outside}");
        }
        assert!(!STYLE.body.contains("@import") && !STYLE.body.contains("url("));
    }
}
