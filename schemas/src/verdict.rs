//! A click's verdict, decided in one pure place: `counted`, `duplicate` (a repeat visit
//! inside the dedup window) or `bot` (a crawler, link-preview fetcher or headless browser,
//! or no user agent at all). Mentors are paid on counted clicks only; the others are kept
//! with their verdict so that every count can be inspected.
//!
//! The single writer applies [`DedupWindow::decide`] to each click in log order, so the
//! verdict is the same on every replay of the same log: it depends only on the clicks before
//! it (their code, client IP, user agent and `received_at`), never on wall-clock time or on
//! when the window's state was trimmed. The window runs on `received_at`, the instant the
//! edge took the click: a client chooses `occurred_at`, and a click it dated back must not
//! escape (or reset) the window.

use std::collections::HashMap;
use std::sync::LazyLock;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What a recorded click counts as.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClickVerdict {
    Counted,
    Duplicate,
    Bot,
}

impl ClickVerdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Counted => "counted",
            Self::Duplicate => "duplicate",
            Self::Bot => "bot",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "counted" => Some(Self::Counted),
            "duplicate" => Some(Self::Duplicate),
            "bot" => Some(Self::Bot),
            _ => None,
        }
    }
}

/// The user-agent patterns of the `isbot` crate (its bundled list, from the npm `isbot`
/// project: crawlers, link-preview fetchers, headless browsers, HTTP libraries). Compiled
/// once.
static BOTS: LazyLock<isbot::Bots> = LazyLock::new(isbot::Bots::default);

/// Whether a click's user agent is not a person's browser: empty, absent, or on the list.
pub fn is_bot(user_agent: Option<&str>) -> bool {
    match user_agent.map(str::trim) {
        None | Some("") => true,
        Some(agent) => BOTS.is_bot(agent),
    }
}

/// One visitor of one code: the same code, client IP and user agent, while the code belongs
/// to the same mentor (a code reassigned to another mentor starts afresh for every visitor:
/// the new mentor's first click from them counts). A digest, so the window's memory per
/// visitor does not grow with the length of a user agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct VisitorKey([u8; 16]);

impl VisitorKey {
    pub fn of(mentor_id: &str, code: &str, ip_address: &str, user_agent: Option<&str>) -> Self {
        let mut hasher = Sha256::new();
        for part in [mentor_id, code, ip_address, user_agent.unwrap_or("")] {
            hasher.update((part.len() as u64).to_le_bytes());
            hasher.update(part.as_bytes());
        }
        let digest = hasher.finalize();
        let mut key = [0u8; 16];
        key.copy_from_slice(&digest[..16]);
        Self(key)
    }
}

/// The last counted click of a visitor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CountedVisit {
    pub attribution_id: String,
    /// `received_at`, in ms since the epoch.
    pub received_at: i64,
}

/// The dedup state of one log partition: each visitor's last counted click, for visitors
/// seen within the window. Memory: one entry per distinct visitor whose last counted click
/// is at most two windows older than the newest click seen (a 16-byte key, the id and the
/// instant: about 100 bytes with the map's overhead).
#[derive(Clone, Debug)]
pub struct DedupWindow {
    window_ms: i64,
    last: HashMap<VisitorKey, CountedVisit>,
    /// The newest `received_at` of a counted click (ms), or `i64::MIN` before the first.
    newest: i64,
    /// Visitors held after the last trim.
    trimmed_len: usize,
    /// [`is_bot`] of recent user agents: a handful of browsers' agents make most clicks,
    /// and the list's regex costs more than the rest of a decision. Cleared when full.
    bot_agents: HashMap<Box<str>, bool>,
}

/// User agents whose [`is_bot`] a window remembers at most.
const BOT_AGENTS_CACHED: usize = 4_096;

impl DedupWindow {
    /// A window of `window_ms` (0: no click is ever a duplicate).
    pub fn new(window_ms: i64) -> Self {
        Self {
            window_ms: window_ms.max(0),
            last: HashMap::new(),
            newest: i64::MIN,
            trimmed_len: 0,
            bot_agents: HashMap::new(),
        }
    }

    /// [`is_bot`], remembered per user agent.
    fn is_bot(&mut self, user_agent: Option<&str>) -> bool {
        let Some(agent) = user_agent else {
            return true;
        };
        if let Some(known) = self.bot_agents.get(agent) {
            return *known;
        }
        let bot = is_bot(Some(agent));
        if self.bot_agents.len() >= BOT_AGENTS_CACHED {
            self.bot_agents.clear();
        }
        self.bot_agents.insert(agent.into(), bot);
        bot
    }

    /// Restores a counted click read back from the store (a restart, a new assignment),
    /// as [`Self::decide`] would have left it.
    pub fn remember(&mut self, key: VisitorKey, visit: CountedVisit) {
        self.newest = self.newest.max(visit.received_at);
        self.keep_latest(key, visit);
    }

    /// A visitor's entry is its latest counted click, whatever order they arrive in (of two
    /// received in the same millisecond, the smaller id: the same whichever comes first).
    fn keep_latest(&mut self, key: VisitorKey, visit: CountedVisit) {
        match self.last.get(&key) {
            Some(known)
                if (known.received_at, std::cmp::Reverse(&known.attribution_id))
                    >= (visit.received_at, std::cmp::Reverse(&visit.attribution_id)) => {}
            _ => {
                self.last.insert(key, visit);
            }
        }
    }

    /// The verdict of the next click in log order, and the counted click it repeats.
    ///
    /// * `bot` when [`is_bot`] says so (bots never enter the window);
    /// * `duplicate` when the visitor's latest counted click was received less than the
    ///   window before or after this one, and this one is not older than the newest counted
    ///   click by more than the window (edges' clocks differ a little; the window keeps no
    ///   state older than that);
    /// * `counted` otherwise; it becomes the visitor's latest counted click if it is later.
    pub fn decide(
        &mut self,
        key: VisitorKey,
        user_agent: Option<&str>,
        attribution_id: &str,
        received_at: i64,
    ) -> (ClickVerdict, Option<String>) {
        if self.is_bot(user_agent) {
            return (ClickVerdict::Bot, None);
        }
        if self.window_ms == 0 {
            return (ClickVerdict::Counted, None);
        }
        let horizon = self.newest.saturating_sub(self.window_ms);
        if received_at >= horizon
            && let Some(last) = self.last.get(&key)
            && last.received_at.abs_diff(received_at) < self.window_ms.unsigned_abs()
        {
            return (ClickVerdict::Duplicate, Some(last.attribution_id.clone()));
        }
        self.newest = self.newest.max(received_at);
        self.keep_latest(
            key,
            CountedVisit {
                attribution_id: attribution_id.to_owned(),
                received_at,
            },
        );
        (ClickVerdict::Counted, None)
    }

    /// Forgets visitors whose last counted click can no longer make any click a duplicate:
    /// older than the newest click by two windows. Never changes a later decision.
    pub fn trim(&mut self) {
        let keep_from = self.newest.saturating_sub(self.window_ms.saturating_mul(2));
        self.last.retain(|_, visit| visit.received_at >= keep_from);
    }

    /// Trims once the visitors held doubled since the last trim (amortized O(1) per click;
    /// memory stays within twice what the last two windows need, plus a little).
    pub fn trim_if_grown(&mut self) {
        if self.last.len() >= self.trimmed_len.saturating_mul(2).max(1_024) {
            self.trim();
            self.trimmed_len = self.last.len();
        }
    }

    /// Visitors held now.
    pub fn len(&self) -> usize {
        self.last.len()
    }

    pub fn is_empty(&self) -> bool {
        self.last.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3_600_000;
    const CHROME: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36";
    const IPHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1";

    #[test]
    fn crawlers_previews_headless_browsers_and_empty_agents_are_bots() {
        for agent in [
            "Googlebot/2.1 (+http://www.google.com/bot.html)",
            "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)",
            "Twitterbot/1.0",
            "LinkedInBot/1.0 (compatible; Mozilla/5.0; Apache-HttpClient +http://www.linkedin.com)",
            "WhatsApp/2.23.20.0 A",
            "facebookexternalhit/1.1 Facebot Twitterbot/1.0",
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/120.0 Safari/537.36",
            "curl/8.5.0",
            "",
            "   ",
        ] {
            assert!(is_bot(Some(agent)), "{agent}");
        }
        assert!(is_bot(None));
        for agent in [CHROME, IPHONE] {
            assert!(!is_bot(Some(agent)), "{agent}");
        }
    }

    #[test]
    fn a_repeat_inside_the_window_is_a_duplicate_of_the_counted_click() {
        let mut window = DedupWindow::new(HOUR);
        let visitor = VisitorKey::of("m1", "JAN-1", "185.12.34.56", Some(CHROME));
        let decide =
            |window: &mut DedupWindow, key, id: &str, at| window.decide(key, Some(CHROME), id, at);
        assert_eq!(
            decide(&mut window, visitor, "attr_1", 0),
            (ClickVerdict::Counted, None)
        );
        assert_eq!(
            decide(&mut window, visitor, "attr_2", HOUR - 1),
            (ClickVerdict::Duplicate, Some("attr_1".into()))
        );
        // A duplicate does not extend the window: an hour after the counted click counts.
        assert_eq!(
            decide(&mut window, visitor, "attr_3", HOUR),
            (ClickVerdict::Counted, None)
        );
        assert_eq!(
            decide(&mut window, visitor, "attr_4", HOUR + 5),
            (ClickVerdict::Duplicate, Some("attr_3".into()))
        );
        // Another IP, agent or code is another visitor; so is the code's next mentor's.
        for other in [
            VisitorKey::of("m2", "JAN-1", "185.12.34.56", Some(CHROME)),
            VisitorKey::of("m1", "JAN-1", "185.12.34.57", Some(CHROME)),
            VisitorKey::of("m1", "JAN-1", "185.12.34.56", Some(IPHONE)),
            VisitorKey::of("m1", "FEB-2", "185.12.34.56", Some(CHROME)),
        ] {
            assert_eq!(
                decide(&mut window, other, "attr_x", HOUR + 6).0,
                ClickVerdict::Counted
            );
        }
        // Bots never count and never enter the window.
        let bot = VisitorKey::of("m1", "JAN-1", "185.12.34.56", Some("Twitterbot/1.0"));
        assert_eq!(
            window.decide(bot, Some("Twitterbot/1.0"), "attr_b", HOUR + 7),
            (ClickVerdict::Bot, None)
        );
    }

    #[test]
    fn a_click_out_of_order_neither_escapes_nor_resets_the_window() {
        let mut window = DedupWindow::new(HOUR);
        let visitor = VisitorKey::of("m1", "JAN-1", "185.12.34.56", Some(CHROME));
        let mut decide = |id: &str, at| window.decide(visitor, Some(CHROME), id, at).0;
        assert_eq!(decide("attr_1", 10 * HOUR), ClickVerdict::Counted);
        // Older than the window keeps state for: counted, but the visitor's entry stays
        // its latest click...
        assert_eq!(decide("attr_2", 5 * HOUR), ClickVerdict::Counted);
        // ...so a repeat of the latest is still a duplicate, as a rebuilt window says.
        assert_eq!(
            decide("attr_3", 10 * HOUR + HOUR / 2),
            ClickVerdict::Duplicate
        );
        let mut rebuilt = DedupWindow::new(HOUR);
        for (id, at) in [("attr_1", 10 * HOUR), ("attr_2", 5 * HOUR)] {
            let visit = CountedVisit {
                attribution_id: id.into(),
                received_at: at,
            };
            rebuilt.remember(visitor, visit);
        }
        let verdict = rebuilt.decide(visitor, Some(CHROME), "attr_3", 10 * HOUR + HOUR / 2);
        assert_eq!(verdict, (ClickVerdict::Duplicate, Some("attr_1".into())));
    }

    #[test]
    fn no_window_counts_every_visitor_click() {
        let mut window = DedupWindow::new(0);
        let visitor = VisitorKey::of("m1", "JAN-1", "185.12.34.56", Some(CHROME));
        for (n, at) in [0, 1, 2].into_iter().enumerate() {
            let id = format!("attr_{n}");
            assert_eq!(
                window.decide(visitor, Some(CHROME), &id, at).0,
                ClickVerdict::Counted
            );
        }
        assert!(window.is_empty());
    }

    #[test]
    fn trimming_and_restoring_never_change_a_decision() {
        // The same clicks through a window trimmed after every click, one never trimmed,
        // and one rebuilt from the counted clicks halfway (a restart): same verdicts.
        let visitors: Vec<VisitorKey> = (0..5)
            .map(|n| VisitorKey::of("m1", "JAN-1", &format!("10.0.0.{n}"), Some(CHROME)))
            .collect();
        let clicks: Vec<(VisitorKey, i64)> = (0..400)
            .map(|n: i64| {
                // Mostly forward in time, some out of order by up to three windows, and one
                // visitor coming back every few minutes.
                let back = if n % 11 == 0 { 3 * HOUR } else { 0 };
                let ahead = if n % 13 == 0 { HOUR / 2 } else { 0 };
                let visitor = if n % 3 == 0 { 0 } else { (n * 7 % 5) as usize };
                (visitors[visitor], n * HOUR / 7 - back + ahead)
            })
            .collect();
        let run = |trim: bool, restart_at: Option<usize>| {
            let mut window = DedupWindow::new(HOUR);
            let mut counted: Vec<(VisitorKey, CountedVisit)> = Vec::new();
            let mut verdicts = Vec::new();
            for (n, (key, at)) in clicks.iter().enumerate() {
                if Some(n) == restart_at {
                    window = DedupWindow::new(HOUR);
                    for (key, visit) in &counted {
                        window.remember(*key, visit.clone());
                    }
                }
                let id = format!("attr_{n}");
                let verdict = window.decide(*key, Some(CHROME), &id, *at);
                if verdict.0 == ClickVerdict::Counted {
                    counted.push((
                        *key,
                        CountedVisit {
                            attribution_id: id,
                            received_at: *at,
                        },
                    ));
                }
                if trim {
                    window.trim();
                }
                verdicts.push(verdict);
            }
            (verdicts, window.len())
        };
        let (plain, untrimmed_len) = run(false, None);
        let (trimmed, trimmed_len) = run(true, None);
        let (restarted, _) = run(true, Some(200));
        assert_eq!(plain, trimmed);
        assert_eq!(plain, restarted);
        assert!(
            plain
                .iter()
                .any(|verdict| verdict.0 == ClickVerdict::Duplicate)
        );
        assert!(
            plain
                .iter()
                .filter(|verdict| verdict.0 == ClickVerdict::Counted)
                .count()
                > 5
        );
        assert!(trimmed_len <= untrimmed_len);
    }
}
