//! README.md's API section against the OpenAPI document the gateway serves.
//!
//! The endpoint table between `<!-- api:begin -->` and `<!-- api:end -->`
//! in README.md must list exactly the (method, path) pairs of
//! [`crate::rest::openapi::DOCUMENT`] (which the `openapi` fleet test keeps
//! equal to the registered routes), and its auth column must say `bearer`
//! exactly where the document asks for a token.

use std::collections::{BTreeMap, BTreeSet};

const README: &str = include_str!("../../../README.md");
const BEGIN: &str = "<!-- api:begin -->";
const END: &str = "<!-- api:end -->";
const METHODS: [&str; 8] = ["get", "put", "post", "delete", "patch", "head", "options", "trace"];

type Endpoint = (String, String);

/// The table rows between the markers: (METHOD, path) → auth cell.
fn readme_endpoints(readme: &str) -> Result<BTreeMap<Endpoint, String>, String> {
    let start = readme
        .find(BEGIN)
        .ok_or_else(|| format!("README.md has no {BEGIN} marker"))?;
    let section = &readme[start + BEGIN.len()..];
    let section = &section[..section
        .find(END)
        .ok_or_else(|| format!("README.md has no {END} marker after {BEGIN}"))?];
    let mut rows = BTreeMap::new();
    let mut repeated = Vec::new();
    for line in section.lines().map(str::trim).filter(|l| l.starts_with('|')) {
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        let method = cells[0].to_ascii_uppercase();
        if !METHODS.iter().any(|m| m.eq_ignore_ascii_case(&method)) {
            continue; // the header and the separator row
        }
        let (Some(path), Some(auth)) = (cells.get(1), cells.get(2)) else {
            return Err(format!("row without a path and an auth column: {line}"));
        };
        let path = path.trim_matches('`').to_owned();
        if rows
            .insert((method.clone(), path.clone()), (*auth).to_owned())
            .is_some()
        {
            repeated.push(format!("{method} {path}"));
        }
    }
    if repeated.is_empty() {
        Ok(rows)
    } else {
        Err(format!("README.md lists these endpoints twice: {repeated:?}"))
    }
}

/// The document's operations: (METHOD, path) → whether it needs a token.
fn openapi_endpoints(document: &str) -> BTreeMap<Endpoint, bool> {
    let doc: serde_json::Value = serde_json::from_str(document).expect("openapi.json is JSON");
    let global_security = doc
        .get("security")
        .and_then(|s| s.as_array())
        .is_some_and(|s| !s.is_empty());
    let paths = doc["paths"].as_object().expect("openapi.json has paths");
    let mut endpoints = BTreeMap::new();
    for (path, item) in paths {
        for (method, operation) in item.as_object().expect("a path item is an object") {
            if !METHODS.contains(&method.as_str()) {
                continue; // parameters, summary, …
            }
            let secured = match operation.get("security").and_then(|s| s.as_array()) {
                Some(requirements) => !requirements.is_empty(),
                None => global_security,
            };
            endpoints.insert((method.to_ascii_uppercase(), path.clone()), secured);
        }
    }
    endpoints
}

/// Empty when the README's table and the document agree; otherwise what differs.
fn differences(readme: &BTreeMap<Endpoint, String>, openapi: &BTreeMap<Endpoint, bool>) -> Vec<String> {
    let listed: BTreeSet<&Endpoint> = readme.keys().collect();
    let served: BTreeSet<&Endpoint> = openapi.keys().collect();
    let mut out = Vec::new();
    for (method, path) in served.difference(&listed) {
        out.push(format!("missing from README.md (in openapi.json): {method} {path}"));
    }
    for (method, path) in listed.difference(&served) {
        out.push(format!("in README.md but not in openapi.json: {method} {path}"));
    }
    for (endpoint, auth) in readme {
        if let Some(&secured) = openapi.get(endpoint) {
            let says_bearer = auth.to_ascii_lowercase().contains("bearer");
            if says_bearer != secured {
                let (method, path) = endpoint;
                let expected = if secured { "bearer" } else { "none" };
                out.push(format!(
                    "auth of {method} {path}: README.md says {auth:?}, openapi.json says {expected}"
                ));
            }
        }
    }
    out
}

#[test]
fn the_readme_lists_exactly_the_endpoints_of_openapi_json() {
    let readme = readme_endpoints(README).unwrap_or_else(|e| panic!("{e}"));
    let openapi = openapi_endpoints(crate::rest::openapi::DOCUMENT);
    assert!(
        openapi.len() > 10,
        "openapi.json lists only {} operations",
        openapi.len()
    );
    let diff = differences(&readme, &openapi);
    assert!(
        diff.is_empty(),
        "README.md's API table (between {BEGIN} and {END}) differs from the served openapi.json:\n  {}",
        diff.join("\n  ")
    );
}

#[test]
fn a_missing_extra_or_misdescribed_row_is_reported() {
    let openapi = openapi_endpoints(crate::rest::openapi::DOCUMENT);
    // A table that agrees with the document, built from it, so that this
    // test checks the comparison whatever README.md says.
    let mut table = format!("{BEGIN}\n| method | path | auth | purpose |\n|---|---|---|---|\n");
    for ((method, path), secured) in &openapi {
        let auth = if *secured { "bearer" } else { "none" };
        table.push_str(&format!("| {method} | `{path}` | {auth} | x |\n"));
    }
    table.push_str(END);
    let full = readme_endpoints(&table).unwrap_or_else(|e| panic!("{e}"));
    assert!(differences(&full, &openapi).is_empty());

    let mut missing = full.clone();
    missing.remove(&("GET".to_owned(), "/users/me".to_owned()));
    assert_eq!(
        differences(&missing, &openapi),
        ["missing from README.md (in openapi.json): GET /users/me"]
    );

    let mut extra = full.clone();
    extra.insert(("GET".to_owned(), "/nowhere".to_owned()), "bearer".to_owned());
    assert_eq!(
        differences(&extra, &openapi),
        ["in README.md but not in openapi.json: GET /nowhere"]
    );

    let mut unauthenticated = full;
    unauthenticated.insert(("GET".to_owned(), "/users/me".to_owned()), "none".to_owned());
    assert_eq!(differences(&unauthenticated, &openapi).len(), 1);

    let twice = format!("{BEGIN}\n| GET | `/` | none | x |\n| GET | `/` | none | y |\n{END}");
    assert!(readme_endpoints(&twice).is_err());
    assert!(readme_endpoints("no markers").is_err());
}
