//! The dashboard page in a real browser: Debian's headless Chromium (installed by
//! `./scripts/install-test-services.sh`) loads `/dashboard` from the embedded `referral-api`
//! binary over seeded data. The page must load without a console message (no script
//! error, no Content-Security-Policy violation), draw the chart, and show the numbers the
//! API answers.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use http::Method;
use referral_load_tests::http::{get, send};
use referral_load_tests::services::free_port;
use serde_json::Value;

const SECOND: Duration = Duration::from_secs(5);

struct Api(Child);

impl Drop for Api {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn json(url: &str) -> Value {
    let answer = get(url, SECOND).unwrap();
    assert_eq!(answer.status, 200, "{url}: {}", answer.body);
    serde_json::from_str(&answer.body).unwrap()
}

/// `data-value` of the element with `id` in the rendered DOM.
fn shown(dom: &str, id: &str) -> String {
    let start = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id} in the page"));
    let rest = &dom[start..];
    let value = rest
        .find("data-value=\"")
        .map(|at| &rest[at + "data-value=\"".len()..])
        .unwrap_or_else(|| panic!("#{id} shows nothing"));
    value[..value.find('"').unwrap()].to_owned()
}

#[test]
fn the_dashboard_draws_the_apis_numbers_in_a_real_browser() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let _api = Api(Command::new(env!("CARGO_BIN_EXE_referral-api"))
        .env("REFERRAL_DATA_DIR", dir.path().join("data"))
        .env("REFERRAL_LISTEN", format!("127.0.0.1:{port}"))
        .env_remove("REFERRAL_API_TOKENS")
        .stdout(Stdio::null())
        .spawn()
        .unwrap());
    let deadline = Instant::now() + Duration::from_secs(30);
    while get(&format!("{base}/readyz"), SECOND).map(|r| r.status) != Ok(200) {
        assert!(Instant::now() < deadline, "referral-api never got ready");
        std::thread::sleep(Duration::from_millis(100));
    }
    let put = |path: &str, body: &str| {
        let answer = send(
            Method::PUT,
            &format!("{base}{path}"),
            Some((bytes::Bytes::from(body.to_owned()), "application/json")),
            SECOND,
        )
        .unwrap();
        assert!(answer.status < 300, "{path}: {}", answer.body);
        answer
    };
    put(
        "/api/v1/referral-codes/DASH-1",
        r#"{"mentor_id":"usr_dash"}"#,
    );
    put(
        "/api/v1/referral-codes/DASH-2",
        r#"{"mentor_id":"usr_rival"}"#,
    );
    let now = referral_schemas::Timestamp::now().as_millis();
    let mut first = None;
    for n in 0..14_i64 {
        let code = if n % 4 == 3 { "DASH-2" } else { "DASH-1" };
        let at = referral_schemas::Timestamp::from_millis(now - n * 36 * 3_600_000);
        let agent = if n == 5 {
            "Twitterbot/1.0"
        } else {
            "Mozilla/5.0 (X11; Linux x86_64) Firefox/125.0"
        };
        let body = format!(
            r#"{{"code":"{code}","ip_address":"10.9.0.{n}","user_agent":"{agent}","occurred_at":"{at}"}}"#
        );
        let answer = referral_load_tests::http::post(
            &format!("{base}/api/v1/referral-attributions"),
            body,
            "application/json",
            SECOND,
        )
        .unwrap();
        assert_eq!(answer.status, 201, "{}", answer.body);
        if first.is_none() {
            let id: Value = serde_json::from_str(&answer.body).unwrap();
            first = Some(id["id"].as_str().unwrap().to_owned());
        }
    }
    let id = first.unwrap();
    // The store applies the log after the 201: wait for every click.
    let deadline = Instant::now() + Duration::from_secs(30);
    while json(&format!("{base}/api/v1/referral-attributions"))["pagination"]["total"] != 14 {
        assert!(
            Instant::now() < deadline,
            "the clicks never reached the store"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    put(
        &format!("/api/v1/referral-attributions/{id}"),
        r#"{"code":"DASH-1","new_member_id":"usr_member"}"#,
    );

    let view = "period=30d&tz=Europe/Paris&interval=day";
    let output = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--virtual-time-budget=10000",
            "--enable-logging=stderr",
            "--v=0",
            "--dump-dom",
            &format!("{base}/dashboard?mentor=usr_dash&{view}"),
        ])
        .output()
        .expect("chromium is not installed: run ./scripts/test.sh, which installs it");
    let dom = String::from_utf8_lossy(&output.stdout).into_owned();
    let log = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{log}");
    let console: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("CONSOLE"))
        .collect();
    assert!(console.is_empty(), "the page logged: {console:#?}");
    assert!(dom.contains("data-state=\"ready\""), "{dom}");
    assert!(dom.contains("<canvas"), "no chart drawn: {dom}");

    let totals = json(&format!(
        "{base}/api/v1/referral-attributions/mentor/usr_dash/total?period=30d&tz=Europe/Paris"
    ));
    assert_eq!(
        shown(&dom, "total-clicks"),
        totals["total_clicks"].to_string()
    );
    assert_eq!(shown(&dom, "total-conversions"), "1");
    assert_eq!(
        shown(&dom, "total-conversions"),
        totals["total_conversions"].to_string()
    );
    assert_eq!(
        shown(&dom, "filtered-bot"),
        totals["filtered_clicks"]["bot"].to_string()
    );
    assert_eq!(
        shown(&dom, "conversion-rate"),
        totals["conversion_rate"].to_string()
    );
    assert!(totals["total_clicks"].as_u64().unwrap() >= 8, "{totals}");
    let series = json(&format!(
        "{base}/api/v1/referral-attributions/mentor/usr_dash/timeseries?{view}"
    ));
    let points = series["data"].as_array().unwrap().len();
    assert!(dom.contains(&format!("data-points=\"{points}\"")), "{dom}");
    let top = json(&format!(
        "{base}/api/v1/referral-attributions/mentors/top?period=30d&tz=Europe/Paris"
    ));
    for row in top["data"].as_array().unwrap() {
        let mentor = row["mentor_id"].as_str().unwrap();
        assert!(
            dom.contains(&format!("data-mentor=\"{mentor}\"")),
            "{mentor} not on the leaderboard"
        );
    }
    assert_eq!(top["data"].as_array().unwrap().len(), 2);

    // The page is served with a policy that keeps scripts and requests on this origin.
    let page = get(&format!("{base}/dashboard"), SECOND).unwrap();
    assert_eq!(page.status, 200);
    let missing = get(&format!("{base}/dashboard/../Cargo.toml"), SECOND).unwrap();
    assert_eq!(missing.status, 404);
}
