//! `GET /openapi.json` describes exactly the routes the gateway registers:
//! every (method, path) of `rest::configure` is in the document, every
//! documented operation is routed by the running gateway (actix's router
//! answers something other than "no route" or 405), and the document is
//! public and never rate-limited.

use unilink_test_support::fleet as common;

use std::collections::BTreeSet;

use common::Fleet;
use serde_json::Value;

/// The routes `rest::configure` registers, read from its source: every
/// `resource!("<path>", <method> => <handler>, ...)`. The web client under
/// `/app` is a static page registered by `web_client::configure`, not part
/// of the API.
fn registered_routes() -> BTreeSet<(String, String)> {
    let source = include_str!("../../src/rest/mod.rs");
    let body = source
        .split("pub fn configure")
        .nth(1)
        .expect("rest::configure")
        .split("\n}\n")
        .next()
        .unwrap();
    // Without whitespace, so a call split over lines reads `("/path",get=>`.
    let body: String = body.split_whitespace().collect();
    let mut routes = BTreeSet::new();
    let mut rest = body.as_str();
    let opening = "resource!(\"";
    while let Some(at) = rest.find(opening) {
        let after = &rest[at + opening.len()..];
        let end = after.find('"').unwrap();
        let path = after[..end].to_owned();
        let close = after
            .find(')')
            .unwrap_or_else(|| panic!("unclosed resource! for {path}"));
        let arms: Vec<&str> = after[end + 1..close].split(',').filter(|a| !a.is_empty()).collect();
        assert!(!arms.is_empty(), "no method for {path}");
        for arm in arms {
            let (method, _) = arm
                .split_once("=>")
                .unwrap_or_else(|| panic!("{arm:?} of {path} is not method => handler"));
            routes.insert((method.to_owned(), path.clone()));
        }
        rest = &after[close..];
    }
    routes
}

fn documented_routes(doc: &Value) -> BTreeSet<(String, String)> {
    let mut routes = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            routes.insert((method.clone(), path.clone()));
        }
    }
    routes
}

#[tokio::test]
async fn the_document_lists_every_route_and_the_gateway_routes_every_documented_one() {
    let fleet = Fleet::start().await;
    let gw = fleet.gateway(&[("RATE_LIMIT_API", "1")]).await;

    // Public, JSON, and exempt from the rate limit (a budget of 1 a minute).
    let mut document = Value::Null;
    for _ in 0..3 {
        let response = gw
            .http
            .get(gw.url("/openapi.json"))
            .bearer_auth("not-a-token")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/json")
        );
        document = response.json().await.unwrap();
    }
    assert!(document["openapi"].as_str().unwrap().starts_with("3."));
    assert_eq!(document["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");

    let registered = registered_routes();
    assert!(registered.len() > 30, "{registered:?}");
    let documented = documented_routes(&document);
    let missing: Vec<_> = registered.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&registered).collect();
    assert!(missing.is_empty(), "registered but not documented: {missing:?}");
    assert!(extra.is_empty(), "documented but not registered: {extra:?}");

    // Every operation: path parameters declared, errors as {"detail"},
    // bearer security where a token is needed.
    for (method, path) in &documented {
        let operation = &document["paths"][path][method];
        let params: Vec<&str> = operation["parameters"]
            .as_array()
            .map(|ps| {
                ps.iter()
                    .filter(|p| p["in"] == "path")
                    .map(|p| p["name"].as_str().unwrap())
                    .collect()
            })
            .unwrap_or_default();
        for segment in path.split('/').filter(|s| s.starts_with('{')) {
            let name = segment.trim_matches(['{', '}']);
            assert!(
                params.contains(&name),
                "{method} {path}: path parameter {name} undeclared"
            );
        }
        assert!(operation["operationId"].is_string(), "{method} {path}");
        let responses = operation["responses"].as_object().unwrap();
        assert!(responses.contains_key("429"), "{method} {path}");
        let secured = !operation["security"].as_array().unwrap().is_empty();
        if secured {
            assert_eq!(
                responses["401"]["$ref"], "#/components/responses/Unauthorized",
                "{method} {path}"
            );
        }
    }
    let error = &document["components"]["schemas"]["Error"];
    assert_eq!(error["required"][0], "detail");

    // The running gateway routes every documented operation: whatever it
    // answers (401 without a token, 400 for an empty body…), it is not the
    // default service's "no route" nor a 405.
    let id = uuid::Uuid::new_v4().to_string();
    for (method, path) in &documented {
        let concrete: String = path
            .split('/')
            .map(|s| if s.starts_with('{') { id.as_str() } else { s })
            .collect::<Vec<_>>()
            .join("/");
        let request = gw
            .http
            .request(method.to_uppercase().parse().unwrap(), gw.url(&concrete))
            .header("Content-Type", "application/json")
            .body("{}");
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        assert!(status != 405, "{method} {path}: {status} {text}");
        assert!(
            !(status == 404 && text.contains("no route for")),
            "{method} {path} is not routed: {text}"
        );
        assert!(status < 500 || status == 503, "{method} {path}: {status} {text}");
    }
    gw.stop().await;
}
