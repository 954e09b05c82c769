//! `rewrite`: change the path and headers of requests before they reach the origin, or redirect
//! them. Rules run in order, each on the result of the ones before; a redirect that matches
//! answers at once. See README.md for the rules.

use std::rc::Rc;

use burrow_plugin::{Action, Level, Plugin, Request};
use regex_lite::Regex;

#[derive(serde::Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct Config {
    rules: Vec<Rule>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
enum Rule {
    /// `/api/users` → `/users` for `"/api"`; a path that is only the prefix becomes `/`.
    StripPrefix(String),
    /// `/old/x` → `/new/x`.
    ReplacePrefix {
        from: String,
        to: String,
    },
    /// A regular expression on the path (query excluded), replaced with `$1`-style groups.
    Regex {
        #[serde(rename = "match")]
        pattern: String,
        replace: String,
    },
    /// Answer with a redirect when the path matches; `to` may use `$1`-style groups. The query is
    /// kept unless `to` has one.
    Redirect {
        #[serde(rename = "match")]
        pattern: String,
        to: String,
        #[serde(default = "found")]
        status: u16,
    },
    SetHeader {
        name: String,
        value: String,
    },
    AppendHeader {
        name: String,
        value: String,
    },
    RemoveHeader(String),
}

fn found() -> u16 {
    302
}

struct Rewrite;

impl Plugin for Rewrite {
    fn on_request_headers(req: &Request) -> Action {
        match apply(req) {
            Ok(action) => action,
            Err(e) => {
                burrow_plugin::log(Level::Error, &e);
                burrow_plugin::respond(500, "plugin misconfigured")
            }
        }
    }
}

/// The rules of a configuration with their patterns compiled.
type Compiled = Vec<(Rule, Option<Regex>)>;

fn compiled() -> Result<Rc<Compiled>, String> {
    burrow_plugin::cached_config(compile)
}

fn compile(text: &str) -> Result<Compiled, String> {
    let config: Config = serde_json::from_str(text).map_err(|e| format!("bad config: {e}"))?;
    let mut rules = Vec::with_capacity(config.rules.len());
    for (i, rule) in config.rules.into_iter().enumerate() {
        let regex = match &rule {
            Rule::Regex { pattern, .. } | Rule::Redirect { pattern, .. } => {
                Some(Regex::new(pattern).map_err(|e| format!("bad config: rules[{i}]: {e}"))?)
            }
            _ => None,
        };
        if let Rule::Redirect { status, .. } = rule
            && !matches!(status, 301 | 302 | 303 | 307 | 308)
        {
            return Err(format!(
                "bad config: rules[{i}]: a redirect status is 301, 302, 303, 307 or 308"
            ));
        }
        rules.push((rule, regex));
    }
    Ok(rules)
}

fn apply(req: &Request) -> Result<Action, String> {
    let rules = compiled()?;
    let original = req.path();
    let mut path = original.clone();
    let query = req.query();
    for (i, (rule, regex)) in rules.iter().enumerate() {
        let bad = |e: &dyn std::fmt::Display| format!("rules[{i}]: {e}");
        match (rule, regex) {
            (Rule::StripPrefix(prefix), _) => {
                if let Some(rest) = strip(&path, prefix) {
                    path = if rest.starts_with('/') {
                        rest.to_owned()
                    } else {
                        format!("/{rest}")
                    };
                }
            }
            (Rule::ReplacePrefix { from, to }, _) => {
                if let Some(rest) = strip(&path, from) {
                    path = format!("{to}{rest}");
                }
            }
            (Rule::Regex { replace, .. }, Some(re)) => {
                path = re.replace(&path, replace.as_str()).into_owned();
            }
            (Rule::Redirect { to, status, .. }, Some(re)) => {
                if let Some(captures) = re.captures(&path) {
                    let mut location = String::new();
                    captures.expand(to, &mut location);
                    // A local redirect stays local: `//evil.example` or `/\\evil.example` would be
                    // read by browsers as another host.
                    if location.starts_with('/') {
                        location = format!("/{}", location.trim_start_matches(['/', '\\']));
                    }
                    if let Some(query) = query.as_deref().filter(|_| !location.contains('?')) {
                        location = format!("{location}?{query}");
                    }
                    let headers = vec![
                        ("location".into(), location.into_bytes()),
                        ("content-type".into(), b"text/plain; charset=utf-8".to_vec()),
                    ];
                    return Ok(burrow_plugin::respond_with(*status, headers, "redirecting"));
                }
            }
            (Rule::SetHeader { name, value }, _) => req.set_header(name, value.as_bytes()).map_err(|e| bad(&e))?,
            (Rule::AppendHeader { name, value }, _) => {
                req.append_header(name, value.as_bytes()).map_err(|e| bad(&e))?
            }
            (Rule::RemoveHeader(name), _) => req.remove_header(name),
            (Rule::Regex { .. } | Rule::Redirect { .. }, None) => {}
        }
    }
    if path != original {
        if !path.starts_with('/') {
            path.insert(0, '/');
        }
        let with_query = match query {
            // A rewrite may have put a query of its own in the path: add the original to it.
            Some(query) if path.contains('?') => format!("{path}&{query}"),
            Some(query) => format!("{path}?{query}"),
            None => path,
        };
        req.set_path_with_query(&with_query)
            .map_err(|e| format!("rewritten path refused: {e}"))?;
    }
    Ok(Action::Continue)
}

/// `path` without `prefix`, if it starts with it at a segment boundary (`/api` matches `/api`
/// and `/api/x`, not `/apix`).
fn strip<'a>(path: &'a str, prefix: &str) -> Option<&'a str> {
    let prefix = prefix.trim_end_matches('/');
    let rest = path.strip_prefix(prefix)?;
    (rest.is_empty() || rest.starts_with('/')).then_some(rest)
}

burrow_plugin::export_plugin!(Rewrite);
