//! The user's side of oidc-provider's device flow, as a browser does it
//! over HTTP: the code form at the verification URI, its confirmation,
//! then the login and consent interactions (which tests/oidc/server.mjs
//! completes when they are opened), keeping cookies and following
//! redirects by hand. Used by the agent's `freshtoken login` test
//! (agent_login.rs) and, through a `#[path]`, by
//! tests/tests/oauth2_device.rs; it lives here so that the agent's package
//! builds its tests on its own.

use std::collections::BTreeMap;

/// What the user does with the code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(dead_code)]
pub enum Decision {
    Approve,
    Abort,
}

struct Browser {
    agent: ureq::Agent,
    cookies: BTreeMap<String, String>,
    origin: String,
}

impl Browser {
    fn cookie(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn keep(&mut self, response: &ureq::http::Response<ureq::Body>) {
        for value in response.headers().get_all("set-cookie") {
            let pair = value.to_str().unwrap().split(';').next().unwrap();
            if let Some((k, v)) = pair.split_once('=') {
                self.cookies
                    .insert(k.trim().to_owned(), v.trim().to_owned());
            }
        }
    }

    fn absolute(&self, location: &str) -> String {
        if location.starts_with('/') {
            format!("{}{location}", self.origin)
        } else {
            location.to_owned()
        }
    }

    /// GET `url`, following redirects; the final status and page.
    fn get(&mut self, url: &str) -> (u16, String) {
        let mut url = url.to_owned();
        for _ in 0..10 {
            let mut response = self
                .agent
                .get(&url)
                .header("Cookie", &self.cookie())
                .call()
                .unwrap();
            self.keep(&response);
            let status = response.status().as_u16();
            if let Some(location) = response.headers().get("location") {
                url = self.absolute(location.to_str().unwrap());
                continue;
            }
            return (status, response.body_mut().read_to_string().unwrap());
        }
        panic!("too many redirects from {url}");
    }

    /// POST a form to `url`, then follow the redirects.
    fn post(&mut self, url: &str, form: &[(&str, &str)]) -> (u16, String) {
        let body = form
            .iter()
            .map(|(k, v)| format!("{k}={}", encode(v)))
            .collect::<Vec<_>>()
            .join("&");
        let mut response = self
            .agent
            .post(url)
            .header("Cookie", &self.cookie())
            .header("Content-Type", "application/x-www-form-urlencoded")
            .send(body.as_bytes())
            .unwrap();
        self.keep(&response);
        if let Some(location) = response.headers().get("location") {
            let next = self.absolute(location.to_str().unwrap());
            return self.get(&next);
        }
        let status = response.status().as_u16();
        (status, response.body_mut().read_to_string().unwrap())
    }
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The `value` of the hidden input called `name` in `page`.
fn hidden(page: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = page
        .find(&marker)
        .unwrap_or_else(|| panic!("no {name} in the page:\n{page}"))
        + marker.len();
    let end = page[start..].find('"').unwrap() + start;
    page[start..end].to_owned()
}

/// Enters `user_code` at `verification_uri` and approves or aborts; the
/// final page, which says the sign-in succeeded (approve) or was
/// interrupted (abort).
pub fn decide(verification_uri: &str, user_code: &str, decision: Decision) -> String {
    let origin = {
        let after = verification_uri.find("://").unwrap() + 3;
        let end = verification_uri[after..]
            .find('/')
            .map_or(verification_uri.len(), |i| i + after);
        verification_uri[..end].to_owned()
    };
    let mut browser = Browser {
        agent: ureq::Agent::config_builder()
            .max_redirects(0)
            .http_status_as_error(false)
            .proxy(None)
            .build()
            .into(),
        cookies: BTreeMap::new(),
        origin,
    };
    // The code form.
    let (status, page) = browser.get(verification_uri);
    assert_eq!(status, 200, "{page}");
    let xsrf = hidden(&page, "xsrf");
    // The code entered: the confirmation page.
    let (status, page) = browser.post(
        verification_uri,
        &[("xsrf", xsrf.as_str()), ("user_code", user_code)],
    );
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("Confirm Device"), "{page}");
    let xsrf = hidden(&page, "xsrf");
    let choice = match decision {
        Decision::Approve => ("confirm", "yes"),
        Decision::Abort => ("abort", "yes"),
    };
    let (_, page) = browser.post(
        verification_uri,
        &[("xsrf", xsrf.as_str()), ("user_code", user_code), choice],
    );
    match decision {
        Decision::Approve => assert!(page.contains("Sign-in Success"), "{page}"),
        Decision::Abort => assert!(page.contains("interrupted"), "{page}"),
    }
    page
}
