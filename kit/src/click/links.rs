//! The tracking pixel (`GET /p/{code}.gif`, also `/p/{code}`) and the redirect link
//! (`GET /r/{code}`), for any HTTP framework: both binaries route here.
//!
//! A visitor always gets an answer that works for them: the pixel is always a 1x1 GIF; the
//! link always redirects (to the code's destination with `attribution_id=<id>` added, else
//! to `--fallback-url`), or shows a short 404 page when there is nowhere to go. A click
//! that cannot be recorded (rate limited, overloaded) is counted, never shown to the
//! visitor. `HEAD` (link previews, scanners) gets the same headers and records nothing.

use std::net::IpAddr;

use http::header::{ALLOW, CACHE_CONTROL, CONTENT_TYPE, LOCATION};
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode};
use referral_schemas::{ApiError, ErrorKind};

use super::edge::{ClickEdge, Visit};
use crate::error::error_response;

/// A transparent 1x1 GIF (GIF89a, one-entry palette, transparent colour 0).
pub const PIXEL_GIF: &[u8] = b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff\
!\xf9\x04\x01\x00\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;";

/// The query parameter that carries the new attribution's id to the landing page.
pub const ATTRIBUTION_ID_PARAM: &str = "attribution_id";

const NOT_FOUND_PAGE: &str = "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<title>Link not found</title></head><body><p>This referral link is not active.</p></body>\
</html>\n";

/// Which link a request is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    Pixel,
    Redirect,
}

impl Link {
    /// The link and the raw code of a request path, when it is one.
    pub fn of(path: &str) -> Option<(Self, &str)> {
        let (link, segment) = match path.strip_prefix("/p/") {
            Some(rest) => (Self::Pixel, rest),
            None => (Self::Redirect, path.strip_prefix("/r/")?),
        };
        // One non-empty path segment, as the API's router matches it; the pixel's `.gif`
        // is not part of the code (an empty code is simply unknown).
        if segment.is_empty() || segment.contains('/') {
            return None;
        }
        let code = match link {
            Self::Pixel => segment.strip_suffix(".gif").unwrap_or(segment),
            Self::Redirect => segment,
        };
        Some((link, code))
    }

    /// The route template (a metric label).
    pub fn route(self) -> &'static str {
        match self {
            Self::Pixel => "/p/{code}",
            Self::Redirect => "/r/{code}",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Pixel => "pixel",
            Self::Redirect => "redirect",
        }
    }
}

/// Answers a request for `link` with `raw_code` (the path segment, `.gif` removed).
pub async fn answer<B: From<Vec<u8>>>(
    edge: &ClickEdge,
    link: Link,
    method: &Method,
    peer: IpAddr,
    headers: &HeaderMap,
    raw_code: &str,
    query: Option<&str>,
) -> Response<B> {
    let (target, attribution_id) = match *method {
        Method::HEAD => {
            count(link, "head");
            (edge.look_up(raw_code).await, None)
        }
        Method::GET => {
            let Visit { target, recorded } = edge.visit(peer, headers, raw_code).await;
            match recorded {
                Ok(id) => {
                    count(link, "recorded");
                    (target, Some(id))
                }
                Err(loss) => {
                    count(link, loss.label());
                    (target, None)
                }
            }
        }
        _ => {
            let mut response: Response<B> = error_response(&ApiError::new(
                ErrorKind::MethodNotAllowed,
                "this link answers GET and HEAD",
            ));
            response
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
            return response;
        }
    };
    match link {
        Link::Pixel => pixel(),
        Link::Redirect => {
            let destination = target
                .as_ref()
                .and_then(|target| target.destination_url.as_deref())
                .or(edge.fallback_url());
            match destination
                .map(|url| location(url, query, attribution_id.as_deref()))
                .and_then(|url| HeaderValue::try_from(url).ok())
            {
                Some(location) => redirect(location),
                None => not_found_page(),
            }
        }
    }
}

fn count(link: Link, outcome: &'static str) {
    metrics::counter!("referral_link_visits_total", "link" => link.label(), "outcome" => outcome)
        .increment(1);
}

/// The redirect target: `destination` with the visitor's query parameters kept (but for an
/// `attribution_id` of their own: the landing page must get ours, not one a visitor chose)
/// and `attribution_id=<id>` added, before any fragment.
pub fn location(destination: &str, query: Option<&str>, attribution_id: Option<&str>) -> String {
    let (base, fragment) = match destination.split_once('#') {
        Some((base, fragment)) => (base, Some(fragment)),
        None => (destination, None),
    };
    let mut url = String::with_capacity(destination.len() + query.map_or(0, str::len) + 48);
    url.push_str(base);
    let mut separator = match base.rfind('?') {
        None => Some('?'),
        Some(at) if at + 1 == base.len() || base.ends_with('&') => None,
        Some(_) => Some('&'),
    };
    let kept = query
        .into_iter()
        .flat_map(|query| query.split('&'))
        .filter(|pair| !pair.is_empty() && !names_attribution_id(pair));
    let ours = attribution_id.map(|id| (ATTRIBUTION_ID_PARAM, id));
    for pair in kept {
        url.extend(separator.replace('&'));
        url.push_str(pair);
    }
    if let Some((name, id)) = ours {
        url.extend(separator.replace('&'));
        url.push_str(name);
        url.push('=');
        url.push_str(id);
    }
    if let Some(fragment) = fragment {
        url.push('#');
        url.push_str(fragment);
    }
    url
}

/// Whether a query pair's name, decoded (`attribution%5Fid`, `attribution+id`), is ours, or
/// a form of it some frameworks read as the same (`attribution_id[]`, `attribution.id`).
fn names_attribution_id(pair: &str) -> bool {
    let name = pair.split('=').next().unwrap_or(pair);
    form_urlencoded::parse(name.as_bytes())
        .next()
        .map(|(decoded, _)| decoded)
        .is_some_and(|decoded| {
            let decoded = decoded.trim_end_matches("[]").replace(['.', ' '], "_");
            decoded.eq_ignore_ascii_case(ATTRIBUTION_ID_PARAM)
        })
}

fn pixel<B: From<Vec<u8>>>() -> Response<B> {
    let mut response = Response::new(B::from(PIXEL_GIF.to_vec()));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("image/gif"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store, private"));
    response
}

fn redirect<B: From<Vec<u8>>>(location: HeaderValue) -> Response<B> {
    let mut response = Response::new(B::from(Vec::new()));
    *response.status_mut() = StatusCode::FOUND;
    let headers = response.headers_mut();
    headers.insert(LOCATION, location);
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn not_found_page<B: From<Vec<u8>>>() -> Response<B> {
    let mut response = Response::new(B::from(NOT_FOUND_PAGE.as_bytes().to_vec()));
    *response.status_mut() = StatusCode::NOT_FOUND;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_their_link_and_code() {
        assert_eq!(Link::of("/p/JAN-1.gif"), Some((Link::Pixel, "JAN-1")));
        assert_eq!(Link::of("/p/JAN-1"), Some((Link::Pixel, "JAN-1")));
        assert_eq!(Link::of("/r/jan-1"), Some((Link::Redirect, "jan-1")));
        assert_eq!(Link::of("/r/"), None);
        assert_eq!(Link::of("/p/.gif"), Some((Link::Pixel, "")));
        assert_eq!(Link::of("/p/"), None);
        assert_eq!(Link::of("/r/a/b"), None);
        assert_eq!(Link::of("/api/v1/referral-attributions"), None);
    }

    #[test]
    fn the_location_keeps_the_visitors_query_and_adds_ours_before_the_fragment() {
        let id = Some("attr_01");
        assert_eq!(
            location("https://x.com/join", None, id),
            "https://x.com/join?attribution_id=attr_01"
        );
        assert_eq!(
            location("https://x.com/join?ref=a#top", Some("utm=b&c"), id),
            "https://x.com/join?ref=a&utm=b&c&attribution_id=attr_01#top"
        );
        // A visitor's own attribution_id is dropped: the landing page gets ours only.
        assert_eq!(
            location(
                "https://x.com/?",
                Some("attribution_id=attr_FORGED&x=1"),
                id
            ),
            "https://x.com/?x=1&attribution_id=attr_01"
        );
        // However the visitor spells it.
        for forged in [
            "attribution%5Fid=x",
            "Attribution_ID=x",
            "attribution_id%5B%5D=x",
            "attribution_id[]=x",
            "attribution.id=x",
            "attribution+id=x",
        ] {
            assert_eq!(
                location("https://x.com/", Some(forged), id),
                "https://x.com/?attribution_id=attr_01",
                "{forged}"
            );
        }
        // Not recorded: the query is kept, nothing is added.
        assert_eq!(
            location("https://x.com/join", Some("x=1&&y"), None),
            "https://x.com/join?x=1&y"
        );
        assert_eq!(location("https://x.com/", None, None), "https://x.com/");
    }

    #[test]
    fn the_pixel_is_a_one_by_one_gif() {
        assert_eq!(PIXEL_GIF.len(), 43);
        assert!(PIXEL_GIF.starts_with(b"GIF89a"));
        assert_eq!(&PIXEL_GIF[6..10], &[1, 0, 1, 0], "width 1, height 1");
        assert_eq!(PIXEL_GIF.last(), Some(&b';'));
    }
}
