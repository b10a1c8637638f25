//! `GET /dashboard`: the operators' page, built into the binary like the task page. It needs
//! the token when the server has one (`?token=`, which the page then passes on to its
//! WebSocket), since what it shows (task names, failure messages) is the server's business.
//! Its data comes over the WebSocket, from `{"type":"watch"}` (`crate::app` `watch`).

use crate::app::{App, Ctx};

/// The page: HTML, CSS and script in one file, nothing fetched from elsewhere.
pub const DASHBOARD_HTML: &str = include_str!("../../static/dashboard.html");

/// The status, content type and body for a request of the page.
pub fn page<A: App>(ctx: &Ctx<A>, token_presented: bool) -> (u16, &'static str, &'static [u8]) {
    if token_presented {
        (200, "text/html; charset=utf-8", DASHBOARD_HTML.as_bytes())
    } else {
        ctx.metrics().refused("token");
        (401, "text/plain", super::MISSING_TOKEN.as_bytes())
    }
}
