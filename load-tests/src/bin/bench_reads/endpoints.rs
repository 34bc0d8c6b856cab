//! The endpoints measured, the random targets of their requests, and what a correct answer
//! to each holds (checked against the generated data).

use serde_json::Value;

use crate::data::{Dataset, Rng, mentor_id};
use crate::options::Options;
use crate::{HEAVY_MENTORS, PAGE_LIMIT, PREFIX, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    ById,
    MentorListHeavy,
    MentorListAny,
    TotalsAllTime,
    Totals30d,
    ListFirstPage,
}

impl Endpoint {
    pub const ALL: [Self; 6] = [
        Self::ById,
        Self::MentorListHeavy,
        Self::MentorListAny,
        Self::TotalsAllTime,
        Self::Totals30d,
        Self::ListFirstPage,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Self::ById => "GET /:id (random live ids)",
            Self::MentorListHeavy => "GET /mentor/:id?page=1&limit=20 (top-100 mentors)",
            Self::MentorListAny => "GET /mentor/:id?page=1&limit=20 (any mentor, uniform)",
            Self::TotalsAllTime => "GET /mentor/:id/total (all_time)",
            Self::Totals30d => "GET /mentor/:id/total?period=30d",
            Self::ListFirstPage => "GET /?page=1&limit=20 (list, first page)",
        }
    }
}

/// What a correct answer holds.
#[derive(Clone, Debug)]
pub enum Check {
    Attribution(String),
    MentorList { mentor: String, total: u64 },
    Totals { clicks: u64, conversions: u64 },
    Period(&'static str),
    List { total: u64, newest: String },
}

pub struct Target {
    pub path: String,
    pub check: Check,
}

/// A mentor rank: half from the heavy head, half uniform over all (totals endpoints).
pub fn mixed_mentor(rng: &mut Rng, mentors: usize) -> usize {
    if rng.chance(0.5) {
        rng.index(HEAVY_MENTORS.min(mentors))
    } else {
        rng.index(mentors)
    }
}

pub fn targets(
    endpoint: Endpoint,
    data: &Dataset,
    options: &Options,
    rng: &mut Rng,
) -> Result<Vec<Target>> {
    let live: Vec<&(String, usize, bool)> = data
        .sampled
        .iter()
        .filter(|(_, _, deleted)| !deleted)
        .collect();
    if live.is_empty() {
        return Err("no live attribution was sampled".to_owned());
    }
    let mentors = options.mentors;
    let list = |rank: usize| Target {
        path: format!(
            "{PREFIX}/mentor/{}?page=1&limit={PAGE_LIMIT}",
            mentor_id(rank)
        ),
        check: Check::MentorList {
            mentor: mentor_id(rank),
            total: data.mentor_clicks[rank],
        },
    };
    Ok((0..options.warm_up + options.requests)
        .map(|_| match endpoint {
            Endpoint::ById => {
                let (id, _, _) = live[rng.index(live.len())];
                Target {
                    path: format!("{PREFIX}/{id}"),
                    check: Check::Attribution(id.clone()),
                }
            }
            Endpoint::MentorListHeavy => list(rng.index(HEAVY_MENTORS.min(mentors))),
            Endpoint::MentorListAny => list(rng.index(mentors)),
            Endpoint::TotalsAllTime => {
                let rank = mixed_mentor(rng, mentors);
                Target {
                    path: format!("{PREFIX}/mentor/{}/total", mentor_id(rank)),
                    check: Check::Totals {
                        clicks: data.mentor_clicks[rank],
                        conversions: data.mentor_conversions[rank],
                    },
                }
            }
            Endpoint::Totals30d => {
                let rank = mixed_mentor(rng, mentors);
                Target {
                    path: format!("{PREFIX}/mentor/{}/total?period=30d", mentor_id(rank)),
                    check: Check::Period("30d"),
                }
            }
            Endpoint::ListFirstPage => Target {
                path: format!("{PREFIX}?page=1&limit={PAGE_LIMIT}"),
                check: Check::List {
                    total: data.live,
                    newest: data.newest_live.1.clone(),
                },
            },
        })
        .collect())
}

/// Why an answer is wrong, or `None` when it is what was generated.
pub fn wrong(check: &Check, status: u16, body: &[u8]) -> Option<String> {
    if status != 200 {
        return Some(format!("status {status}"));
    }
    let Ok(json) = serde_json::from_slice::<Value>(body) else {
        return Some("body is not JSON".to_owned());
    };
    let total = json["pagination"]["total"].as_u64();
    let data = json["data"].as_array();
    match check {
        Check::Attribution(id) => {
            (json["id"].as_str() != Some(id.as_str())).then(|| format!("not {id}"))
        }
        Check::MentorList {
            mentor,
            total: want,
        } => {
            let items = data.map_or(0, Vec::len) as u64;
            let foreign = data.is_some_and(|items| {
                items
                    .iter()
                    .any(|item| item["mentor_id"].as_str() != Some(mentor.as_str()))
            });
            if total != Some(*want) {
                Some(format!("{mentor}: total {total:?}, expected {want}"))
            } else if items != (*want).min(u64::from(PAGE_LIMIT)) || foreign {
                Some(format!("{mentor}: {items} items (or another mentor's)"))
            } else {
                None
            }
        }
        Check::Totals {
            clicks,
            conversions,
        } => {
            let got = (
                json["total_clicks"].as_u64(),
                json["total_conversions"].as_u64(),
            );
            (got != (Some(*clicks), Some(*conversions))).then(|| {
                format!(
                    "{}: totals {got:?}, expected ({clicks}, {conversions})",
                    json["mentor_id"]
                )
            })
        }
        Check::Period(period) => {
            let fine = json["period"].as_str() == Some(period)
                && json["total_clicks"].is_u64()
                && json["total_conversions"].is_u64();
            (!fine).then(|| format!("not a {period} totals answer"))
        }
        Check::List {
            total: want,
            newest,
        } => {
            let first = data.and_then(|items| items.first()).map(|item| &item["id"]);
            if total != Some(*want) {
                Some(format!("list total {total:?}, expected {want}"))
            } else if data.map_or(0, Vec::len) != PAGE_LIMIT as usize {
                Some("not a full page".to_owned())
            } else if first.and_then(Value::as_str) != Some(newest.as_str()) {
                Some(format!("first item {first:?}, expected {newest}"))
            } else {
                None
            }
        }
    }
}
