//! The link requests of a run, `GET`/`HEAD` of `/r/{code}` and `/p/{code}.gif`: a client
//! that keeps the answer's headers (the run's JSON client does not), and the pure judgement
//! of each answer against what the edge must say.
//!
//! * Redirect GET: 302 with `Cache-Control: no-store` and a `Location` that is the code's
//!   destination, the visitor's query (less an `attribution_id` of theirs), then
//!   `attribution_id=<id>` when the click was recorded. Without it (rate limited,
//!   overloaded) the visitor is still redirected: not a failure, and the click may or may not
//!   be stored (the ledger counts it as an attempt without an id).
//! * Pixel GET: 200 `image/gif`, the 43-byte GIF, whatever happened: it never says whether
//!   the click was recorded (the verifier finds stored pixel clicks in the listings).
//! * HEAD of either: the same status and headers, no body, and nothing recorded.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{HeaderMap, Method, Request, StatusCode, Uri, header};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::http::Outcome;
use crate::traffic::{LinkKind, LinkRequest};

/// The size of the edge's pixel (a transparent 1x1 GIF89a).
const PIXEL_BYTES: usize = 43;

/// What a link answered: the status, the headers the judgement needs, the body.
#[derive(Debug, Clone, Default)]
pub struct LinkAnswer {
    pub status: u16,
    pub location: Option<String>,
    pub content_type: Option<String>,
    pub cache_control: Option<String>,
    pub body: Bytes,
}

/// How a link request ended.
#[derive(Debug)]
pub enum LinkOutcome {
    Answered(LinkAnswer),
    TimedOut,
    Transport(String),
}

impl LinkOutcome {
    /// The same outcome for the request tallies.
    pub fn tally(&self) -> Outcome {
        match self {
            Self::Answered(answer) => Outcome::Answered {
                status: StatusCode::from_u16(answer.status)
                    .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                body: Bytes::new(),
            },
            Self::TimedOut => Outcome::TimedOut,
            Self::Transport(error) => Outcome::Transport(error.clone()),
        }
    }
}

/// A keep-alive client for link requests; never follows a redirect.
#[derive(Clone)]
pub struct LinkClient {
    client: Client<HttpConnector, Empty<Bytes>>,
    timeout: Duration,
}

impl LinkClient {
    pub fn new(max_idle_per_host: usize, timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(max_idle_per_host)
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Self { client, timeout }
    }

    /// Sends `method url` with `headers` and waits for the whole answer.
    pub async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(header::HeaderName, &str)],
    ) -> LinkOutcome {
        let uri: Uri = match url.parse() {
            Ok(uri) => uri,
            Err(error) => return LinkOutcome::Transport(format!("bad URL {url}: {error}")),
        };
        let mut builder = Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            builder = builder.header(name, *value);
        }
        let request = match builder.body(Empty::new()) {
            Ok(request) => request,
            Err(error) => return LinkOutcome::Transport(error.to_string()),
        };
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|error| error.to_string())?;
            let status = response.status().as_u16();
            let text = |headers: &HeaderMap, name: header::HeaderName| {
                headers
                    .get(name)
                    .and_then(|value| value.to_str().ok())
                    .map(str::to_owned)
            };
            let headers = response.headers();
            let mut answer = LinkAnswer {
                status,
                location: text(headers, header::LOCATION),
                content_type: text(headers, header::CONTENT_TYPE),
                cache_control: text(headers, header::CACHE_CONTROL),
                body: Bytes::new(),
            };
            answer.body = response
                .into_body()
                .collect()
                .await
                .map_err(|error| error.to_string())?
                .to_bytes();
            Ok::<_, String>(answer)
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(Ok(answer)) => LinkOutcome::Answered(answer),
            Ok(Err(error)) => LinkOutcome::Transport(error),
            Err(_) => LinkOutcome::TimedOut,
        }
    }
}

/// What a link's answer says, judged against what it must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkJudgement {
    /// A redirect GET recorded: the id its `Location` carries (acknowledged).
    Recorded(String),
    /// The right answer, with no id: a pixel GET (recorded or not, it never says), a
    /// redirect GET that could not be recorded (the visitor is redirected anyway), a HEAD.
    Answered,
    /// No answer (timeout, connection error): a GET may or may not have been recorded.
    Failed,
    /// A wrong answer.
    Wrong(String),
}

/// Judges a link's outcome; `destination` is the code's `destination_url`.
pub fn judge_link(
    request: &LinkRequest,
    destination: &str,
    outcome: &LinkOutcome,
) -> LinkJudgement {
    let answer = match outcome {
        LinkOutcome::Answered(answer) => answer,
        LinkOutcome::TimedOut | LinkOutcome::Transport(_) => return LinkJudgement::Failed,
    };
    let method = if request.head { "HEAD" } else { "GET" };
    let wrong = |why: &str| {
        LinkJudgement::Wrong(format!(
            "{method} {}: {why} (answered {} location {:?} content-type {:?} cache-control {:?}, \
             {} body bytes)",
            request.path,
            answer.status,
            answer.location,
            answer.content_type,
            answer.cache_control,
            answer.body.len()
        ))
    };
    let no_store = answer
        .cache_control
        .as_deref()
        .is_some_and(|value| value.contains("no-store"));
    if !no_store {
        return wrong("no Cache-Control: no-store");
    }
    match request.kind {
        LinkKind::Pixel => {
            let gif = answer.content_type.as_deref() == Some("image/gif");
            let body_ok = if request.head {
                answer.body.is_empty()
            } else {
                answer.body.len() == PIXEL_BYTES && answer.body.starts_with(b"GIF89a")
            };
            if answer.status == 200 && gif && body_ok {
                LinkJudgement::Answered
            } else {
                wrong("expected 200 with the 1x1 image/gif")
            }
        }
        LinkKind::Redirect => {
            if answer.status != 302 {
                return wrong("expected 302");
            }
            let base = request.location_base(destination);
            let Some(location) = answer.location.as_deref() else {
                return wrong("a 302 without Location");
            };
            if location == base {
                return LinkJudgement::Answered;
            }
            if request.head {
                return wrong("a HEAD's Location must be the destination, with no attribution_id");
            }
            let id = location
                .strip_prefix(base.as_str())
                .and_then(|rest| rest.strip_prefix("&attribution_id="))
                .filter(|id| {
                    id.starts_with("attr_")
                        && id
                            .bytes()
                            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_')
                });
            match id {
                Some(id) => LinkJudgement::Recorded(id.to_owned()),
                None => wrong(&format!(
                    "expected Location {base} with or without &attribution_id=<id>"
                )),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::traffic::Visitor;

    const DESTINATION: &str = "https://join.example.com/welcome?ref=ldx-00001";

    fn request(kind: LinkKind, head: bool, kept_query: Option<&'static str>) -> LinkRequest {
        LinkRequest {
            kind,
            head,
            path: "/r/LDX-00001".to_owned(),
            kept_query,
            visitor: Visitor {
                mentor: 0,
                code: 1,
                ip: None,
                user_agent: Some("Twitterbot/1.0"),
            },
            referer: None,
            revisit: false,
        }
    }

    fn answered(
        status: u16,
        location: Option<&str>,
        content_type: Option<&str>,
        body: &'static [u8],
    ) -> LinkOutcome {
        LinkOutcome::Answered(LinkAnswer {
            status,
            location: location.map(str::to_owned),
            content_type: content_type.map(str::to_owned),
            cache_control: Some("no-store".to_owned()),
            body: Bytes::from_static(body),
        })
    }

    #[test]
    fn a_redirect_carries_the_id_of_the_recorded_click_or_none() {
        let get = request(LinkKind::Redirect, false, Some("utm_source=dm"));
        let recorded = answered(
            302,
            Some(
                "https://join.example.com/welcome?ref=ldx-00001&utm_source=dm&attribution_id=attr_01ABC",
            ),
            None,
            b"",
        );
        assert_eq!(
            judge_link(&get, DESTINATION, &recorded),
            LinkJudgement::Recorded("attr_01ABC".to_owned())
        );
        // Rate limited or overloaded: redirected all the same, nothing acknowledged.
        let unrecorded = answered(
            302,
            Some("https://join.example.com/welcome?ref=ldx-00001&utm_source=dm"),
            None,
            b"",
        );
        assert_eq!(
            judge_link(&get, DESTINATION, &unrecorded),
            LinkJudgement::Answered
        );
        // The visitor's own attribution_id must not survive; nor may the query be lost.
        for location in [
            "https://join.example.com/welcome?ref=ldx-00001&utm_source=dm&attribution_id=attr_FORGED&attribution_id=attr_1",
            "https://join.example.com/welcome?ref=ldx-00001&attribution_id=attr_1",
            "https://elsewhere.example.com/?attribution_id=attr_1",
        ] {
            let outcome = answered(302, Some(location), None, b"");
            assert!(
                matches!(
                    judge_link(&get, DESTINATION, &outcome),
                    LinkJudgement::Wrong(_)
                ),
                "{location}"
            );
        }
        for wrong in [
            answered(200, None, Some("image/gif"), b""),
            answered(404, None, Some("text/html"), b"<p>not active</p>"),
            answered(302, None, None, b""),
        ] {
            assert!(matches!(
                judge_link(&get, DESTINATION, &wrong),
                LinkJudgement::Wrong(_)
            ));
        }
        let mut cached = answered(302, Some(DESTINATION), None, b"");
        if let LinkOutcome::Answered(answer) = &mut cached {
            answer.cache_control = None;
        }
        assert!(matches!(
            judge_link(
                &request(LinkKind::Redirect, false, None),
                DESTINATION,
                &cached
            ),
            LinkJudgement::Wrong(_)
        ));
        assert_eq!(
            judge_link(&get, DESTINATION, &LinkOutcome::TimedOut),
            LinkJudgement::Failed
        );
    }

    #[test]
    fn a_head_redirects_without_an_id_and_a_pixel_is_always_the_gif() {
        let head = request(LinkKind::Redirect, true, None);
        assert_eq!(
            judge_link(
                &head,
                DESTINATION,
                &answered(302, Some(DESTINATION), None, b"")
            ),
            LinkJudgement::Answered
        );
        let with_id = format!("{DESTINATION}&attribution_id=attr_1");
        assert!(matches!(
            judge_link(
                &head,
                DESTINATION,
                &answered(302, Some(&with_id), None, b"")
            ),
            LinkJudgement::Wrong(_)
        ));

        const GIF: &[u8] = b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff\
!\xf9\x04\x01\x00\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;";
        let pixel = request(LinkKind::Pixel, false, None);
        assert_eq!(
            judge_link(
                &pixel,
                DESTINATION,
                &answered(200, None, Some("image/gif"), GIF)
            ),
            LinkJudgement::Answered
        );
        for wrong in [
            answered(200, None, Some("text/plain"), GIF),
            answered(503, None, Some("image/gif"), GIF),
            answered(200, None, Some("image/gif"), b"GIF89a"),
        ] {
            assert!(matches!(
                judge_link(&pixel, DESTINATION, &wrong),
                LinkJudgement::Wrong(_)
            ));
        }
        let head = request(LinkKind::Pixel, true, None);
        assert_eq!(
            judge_link(
                &head,
                DESTINATION,
                &answered(200, None, Some("image/gif"), b"")
            ),
            LinkJudgement::Answered
        );
    }
}
