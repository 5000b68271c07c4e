//! HTTP throttle check, as gh-ost's `--throttle-http`: an endpoint owned by
//! someone else (an SRE switch, a load balancer health page) says whether
//! pacer may write. 2xx reads 0 (calm), any other status reads 1 (stop);
//! no answer (timeout, refused, TLS failure) is missing, because an
//! unreachable switch says nothing either way.

use std::time::Duration;

use chrono::Utc;
use futures::FutureExt;
use futures::future::BoxFuture;

use super::{Reading, Source, chain};

pub struct HttpCheck {
    name: String,
    url: reqwest::Url,
    client: reqwest::Client,
}

impl HttpCheck {
    pub fn new(name: String, url: &str, timeout: Duration) -> Result<HttpCheck, String> {
        let url = reqwest::Url::parse(url).map_err(|e| format!("http {url:?}: {e}"))?;
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            // A redirect to a login page is not a green light.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("http client: {}", chain(&e)))?;
        Ok(HttpCheck { name, url, client })
    }
}

impl Source for HttpCheck {
    fn name(&self) -> &str {
        &self.name
    }

    fn read(&self) -> BoxFuture<'_, Reading> {
        async move {
            match self.client.get(self.url.clone()).send().await {
                Ok(resp) if resp.status().is_success() => Reading::value(0.0, Utc::now()),
                Ok(_) => Reading::value(1.0, Utc::now()),
                Err(e) => Reading::missing(format!("GET {}: {}", self.url, chain(&e)), Utc::now()),
            }
        }
        .boxed()
    }
}
