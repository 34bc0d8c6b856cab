//! Realistic click traffic: a population of mentors and their referral codes, mentors chosen
//! by a Zipf law (a few mentors get most clicks, as on real platforms), varied client IPs,
//! user agents and referrers, and a share of invalid and duplicate requests, each with the
//! answer the service must give.
//!
//! The stream mixes the edge's three ways in ([`LINK_SHARES`]): the JSON click POST, the
//! redirect link `GET /r/{code}` (302 to the code's destination with `attribution_id`), the
//! tracking pixel `GET /p/{code}.gif`, and link previews that only `HEAD` either (never
//! recorded). Visitors come back: a share of clicks reuses an earlier visitor (same code,
//! IP and user agent), which the writer must record as a `duplicate` of that visitor's
//! counted click; a share of visitors are bots (crawlers, link-preview fetchers, a headless
//! browser, or no user agent at all), which it must record as `bot`.
//!
//! Everything is drawn from a seeded RNG, so a run can be replayed with `--seed`.

use std::collections::VecDeque;

use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};
use serde_json::{Value, json};

/// The canonical click path, and the doubled one the contract prints (served as an alias).
pub const CLICK_PATH: &str = "/api/v1/referral-attributions";
pub const CLICK_PATH_DOUBLED: &str = "/api/v1/referral-attributions/api/v1/referral-attributions";

/// People's browsers and in-app browsers (none of them a bot by `is_bot`).
const HUMAN_AGENTS: &[&str] = &[
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 Chrome/124.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/124.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) AppleWebKit/605.1.15 Version/17.4 Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
    "Instagram 330.0.0.40.92 (iPhone15,3; iOS 17_4; en_US)",
];

/// Bots' user agents: link-preview fetchers, a crawler-like bot, a headless browser, and
/// `None`, a client that sends no user agent at all. Each is a bot by `is_bot`.
const BOT_AGENTS: &[Option<&str>] = &[
    Some("facebookexternalhit/1.1"),
    Some("Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)"),
    Some("Twitterbot/1.0"),
    Some(
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) \
         HeadlessChrome/124.0.0.0 Safari/537.36",
    ),
    None,
];

/// The user agent of every `HEAD` (a link preview): used by no other request, so a stored
/// click with it can only be a `HEAD` that was recorded, which must never happen.
pub const PREVIEW_AGENT: &str = "referral-load-preview/1.0 (HEAD only; +https://example.com/bot)";

const REFERRERS: &[&str] = &[
    "https://instagram.com/",
    "https://www.facebook.com/groups/mentors",
    "https://t.co/abc123",
    "https://www.youtube.com/watch?v=dQw4w9WgXcQ",
    "http://blog.example.org/how-i-got-started?utm_source=mentor",
];

/// The pages that embed the pixel (the `Referer` of its GETs, an origin as browsers send
/// for a cross-origin image). No other request uses them, so the verifier tells stored
/// pixel clicks, which have no id, by their referrer.
pub const PIXEL_PAGES: &[&str] = &[
    "https://newsletter.example.com/",
    "https://mentor-pages.example.org/",
];

/// Whether a stored click's referrer marks it as a pixel's.
pub fn is_pixel_referrer(referrer: Option<&str>) -> bool {
    referrer.is_some_and(|referrer| PIXEL_PAGES.contains(&referrer))
}

/// Query strings a visitor's redirect link may carry, and what of each the edge must keep in
/// the `Location`: everything but an `attribution_id` of the visitor's own.
const VISITOR_QUERIES: &[(&str, &str)] = &[
    ("utm_source=story", "utm_source=story"),
    ("utm_source=dm&attribution_id=attr_FORGED", "utm_source=dm"),
];

/// Shares of the realistic stream besides the click POSTs, and of its visitors.
#[derive(Debug, Clone, Copy)]
pub struct LinkShares {
    /// Redirect link GETs, pixel GETs and HEAD previews (either link), of all requests.
    pub redirect: f64,
    pub pixel: f64,
    pub head: f64,
    /// Of the valid clicks (POSTs and link GETs), those by a visitor seen before.
    pub revisit: f64,
    /// Of new visitors, bots.
    pub bot: f64,
}

/// The run's stream: about two thirds click POSTs (the contract's way in), a fifth redirect
/// links, a tenth pixels and a few link previews; one click in seven by a returning visitor;
/// one new visitor in ten a bot.
pub const LINK_SHARES: LinkShares = LinkShares {
    redirect: 0.18,
    pixel: 0.10,
    head: 0.04,
    revisit: 0.15,
    bot: 0.10,
};

/// Returning visitors are drawn from the last this many.
const VISITOR_POOL: usize = 256;

/// The mentors and codes of one run. Ids carry the run id, so a run against a shared
/// deployment only ever meets its own mentors and can check their totals exactly.
pub struct Population {
    pub run_id: String,
    pub mentors: Vec<String>,
    /// (code, index of its mentor in `mentors`).
    pub codes: Vec<(String, usize)>,
    /// Indexes into `codes`, per mentor.
    codes_by_mentor: Vec<Vec<usize>>,
    /// The Zipf law over mentors: rank k in 1..=mentors is mentor k - 1.
    zipf: Zipf<f64>,
}

impl Population {
    /// `codes` >= `mentors` >= 1: every mentor gets at least one code, the rest are spread
    /// round-robin. `zipf_exponent` is `s` in P(rank k) ~ 1 / k^s, at least 0.
    pub fn new(
        run_id: &str,
        mentors: usize,
        codes: usize,
        zipf_exponent: f64,
    ) -> Result<Self, String> {
        let mentors = mentors.max(1);
        let codes = codes.max(mentors);
        let mentor_ids: Vec<String> = (0..mentors)
            .map(|index| format!("usr_ld{run_id}_{index}"))
            .collect();
        let mut codes_by_mentor = vec![Vec::new(); mentors];
        let code_list: Vec<(String, usize)> = (0..codes)
            .map(|index| {
                let mentor = index % mentors;
                codes_by_mentor[mentor].push(index);
                (format!("LD{}-{index:05}", run_id.to_uppercase()), mentor)
            })
            .collect();
        let zipf = Zipf::new(mentors as f64, zipf_exponent)
            .map_err(|error| format!("--zipf {zipf_exponent}: {error}"))?;
        Ok(Self {
            run_id: run_id.to_owned(),
            mentors: mentor_ids,
            codes: code_list,
            codes_by_mentor,
            zipf,
        })
    }

    /// A mentor index drawn from the Zipf law.
    pub fn zipf_mentor(&self, rng: &mut SmallRng) -> usize {
        // A float holding an integer in 1..=mentors; `as` saturates, and the bounds keep it
        // a mentor index.
        let rank = self.zipf.sample(rng) as usize;
        rank.clamp(1, self.mentors.len()) - 1
    }

    /// A code of the mentor, chosen uniformly.
    pub fn code_of(&self, mentor: usize, rng: &mut SmallRng) -> usize {
        let codes = &self.codes_by_mentor[mentor];
        codes[rng.random_range(0..codes.len())]
    }

    /// Where the code's redirect link goes (its `destination_url`, set when the codes are
    /// created): a landing page with a query of its own, so the edge must append to it.
    pub fn destination(&self, code: usize) -> String {
        format!(
            "https://join.example.com/welcome?ref={}",
            self.codes[code].0.to_lowercase()
        )
    }
}

/// One visitor of one code: what the writer's dedup window keys on (code, client IP, user
/// agent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Visitor {
    pub mentor: usize,
    pub code: usize,
    /// The IP a click POST names in its body; `None`: none named, so the client IP is the
    /// connection's (this tool's address). Link GETs always have the connection's.
    pub ip: Option<String>,
    /// `None`: no user agent at all (a bot).
    pub user_agent: Option<&'static str>,
}

/// The answer a request must get.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// 201 with this mentor and code.
    Created { mentor: usize, code: usize },
    /// This status, and with it `error.field` when given.
    Rejected {
        status: u16,
        field: Option<&'static str>,
        why: &'static str,
    },
}

/// One click POST to send.
#[derive(Debug, Clone)]
pub struct ClickRequest {
    pub path: &'static str,
    pub body: Bytes,
    pub content_type: &'static str,
    /// The `User-Agent` header (the body may name one instead: see `visitor`).
    pub user_agent: Option<&'static str>,
    pub referer: Option<&'static str>,
    pub expect: Expect,
    /// Re-sent verbatim from an earlier request (a pixel that fired twice).
    pub repeated: bool,
    /// Who clicks (valid clicks only): the IP the body names and the user agent sent, in
    /// the body or the header.
    pub visitor: Option<Visitor>,
    /// The visitor clicked before (a new request, not a verbatim repeat).
    pub revisit: bool,
}

/// Which link a GET or HEAD is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkKind {
    /// `/r/{code}`: a 302 to the code's destination, with `attribution_id` when recorded.
    Redirect,
    /// `/p/{code}.gif` (or `/p/{code}`): always 200 `image/gif`.
    Pixel,
}

/// One GET (a click) or HEAD (a preview, never recorded) of a link.
#[derive(Debug, Clone)]
pub struct LinkRequest {
    pub kind: LinkKind,
    pub head: bool,
    /// Path and query, e.g. `/r/LDX-00001?utm_source=story`.
    pub path: String,
    /// Of the query sent, what the `Location` must keep (redirects).
    pub kept_query: Option<&'static str>,
    pub visitor: Visitor,
    pub referer: Option<&'static str>,
    /// The visitor clicked before.
    pub revisit: bool,
}

impl LinkRequest {
    /// The `Location` a redirect must answer: the destination, the visitor's query (less
    /// any `attribution_id` of theirs), then ours when the click was recorded.
    pub fn location_base(&self, destination: &str) -> String {
        match self.kept_query {
            Some(kept) => format!("{destination}&{kept}"),
            None => destination.to_owned(),
        }
    }
}

/// One request of the realistic stream.
#[derive(Debug, Clone)]
pub enum Traffic {
    Post(ClickRequest),
    Link(LinkRequest),
}

/// Shares of the click stream, each in 0..=1.
#[derive(Debug, Clone, Copy)]
pub struct Mix {
    pub invalid: f64,
    pub duplicate: f64,
}

/// Draws click requests. One per task: it owns its RNG, its recent bodies and visitors.
pub struct ClickGenerator {
    rng: SmallRng,
    mix: Mix,
    links: LinkShares,
    /// Recent valid requests, re-sent verbatim as duplicates (a pixel that fired twice).
    recent: VecDeque<ClickRequest>,
    /// Recent visitors, who may come back.
    visitors: VecDeque<Visitor>,
}

impl ClickGenerator {
    pub fn new(seed: u64, mix: Mix) -> Self {
        Self::with_links(seed, mix, LINK_SHARES)
    }

    pub fn with_links(seed: u64, mix: Mix, links: LinkShares) -> Self {
        Self {
            rng: SmallRng::seed_from_u64(seed),
            mix,
            links,
            recent: VecDeque::with_capacity(64),
            visitors: VecDeque::with_capacity(VISITOR_POOL),
        }
    }

    /// The next request of the realistic stream: a link GET or HEAD by [`LinkShares`], else
    /// a click POST ([`Self::next`]).
    pub fn next_traffic(&mut self, population: &Population) -> Traffic {
        let draw: f64 = self.rng.random();
        let links = self.links;
        if draw < links.head {
            let kind = if self.rng.random_bool(0.5) {
                LinkKind::Redirect
            } else {
                LinkKind::Pixel
            };
            return Traffic::Link(self.preview(population, kind));
        }
        if draw < links.head + links.redirect {
            return Traffic::Link(self.link(population, LinkKind::Redirect));
        }
        if draw < links.head + links.redirect + links.pixel {
            return Traffic::Link(self.link(population, LinkKind::Pixel));
        }
        Traffic::Post(self.next(population))
    }

    /// A click POST: invalid, a verbatim repeat, or a valid click, by [`Mix`].
    pub fn next(&mut self, population: &Population) -> ClickRequest {
        let draw: f64 = self.rng.random();
        if draw < self.mix.invalid {
            return self.invalid(population);
        }
        if draw < self.mix.invalid + self.mix.duplicate && !self.recent.is_empty() {
            let index = self.rng.random_range(0..self.recent.len());
            return ClickRequest {
                repeated: true,
                ..self.recent[index].clone()
            };
        }
        let request = self.valid(population);
        if self.recent.len() == 64 {
            self.recent.pop_front();
        }
        self.recent.push_back(request.clone());
        request
    }

    fn ip(&mut self) -> String {
        if self.rng.random_bool(0.1) {
            format!(
                "2001:db8:{:x}::{:x}",
                self.rng.random_range(0..0x400u32),
                self.rng.random_range(1..0xffffu32)
            )
        } else {
            // 10k-ish distinct public-looking addresses.
            format!(
                "{}.{}.{}.{}",
                self.rng.random_range(11..=223u8),
                self.rng.random_range(0..=255u8),
                self.rng.random_range(0..40u8),
                self.rng.random_range(1..=254u8)
            )
        }
    }

    /// A returning visitor (by `LinkShares::revisit`) or a new one; `true` when returning.
    fn visitor(&mut self, population: &Population) -> (Visitor, bool) {
        if !self.visitors.is_empty() && self.rng.random_bool(self.links.revisit) {
            let index = self.rng.random_range(0..self.visitors.len());
            return (self.visitors[index].clone(), true);
        }
        let mentor = population.zipf_mentor(&mut self.rng);
        let code = population.code_of(mentor, &mut self.rng);
        let ip = self.ip();
        let ip = self.rng.random_bool(0.7).then_some(ip);
        let user_agent = if self.rng.random_bool(self.links.bot) {
            BOT_AGENTS[self.rng.random_range(0..BOT_AGENTS.len())]
        } else {
            Some(HUMAN_AGENTS[self.rng.random_range(0..HUMAN_AGENTS.len())])
        };
        let visitor = Visitor {
            mentor,
            code,
            ip,
            user_agent,
        };
        if self.visitors.len() == VISITOR_POOL {
            self.visitors.pop_front();
        }
        self.visitors.push_back(visitor.clone());
        (visitor, false)
    }

    /// The code as a visitor may type it: codes are case-insensitive.
    fn code_text(&mut self, population: &Population, code: usize) -> String {
        let text = &population.codes[code].0;
        if self.rng.random_bool(0.1) {
            text.to_lowercase()
        } else {
            text.clone()
        }
    }

    /// A visitor's GET of a link: the client IP is the connection's, the user agent and
    /// referrer come from the headers.
    fn link(&mut self, population: &Population, kind: LinkKind) -> LinkRequest {
        let (visitor, revisit) = self.visitor(population);
        let code = self.code_text(population, visitor.code);
        let (path, kept_query, referer) = match kind {
            LinkKind::Redirect => {
                let (path, kept) = match self.rng.random_range(0..4u8) {
                    0 | 1 => (format!("/r/{code}"), None),
                    choice => {
                        let (sent, kept) = VISITOR_QUERIES[usize::from(choice - 2)];
                        (format!("/r/{code}?{sent}"), Some(kept))
                    }
                };
                let referer = self
                    .rng
                    .random_bool(0.6)
                    .then(|| REFERRERS[self.rng.random_range(0..REFERRERS.len())]);
                (path, kept, referer)
            }
            LinkKind::Pixel => {
                let path = if self.rng.random_bool(0.9) {
                    format!("/p/{code}.gif")
                } else {
                    format!("/p/{code}")
                };
                let page = PIXEL_PAGES[self.rng.random_range(0..PIXEL_PAGES.len())];
                (path, None, Some(page))
            }
        };
        LinkRequest {
            kind,
            head: false,
            path,
            kept_query,
            visitor,
            referer,
            revisit,
        }
    }

    /// A link preview: `HEAD` of a link, with [`PREVIEW_AGENT`]; nothing may be recorded.
    fn preview(&mut self, population: &Population, kind: LinkKind) -> LinkRequest {
        let mentor = population.zipf_mentor(&mut self.rng);
        let code = population.code_of(mentor, &mut self.rng);
        let text = self.code_text(population, code);
        let path = match kind {
            LinkKind::Redirect => format!("/r/{text}"),
            LinkKind::Pixel => format!("/p/{text}.gif"),
        };
        LinkRequest {
            kind,
            head: true,
            path,
            kept_query: None,
            visitor: Visitor {
                mentor,
                code,
                ip: None,
                user_agent: Some(PREVIEW_AGENT),
            },
            referer: None,
            revisit: false,
        }
    }

    fn path(&mut self) -> &'static str {
        if self.rng.random_bool(0.1) {
            CLICK_PATH_DOUBLED
        } else {
            CLICK_PATH
        }
    }

    fn valid(&mut self, population: &Population) -> ClickRequest {
        let (visitor, revisit) = self.visitor(population);
        let (mentor, code) = (visitor.mentor, visitor.code);
        // Codes are case-insensitive: a hand-typed link.
        let text = self.code_text(population, code);
        let mut body = serde_json::Map::new();
        body.insert("code".into(), Value::String(text));
        if let Some(ip) = &visitor.ip {
            body.insert("ip_address".into(), Value::String(ip.clone()));
        }
        let mut header_agent = None;
        if let Some(user_agent) = visitor.user_agent {
            if self.rng.random_bool(0.5) {
                body.insert("user_agent".into(), Value::String(user_agent.into()));
            } else {
                header_agent = Some(user_agent);
            }
        }
        let referrer = REFERRERS[self.rng.random_range(0..REFERRERS.len())];
        let mut header_referer = None;
        match self.rng.random_range(0..3u8) {
            0 => {
                body.insert("referrer_url".into(), Value::String(referrer.into()));
            }
            1 => header_referer = Some(referrer),
            _ => {}
        }
        if self.rng.random_bool(0.1) {
            // A click reported late by a pixel: up to an hour ago.
            let ago = time::Duration::seconds(self.rng.random_range(1..3600));
            let at = time::OffsetDateTime::now_utc() - ago;
            if let Ok(text) = at.format(&time::format_description::well_known::Rfc3339) {
                body.insert("occurred_at".into(), Value::String(text));
            }
        }
        ClickRequest {
            path: self.path(),
            body: Bytes::from(Value::Object(body).to_string()),
            content_type: "application/json",
            user_agent: header_agent,
            referer: header_referer,
            expect: Expect::Created { mentor, code },
            repeated: false,
            visitor: Some(visitor),
            revisit,
        }
    }

    fn invalid(&mut self, population: &Population) -> ClickRequest {
        let code = &population.codes[self.rng.random_range(0..population.codes.len())].0;
        let (body, content_type, status, field, why) = match self.rng.random_range(0..10u8) {
            0 => (
                format!(r#"{{"code":"{code}""#),
                "application/json",
                400,
                None,
                "malformed JSON",
            ),
            1 => (
                format!(
                    r#"{{"code":"LD{}-NOPE-{}"}}"#,
                    population.run_id.to_uppercase(),
                    self.rng.random::<u32>()
                ),
                "application/json",
                422,
                Some("code"),
                "unknown code",
            ),
            2 => (
                r#"{"code":"a b"}"#.to_owned(),
                "application/json",
                422,
                Some("code"),
                "code syntax",
            ),
            3 => (
                format!(r#"{{"code":"{code}","ip_address":"300.1.2.3"}}"#),
                "application/json",
                422,
                Some("ip_address"),
                "bad IP",
            ),
            4 => (
                json!({"code": code, "user_agent": "x".repeat(1025)}).to_string(),
                "application/json",
                422,
                Some("user_agent"),
                "user agent too long",
            ),
            5 => (
                format!(r#"{{"code":"{code}","referrer_url":"javascript:alert(1)"}}"#),
                "application/json",
                422,
                Some("referrer_url"),
                "referrer not http(s)",
            ),
            6 => (
                format!(r#"{{"code":"{code}","mentor_id":"usr_forged"}}"#),
                "application/json",
                422,
                Some("mentor_id"),
                "unknown field",
            ),
            7 => {
                let at = time::OffsetDateTime::now_utc() + time::Duration::hours(2);
                let at = at
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default();
                (
                    format!(r#"{{"code":"{code}","occurred_at":"{at}"}}"#),
                    "application/json",
                    422,
                    Some("occurred_at"),
                    "occurred_at in the future",
                )
            }
            8 => (
                r#"{"ip_address":"1.2.3.4"}"#.to_owned(),
                "application/json",
                422,
                Some("code"),
                "missing code",
            ),
            _ => (
                format!("code={code}"),
                "application/x-www-form-urlencoded",
                415,
                None,
                "not JSON",
            ),
        };
        ClickRequest {
            path: self.path(),
            body: Bytes::from(body),
            content_type,
            user_agent: None,
            referer: None,
            expect: Expect::Rejected { status, field, why },
            repeated: false,
            visitor: None,
            revisit: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipf_favours_the_first_mentors_and_every_mentor_has_a_code() {
        let population = Population::new("t1", 100, 250, 1.1).unwrap();
        assert_eq!(population.codes.len(), 250);
        assert!(
            population
                .codes_by_mentor
                .iter()
                .all(|codes| !codes.is_empty())
        );
        let mut rng = SmallRng::seed_from_u64(7);
        let mut counts = vec![0u32; 100];
        for _ in 0..20_000 {
            counts[population.zipf_mentor(&mut rng)] += 1;
        }
        assert!(counts[0] > counts[9] * 5, "{counts:?}");
        assert!(counts[0] > 2_000, "{counts:?}");
        assert!(counts.iter().filter(|&&count| count > 0).count() > 60);
        // P(mentor 0) = 1 / H(100, 1.1) ~ 0.234, P(mentor 1) = P(mentor 0) / 2^1.1.
        assert!((4_300..5_100).contains(&counts[0]), "{counts:?}");
        assert!(counts[0] > counts[1] && counts[1] > counts[2], "{counts:?}");
        // Seeded: the same seed draws the same mentors.
        let mut again = SmallRng::seed_from_u64(7);
        let mut rng = SmallRng::seed_from_u64(7);
        assert!(
            (0..1_000)
                .all(|_| population.zipf_mentor(&mut rng) == population.zipf_mentor(&mut again))
        );
    }

    #[test]
    fn the_exponent_sets_the_skew() {
        let top_ten = |exponent: f64| {
            let population = Population::new("t3", 100, 100, exponent).unwrap();
            let mut rng = SmallRng::seed_from_u64(11);
            (0..20_000)
                .filter(|_| population.zipf_mentor(&mut rng) < 10)
                .count()
        };
        let (flat, default, steep) = (top_ten(0.0), top_ten(1.1), top_ten(2.0));
        // s = 0 is uniform: the first 10 of 100 mentors get ~10%.
        assert!((1_700..2_300).contains(&flat), "{flat}");
        assert!(
            flat < default && default < steep,
            "{flat} {default} {steep}"
        );
        assert!(Population::new("t4", 10, 10, -0.5).is_err());
        assert!(Population::new("t4", 10, 10, f64::NAN).is_err());
        let one = Population::new("t5", 1, 1, 1.0).unwrap();
        let mut rng = SmallRng::seed_from_u64(1);
        assert!((0..100).all(|_| one.zipf_mentor(&mut rng) == 0));
    }

    #[test]
    fn the_mix_has_its_shares_and_each_request_its_expected_answer() {
        let population = Population::new("t2", 10, 30, 1.0).unwrap();
        let mut generator = ClickGenerator::new(
            1,
            Mix {
                invalid: 0.2,
                duplicate: 0.1,
            },
        );
        let mut invalid = 0;
        let mut repeated = 0;
        let mut bodies = std::collections::HashSet::new();
        for _ in 0..5_000 {
            let request = generator.next(&population);
            match &request.expect {
                Expect::Rejected { status, .. } => {
                    invalid += 1;
                    assert!((400..500).contains(status));
                }
                Expect::Created { mentor, code } => {
                    assert_eq!(population.codes[*code].1, *mentor);
                    let body: Value = serde_json::from_slice(&request.body).unwrap();
                    let sent = body["code"].as_str().unwrap().to_uppercase();
                    assert_eq!(sent, population.codes[*code].0);
                    if request.repeated {
                        repeated += 1;
                        assert!(bodies.contains(&request.body), "a repeat of nothing sent");
                    }
                    bodies.insert(request.body.clone());
                }
            }
        }
        assert!((800..1200).contains(&invalid), "{invalid}");
        assert!((350..650).contains(&repeated), "{repeated}");
    }

    #[test]
    fn the_agents_are_people_or_bots_as_the_writer_judges_them() {
        use referral_schemas::verdict::is_bot;
        for agent in HUMAN_AGENTS {
            assert!(!is_bot(Some(agent)), "{agent}");
        }
        for agent in BOT_AGENTS {
            assert!(is_bot(*agent), "{agent:?}");
        }
        assert!(
            BOT_AGENTS.contains(&None),
            "a client with no user agent at all"
        );
        assert!(is_bot(Some(PREVIEW_AGENT)));
        assert!(PIXEL_PAGES.iter().all(|page| !REFERRERS.contains(page)));
        assert!(is_pixel_referrer(Some(PIXEL_PAGES[1])));
        assert!(!is_pixel_referrer(Some(REFERRERS[0])) && !is_pixel_referrer(None));
    }

    #[test]
    fn the_stream_mixes_links_previews_bots_and_returning_visitors() {
        use referral_schemas::verdict::is_bot;
        let population = Population::new("t6", 20, 40, 1.0).unwrap();
        let mix = Mix {
            invalid: 0.05,
            duplicate: 0.02,
        };
        let draw = |seed| {
            let mut generator = ClickGenerator::new(seed, mix);
            (0..10_000)
                .map(|_| generator.next_traffic(&population))
                .collect::<Vec<_>>()
        };
        let stream = draw(3);
        let (mut posts, mut redirects, mut pixels, mut heads) = (0, 0, 0, 0);
        let (mut bots, mut revisits, mut valid) = (0, 0, 0);
        let mut seen = std::collections::HashSet::new();
        for traffic in &stream {
            let (visitor, revisit) = match traffic {
                Traffic::Post(request) => {
                    posts += 1;
                    let Some(visitor) = &request.visitor else {
                        continue;
                    };
                    // What the body and headers say is the visitor.
                    let body: Value = serde_json::from_slice(&request.body).unwrap();
                    assert_eq!(body["ip_address"].as_str(), visitor.ip.as_deref());
                    let agent = body["user_agent"].as_str().or(request.user_agent);
                    assert_eq!(agent, visitor.user_agent);
                    (visitor, request.revisit)
                }
                Traffic::Link(request) if request.head => {
                    heads += 1;
                    assert_eq!(request.visitor.user_agent, Some(PREVIEW_AGENT));
                    assert!(request.referer.is_none() && !request.revisit);
                    continue;
                }
                Traffic::Link(request) => {
                    let code = &population.codes[request.visitor.code].0;
                    let path = request.path.to_uppercase();
                    match request.kind {
                        LinkKind::Redirect => {
                            redirects += 1;
                            assert!(path.starts_with(&format!("/R/{code}")), "{path}");
                            assert!(!is_pixel_referrer(request.referer));
                            let sent = request.path.split_once('?').map(|(_, query)| query);
                            match (sent, request.kept_query) {
                                (None, None) => {}
                                (Some(sent), Some(kept)) => {
                                    assert!(sent.starts_with(kept), "{sent} {kept}");
                                    assert!(!kept.contains("attribution_id"));
                                }
                                other => panic!("{other:?}"),
                            }
                        }
                        LinkKind::Pixel => {
                            pixels += 1;
                            assert!(path.starts_with(&format!("/P/{code}")), "{path}");
                            assert!(is_pixel_referrer(request.referer));
                        }
                    }
                    (&request.visitor, request.revisit)
                }
            };
            valid += 1;
            bots += u32::from(is_bot(visitor.user_agent));
            assert_eq!(population.codes[visitor.code].1, visitor.mentor);
            let key = (visitor.code, visitor.ip.clone(), visitor.user_agent);
            if revisit {
                revisits += 1;
                assert!(
                    seen.contains(&key),
                    "a returning visitor never seen: {key:?}"
                );
            }
            seen.insert(key);
        }
        let share = |count: u32| f64::from(count) / 10_000.0;
        assert!((share(heads) - LINK_SHARES.head).abs() < 0.01, "{heads}");
        assert!(
            (share(redirects) - LINK_SHARES.redirect).abs() < 0.02,
            "{redirects}"
        );
        assert!(
            (share(pixels) - LINK_SHARES.pixel).abs() < 0.015,
            "{pixels}"
        );
        assert_eq!(posts + redirects + pixels + heads, 10_000);
        let valid_share = |count: u32| f64::from(count) / f64::from(valid);
        assert!(
            (valid_share(revisits) - LINK_SHARES.revisit).abs() < 0.02,
            "{revisits}"
        );
        // New visitors only are drawn as bots: about bot * (1 - revisit) of the clicks.
        let bot_share = LINK_SHARES.bot * (1.0 - LINK_SHARES.revisit);
        assert!((valid_share(bots) - bot_share).abs() < 0.03, "{bots}");
        // Seeded: the same seed, the same stream.
        let again = draw(3);
        let paths = |stream: &[Traffic]| -> Vec<String> {
            stream
                .iter()
                .map(|traffic| match traffic {
                    // Bodies may carry the current time (a late or a future occurred_at).
                    Traffic::Post(request) => format!("{:?} {:?}", request.expect, request.visitor),
                    Traffic::Link(request) => request.path.clone(),
                })
                .collect()
        };
        assert_eq!(paths(&stream), paths(&again));
    }

    #[test]
    fn every_code_has_a_destination_with_a_query_of_its_own() {
        let population = Population::new("t7", 2, 4, 1.0).unwrap();
        let destination = population.destination(3);
        assert!(destination.starts_with("https://") && destination.contains('?'));
        let request = LinkRequest {
            kind: LinkKind::Redirect,
            head: false,
            path: "/r/x?utm_source=dm&attribution_id=attr_FORGED".to_owned(),
            kept_query: Some("utm_source=dm"),
            visitor: Visitor {
                mentor: 1,
                code: 3,
                ip: None,
                user_agent: None,
            },
            referer: None,
            revisit: false,
        };
        assert_eq!(
            request.location_base(&destination),
            format!("{destination}&utm_source=dm")
        );
    }
}
