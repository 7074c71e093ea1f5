//! A small W3C WebDriver client over HTTP for browser tests: Debian's `chromedriver` driving
//! headless Chromium (`--no-sandbox`: the tests run as root). Only what the tests use:
//! navigate, find, type, click, read text and source, run a script, take a screenshot.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The key W3C WebDriver names element references by.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A chromedriver process and one browser session in it.
pub struct Browser {
    driver: Child,
    base: String,
    session: String,
}

fn find_program(names: &[&str]) -> Option<String> {
    let path = std::env::var("PATH").unwrap_or_default();
    for n in names {
        for dir in path.split(':').chain(["/usr/bin", "/usr/lib/chromium"]) {
            let p = Path::new(dir).join(n);
            if p.is_file() {
                return Some(p.to_string_lossy().into_owned());
            }
        }
    }
    None
}

impl Browser {
    /// Headless Chromium at 1280 × 800 with `lang` as its language.
    pub fn start(lang: &str) -> Browser {
        let driver_bin = find_program(&["chromedriver"]).expect(
            "chromedriver is not installed: apt-get install chromium chromium-driver (.ci/run does)",
        );
        let chromium = find_program(&["chromium", "chromium-browser", "google-chrome"])
            .expect("chromium is not installed: apt-get install chromium chromium-driver");
        let port = super::up::free_port();
        let driver = Command::new(driver_bin)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start chromedriver");
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = ureq::get(&format!("{base}/status")).call()
                && serde_json::from_str::<Value>(&r.into_string().unwrap_or_default())
                    .is_ok_and(|v| v["value"]["ready"] == true)
            {
                break;
            }
            assert!(Instant::now() < deadline, "chromedriver did not get ready");
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut b = Browser {
            driver,
            base,
            session: String::new(),
        };
        let v = b.send(
            "POST",
            "/session",
            json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": chromium,
                    "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                             "--disable-dev-shm-usage", "--window-size=1280,800",
                             format!("--lang={lang}")],
                    "prefs": {"intl.accept_languages": lang},
                }
            }}}),
        );
        b.session = v["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no browser session: {v}"))
            .to_string();
        b
    }

    fn send(&self, method: &str, path: &str, body: Value) -> Value {
        self.try_send(method, path, body)
            .unwrap_or_else(|e| panic!("webdriver {method} {path}: {e}"))
    }

    /// A WebDriver command; its error, if it answered one.
    fn try_send(&self, method: &str, path: &str, body: Value) -> Result<Value, Value> {
        let url = format!("{}{path}", self.base);
        let agent = ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(60))
            .build();
        let r = match method {
            "GET" => agent.get(&url).call(),
            "DELETE" => agent.delete(&url).call(),
            _ => agent
                .post(&url)
                .set("Content-Type", "application/json")
                .send_string(&body.to_string()),
        };
        let r = match r {
            Ok(r) | Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("webdriver {method} {path}: {e}"),
        };
        let v: Value = serde_json::from_str(&r.into_string().unwrap()).unwrap();
        if v["value"]["error"].is_string() {
            return Err(v["value"].clone());
        }
        Ok(v["value"].clone())
    }

    /// Finds the element and acts on it; again if a live update replaced it in between (the
    /// page's `<main>` is swapped whole when it changes).
    fn on_element(&self, css: &str, act: impl Fn(&str) -> Result<Value, Value>) -> Value {
        for _ in 0..20 {
            let e = self.find(css);
            match act(&e) {
                Ok(v) => return v,
                Err(err) if err["error"] == "stale element reference" => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(err) => panic!("webdriver on {css}: {err}"),
            }
        }
        panic!("{css} kept being replaced");
    }

    fn s(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session)
    }

    pub fn goto(&self, url: &str) {
        self.send("POST", &self.s("/url"), json!({ "url": url }));
    }

    pub fn url(&self) -> String {
        self.send("GET", &self.s("/url"), Value::Null)
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    /// The page's whole HTML as the browser has it now (after live updates).
    pub fn source(&self) -> String {
        self.send("GET", &self.s("/source"), Value::Null)
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    /// The first element matching a CSS selector.
    pub fn find(&self, css: &str) -> String {
        let v = self.send(
            "POST",
            &self.s("/element"),
            json!({"using": "css selector", "value": css}),
        );
        v[ELEMENT].as_str().unwrap().to_string()
    }

    pub fn count(&self, css: &str) -> usize {
        let v = self.send(
            "POST",
            &self.s("/elements"),
            json!({"using": "css selector", "value": css}),
        );
        v.as_array().map_or(0, Vec::len)
    }

    pub fn type_into(&self, css: &str, text: &str) {
        self.on_element(css, |e| {
            self.try_send("POST", &self.s(&format!("/element/{e}/clear")), json!({}))?;
            self.try_send(
                "POST",
                &self.s(&format!("/element/{e}/value")),
                json!({ "text": text }),
            )
        });
    }

    pub fn click(&self, css: &str) {
        self.on_element(css, |e| {
            self.try_send("POST", &self.s(&format!("/element/{e}/click")), json!({}))
        });
    }

    /// The rendered text of the first element matching `css`.
    pub fn text(&self, css: &str) -> String {
        self.on_element(css, |e| {
            self.try_send("GET", &self.s(&format!("/element/{e}/text")), Value::Null)
        })
        .as_str()
        .unwrap_or("")
        .to_string()
    }

    /// Runs a script in the page; what it returns.
    pub fn script(&self, js: &str) -> Value {
        self.send(
            "POST",
            &self.s("/execute/sync"),
            json!({"script": js, "args": []}),
        )
    }

    /// Resizes the window (a phone: 390 × 844).
    pub fn resize(&self, width: u32, height: u32) {
        self.send(
            "POST",
            &self.s("/window/rect"),
            json!({"width": width, "height": height}),
        );
    }

    pub fn cookies(&self) -> Vec<Value> {
        self.send("GET", &self.s("/cookie"), Value::Null)
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Waits until `f` holds of the browser, polling every 50 ms; how long it took.
    pub fn wait(&self, what: &str, secs: u64, mut f: impl FnMut(&Browser) -> bool) -> Duration {
        let start = Instant::now();
        while !f(self) {
            assert!(
                start.elapsed() < Duration::from_secs(secs),
                "timed out after {secs} s waiting for {what}; the page:\n{}",
                self.source()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        start.elapsed()
    }

    /// A PNG of the viewport, written to `path`.
    pub fn screenshot(&self, path: &Path) {
        let v = self.send("GET", &self.s("/screenshot"), Value::Null);
        let png = base64_decode(v.as_str().unwrap());
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let url = format!("{}/session/{}", self.base, self.session);
            let _ = ureq::delete(&url).call();
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Standard base64 (what WebDriver sends screenshots in).
fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes() {
        let Some(v) = val(c) else { continue };
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}
