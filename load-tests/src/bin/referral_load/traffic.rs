//! Realistic click traffic: a population of mentors and their referral codes, mentors chosen
//! by a Zipf law (a few mentors get most clicks, as on real platforms), varied client IPs,
//! user agents and referrers, and a share of invalid and duplicate requests, each with the
//! answer the service must give.
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

const USER_AGENTS: &[&str] = &[
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 Chrome/124.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/124.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) AppleWebKit/605.1.15 Version/17.4 Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
    "Instagram 330.0.0.40.92 (iPhone15,3; iOS 17_4; en_US)",
    "facebookexternalhit/1.1",
];

const REFERRERS: &[&str] = &[
    "https://instagram.com/",
    "https://www.facebook.com/groups/mentors",
    "https://t.co/abc123",
    "https://www.youtube.com/watch?v=dQw4w9WgXcQ",
    "http://blog.example.org/how-i-got-started?utm_source=mentor",
];

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
    pub user_agent: Option<&'static str>,
    pub referer: Option<&'static str>,
    pub expect: Expect,
    /// Re-sent verbatim from an earlier request (a pixel that fired twice).
    pub repeated: bool,
}

/// Shares of the click stream, each in 0..=1.
#[derive(Debug, Clone, Copy)]
pub struct Mix {
    pub invalid: f64,
    pub duplicate: f64,
}

/// Draws click requests. One per task: it owns its RNG and its recent bodies.
pub struct ClickGenerator {
    rng: SmallRng,
    mix: Mix,
    /// Recent valid requests, re-sent verbatim as duplicates (a pixel that fired twice).
    recent: VecDeque<ClickRequest>,
}

impl ClickGenerator {
    pub fn new(seed: u64, mix: Mix) -> Self {
        Self {
            rng: SmallRng::seed_from_u64(seed),
            mix,
            recent: VecDeque::with_capacity(64),
        }
    }

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

    fn path(&mut self) -> &'static str {
        if self.rng.random_bool(0.1) {
            CLICK_PATH_DOUBLED
        } else {
            CLICK_PATH
        }
    }

    fn valid(&mut self, population: &Population) -> ClickRequest {
        let mentor = population.zipf_mentor(&mut self.rng);
        let code = population.code_of(mentor, &mut self.rng);
        let mut text = population.codes[code].0.clone();
        if self.rng.random_bool(0.1) {
            // Codes are case-insensitive: a hand-typed link.
            text = text.to_lowercase();
        }
        let mut body = serde_json::Map::new();
        body.insert("code".into(), Value::String(text));
        let ip = self.ip();
        if self.rng.random_bool(0.7) {
            body.insert("ip_address".into(), Value::String(ip));
        }
        let user_agent = USER_AGENTS[self.rng.random_range(0..USER_AGENTS.len())];
        let mut header_agent = None;
        if self.rng.random_bool(0.5) {
            body.insert("user_agent".into(), Value::String(user_agent.into()));
        } else {
            header_agent = Some(user_agent);
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
}
