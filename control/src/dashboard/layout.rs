//! The page shell (head, navigation, operator, sign-out), the sign-in page, error pages and
//! the small pieces every page uses: status badges, times, flash notices.

use axum::http::StatusCode;
use axum::response::Response;
use maud::{html, Markup, DOCTYPE};

use super::html_response;
use crate::api::ApiError;
use crate::store::operators::Session;

/// The sections of the navigation, with their paths.
const NAV: [(&str, &str); 7] = [
    ("Overview", "/"),
    ("Stores", "/stores"),
    ("New store", "/stores/new"),
    ("Domains", "/domains"),
    ("Certificates", "/certificates"),
    ("Audit log", "/audit"),
    ("Fleet", "/fleet"),
];

/// A whole page for the signed-in operator; `current` is the navigation entry to mark.
pub fn page(title: &str, current: &str, who: &Session, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="csrf-token" content=(who.csrf);
                title { (title) " · tenantgate" }
                link rel="stylesheet" href="/assets/dashboard.css";
                script src="/assets/dashboard.js" defer {}
            }
            body {
                header.top {
                    a.brand href="/" { span.mark { "tg" } " tenantgate" }
                    nav aria-label="Sections" {
                        @for (name, path) in NAV {
                            a href=(path) aria-current=[(name == current).then_some("page")] { (name) }
                        }
                    }
                    div.who {
                        span.operator title="Signed in" { (who.operator) }
                        form method="post" action="/logout" {
                            input type="hidden" name="csrf" value=(who.csrf);
                            button.link type="submit" { "Sign out" }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// The sign-in page, with an error line when a previous attempt failed.
pub fn login_page(
    next: Option<&str>,
    error: Option<&str>,
    name: &str,
    status: StatusCode,
) -> Response {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "Sign in · tenantgate" }
                link rel="stylesheet" href="/assets/dashboard.css";
            }
            body.login {
                main.card.login-card {
                    h1 { span.mark { "tg" } " tenantgate" }
                    p.muted { "Command Center: sign in as an operator." }
                    @if let Some(e) = error {
                        p.notice.bad role="alert" { (e) }
                    }
                    form method="post" action="/login" {
                        @if let Some(n) = next {
                            input type="hidden" name="next" value=(n);
                        }
                        label for="username" { "Name" }
                        input #username type="text" name="username" value=(name) autocomplete="username" required autofocus;
                        label for="password" { "Password" }
                        input #password type="password" name="password" autocomplete="current-password" required;
                        button.primary type="submit" { "Sign in" }
                    }
                    p.muted.small { "Accounts are made on the server: " code { "tenantgate operators add NAME" } }
                }
            }
        }
    };
    html_response(status, markup)
}

/// A page (without navigation) saying what went wrong.
pub fn refusal(status: StatusCode, message: &str) -> Response {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { (status.as_u16()) " · tenantgate" }
                link rel="stylesheet" href="/assets/dashboard.css";
            }
            body.login {
                main.card.login-card {
                    h1 { (status.as_u16()) " " (status.canonical_reason().unwrap_or("")) }
                    p.notice.bad role="alert" { (message) }
                    p { a href="/" { "Back to the overview" } }
                }
            }
        }
    };
    html_response(status, markup)
}

/// An error from the store or an action, as a page.
pub fn error_page(e: &ApiError) -> Response {
    refusal(e.status(), e.message())
}

/// A colored badge for a status word.
pub fn badge(status: &str) -> Markup {
    let tone = match status {
        "active" | "live" | "ok" | "running" => "good",
        "provisioning"
        | "pending_verification"
        | "pending_validation"
        | "pending_issuance"
        | "renewing"
        | "waking"
        | "paused" => "wait",
        "suspended" | "moved" | "blocked" | "sleeping" | "stopped" => "warn",
        "failed" | "expired" | "deleted" | "down" | "errors" => "bad",
        _ => "plain",
    };
    html! { span class={"badge " (tone)} { (status.replace('_', " ")) } }
}

/// An RFC 3339 time as `YYYY-MM-DD HH:MM:SS` (UTC), with the full form as its title.
pub fn when(rfc3339: &str) -> Markup {
    let short = rfc3339.get(..19).unwrap_or(rfc3339).replace('T', " ");
    html! { time datetime=(rfc3339) title=(rfc3339) { (short) } }
}

/// A notice line after an action (`?done=...` on the page it redirected to).
pub fn notice(done: Option<&str>) -> Markup {
    html! {
        @if let Some(d) = done {
            p.notice.good role="status" { (d) }
        }
    }
}
