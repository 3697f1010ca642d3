//! Path params, query params and headers: declared ones are typed and
//! checked before the upgrade (HTTP 400 naming the problem), undeclared ones
//! pass through as strings.

use serde_json::json;
use toml::toml;
use wsflow_tests::{
    Manifest, Refused, TestServer, next_json, programs, request, send_text, try_connect,
};

fn typed_manifest() -> Manifest {
    Manifest::one_flow(
        "params",
        programs::PARAMS,
        toml! {
            path = "/items/{id}/{flag}"
            path_params = [
                { name = "id", type = "integer" },
                { name = "flag", type = "boolean" },
            ]
            query_params = [
                { name = "user", type = "string", required = true },
                { name = "priority", type = "number" },
                { name = "tag", repeating = true },
                { name = "n", type = "integer", repeating = true },
            ]
            headers = [
                { name = "X-Client", required = true },
                { name = "X-Retries", type = "integer" },
                { name = "X-Features", repeating = true },
            ]
        },
    )
}

#[tokio::test]
async fn declared_params_reach_the_flow_typed() {
    let server = TestServer::start(&typed_manifest()).await;
    let url = server.url("/items/42/true?user=ann&priority=2.5&tag=a&tag=b&n=1&n=2&extra=x");
    let headers = [
        ("x-CLIENT", "cli"),
        ("X-Retries", "3"),
        ("X-Features", "a, b"),
        ("X-Features", "c"),
        ("X-Other", "free"),
    ];
    let mut client = try_connect(request(&url, &headers)).await.unwrap();
    send_text(&mut client, "hi").await;
    let reply = next_json(&mut client).await;
    assert_eq!(reply["path"], json!({ "id": 42, "flag": true }));
    assert_eq!(
        reply["query"],
        json!({ "user": "ann", "priority": 2.5, "tag": ["a", "b"], "n": [1, 2], "extra": "x" })
    );
    assert_eq!(
        reply["headers"],
        json!({ "x-client": "cli", "x-retries": 3, "x-features": ["a", "b", "c"], "x-other": "free" })
    );
}

#[tokio::test]
async fn absent_optional_params_are_left_out() {
    let server = TestServer::start(&typed_manifest()).await;
    let url = server.url("/items/1/false?user=bo");
    let mut client = try_connect(request(&url, &[("X-Client", "c")]))
        .await
        .unwrap();
    send_text(&mut client, "hi").await;
    let reply = next_json(&mut client).await;
    assert_eq!(reply["query"], json!({ "user": "bo" }));
    assert_eq!(reply["headers"], json!({ "x-client": "c" }));
}

#[tokio::test]
async fn bad_params_are_refused_with_400_naming_the_parameter() {
    let server = TestServer::start(&typed_manifest()).await;
    let cases = [
        (
            "/items/1/true",
            vec![("X-Client", "c")],
            "query parameter `user` is required but missing",
        ),
        (
            "/items/x/true?user=a",
            vec![("X-Client", "c")],
            "path parameter `id`: `x` is not an integer",
        ),
        (
            "/items/1/maybe?user=a",
            vec![("X-Client", "c")],
            "path parameter `flag`: `maybe` is not a boolean (true or false)",
        ),
        (
            "/items/1/true?user=a&priority=high",
            vec![("X-Client", "c")],
            "query parameter `priority`: `high` is not a number",
        ),
        (
            "/items/1/true?user=a&user=b",
            vec![("X-Client", "c")],
            "query parameter `user` is given 2 times but takes one value",
        ),
        (
            "/items/1/true?user=a&n=1&n=two",
            vec![("X-Client", "c")],
            "query parameter `n`: `two` is not an integer",
        ),
        (
            "/items/1/true?user=a",
            vec![],
            "header `x-client` is required but missing",
        ),
        (
            "/items/1/true?user=a",
            vec![("X-Client", "c"), ("X-Retries", "3.5")],
            "header `x-retries`: `3.5` is not an integer",
        ),
        (
            "/items/1/true?user=%zz",
            vec![("X-Client", "c")],
            "query parameter `user`: `%zz` is not valid percent-encoded UTF-8",
        ),
    ];
    for (path, headers, expected) in cases {
        let refused = try_connect(request(&server.url(path), &headers))
            .await
            .err()
            .unwrap_or_else(|| panic!("{path} must be refused"));
        assert_eq!(
            refused,
            Refused {
                status: 400,
                body: expected.to_owned()
            },
            "{path}"
        );
    }
}

#[tokio::test]
async fn more_query_params_or_header_values_than_the_limit_are_refused_with_400() {
    let server = TestServer::start(&typed_manifest()).await;
    let extra: String = (0..256).map(|i| format!("&x{i}=1")).collect();
    let url = server.url(&format!("/items/1/true?user=a{extra}"));
    let refused = try_connect(request(&url, &[("X-Client", "c")]))
        .await
        .expect_err("257 query parameters are refused");
    assert_eq!(
        refused,
        Refused {
            status: 400,
            body: "the query has more than 256 parameters; send at most 256".into()
        }
    );

    let features = vec!["f"; 300].join(",");
    let url = server.url("/items/1/true?user=a");
    let refused = try_connect(request(
        &url,
        &[("X-Client", "c"), ("X-Features", &features)],
    ))
    .await
    .expect_err("300 header values are refused");
    assert_eq!(
        refused,
        Refused {
            status: 400,
            body: "the request has more than 256 header values; send at most 256".into()
        }
    );

    // At the limit, the upgrade goes through.
    let extra: String = (0..255).map(|i| format!("&x{i}=1")).collect();
    let url = server.url(&format!("/items/1/true?user=a{extra}"));
    let mut client = try_connect(request(&url, &[("X-Client", "c")]))
        .await
        .unwrap();
    send_text(&mut client, "hi").await;
    assert_eq!(next_json(&mut client).await["query"]["x254"], "1");
}
