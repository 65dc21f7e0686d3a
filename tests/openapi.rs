//! `GET /api/v1/openapi.json` describes the API as it is: every route is in
//! it, and the live answers (status with a database, history, errors)
//! validate against its schemas, checked strictly (no undeclared field, no
//! missing required one, types and enums as declared).

#[path = "../sync/tests/support/mod.rs"]
mod pg;
mod support;

use http::Method;
use serde_json::Value;
use support::{deployment, eventually};

/// Errors of `v` against `schema` (resolving `$ref`s in `doc`).
fn validate(v: &Value, schema: &Value, doc: &Value, at: &str) -> Vec<String> {
    if let Some(r) = schema["$ref"].as_str() {
        let name = r.trim_start_matches("#/components/schemas/");
        return validate(v, &doc["components"]["schemas"][name], doc, at);
    }
    for key in ["oneOf", "anyOf"] {
        if let Some(alts) = schema[key].as_array() {
            let ok = alts.iter().any(|s| validate(v, s, doc, at).is_empty());
            return if ok {
                vec![]
            } else {
                vec![format!("{at}: {v} matches none of {key}")]
            };
        }
    }
    if let Some(all) = schema["allOf"].as_array() {
        return all.iter().flat_map(|s| validate(v, s, doc, at)).collect();
    }
    let mut errors = Vec::new();
    let types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    let kind = match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    let allowed = types.is_empty()
        || types.contains(&kind)
        || (kind == "integer" && types.contains(&"number"));
    if !allowed {
        errors.push(format!("{at}: {kind} where the schema says {types:?}"));
        return errors;
    }
    if let Some(allowed) = schema["enum"].as_array() {
        if !allowed.contains(v) {
            errors.push(format!("{at}: {v} is not one of {allowed:?}"));
        }
    }
    if let (Value::Object(o), Some(props)) = (v, schema["properties"].as_object()) {
        for req in schema["required"].as_array().into_iter().flatten() {
            let req = req.as_str().unwrap();
            if !o.contains_key(req) {
                errors.push(format!("{at}.{req}: required, missing"));
            }
        }
        for (k, val) in o {
            match props.get(k) {
                Some(s) => errors.extend(validate(val, s, doc, &format!("{at}.{k}"))),
                None if schema["additionalProperties"].is_object() => errors.extend(validate(
                    val,
                    &schema["additionalProperties"],
                    doc,
                    &format!("{at}.{k}"),
                )),
                None => errors.push(format!("{at}.{k}: not declared in the schema")),
            }
        }
    } else if let (Value::Object(o), true) = (v, schema["additionalProperties"].is_object()) {
        for (k, val) in o {
            errors.extend(validate(
                val,
                &schema["additionalProperties"],
                doc,
                &format!("{at}.{k}"),
            ));
        }
    }
    if let (Value::Array(items), Some(s)) = (v, schema.get("items")) {
        for (i, item) in items.iter().enumerate() {
            errors.extend(validate(item, s, doc, &format!("{at}[{i}]")));
        }
    }
    errors
}

fn schema(doc: &Value, name: &str) -> Value {
    assert!(
        doc["components"]["schemas"][name].is_object(),
        "no schema {name}"
    );
    serde_json::json!({ "$ref": format!("#/components/schemas/{name}") })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_describes_the_running_api() {
    let pair = pg::Pair::new("openapi").await;
    let extra = format!(
        "[rollout]\nsteps = [10, 100]\nbake = \"1h\"\n\n[database]\nblue = \"{}\"\ngreen = \"{}\"\nmigrations = \"{}\"\nmode = \"snapshot\"\nprepare = \"manual\"\n",
        pair.blue(),
        pair.green(),
        pair.migrations.path().display()
    );
    let (_blue, _green, sy) = deployment(|b| b.extra(&extra)).await;
    let r = sy
        .client
        .get(&sy.admin_url("/api/v1/openapi.json"))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "no token needed for the description");
    let doc = r.json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{doc}");
    for (path, method) in [
        ("/healthz", "get"),
        ("/metrics", "get"),
        ("/api/v1/openapi.json", "get"),
        ("/api/v1/status", "get"),
        ("/api/v1/weights", "put"),
        ("/api/v1/rollout/{action}", "post"),
        ("/api/v1/history", "get"),
        ("/api/v1/events", "get"),
    ] {
        assert!(
            doc["paths"][path][method].is_object(),
            "{method} {path} is not described"
        );
    }
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());

    sy.admin(
        Method::POST,
        "/api/v1/rollout/start",
        r#"{"reason": "openapi"}"#,
    )
    .await;
    assert!(
        eventually(20, async || !sy.status().await["database"]["checked_at"]
            .is_null())
        .await,
        "the database part is read"
    );
    let status = sy.status().await;
    let errors = validate(&status, &schema(&doc, "Status"), &doc, "status");
    assert!(errors.is_empty(), "{errors:#?}\n{status:#}");
    assert!(
        status["database"].is_object(),
        "validated with its database part"
    );

    let history = sy.admin(Method::GET, "/api/v1/history", "").await.json();
    let errors = validate(&history, &schema(&doc, "History"), &doc, "history");
    assert!(errors.is_empty(), "{errors:#?}");

    let weights = sy
        .admin(Method::PUT, "/api/v1/weights", r#"{"green": 5}"#)
        .await;
    let errors = validate(&weights.json(), &schema(&doc, "Status"), &doc, "weights");
    assert!(errors.is_empty(), "{errors:#?}");
    for bad in [
        sy.admin(Method::POST, "/api/v1/rollout/start", "").await, // 409: a rollout runs
        sy.admin(Method::PUT, "/api/v1/weights", r#"{"green": 150}"#)
            .await, // 400
    ] {
        assert!(bad.status == 409 || bad.status == 400, "{}", bad.text());
        let errors = validate(&bad.json(), &schema(&doc, "ErrorBody"), &doc, "error");
        assert!(errors.is_empty(), "{errors:#?}");
    }

    // The validator itself catches drift.
    let mut extra_field = status.clone();
    extra_field["rollout"]["surprise"] = Value::from(1);
    assert!(!validate(&extra_field, &schema(&doc, "Status"), &doc, "s").is_empty());
    let mut missing = status.clone();
    missing.as_object_mut().unwrap().remove("weights");
    assert!(!validate(&missing, &schema(&doc, "Status"), &doc, "s").is_empty());
    let mut wrong_enum = status.clone();
    wrong_enum["rollout"]["state"] = Value::from("sleeping");
    assert!(!validate(&wrong_enum, &schema(&doc, "Status"), &doc, "s").is_empty());
    let mut wrong_type = status;
    wrong_type["weights"]["green"] = Value::from("ten");
    assert!(!validate(&wrong_type, &schema(&doc, "Status"), &doc, "s").is_empty());
}
