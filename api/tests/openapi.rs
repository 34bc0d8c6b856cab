//! The OpenAPI document (`schemas/openapi.json`) against what the API serves, in process on
//! the embedded pipeline:
//!
//! * the document is OpenAPI 3.1, every `$ref` resolves, every example fits its schema;
//! * a table of requests reaches every route and every status the document lists, each
//!   answer's status, headers, media type and body are checked against the document, and
//!   every documented (path, method, status) is observed, but for the few listed in
//!   [`UNPRODUCIBLE`] with the reason;
//! * every documented operation is routed, under the canonical prefix and its alias;
//! * `GET /api/v1/openapi.json` serves the document byte for byte.

mod common;

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use bytes::Bytes;
use common::{Answer, DOUBLED, PEER, PREFIX, TestApp, from_now};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::BodyExt;
use referral_schemas::{OPENAPI, Timestamp};
use serde_json::Value;
use tower::ServiceExt;

/// Documented statuses no in-process request can produce, with the reason. Everything else
/// the document lists must be observed.
/// The operations an allow-list entry covers: (method, path prefix); None: all.
type Operations = Option<(&'static str, &'static str)>;

/// (operations it applies to, status, reason).
const UNPRODUCIBLE: &[(Operations, u16, &str)] = &[
    (
        None,
        500,
        "a failed store read or a writer bug; needs fault injection into the store",
    ),
    (
        Some(("get", "/api/")),
        503,
        "a read while the store is unreachable (ClickHouse restarting, a network cut); the \
         in-process embedded store cannot be",
    ),
    (
        Some(("post", WEBHOOKS)),
        503,
        "a webhook registration or replay while the store is unreachable; the API writes \
         these to the store itself (not through the pipeline), so a drained pipeline is no 503",
    ),
    (
        Some(("delete", WEBHOOKS)),
        503,
        "a webhook deletion while the store is unreachable; as for its registration",
    ),
];

/// Whether `only` of an [`UNPRODUCIBLE`] entry covers `method` on `template`.
fn covers(only: Option<(&str, &str)>, template: &str, method: &str) -> bool {
    only.is_none_or(|(only, prefix)| only == method && template.starts_with(prefix))
}

/// Whether (template, method, status) is on the allow-list of [`UNPRODUCIBLE`].
fn unproducible(template: &str, method: &str, status: u16) -> bool {
    UNPRODUCIBLE
        .iter()
        .any(|(only, allowed, _)| *allowed == status && covers(*only, template, method))
}

const READER: &str = "reader-0123456789abcdef";
const WRITER: &str = "writer-0123456789abcdef";
const ADMIN: &str = "admin-00123456789abcdef";
/// A well-formed attribution id no click ever had.
const UNKNOWN_ID: &str = "attr_01JQ3V8W6Y7Z8A9B0C1D2E3F4G";
const CODES: &str = "/api/v1/referral-codes";
const WEBHOOKS: &str = "/api/v1/webhooks";
/// A well-formed webhook endpoint id no endpoint ever had.
const UNKNOWN_WEBHOOK: &str = "wh_00000000000000000000";
/// Webhook URLs to plain http and loopback (a refused port), so that nothing leaves the host.
const ALLOW_PRIVATE: &str = "--webhook-allow-private";

fn document() -> Value {
    serde_json::from_str(OPENAPI).expect("schemas/openapi.json is JSON")
}

// ---------------------------------------------------------------------------------------
// Reading the document

/// Follows a local `$ref` (`#/a/b`), repeatedly; anything else is returned as is.
fn resolve<'a>(doc: &'a Value, mut node: &'a Value) -> &'a Value {
    while let Some(reference) = node.get("$ref").and_then(Value::as_str) {
        let pointer = reference
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("non-local $ref {reference}"));
        node = doc
            .pointer(pointer)
            .unwrap_or_else(|| panic!("$ref {reference} does not resolve"));
    }
    node
}

const METHODS: [&str; 4] = ["get", "put", "post", "delete"];

/// Every documented operation as (path, method), GETs first, then PUTs, POSTs, DELETEs, so
/// that examples run in that order find what they read (a reversal, a POST, finds the
/// example click confirmed by the PUT) and delete it last.
fn operations(doc: &Value) -> Vec<(String, String)> {
    let paths = doc["paths"].as_object().expect("paths");
    let mut found = Vec::new();
    for method in METHODS {
        for (path, item) in paths {
            if item.get(method).is_some() {
                found.push((path.clone(), method.to_owned()));
            }
        }
    }
    found
}

/// The parameters that apply to an operation: the path item's and the operation's.
fn parameters<'a>(doc: &'a Value, path: &str, method: &str) -> Vec<&'a Value> {
    let item = &doc["paths"][path];
    let shared = item.get("parameters").and_then(Value::as_array);
    let own = item[method].get("parameters").and_then(Value::as_array);
    shared
        .into_iter()
        .chain(own)
        .flatten()
        .map(|parameter| resolve(doc, parameter))
        .collect()
}

/// `(alias, canonical)` prefixes from `x-prefix-aliases`.
fn aliases(doc: &Value) -> Vec<(String, String)> {
    doc["x-prefix-aliases"]
        .as_array()
        .expect("x-prefix-aliases")
        .iter()
        .map(|alias| {
            (
                alias["alias"].as_str().unwrap().to_owned(),
                alias["canonical"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// The documented path template `uri` falls under (aliases mapped to their canonical
/// prefix); the one with the most literal segments when several match.
fn template_of(doc: &Value, uri: &str) -> Option<String> {
    let mut path = uri.split('?').next().unwrap_or("").to_owned();
    for (alias, canonical) in aliases(doc) {
        if path == alias || path.starts_with(&format!("{alias}/")) {
            path = format!("{canonical}{}", &path[alias.len()..]);
        }
    }
    let segments: Vec<&str> = path.split('/').collect();
    let mut best: Option<(usize, String)> = None;
    for template in doc["paths"].as_object().unwrap().keys() {
        let pattern: Vec<&str> = template.split('/').collect();
        if pattern.len() != segments.len() {
            continue;
        }
        let mut literals = 0;
        let fits = pattern.iter().zip(&segments).all(|(expected, actual)| {
            if expected.starts_with('{') && expected.ends_with('}') {
                !actual.is_empty()
            } else {
                literals += 1;
                expected == actual
            }
        });
        if fits && best.as_ref().is_none_or(|(most, _)| literals > *most) {
            best = Some((literals, template.clone()));
        }
    }
    best.map(|(_, template)| template)
}

// ---------------------------------------------------------------------------------------
// A JSON Schema check for the keywords the document uses

/// `^[CLASS]{MIN,MAX}$`, the one pattern form the document uses.
fn matches_pattern(pattern: &str, text: &str) -> bool {
    let inner = pattern
        .strip_prefix("^[")
        .and_then(|rest| rest.strip_suffix('$'))
        .unwrap_or_else(|| panic!("unsupported pattern {pattern}"));
    let (class, counts) = inner
        .split_once("]{")
        .unwrap_or_else(|| panic!("unsupported pattern {pattern}"));
    let (min, max) = counts
        .strip_suffix('}')
        .and_then(|counts| counts.split_once(','))
        .unwrap_or_else(|| panic!("unsupported pattern {pattern}"));
    let (min, max): (usize, usize) = (min.parse().unwrap(), max.parse().unwrap());
    let class: Vec<char> = class.chars().collect();
    let allowed = |c: char| {
        let mut index = 0;
        while index < class.len() {
            if index + 2 < class.len() && class[index + 1] == '-' {
                if (class[index]..=class[index + 2]).contains(&c) {
                    return true;
                }
                index += 3;
            } else {
                if class[index] == c {
                    return true;
                }
                index += 1;
            }
        }
        false
    };
    let length = text.chars().count();
    (min..=max).contains(&length) && text.chars().all(allowed)
}

fn type_fits(name: &str, value: &Value) -> bool {
    match name {
        "null" => value.is_null(),
        "boolean" => value.is_boolean(),
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "number" => value.is_number(),
        "integer" => value.is_i64() || value.is_u64(),
        other => panic!("unknown type {other}"),
    }
}

/// Checks `value` against `schema`, pushing one line per violation.
fn check(doc: &Value, schema: &Value, value: &Value, at: &str, errors: &mut Vec<String>) {
    let schema = resolve(doc, schema);
    let mut fail = |what: String| errors.push(format!("{at}: {what} (got {value})"));
    if let Some(types) = schema.get("type") {
        let names: Vec<&str> = match types {
            Value::String(name) => vec![name],
            Value::Array(names) => names.iter().filter_map(Value::as_str).collect(),
            other => panic!("bad type {other}"),
        };
        if !names.iter().any(|name| type_fits(name, value)) {
            fail(format!("not of type {names:?}"));
        }
    }
    if let Some(expected) = schema.get("const")
        && expected != value
    {
        fail(format!("not {expected}"));
    }
    if let Some(options) = schema.get("enum").and_then(Value::as_array)
        && !options.contains(value)
    {
        fail(format!("not one of {options:?}"));
    }
    if let Some(number) = value.as_f64() {
        if let Some(minimum) = schema.get("minimum").and_then(Value::as_f64)
            && number < minimum
        {
            fail(format!("below {minimum}"));
        }
        if let Some(maximum) = schema.get("maximum").and_then(Value::as_f64)
            && number > maximum
        {
            fail(format!("above {maximum}"));
        }
    }
    if let Some(text) = value.as_str() {
        let length = text.chars().count() as u64;
        if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
            && length < min
        {
            fail(format!("shorter than {min}"));
        }
        if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
            && length > max
        {
            fail(format!("longer than {max}"));
        }
        if let Some(pattern) = schema.get("pattern").and_then(Value::as_str)
            && !matches_pattern(pattern, text)
        {
            fail(format!("does not match {pattern}"));
        }
        let format_ok = match schema.get("format").and_then(Value::as_str) {
            Some("date-time") => Timestamp::parse_rfc3339(text).is_ok(),
            Some("ipv4") => text.parse::<std::net::Ipv4Addr>().is_ok(),
            Some("ipv6") => text.parse::<std::net::Ipv6Addr>().is_ok(),
            Some("uri") => text
                .parse::<http::Uri>()
                .is_ok_and(|uri| uri.scheme().is_some()),
            Some(other) => panic!("unchecked format {other}"),
            None => true,
        };
        if !format_ok {
            fail(format!("not a {}", schema["format"]));
        }
    }
    if let Some(object) = value.as_object() {
        for name in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            if !object.contains_key(name) {
                fail(format!("missing {name}"));
            }
        }
        let properties = schema.get("properties").and_then(Value::as_object);
        for (name, field) in object {
            match properties.and_then(|properties| properties.get(name)) {
                Some(property) => check(doc, property, field, &format!("{at}.{name}"), errors),
                None => match schema.get("additionalProperties") {
                    Some(Value::Bool(false)) => {
                        errors.push(format!("{at}: undocumented property {name}"));
                    }
                    Some(Value::Bool(true)) | None => {}
                    Some(extra) => check(doc, extra, field, &format!("{at}.{name}"), errors),
                },
            }
        }
    }
    if let (Some(items), Some(elements)) = (schema.get("items"), value.as_array()) {
        for (index, element) in elements.iter().enumerate() {
            check(doc, items, element, &format!("{at}[{index}]"), errors);
        }
    }
    for part in schema
        .get("allOf")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        check(doc, part, value, at, errors);
    }
    if let Some(options) = schema.get("anyOf").and_then(Value::as_array) {
        let fitting = options.iter().any(|option| {
            let mut ignored = Vec::new();
            check(doc, option, value, at, &mut ignored);
            ignored.is_empty()
        });
        if !fitting {
            errors.push(format!("{at}: fits none of anyOf (got {value})"));
        }
    }
}

fn violations(doc: &Value, schema: &Value, value: &Value, at: &str) -> Vec<String> {
    let mut errors = Vec::new();
    check(doc, schema, value, at, &mut errors);
    errors
}

// ---------------------------------------------------------------------------------------
// Observing answers against the document

/// Every (path template, method, status) seen, each checked against the document.
struct Recorder {
    doc: Value,
    observed: BTreeSet<(String, String, u16)>,
}

/// How a 405 for a method a path does not document is recorded.
const OTHER_METHODS: &str = "*";

impl Recorder {
    fn new() -> Self {
        Self {
            doc: document(),
            observed: BTreeSet::new(),
        }
    }

    /// Checks one answer against the document and records it.
    fn observe(&mut self, method: &Method, uri: &str, answer: &Answer) {
        let doc = &self.doc;
        let status = answer.status.as_u16();
        let context = format!("{method} {uri} -> {status} {}", answer.body);
        let Some(template) = template_of(doc, uri) else {
            assert_eq!(status, 404, "{context}: an undocumented path must be 404");
            let response = resolve(doc, &doc["x-route-not-found"]);
            check_answer(doc, response, answer, &context);
            return;
        };
        let item = &doc["paths"][&template];
        let name = method.as_str().to_ascii_lowercase();
        let (response, recorded_method) = match item.get(&name) {
            Some(operation) => {
                let response = operation["responses"]
                    .get(status.to_string())
                    .unwrap_or_else(|| {
                        panic!("{context}: status {status} not documented for {template}")
                    });
                (resolve(doc, response), name)
            }
            None => {
                assert_eq!(status, 405, "{context}: an undocumented method must be 405");
                let response = item
                    .get("x-method-not-allowed")
                    .unwrap_or_else(|| panic!("{context}: {template} documents no 405"));
                (resolve(doc, response), OTHER_METHODS.to_owned())
            }
        };
        check_answer(doc, response, answer, &context);
        self.observed.insert((template, recorded_method, status));
    }

    /// Sends a request to `app`, checks the status is `expected` and observes the answer.
    async fn expect(&mut self, app: &TestApp, request: Call, expected: u16) -> Answer {
        let headers: Vec<(&str, &str)> = request
            .headers
            .iter()
            .map(|(name, value)| (*name, value.as_str()))
            .collect();
        let answer = app
            .call(
                request.method.clone(),
                &request.uri,
                &headers,
                request.body.as_deref(),
            )
            .await;
        assert_eq!(
            answer.status.as_u16(),
            expected,
            "{} {}: {}",
            request.method,
            request.uri,
            answer.body
        );
        self.observe(&request.method, &request.uri, &answer);
        answer
    }

    /// Every documented (path, method, status); 405 as [`OTHER_METHODS`].
    fn documented(&self) -> BTreeSet<(String, String, u16)> {
        let mut documented = BTreeSet::new();
        for (path, item) in self.doc["paths"].as_object().unwrap() {
            if item.get("x-method-not-allowed").is_some() {
                documented.insert((path.clone(), OTHER_METHODS.to_owned(), 405));
            }
            for method in METHODS {
                for status in item
                    .get(method)
                    .and_then(|operation| operation["responses"].as_object())
                    .into_iter()
                    .flat_map(|responses| responses.keys())
                {
                    let status = status.parse().expect("numeric status");
                    documented.insert((path.clone(), method.to_owned(), status));
                }
            }
        }
        documented
    }
}

/// The answer's headers, media type and body against the documented response.
fn check_answer(doc: &Value, response: &Value, answer: &Answer, context: &str) {
    for (name, header) in response
        .get("headers")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        let header = resolve(doc, header);
        let value = answer.headers.get(name.as_str());
        if header["required"] == Value::Bool(true) {
            assert!(value.is_some(), "{context}: missing header {name}");
        }
        if let (Some(value), Some("integer")) = (value, header["schema"]["type"].as_str()) {
            let number: Value = value
                .to_str()
                .ok()
                .and_then(|text| text.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("{context}: header {name} is not an integer"))
                .into();
            let errors = violations(doc, &header["schema"], &number, name);
            assert!(errors.is_empty(), "{context}: {errors:#?}");
        }
    }
    let Some(content) = response.get("content").and_then(Value::as_object) else {
        assert!(answer.body.is_null(), "{context}: no body documented");
        return;
    };
    let content_type = answer
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_else(|| panic!("{context}: no content-type"));
    let essence = content_type.split(';').next().unwrap_or("").trim();
    let media = content
        .get(essence)
        .unwrap_or_else(|| panic!("{context}: content-type {content_type} not documented"));
    if essence == "application/json" {
        let errors = violations(doc, &media["schema"], &answer.body, "body");
        assert!(errors.is_empty(), "{context}: {errors:#?}");
    } else {
        // Text (empty: null); an NDJSON body of one line also parses as JSON.
        let text = answer.body.is_string() || answer.body.is_null();
        assert!(
            text || essence == "application/x-ndjson",
            "{context}: expected text"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Requests

/// One request of the table.
#[derive(Clone, Debug)]
struct Call {
    method: Method,
    uri: String,
    headers: Vec<(&'static str, String)>,
    body: Option<String>,
}

fn call(method: Method, uri: impl Into<String>) -> Call {
    Call {
        method,
        uri: uri.into(),
        headers: Vec::new(),
        body: None,
    }
}

impl Call {
    fn json(self, body: impl Into<String>) -> Self {
        self.typed("application/json", body)
    }

    fn typed(mut self, content_type: &str, body: impl Into<String>) -> Self {
        self.headers.push(("content-type", content_type.to_owned()));
        self.body = Some(body.into());
        self
    }

    fn bearer(mut self, token: &str) -> Self {
        self.headers
            .push(("authorization", format!("Bearer {token}")));
        self
    }
}

/// What the example requests need that the examples cannot name: the click's id (`{id}` of
/// an attribution path) and the webhook endpoint's (`{id}` of a webhook path).
#[derive(Clone, Debug, Default)]
struct Seeded {
    attribution: String,
    webhook: String,
}

/// The documented example request of an operation: path parameters from their examples
/// (`{id}` from `ids`), the body from the request body's example. `prefix` replaces the
/// canonical attribution prefix (to call the alias).
fn example_call(doc: &Value, path: &str, method: &str, ids: &Seeded, prefix: &str) -> Call {
    let id = if path.starts_with(WEBHOOKS) {
        &ids.webhook
    } else {
        &ids.attribution
    };
    let mut uri = path.to_owned();
    for parameter in parameters(doc, path, method) {
        if parameter["in"] != "path" {
            continue;
        }
        let name = parameter["name"].as_str().unwrap();
        let value = if name == "id" {
            id.to_owned()
        } else {
            parameter["example"]
                .as_str()
                .unwrap_or_else(|| panic!("{path}: path parameter {name} has no example"))
                .to_owned()
        };
        uri = uri.replace(&format!("{{{name}}}"), &value);
    }
    assert!(!uri.contains('{'), "{path}: undeclared path parameter");
    if let Some(rest) = uri.strip_prefix(PREFIX) {
        uri = format!("{prefix}{rest}");
    }
    let method = Method::from_bytes(method.to_ascii_uppercase().as_bytes()).unwrap();
    let mut request = call(method, uri);
    if let Some(body) = doc["paths"][path][method_name(&request.method)].get("requestBody") {
        let example = &resolve(doc, body)["content"]["application/json"]["example"];
        assert!(!example.is_null(), "{path}: request body without example");
        request = request.json(example.to_string());
    }
    request
}

fn method_name(method: &Method) -> String {
    method.as_str().to_ascii_lowercase()
}

/// The documented examples' code and mentor, assigned, the example click recorded and the
/// example webhook endpoint registered (its example URL is taken without a DNS lookup only
/// by an app started with [`ALLOW_PRIVATE`]): what every example request needs.
async fn seed_examples(recorder: &mut Recorder, app: &TestApp, admin: Option<&str>) -> Seeded {
    let doc = recorder.doc.clone();
    let none = Seeded::default();
    let as_admin = |call: Call| match admin {
        Some(token) => call.bearer(token),
        None => call,
    };
    let code = example_call(&doc, &format!("{CODES}/{{code}}"), "put", &none, PREFIX);
    recorder.expect(app, as_admin(code), 201).await;
    let click = example_call(&doc, PREFIX, "post", &none, PREFIX);
    let answer = recorder.expect(app, click, 201).await;
    let attribution = answer.body["id"].as_str().unwrap().to_owned();
    let endpoint = example_call(&doc, WEBHOOKS, "post", &none, PREFIX);
    let answer = recorder.expect(app, as_admin(endpoint), 201).await;
    let webhook = answer.body["id"].as_str().unwrap().to_owned();
    Seeded {
        attribution,
        webhook,
    }
}

/// A body that never arrives (nor ends): the body read times out.
struct Stalled;

impl hyper::body::Body for Stalled {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        Poll::Pending
    }
}

/// A request sent to the router as it is, answered with its raw body.
async fn send(router: Router, mut request: Request<Body>) -> (StatusCode, HeaderMap, Bytes) {
    let peer: SocketAddr = PEER.parse().unwrap();
    request.extensions_mut().insert(ConnectInfo(peer));
    let response = router.oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, headers, body)
}

fn answer_of(status: StatusCode, headers: HeaderMap, body: &[u8]) -> Answer {
    let body = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()))
    };
    Answer {
        status,
        headers,
        body,
    }
}

// ---------------------------------------------------------------------------------------
// (a) The document itself

fn walk<'a>(node: &'a Value, at: String, found: &mut Vec<(String, &'a Value)>) {
    found.push((at.clone(), node));
    match node {
        Value::Object(map) => {
            for (key, child) in map {
                walk(child, format!("{at}/{key}"), found);
            }
        }
        Value::Array(items) => {
            for (index, child) in items.iter().enumerate() {
                walk(child, format!("{at}/{index}"), found);
            }
        }
        _ => {}
    }
}

#[test]
fn the_document_is_openapi_3_1_every_ref_resolves_and_examples_fit() {
    let doc = document();
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1."),
        "{}",
        doc["openapi"]
    );
    assert!(!doc["info"]["title"].as_str().unwrap().is_empty());
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(doc["servers"], serde_json::json!([{"url": "/"}]));
    assert_eq!(
        aliases(&doc),
        vec![(DOUBLED.to_owned(), PREFIX.to_owned())],
        "the doubled prefix is the one alias"
    );

    let mut nodes = Vec::new();
    walk(&doc, String::new(), &mut nodes);
    let mut references = 0;
    for (at, node) in &nodes {
        if let Some(reference) = node.get("$ref") {
            let reference = reference.as_str().unwrap();
            let pointer = reference.strip_prefix('#').expect("local $ref");
            assert!(
                doc.pointer(pointer).is_some(),
                "{at}: $ref {reference} does not resolve"
            );
            references += 1;
        }
    }
    assert!(references > 50, "only {references} $refs");

    // Every example (of a schema, a media type or a parameter) fits its schema.
    let mut examples = 0;
    for (at, node) in &nodes {
        let Some(example) = node.get("example") else {
            continue;
        };
        let schema = if at.contains("/content/") || at.starts_with("/components/parameters/") {
            &node["schema"]
        } else if at.starts_with("/components/schemas/") {
            node
        } else {
            panic!("{at}: an example of nothing checked here");
        };
        let errors = violations(&doc, schema, example, at);
        assert!(errors.is_empty(), "{errors:#?}");
        examples += 1;
    }
    assert!(examples >= 15, "only {examples} examples");

    let mut ids = BTreeSet::new();
    for (path, method) in operations(&doc) {
        let operation = &doc["paths"][&path][&method];
        let id = operation["operationId"].as_str().unwrap();
        assert!(ids.insert(id.to_owned()), "operationId {id} twice");
        assert!(
            operation["security"].is_array(),
            "{method} {path}: security must be explicit"
        );
        // Path parameters and the template name the same set.
        let declared: BTreeSet<String> = parameters(&doc, &path, &method)
            .into_iter()
            .filter(|parameter| parameter["in"] == "path")
            .map(|parameter| parameter["name"].as_str().unwrap().to_owned())
            .collect();
        let templated: BTreeSet<String> = path
            .split('/')
            .filter_map(|segment| segment.strip_prefix('{')?.strip_suffix('}'))
            .map(str::to_owned)
            .collect();
        assert_eq!(declared, templated, "{method} {path}");
    }
    for contract_name in [
        "recordReferralClick",
        "getAttributions",
        "getAttributionById",
        "confirmRecruitment",
        "deleteAttribution",
        "getAttributionsByMentor",
        "getTotalRecruitments",
    ] {
        assert!(ids.contains(contract_name), "missing {contract_name}");
    }
    for webhook_name in [
        "createWebhook",
        "listWebhooks",
        "getWebhook",
        "deleteWebhook",
        "listWebhookDeliveries",
        "replayWebhook",
    ] {
        assert!(ids.contains(webhook_name), "missing {webhook_name}");
    }
    assert_eq!(ids.len(), 27, "{ids:?}");

    // The events receivers are sent (OpenAPI 3.1 `webhooks`): one per event type, each
    // signed, and no operationId shared with a path's.
    let events = doc["webhooks"].as_object().expect("webhooks");
    let types: BTreeSet<&str> = events.keys().map(String::as_str).collect();
    assert_eq!(
        types,
        BTreeSet::from([
            "attribution.deleted",
            "conversion.confirmed",
            "conversion.reversed"
        ])
    );
    for (name, item) in events {
        let operation = &item["post"];
        let id = operation["operationId"].as_str().unwrap();
        assert!(ids.insert(id.to_owned()), "operationId {id} twice");
        assert!(
            operation["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .any(|parameter| parameter["name"] == "Referral-Signature"
                    && parameter["in"] == "header"
                    && parameter["required"] == true),
            "{name}: the signature header"
        );
    }
}

// ---------------------------------------------------------------------------------------
// (b) Every status served is documented, every documented status is served

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_documented_status_is_served_and_every_served_status_is_documented() {
    let mut recorder = Recorder::new();
    let doc = recorder.doc.clone();

    // 408 takes the body-read timeout (10 s): started first, collected last.
    let open = TestApp::start(&[ALLOW_PRIVATE]).await;
    let stalled: Vec<(Method, String)> = vec![
        (Method::POST, PREFIX.to_owned()),
        (Method::PUT, format!("{PREFIX}/{UNKNOWN_ID}")),
        (Method::PUT, format!("{CODES}/SLOW-1")),
        (Method::POST, format!("{PREFIX}/{UNKNOWN_ID}/reversal")),
        (Method::POST, WEBHOOKS.to_owned()),
        (Method::POST, format!("{WEBHOOKS}/{UNKNOWN_WEBHOOK}/replay")),
    ];
    let mut slow = Vec::new();
    for (method, uri) in stalled.clone() {
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", "application/json")
            .body(Body::new(Stalled))
            .unwrap();
        slow.push(tokio::spawn(send(open.router.clone(), request)));
    }

    // The open app (no tokens, no rate limits).
    recorder
        .expect(
            &open,
            call(Method::PUT, format!("{CODES}/jan-1")).json(r#"{"mentor_id":"usr_1"}"#),
            201,
        )
        .await;
    // The pixel and the redirect link: a code without a destination gets the 404 page (no
    // --fallback-url here), one with a destination its 302.
    recorder
        .expect(
            &open,
            call(Method::PUT, format!("{CODES}/JAN-DEST")).json(
                r#"{"mentor_id":"usr_1","destination_url":"https://platform.example.com/join"}"#,
            ),
            201,
        )
        .await;
    recorder
        .expect(&open, call(Method::GET, "/r/JAN-DEST?x=1"), 302)
        .await;
    recorder
        .expect(&open, call(Method::GET, "/r/JAN-1"), 404)
        .await;
    recorder
        .expect(&open, call(Method::GET, "/p/JAN-1.gif"), 200)
        .await;
    recorder
        .expect(&open, call(Method::GET, "/p/NOPE-404"), 200)
        .await;
    // Each by a new visitor (a person: counted, so it can be confirmed).
    let click = |occurred_at: String| {
        call(Method::POST, PREFIX).json(format!(
            r#"{{"code":"JAN-1","occurred_at":"{occurred_at}",{}}}"#,
            common::new_visitor()
        ))
    };
    let bot = recorder
        .expect(
            &open,
            call(Method::POST, PREFIX).json(r#"{"code":"JAN-1"}"#),
            201,
        )
        .await
        .body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let fresh = recorder
        .expect(&open, click(from_now(-3600)), 201)
        .await
        .body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let old = recorder
        .expect(&open, click(from_now(-100 * 86_400)), 201)
        .await
        .body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let doomed = recorder.expect(&open, click(from_now(-60)), 201).await.body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // A webhook endpoint at a refused local port (the open app allows private addresses).
    let hook = recorder
        .expect(
            &open,
            call(Method::POST, WEBHOOKS).json(
                r#"{"url":"http://127.0.0.1:9/hook","events":["attribution.deleted","conversion.confirmed"]}"#,
            ),
            201,
        )
        .await
        .body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let huge = format!(r#"{{"user_agent":"{}"}}"#, "a".repeat(17 * 1024));
    let since = format!(r#"{{"since":"{}"}}"#, from_now(-86_400));
    let confirm = r#"{"code":"JAN-1","new_member_id":"usr_new"}"#;
    let reversal = r#"{"reason":"refund"}"#;
    let table: Vec<(Call, u16)> = vec![
        // getAttributions
        (call(Method::GET, PREFIX), 200),
        (call(Method::GET, DOUBLED), 200),
        (
            call(
                Method::GET,
                format!(
                    "{PREFIX}?page=1&limit=100&status=pending&type=click&code=jan-1&mentor_id=usr_1&from=2020-01-01T00:00:00Z&to=2030-01-01T00:00:00Z"
                ),
            ),
            200,
        ),
        (call(Method::GET, format!("{PREFIX}?limit=0")), 422),
        (call(Method::GET, format!("{PREFIX}?sort=asc")), 422),
        (call(Method::GET, format!("{PREFIX}?cursor=nope")), 422),
        (
            call(
                Method::GET,
                format!("{PREFIX}?limit=1&cursor=c1.4102444800000.{UNKNOWN_ID}"),
            ),
            200,
        ),
        (
            call(Method::GET, format!("{PREFIX}/export?format=xlsx")),
            422,
        ),
        (
            call(Method::GET, format!("{PREFIX}/mentors/top?by=money")),
            422,
        ),
        (
            call(
                Method::GET,
                format!("{PREFIX}/mentor/usr_4491/timeseries?tz=Mars/Base"),
            ),
            422,
        ),
        (
            call(
                Method::GET,
                format!(
                    "{PREFIX}/mentor/usr_4491/timeseries?interval=hour&period=today&tz=Asia/Kolkata"
                ),
            ),
            200,
        ),
        (
            call(
                Method::GET,
                format!("{PREFIX}/export?format=ndjson&verdict=bot"),
            ),
            200,
        ),
        // recordReferralClick
        (call(Method::POST, PREFIX).json(r#"{"code":"jan-1"}"#), 201),
        (
            call(Method::POST, DOUBLED).json(r#"{"code":"JAN-1","referrer_url":""}"#),
            201,
        ),
        (call(Method::POST, PREFIX).json("{"), 400),
        (call(Method::POST, PREFIX).json(huge.clone()), 413),
        (
            call(Method::POST, PREFIX).typed("text/plain", r#"{"code":"JAN-1"}"#),
            415,
        ),
        (call(Method::POST, PREFIX).json(r#"{"code":"NOPE-1"}"#), 422),
        (
            call(Method::POST, PREFIX).json(r#"{"code":"JAN-1","mentor_id":"usr_1"}"#),
            422,
        ),
        // getAttributionById
        (call(Method::GET, format!("{PREFIX}/{fresh}")), 200),
        (call(Method::GET, format!("{DOUBLED}/{fresh}")), 200),
        (call(Method::GET, format!("{PREFIX}/{UNKNOWN_ID}")), 404),
        (call(Method::GET, format!("{PREFIX}/attr_a1b2c3")), 404),
        // confirmRecruitment
        (
            call(Method::PUT, format!("{PREFIX}/{fresh}")).json(confirm),
            200,
        ),
        (
            call(Method::PUT, format!("{PREFIX}/{fresh}")).json(confirm),
            200,
        ),
        (
            call(Method::PUT, format!("{PREFIX}/{fresh}")).json("[]"),
            400,
        ),
        (
            call(Method::PUT, format!("{PREFIX}/{UNKNOWN_ID}")).json(confirm),
            404,
        ),
        (
            call(Method::PUT, format!("{PREFIX}/{fresh}"))
                .json(r#"{"code":"FEB-2","new_member_id":"usr_new"}"#),
            409,
        ),
        (
            call(Method::PUT, format!("{PREFIX}/{fresh}"))
                .json(r#"{"code":"JAN-1","new_member_id":"usr_other"}"#),
            409,
        ),
        (
            // A bot's click (no user agent): 409 not_a_visitor.
            call(Method::PUT, format!("{PREFIX}/{bot}"))
                .json(r#"{"code":"JAN-1","new_member_id":"usr_bot"}"#),
            409,
        ),
        (
            call(Method::PUT, format!("{PREFIX}/{old}"))
                .json(r#"{"code":"JAN-1","new_member_id":"usr_late"}"#),
            409,
        ),
        (
            call(Method::PUT, format!("{PREFIX}/{fresh}")).json(huge.clone()),
            413,
        ),
        (
            call(Method::PUT, format!("{PREFIX}/{fresh}")).typed("text/plain", confirm),
            415,
        ),
        (
            call(Method::PUT, format!("{PREFIX}/{fresh}")).json(r#"{"code":"JAN-1"}"#),
            422,
        ),
        (
            call(Method::PUT, format!("{PREFIX}/{fresh}"))
                .json(r#"{"code":"JAN-1","new_member_id":"usr_new","note":"x"}"#),
            422,
        ),
        // reverseConversion (`fresh` is confirmed above; `old` stayed a click)
        (
            call(Method::POST, format!("{PREFIX}/{fresh}/reversal")).json(reversal),
            200,
        ),
        (
            call(Method::POST, format!("{DOUBLED}/{fresh}/reversal")).json(reversal),
            200,
        ),
        (
            call(Method::POST, format!("{PREFIX}/{fresh}/reversal")).json("[]"),
            400,
        ),
        (
            call(Method::POST, format!("{PREFIX}/{UNKNOWN_ID}/reversal")).json(reversal),
            404,
        ),
        (
            call(Method::POST, format!("{PREFIX}/{fresh}/reversal"))
                .json(r#"{"reason":"chargeback"}"#),
            409,
        ),
        (
            call(Method::POST, format!("{PREFIX}/{old}/reversal")).json(reversal),
            409,
        ),
        (
            call(Method::POST, format!("{PREFIX}/{fresh}/reversal")).json(huge.clone()),
            413,
        ),
        (
            call(Method::POST, format!("{PREFIX}/{fresh}/reversal")).typed("text/plain", reversal),
            415,
        ),
        (
            call(Method::POST, format!("{PREFIX}/{fresh}/reversal")).json("{}"),
            422,
        ),
        // deleteAttribution
        (call(Method::DELETE, format!("{PREFIX}/{doomed}")), 200),
        (call(Method::DELETE, format!("{PREFIX}/{doomed}")), 404),
        // getAttributionsByMentor
        (
            call(
                Method::GET,
                format!("{PREFIX}/mentor/usr_1?status=confirmed&limit=5"),
            ),
            200,
        ),
        (call(Method::GET, format!("{DOUBLED}/mentor/usr_1")), 200),
        (call(Method::GET, format!("{PREFIX}/mentor/usr%20one")), 422),
        (
            call(
                Method::GET,
                format!("{PREFIX}/mentor/usr_1?mentor_id=usr_2"),
            ),
            422,
        ),
        // getTotalRecruitments
        (
            call(Method::GET, format!("{PREFIX}/mentor/usr_1/total")),
            200,
        ),
        (
            call(
                Method::GET,
                format!("{PREFIX}/mentor/usr_1/total?period=30d"),
            ),
            200,
        ),
        (
            call(
                Method::GET,
                format!(
                    "{DOUBLED}/mentor/usr_1/total?from=2026-01-01T00:00:00Z&to=2030-01-01T00:00:00Z"
                ),
            ),
            200,
        ),
        (
            call(
                Method::GET,
                format!("{PREFIX}/mentor/usr_1/total?period=1y"),
            ),
            422,
        ),
        // listReferralCodes
        (
            call(
                Method::GET,
                format!("{CODES}?mentor_id=usr_1&page=1&limit=20"),
            ),
            200,
        ),
        (call(Method::GET, format!("{CODES}?limit=101")), 422),
        // getReferralCode
        (call(Method::GET, format!("{CODES}/jan-1")), 200),
        (call(Method::GET, format!("{CODES}/NOPE-1")), 404),
        (call(Method::GET, format!("{CODES}/x")), 422),
        // assignReferralCode
        (
            call(Method::PUT, format!("{CODES}/NEW-1")).json(r#"{"mentor_id":"usr_2"}"#),
            201,
        ),
        (
            call(Method::PUT, format!("{CODES}/new-1")).json(r#"{"mentor_id":"usr_3"}"#),
            200,
        ),
        (call(Method::PUT, format!("{CODES}/NEW-1")).json("{"), 400),
        (call(Method::PUT, format!("{CODES}/NEW-1")).json(huge.clone()), 413),
        (
            call(Method::PUT, format!("{CODES}/NEW-1")).typed("text/plain", "{}"),
            415,
        ),
        (call(Method::PUT, format!("{CODES}/NEW-1")).json("{}"), 422),
        (
            call(Method::PUT, format!("{CODES}/x")).json(r#"{"mentor_id":"usr_2"}"#),
            422,
        ),
        // retireReferralCode
        (call(Method::DELETE, format!("{CODES}/NEW-1")), 200),
        (call(Method::DELETE, format!("{CODES}/NEW-1")), 404),
        (call(Method::DELETE, format!("{CODES}/x")), 422),
        // createWebhook
        (call(Method::POST, WEBHOOKS).json("{"), 400),
        (call(Method::POST, WEBHOOKS).json(huge.clone()), 413),
        (
            call(Method::POST, WEBHOOKS)
                .typed("text/plain", r#"{"url":"http://127.0.0.1:9/","events":["conversion.confirmed"]}"#),
            415,
        ),
        (
            call(Method::POST, WEBHOOKS)
                .json(r#"{"url":"ftp://hooks.example.com/","events":["conversion.confirmed"]}"#),
            422,
        ),
        (
            call(Method::POST, WEBHOOKS)
                .json(r#"{"url":"https://hooks.example.com/","events":["conversion.confirmed","conversion.confirmed"]}"#),
            422,
        ),
        (
            call(Method::POST, WEBHOOKS).json(
                r#"{"url":"https://hooks.example.com/","events":["conversion.confirmed"],"secret":"x"}"#,
            ),
            422,
        ),
        // listWebhooks
        (call(Method::GET, WEBHOOKS), 200),
        // getWebhook
        (call(Method::GET, format!("{WEBHOOKS}/{hook}")), 200),
        (call(Method::GET, format!("{WEBHOOKS}/{UNKNOWN_WEBHOOK}")), 404),
        (call(Method::GET, format!("{WEBHOOKS}/wh_NOPE")), 404),
        // listWebhookDeliveries
        (call(Method::GET, format!("{WEBHOOKS}/{hook}/deliveries?limit=5")), 200),
        (call(Method::GET, format!("{WEBHOOKS}/{UNKNOWN_WEBHOOK}/deliveries")), 404),
        (call(Method::GET, format!("{WEBHOOKS}/{hook}/deliveries?limit=0")), 422),
        (call(Method::GET, format!("{WEBHOOKS}/{hook}/deliveries?page=2")), 422),
        // replayWebhook
        (call(Method::POST, format!("{WEBHOOKS}/{hook}/replay")).json(since.clone()), 202),
        (call(Method::POST, format!("{WEBHOOKS}/{hook}/replay")).json("{"), 400),
        (
            call(Method::POST, format!("{WEBHOOKS}/{UNKNOWN_WEBHOOK}/replay")).json(since.clone()),
            404,
        ),
        (call(Method::POST, format!("{WEBHOOKS}/{hook}/replay")).json(huge), 413),
        (
            call(Method::POST, format!("{WEBHOOKS}/{hook}/replay")).typed("text/plain", since),
            415,
        ),
        (
            call(Method::POST, format!("{WEBHOOKS}/{hook}/replay"))
                .json(format!(r#"{{"since":"{}"}}"#, from_now(3600))),
            422,
        ),
        // deleteWebhook
        (call(Method::DELETE, format!("{WEBHOOKS}/{hook}")), 200),
        (call(Method::DELETE, format!("{WEBHOOKS}/{hook}")), 404),
        // operations
        (call(Method::GET, "/healthz"), 200),
        (call(Method::GET, "/readyz"), 200),
        (call(Method::GET, "/metrics"), 200),
        (call(Method::GET, "/api/v1/openapi.json"), 200),
        // 405 under the alias, and an unknown route
        (call(Method::DELETE, format!("{DOUBLED}/mentor/usr_1")), 405),
        (call(Method::GET, "/api/v2/nothing"), 404),
    ];
    for (request, status) in table {
        recorder.expect(&open, request, status).await;
    }
    // 405 on every documented path, for a method none serves.
    for path in doc["paths"].as_object().unwrap().keys() {
        let uri = path
            .replace("{id}", &fresh)
            .replace("{mentorId}", "usr_1")
            .replace("{code}", "JAN-1");
        let answer = recorder.expect(&open, call(Method::PATCH, uri), 405).await;
        assert!(answer.headers.contains_key("allow"));
    }

    // Rate limits: 429 with its headers.
    let limited =
        TestApp::start(&["--rate-limit-per-ip", "1", "--rate-limit-per-ip-burst", "1"]).await;
    recorder
        .expect(
            &limited,
            call(Method::PUT, format!("{CODES}/JAN-1")).json(r#"{"mentor_id":"usr_1"}"#),
            201,
        )
        .await;
    let click = call(Method::POST, PREFIX).json(r#"{"code":"JAN-1"}"#);
    let allowed = recorder.expect(&limited, click.clone(), 201).await;
    assert_eq!(allowed.headers["x-ratelimit-limit"], "1");
    assert_eq!(allowed.headers["x-ratelimit-remaining"], "0");
    recorder.expect(&limited, click, 429).await;
    limited.stop().await;

    // A drained pipeline (the writer stopped, as after SIGTERM): 503 for every change.
    let mut drained = TestApp::start(&[]).await;
    recorder
        .expect(
            &drained,
            call(Method::PUT, format!("{CODES}/JAN-1")).json(r#"{"mentor_id":"usr_1"}"#),
            201,
        )
        .await;
    let id = recorder
        .expect(
            &drained,
            call(Method::POST, PREFIX).json(r#"{"code":"JAN-1"}"#),
            201,
        )
        .await
        .body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    drained.service.take().unwrap().shutdown().await;
    for request in [
        call(Method::POST, PREFIX).json(r#"{"code":"JAN-1"}"#),
        call(Method::PUT, format!("{PREFIX}/{id}"))
            .json(r#"{"code":"JAN-1","new_member_id":"usr_9"}"#),
        call(Method::POST, format!("{PREFIX}/{id}/reversal")).json(r#"{"reason":"refund"}"#),
        call(Method::DELETE, format!("{PREFIX}/{id}")),
        call(Method::PUT, format!("{CODES}/JAN-1")).json(r#"{"mentor_id":"usr_2"}"#),
        call(Method::DELETE, format!("{CODES}/JAN-1")),
        call(Method::GET, "/readyz"),
    ] {
        recorder.expect(&drained, request, 503).await;
    }
    drained.stop().await;

    // Tokens: what each operation's documented security says, for every operation.
    let spec = format!("{READER}=read,{WRITER}=write,{ADMIN}=admin");
    let guarded = TestApp::start(&["--api-tokens", &spec, ALLOW_PRIVATE]).await;
    let id = seed_examples(&mut recorder, &guarded, Some(ADMIN)).await;
    for (path, method) in operations(&doc) {
        let operation = &doc["paths"][&path][&method];
        let request = example_call(&doc, &path, &method, &id, PREFIX);
        let role = operation["security"]
            .as_array()
            .unwrap()
            .first()
            .map(|requirement| requirement["bearerAuth"][0].as_str().unwrap().to_owned());
        let Some(role) = role else {
            // Public: no token is never 401.
            let answer = guarded
                .call(
                    request.method.clone(),
                    &request.uri,
                    &[("content-type", "application/json")],
                    request.body.as_deref(),
                )
                .await;
            assert!(
                !matches!(answer.status.as_u16(), 401 | 403),
                "{method} {path} is documented public: {}",
                answer.status
            );
            recorder.observe(&request.method, &request.uri, &answer);
            continue;
        };
        let (holder, lacking) = match role.as_str() {
            "read" => (READER, WRITER),
            "write" => (WRITER, READER),
            "admin" => (ADMIN, WRITER),
            other => panic!("unknown role {other}"),
        };
        recorder.expect(&guarded, request.clone(), 401).await;
        recorder
            .expect(
                &guarded,
                request.clone().bearer("wrong-0123456789abcdef"),
                401,
            )
            .await;
        recorder
            .expect(&guarded, request.clone().bearer(lacking), 403)
            .await;
        let mut answer = guarded
            .call(
                request.method.clone(),
                &request.uri,
                &[
                    ("content-type", "application/json"),
                    ("authorization", &format!("Bearer {holder}")),
                ],
                request.body.as_deref(),
            )
            .await;
        assert!(
            !matches!(answer.status.as_u16(), 401 | 403),
            "{method} {path} with a {role} token: {}",
            answer.status
        );
        recorder.observe(&request.method, &request.uri, &answer);
        if role != "admin" && request.method == Method::GET {
            answer = guarded
                .call(
                    request.method.clone(),
                    &request.uri,
                    &[("authorization", &format!("Bearer {ADMIN}"))],
                    None,
                )
                .await;
            assert_eq!(answer.status, StatusCode::OK, "admin satisfies every role");
        }
    }
    guarded.stop().await;

    // The 408s.
    for ((method, uri), handle) in stalled.into_iter().zip(slow) {
        let (status, headers, body) = handle.await.unwrap();
        assert_eq!(status, StatusCode::REQUEST_TIMEOUT, "{method} {uri}");
        recorder.observe(&method, &uri, &answer_of(status, headers, &body));
    }
    open.stop().await;

    // Everything documented was observed, but the few that need fault injection.
    let documented = recorder.documented();
    let unobserved: Vec<_> = documented
        .difference(&recorder.observed)
        .filter(|(template, method, status)| !unproducible(template, method, *status))
        .collect();
    assert!(
        unobserved.is_empty(),
        "documented but never served: {unobserved:#?}"
    );
    for (only, status, reason) in UNPRODUCIBLE {
        let applies = |template: &str, method: &str| covers(*only, template, method);
        assert!(
            documented.iter().any(|(template, method, documented)| {
                documented == status && applies(template, method)
            }),
            "{status} ({reason}) is allowed but documented nowhere"
        );
        assert!(
            !recorder
                .observed
                .iter()
                .any(|(template, method, seen)| seen == status && applies(template, method)),
            "{status} was served: take it off the allow-list"
        );
    }
}

// ---------------------------------------------------------------------------------------
// (c) Every documented operation is routed, under the canonical prefix and its alias

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_documented_operation_answers_its_example_under_both_prefixes() {
    let mut recorder = Recorder::new();
    let doc = recorder.doc.clone();
    for prefix in [PREFIX, DOUBLED] {
        let app = TestApp::start(&[ALLOW_PRIVATE]).await;
        let id = seed_examples(&mut recorder, &app, None).await;
        // The alias serves what the canonical prefix serves.
        for tail in ["", "/mentor/usr_4491", "/mentor/usr_4491/total"] {
            let canonical = app.get(&format!("{PREFIX}{tail}")).await;
            let alias = app.get(&format!("{DOUBLED}{tail}")).await;
            assert_eq!(canonical.status, StatusCode::OK, "{tail}");
            assert_eq!(
                (canonical.status, &canonical.body),
                (alias.status, &alias.body),
                "{tail}"
            );
        }
        for (path, method) in operations(&doc) {
            let request = example_call(&doc, &path, &method, &id, prefix);
            // The answer a working example gets: its 2xx, or the redirect link's 302.
            let success = doc["paths"][&path][&method]["responses"]
                .as_object()
                .unwrap()
                .keys()
                .find(|status| status.starts_with('2') || status.starts_with('3'))
                .unwrap()
                .parse()
                .unwrap();
            recorder.expect(&app, request, success).await;
        }
        app.stop().await;
    }
}

// ---------------------------------------------------------------------------------------
// (d) The document is served as it is

#[tokio::test]
async fn the_document_is_served_byte_for_byte_and_publicly() {
    let on_disk = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../schemas/openapi.json"
    ))
    .unwrap();
    assert_eq!(OPENAPI.as_bytes(), on_disk.as_slice());
    let spec = format!("{READER}=read");
    for flags in [&[][..], &["--api-tokens", spec.as_str()][..]] {
        let app = TestApp::start(flags).await;
        let request = Request::get("/api/v1/openapi.json")
            .body(Body::empty())
            .unwrap();
        let (status, headers, body) = send(app.router.clone(), request).await;
        assert_eq!(status, StatusCode::OK, "{flags:?}");
        assert_eq!(headers["content-type"], "application/json");
        assert!(
            body == OPENAPI.as_bytes(),
            "the body differs from the document"
        );
        app.stop().await;
    }
}
